"""The ``extism/1`` ABI: plugins built with any Extism PDK, unmodified (docs/abi.md).

Extism guests keep their input, output and every value they exchange with
the host in a block memory reached through ``extism:host/env``. That memory
and its functions are ForgeOne's own small wasm module, worker/extism_kernel.wat,
instantiated in each instance's Store beside the guest, so a guest loading
its input eight bytes at a time stays in compiled code. Only the functions
that need the host (config, vars, logs, HTTP, ForgeOne's user functions)
reach Python (worker/extism_host.py), where they find their instance and call
through thread-locals, as forge/1 host functions do.

One call: ``forge_begin(len)`` (a kernel export the guest cannot import)
empties the block memory and returns the input block, the host copies the
input in, calls the handler, then reads the status words the kernel keeps at
offset 0 (output offset and length, error block) and copies the output out.
"""

from __future__ import annotations

import ctypes
import struct
import threading
import time
from pathlib import Path
from typing import Any

import wasmtime

from schemas.abi import (
    EXTISM_ENV_MODULE,
    EXTISM_HOST_IMPORTS,
    EXTISM_KERNEL_IMPORTS,
    EXTISM_USER_IMPORTS,
    EXTISM_USER_MODULE,
    WASI_MODULE,
)
from schemas.errors import (
    ForgeError,
    OutOfMemory,
    OutputTooLarge,
    PluginError,
    Trap,
)
from schemas.manifest import Manifest

from . import extism_host, host, wasi
from .engine import Engines
from .guest import (
    LIFECYCLE_TIMEOUT_S,
    WASM_PAGE,
    GuestMemory,
    GuestTrap,
    RawFunc,
    c_set_epoch_deadline,
    context_address,
    engine_fault,
    functype,
    trap_cause,
)
from .host import CallMeta, CallState, HostEnv
from .runtime import CallLimits, Invocation, engine_settings_for

KERNEL_WAT = Path(__file__).with_name("extism_kernel.wat")
_STATUS = struct.Struct("<QQQQ")  # output offset, output length, error block, grow refused

_kernel_lock = threading.Lock()
_kernel_wasm: bytes | None = None
_kernel_modules: dict[int, tuple[wasmtime.Engine, wasmtime.Module]] = {}


def kernel_module(engine: wasmtime.Engine) -> wasmtime.Module:
    """The kernel compiled for ``engine`` (compiled once per engine; it is a few KiB)."""
    global _kernel_wasm
    with _kernel_lock:
        hit = _kernel_modules.get(id(engine))
        if hit is not None and hit[0] is engine:
            return hit[1]
        if _kernel_wasm is None:
            _kernel_wasm = bytes(wasmtime.wat2wasm(KERNEL_WAT.read_text()))
        module = wasmtime.Module(engine, _kernel_wasm)
        _kernel_modules[id(engine)] = (engine, module)
        return module


class _KernelMemory(GuestMemory):
    """GuestMemory plus the fixed-size reads of one call, with one address lookup each."""

    __slots__ = ()

    def status(self) -> tuple[int, int, int, int, int, int]:
        """(base address, size, output offset, output length, error block, grow refused)."""
        base, size = self.address()
        out_off, out_len, err_off, full = _STATUS.unpack(ctypes.string_at(base, _STATUS.size))
        return base, size, out_off, out_len, err_off, full

    def put(self, offset: int, data: bytes) -> None:
        """Copy ``data`` to a block the kernel just allocated (so known to be in range)."""
        ctypes.memmove(self.address()[0] + offset, data, len(data))


class ExtismRuntime:
    """One compiled extism/1 plugin version; makes instances."""

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
        self.module = module
        self.engine = engines.get(engine_settings_for(limits))
        self.kernel_pre = wasmtime.Linker(self.engine).instantiate_pre(kernel_module(self.engine))
        imports = [(i.module, i.name or "") for i in module.imports]
        self.uses_wasi = any(m == WASI_MODULE for m, _ in imports)
        self.imports = imports
        linker = wasmtime.Linker(self.engine)
        for mod, name in imports:
            if mod == EXTISM_ENV_MODULE and name in EXTISM_HOST_IMPORTS:
                sig = EXTISM_HOST_IMPORTS[name]
                linker.define_func(
                    mod, name, functype(sig.params, sig.results), extism_host.ENV_FUNCS[name]
                )
            elif mod == EXTISM_USER_MODULE and name in EXTISM_USER_IMPORTS:
                sig = EXTISM_USER_IMPORTS[name]
                linker.define_func(
                    mod, name, functype(sig.params, sig.results), extism_host.USER_FUNCS[name]
                )
        if self.uses_wasi:
            linker.define_wasi()
            wasi.restrict_wasi(linker, manifest.permissions)
        self.linker = linker
        # Only pure plugins may run on the event loop and be re-run after an aborted
        # attempt: no WASI, no HTTP, none of ForgeOne's bus functions.
        self.replayable = not self.uses_wasi and not any(
            m == EXTISM_USER_MODULE or (m == EXTISM_ENV_MODULE and name == "http_request")
            for m, name in imports
        )
        types = {e.name: e.type for e in module.exports}
        self.handler_returns: dict[str, bool] = {}
        for fn in manifest.exports:
            t = types.get(fn)
            if not isinstance(t, wasmtime.FuncType):
                raise Trap(f"export {fn!r} is not a function")
            self.handler_returns[fn] = bool(t.results)
        if isinstance(types.get("_initialize"), wasmtime.FuncType):
            self.init_export: str | None = "_initialize"
        elif isinstance(types.get("__wasm_call_ctors"), wasmtime.FuncType):
            self.init_export = "__wasm_call_ctors"
        else:
            self.init_export = None
        self.has_memory = isinstance(types.get("memory"), wasmtime.MemoryType)

    def new_instance(self) -> ExtismInstance:
        return ExtismInstance(self)


