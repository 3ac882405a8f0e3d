"""The native plugin ABI, ``forge/1`` (see docs/abi.md).

Host functions (worker/host.py) are linked once per plugin version (one
Linker and one InstancePre); each call finds its own state through a
thread-local, since a Store is only ever used by the one thread that checked
its instance out. WASI preview 1 is linked when the module imports it, with
nothing granted but stdout/stderr (which become log lines); directories and
environment variables only as the plugin's grants allow.
"""

from __future__ import annotations

import ctypes
import time

import wasmtime
from wasmtime._bindings import wasmtime_val_raw_t

from schemas.abi import BUS_IMPORTS, FORGE_V1_IMPORTS, HOST_MODULE, WASI_MODULE
from schemas.errors import (
    ForgeError,
    OutOfMemory,
    OutputTooLarge,
    PluginError,
    Rejected,
    Trap,
)
from schemas.manifest import Manifest

from . import host, wasi
from .engine import Engines
from .guest import (
    LIFECYCLE_TIMEOUT_S,
    WASM_PAGE,
    GuestMemory,
    GuestTrap,
    RawFunc,
    c_func_call,
    c_set_epoch_deadline,
    context_address,
    engine_fault,
    functype,
    raise_trap,
    trap_cause,
)
from .host import CallMeta, CallState, HostEnv
from .runtime import CallLimits, Invocation, engine_settings_for


class ForgeV1Runtime:
    """One compiled forge/1 plugin version; makes instances."""

    def __init__(
        self,
        engines: Engines,
        manifest: Manifest,
        module: wasmtime.Module,
        limits: CallLimits,
        env: HostEnv,
    ) -> None:
        self.manifest = manifest
        self.engines = engines
        self.limits = limits
        self.env = env
        self.engine = engines.get(engine_settings_for(limits))
        self.memory_bytes = limits.memory_bytes
        self.max_output = limits.max_output_bytes
        self.table_elements = limits.table_elements
        linker = wasmtime.Linker(self.engine)
        for name, sig in FORGE_V1_IMPORTS.items():
            linker.define_func(
                HOST_MODULE, name, functype(sig.params, sig.results), host.HOST_FUNCS[name]
            )
        self.uses_wasi = any(i.module == WASI_MODULE for i in module.imports)
        #: Whether guest code can reach a host function (and so needs a CallState).
        self.imports_host = self.uses_wasi or any(i.module == HOST_MODULE for i in module.imports)
        self.replayable = not self.uses_wasi and not any(
            i.module == HOST_MODULE and i.name in BUS_IMPORTS for i in module.imports
        )
        if self.uses_wasi:
            linker.define_wasi()
            wasi.restrict_wasi(linker, manifest.permissions)
        self.pre = linker.instantiate_pre(module)
        exported = {e.name for e in module.exports}
        self.has_initialize = "_initialize" in exported
        self.has_dealloc = "dealloc" in exported
        self.has_init = "init" in exported
        self.has_shutdown = "shutdown" in exported

    def new_instance(self) -> ForgeV1Instance:
        return ForgeV1Instance(self)


class ForgeV1Instance:
    """One instance with its own Store. Used by one thread at a time."""

    def __init__(self, rt: ForgeV1Runtime) -> None:
        self.rt = rt
        self.broken = False
        self.logs: list[tuple[int, str]] = []
        store = wasmtime.Store(rt.engine)
        store.set_limits(
            memory_size=rt.memory_bytes,
            table_elements=rt.table_elements,
            instances=2,
            tables=4,
            memories=1,
        )
        self._wasi_out: wasi.WasiOutput | None = None
        if rt.uses_wasi:
            self._wasi_out = wasi.WasiOutput()
            store.set_wasi(wasi.wasi_config(rt.env.grants, self._wasi_out))
        self.store = store
        self._ctx = context_address(store)
        self._ticks = rt.engines.ticks_for
        self._fuel = rt.limits.fuel
        self._arm(LIFECYCLE_TIMEOUT_S)
        st = CallState(rt.env, None, None, CallMeta(time.monotonic() + LIFECYCLE_TIMEOUT_S))
        host.enter(st)
        try:
            try:
                instance = rt.pre.instantiate(store)
            except wasmtime.Trap as e:
                raise self._classify(GuestTrap(e.message, e.trap_code), st) from None
            except wasmtime.WasmtimeError as e:
                raise Trap(f"instantiation failed: {e}") from None
            ex = instance.exports(store)
            mem = ex["memory"]
            assert isinstance(mem, wasmtime.Memory)
            self.memory = GuestMemory(store, mem)
            st.memory = self.memory

            def fn(name: str, params: tuple[str, ...], results: tuple[str, ...]) -> RawFunc:
                f = ex[name]
                assert isinstance(f, wasmtime.Func)
                return RawFunc(store, f, params, results)

            self._alloc = fn("alloc", ("i32",), ("i32",))
            self._vals = (wasmtime_val_raw_t * 2)()
            self._trap = ctypes.c_void_p()
            self._trap_ref = ctypes.byref(self._trap)
            self._quiet_state = CallState(rt.env, self.memory, self._alloc, CallMeta())
            st.alloc = self._alloc
            if rt.has_initialize:
                try:
                    fn("_initialize", (), ())()
                except GuestTrap as e:
                    raise self._classify(e, st) from None
            self._dealloc = fn("dealloc", ("i32", "i32"), ()) if rt.has_dealloc else None
            self._shutdown = fn("shutdown", (), ()) if rt.has_shutdown else None
            self._handlers = {
                name: fn(name, ("i32", "i32"), ("i64",)) for name in rt.manifest.exports
            }
            if rt.has_init:
                try:
                    rc = fn("init", (), ("i32",))()
                except GuestTrap as e:
                    raise self._classify(e, st) from None
                if rc != 0 or st.error is not None:
                    raise PluginError(f"init failed: {st.error or f'returned {rc}'}")
        finally:
            host.leave()
            self._drain_wasi(st)
            self.logs = st.logs

    # --- one call ---------------------------------------------------------------
    def _arm(self, timeout_s: float) -> None:
        c_set_epoch_deadline(self._ctx, self.rt.engines.ticks_for(timeout_s))
        if self._fuel is not None:
            self.store.set_fuel(self._fuel)

    def call(self, fn: str, data: bytes, meta: CallMeta) -> Invocation:
        """One call, following docs/abi.md section 6 step by step."""
        handler = self._handlers[fn]
        memory = self.memory
        if self.rt.imports_host:
            st = CallState(self.rt.env, memory, self._alloc, meta)
            host.enter(st)
        else:  # no host function can run: the state is only read back here, never written
            st = self._quiet_state
            st.meta = meta
        ctx, v, trap, trap_ref = self._ctx, self._vals, self._trap, self._trap_ref
        c_set_epoch_deadline(ctx, self._ticks(meta.deadline - time.monotonic()))
        if self._fuel is not None:
            self.store.set_fuel(self._fuel)
        started = time.perf_counter_ns()
        n = len(data)
        error: ForgeError | None = None
        # alloc, the handler and dealloc are called here directly (RawFunc's work, inlined:
        # this is the per-call hot path); host functions use their own RawFuncs meanwhile.
        try:
            v[0].i32 = n
            trap.value = None
            err = c_func_call(ctx, self._alloc.fref, v, 1, trap_ref)
            if err or trap.value:
                raise_trap(err, trap.value)
            in_ptr = v[0].i32 & 0xFFFFFFFF
            if n:
                if in_ptr == 0:
                    raise OutOfMemory(f"alloc({n}) returned 0")
                at = memory.at(in_ptr, n, "input block from alloc")
                ctypes.memmove(at, data, n)
            v[0].i32 = in_ptr
            v[1].i32 = n
            err = c_func_call(ctx, handler.fref, v, 2, trap_ref)
            if err or trap.value:
                raise_trap(err, trap.value)
            packed = v[0].i64 & 0xFFFFFFFFFFFFFFFF
            out_ptr, out_len = packed >> 32, packed & 0xFFFFFFFF
            output = b""
            if st.error is not None:
                error = Rejected(st.error) if st.rejected else PluginError(st.error)
            elif out_len > self.rt.max_output:
                raise OutputTooLarge(f"output of {out_len} bytes exceeds {self.rt.max_output}")
            elif out_len:
                output = ctypes.string_at(memory.at(out_ptr, out_len, "output"), out_len)
            if self._dealloc is not None:
                self._release(in_ptr, n, out_ptr, out_len)
        except GuestTrap as e:
            self.broken = True
            raise self._classify(e, st) from None
        except ForgeError:
            self.broken = True
            raise
        finally:
            if self.rt.imports_host:
                host.leave()
            if self._wasi_out is not None:
                self._drain_wasi(st)
            self.logs = st.logs
        if error is not None:
            raise error
        duration_us = (time.perf_counter_ns() - started) // 1000
        fuel_used = None
        if self._fuel is not None:
            fuel_used = self._fuel - self.store.get_fuel()
        return Invocation(output, st.logs, fuel_used, duration_us)

    def _release(self, in_ptr: int, in_len: int, out_ptr: int, out_len: int) -> None:
        """Hand the output, then the input, back to the guest's ``dealloc``.

        An output inside the input block (an in-place transform, an echo) is not handed
        back on its own: it is freed with the input (docs/abi.md section 6, step 8).
        A trap here discards the instance but does not change the call's result.
        """
        try:
            if out_ptr and not (in_ptr <= out_ptr and out_ptr + out_len <= in_ptr + in_len):
                self._dealloc_one(out_ptr, out_len)
            if in_ptr:
                self._dealloc_one(in_ptr, in_len)
        except GuestTrap:
            self.broken = True

    def _dealloc_one(self, ptr: int, length: int) -> None:
        assert self._dealloc is not None
        v, trap = self._vals, self._trap
        v[0].i32 = ptr
        v[1].i32 = length
        trap.value = None
        err = c_func_call(self._ctx, self._dealloc.fref, v, 2, self._trap_ref)
        if err or trap.value:
            raise_trap(err, trap.value)

    def _classify(self, e: GuestTrap, st: CallState) -> ForgeError:
        """Map a trap to the typed error a caller sees."""
        if st.fault is not None:
            return st.fault
        fault = engine_fault(e, self._fuel)
        if fault is not None:
            return fault
        if st.memory is not None and st.memory.size() + WASM_PAGE > self.rt.memory_bytes:
            return OutOfMemory(
                f"memory ceiling of {self.rt.memory_bytes // (1024 * 1024)} MiB "
                f"reached ({trap_cause(str(e))})"
            )
        return Trap(trap_cause(str(e)))

    def close(self, graceful: bool) -> None:
        if graceful and not self.broken and self._shutdown is not None:
            self._arm(LIFECYCLE_TIMEOUT_S)
            st = CallState(
                self.rt.env,
                self.memory,
                self._alloc,
                CallMeta(time.monotonic() + LIFECYCLE_TIMEOUT_S),
            )
            host.enter(st)
            try:
                self._shutdown()
            except GuestTrap:
                pass
            finally:
                host.leave()
                self._drain_wasi(st)
                self.logs = st.logs  # what shutdown logged, for the pool to hand on
        self.broken = True
        self._handlers = {}
        if self._wasi_out is not None:
            self._wasi_out.close()

    def _drain_wasi(self, st: CallState) -> None:
        """WASI output of the call becomes its log lines; too much output retires the instance."""
        if self._wasi_out is None:
            return
        sink: list[tuple[int, str]] = st.logs if self.rt.env.grants.granted("log") else []
        if not self._wasi_out.drain(sink):
            self.broken = True