class ExtismInstance:
    """A guest instance and its kernel in one Store. Used by one thread at a time."""

    def __init__(self, rt: ExtismRuntime) -> None:
        self.rt = rt
        self.broken = False
        self.logs: list[tuple[int, str]] = []
        self.vars: dict[bytes, bytes] = {}
        self.var_bytes = 0
        self.http_status = 0
        self.http_headers: bytes | None = None
        self._handlers: dict[str, RawFunc] = {}
        store = wasmtime.Store(rt.engine)
        store.set_limits(
            memory_size=rt.limits.memory_bytes,
            table_elements=rt.limits.table_elements,
            instances=2,
            tables=4,
            memories=2,
        )
        self._wasi_out: wasi.WasiOutput | None = None
        if rt.uses_wasi:
            self._wasi_out = wasi.WasiOutput()
            store.set_wasi(wasi.wasi_config(rt.env.grants, self._wasi_out))
        self.store = store
        self._ctx = context_address(store)
        self._fuel = rt.limits.fuel
        self._arm(LIFECYCLE_TIMEOUT_S)
        kernel = rt.kernel_pre.instantiate(store)
        kex = kernel.exports(store)

        def kfn(name: str, params: tuple[str, ...], results: tuple[str, ...]) -> RawFunc:
            f = kex[name]
            assert isinstance(f, wasmtime.Func)
            return RawFunc(store, f, params, results)

        kmem = kex["memory"]
        assert isinstance(kmem, wasmtime.Memory)
        self.kmem = _KernelMemory(store, kmem)
        self._begin = kfn("forge_begin", ("i64",), ("i64",))
        self._length = kfn("length", ("i64",), ("i64",))
        self._free = kfn("free", ("i64",), ())
        self._alloc = kfn("alloc", ("i64",), ("i64",))
        self.guest_memory: GuestMemory | None = None
        st = self._state(CallMeta(time.monotonic() + LIFECYCLE_TIMEOUT_S))
        try:
            externs: list[Any] = []
            for mod, name in rt.imports:
                if mod == EXTISM_ENV_MODULE and name in EXTISM_KERNEL_IMPORTS:
                    externs.append(kex[name])
                else:
                    externs.append(rt.linker.get(store, mod, name))
            try:
                instance = wasmtime.Instance(store, rt.module, externs)
            except wasmtime.Trap as e:
                raise self._classify(GuestTrap(e.message, e.trap_code), st) from None
            except wasmtime.WasmtimeError as e:
                raise Trap(f"instantiation failed: {e}") from None
            ex = instance.exports(store)
            if rt.has_memory:
                mem = ex["memory"]
                assert isinstance(mem, wasmtime.Memory)
                self.guest_memory = GuestMemory(store, mem)
            if rt.init_export is not None:
                init = ex[rt.init_export]
                assert isinstance(init, wasmtime.Func)
                try:
                    RawFunc(store, init, (), ())()
                except GuestTrap as e:
                    raise self._classify(e, st) from None
                if st.fault is not None:
                    raise st.fault
            for fn, returns in rt.handler_returns.items():
                f = ex[fn]
                assert isinstance(f, wasmtime.Func)
                self._handlers[fn] = RawFunc(store, f, (), ("i32",) if returns else ())
        finally:
            self._leave(st)

    # --- one call ---------------------------------------------------------------
    def _arm(self, timeout_s: float) -> None:
        c_set_epoch_deadline(self._ctx, self.rt.engines.ticks_for(timeout_s))
        if self._fuel is not None:
            self.store.set_fuel(self._fuel)

    def _state(self, meta: CallMeta) -> CallState:
        st = CallState(self.rt.env, self.kmem, self._alloc, meta)
        host.enter(st)
        extism_host.current.inst = self
        return st

    def _leave(self, st: CallState) -> None:
        host.leave()
        extism_host.current.inst = None
        if self._wasi_out is not None:  # WASI output becomes log lines (with the log grant)
            sink = st.logs if self.rt.env.grants.granted("log") else []
            if not self._wasi_out.drain(sink):
                self.broken = True  # too much output: retire the instance
        self.logs = st.logs

    def call(self, fn: str, data: bytes, meta: CallMeta) -> Invocation:
        handler = self._handlers[fn]
        st = self._state(meta)
        self._arm(meta.deadline - time.monotonic())
        self.http_status = 0
        self.http_headers = None
        started = time.perf_counter_ns()
        error: ForgeError | None = None
        output = b""
        try:
            n = len(data)
            in_off = self._begin.call_l_l(n)
            if n:
                if not in_off:
                    raise OutOfMemory(f"no room for {n} bytes of input in the block memory")
                self.kmem.put(in_off, data)
            rc = handler.call_v_i()
            base, size, out_off, out_len, err_off, _ = self.kmem.status()
            if err_off or rc:
                error = PluginError(self._error_message(fn, err_off, rc))
            elif out_len > self.rt.limits.max_output_bytes:
                error = OutputTooLarge(
                    f"output of {out_len} bytes exceeds {self.rt.limits.max_output_bytes}"
                )
            elif out_len:
                if out_off + out_len > size:
                    raise Trap(
                        f"output: [{out_off}, {out_off + out_len}) is outside the block "
                        f"memory of {size} bytes"
                    )
                output = ctypes.string_at(base + out_off, out_len)
        except GuestTrap as e:
            self.broken = True
            raise self._classify(e, st) from None
        except ForgeError:
            self.broken = True
            raise
        finally:
            self._leave(st)
        if error is not None:
            raise error
        duration_us = (time.perf_counter_ns() - started) // 1000
        fuel_used = None
        if self._fuel is not None:
            fuel_used = self._fuel - self.store.get_fuel()
        return Invocation(output, st.logs, fuel_used, duration_us)

    def _error_message(self, fn: str, err_off: int, rc: int) -> str:
        if err_off:
            text = self.block(err_off, "error message", host.MAX_ERROR)
            if text:
                return text.decode("utf-8", "replace")
        return f"{fn} returned error code {rc}" if rc else f"{fn} set an empty error"

    def length(self, offset: int) -> int:
        """The length of the kernel block at ``offset`` (0 for a non-block)."""
        return self._length.call_l_l(offset)

    def block(self, offset: int, what: str, cap: int | None = None) -> bytes:
        """The bytes of the kernel block at ``offset`` (b"" for 0 or a non-block)."""
        offset &= 0xFFFFFFFFFFFFFFFF
        if not offset:
            return b""
        return self.kmem.read(offset, self.length(offset), what, cap)

    def take(self, offset: int, what: str, cap: int, truncate: bool = False) -> bytes:
        """The bytes of a block the guest handed the host, which then frees it (as
        Extism's hosts do). Over ``cap`` bytes is a TRAP, or is cut when ``truncate``."""
        offset &= 0xFFFFFFFFFFFFFFFF
        if not offset:
            return b""
        length = self.length(offset)
        if length > cap and not truncate:
            raise Trap(f"{what}: {length} bytes is over the {cap} byte cap")
        data = self.kmem.read(offset, length, what, cap)
        self._free(offset)
        return data

    def put(self, data: bytes, what: str) -> int:
        """A new kernel block holding ``data``; its offset (0 for empty data)."""
        if not data:
            return 0
        offset = self._alloc.call_l_l(len(data))
        if not offset:
            st = host._state()
            raise host._fail(st, OutOfMemory(f"{what}: no room for {len(data)} bytes"))
        self.kmem.put(offset, data)
        return offset

    def _classify(self, e: GuestTrap, st: CallState) -> ForgeError:
        """Map a trap to the typed error a caller sees."""
        if st.fault is not None:
            return st.fault
        fault = engine_fault(e, self._fuel)
        if fault is not None:
            return fault
        try:
            _, _, _, _, err_off, kernel_full = self.kmem.status()
        except ForgeError:
            err_off = kernel_full = 0
        ceiling = self.rt.limits.memory_bytes
        guest = self.guest_memory
        if kernel_full or (guest is not None and guest.size() + WASM_PAGE > ceiling):
            which = "block memory" if kernel_full else "memory"
            return OutOfMemory(
                f"{which} ceiling of {ceiling // (1024 * 1024)} MiB reached ({trap_cause(str(e))})"
            )
        message = trap_cause(str(e))
        try:  # a PDK often records why before it traps (a Rust panic, an AssemblyScript abort)
            said = self.block(err_off, "error message", 512) if err_off else b""
        except (ForgeError, GuestTrap):
            said = b""
        if said:
            message += f" (guest error: {said.decode('utf-8', 'replace')})"
        return Trap(message)

    def close(self, graceful: bool) -> None:
        self.broken = True
        self._handlers = {}
        self.vars = {}
        if self._wasi_out is not None:
            self._wasi_out.close()
            self._wasi_out = None
