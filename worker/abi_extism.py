"""The ``extism/1`` ABI: plugins built with any Extism PDK, unmodified (docs/abi.md).

Extism guests keep their input, output and every value they exchange with
the host in a block memory reached through ``extism:host/env``. That memory
and its functions are ForgeOne's own small wasm module, worker/extism_kernel.wat,
instantiated in each instance's Store beside the guest, so a guest loading
its input eight bytes at a time stays in compiled code. Only the functions
that need the host (config, vars, logs, HTTP, ForgeOne's user functions)
reach Python, where they find their instance and call through thread-locals,
as forge/1 host functions do.

One call: ``forge_begin(len)`` (a kernel export the guest cannot import)
empties the block memory and returns the input block, the host copies the
input in, calls the handler, then reads the status words the kernel keeps at
offset 0 (output offset and length, error block) and copies the output out.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import struct
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
    Denied,
    ForgeError,
    OutOfMemory,
    OutputTooLarge,
    PluginError,
    Timeout,
    Trap,
)
from schemas.manifest import Manifest
from schemas.policy import Permission

from . import host, wasi
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
from .slots import released

KERNEL_WAT = Path(__file__).with_name("extism_kernel.wat")
#: Most bytes of vars (keys plus values) one instance may hold.
MAX_VAR_BYTES = 1024 * 1024
#: Most bytes of an HTTP response body handed to a guest.
MAX_HTTP_RESPONSE = 4 * 1024 * 1024
#: Most bytes of an HTTP request (the JSON description) and of its body.
MAX_HTTP_REQUEST = 64 * 1024
MAX_HTTP_BODY = 4 * 1024 * 1024
#: What ``get_log_level`` answers: Extism's numbering (0 trace ... 4 error), and the
#: value PDKs read as "logging off".
LOG_LEVEL_DEBUG = 1
LOG_LEVEL_OFF = 2**31 - 1
#: Extism log functions -> ForgeOne levels (0 debug, 1 info, 2 warn, 3 error).
_LOG_LEVELS = {"log_trace": 0, "log_debug": 0, "log_info": 1, "log_warn": 2, "log_error": 3}
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
                linker.define_func(mod, name, functype(sig.params, sig.results), ENV_FUNCS[name])
            elif mod == EXTISM_USER_MODULE and name in EXTISM_USER_IMPORTS:
                sig = EXTISM_USER_IMPORTS[name]
                linker.define_func(mod, name, functype(sig.params, sig.results), USER_FUNCS[name])
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


_tls = threading.local()


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
        _tls.inst = self
        return st

    def _leave(self, st: CallState) -> None:
        host.leave()
        _tls.inst = None
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

    def block(self, offset: int, what: str, cap: int | None = None) -> bytes:
        """The bytes of the kernel block at ``offset`` (b"" for 0 or a non-block)."""
        offset &= 0xFFFFFFFFFFFFFFFF
        if not offset:
            return b""
        return self.kmem.read(offset, self._length.call_l_l(offset), what, cap)

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


# --- host functions of extism:host/env ---------------------------------------------------
def _inst() -> tuple[ExtismInstance, CallState]:
    inst: ExtismInstance | None = getattr(_tls, "inst", None)
    if inst is None:
        raise RuntimeError("extism host function called outside a guest call")
    return inst, host._state()


def _take(
    inst: ExtismInstance, st: CallState, offset: int, what: str, cap: int, truncate: bool = False
) -> bytes:
    """The bytes of a block the guest handed the host, which then frees it (as Extism's
    hosts do). Over ``cap`` bytes fails the call (TRAP), or is cut when ``truncate``."""
    offset &= 0xFFFFFFFFFFFFFFFF
    if not offset:
        return b""
    try:
        length = inst._length.call_l_l(offset)
        if length > cap and not truncate:
            raise Trap(f"{what}: {length} bytes is over the {cap} byte cap")
        data = inst.kmem.read(offset, length, what, cap)
        inst._free(offset)
        return data
    except ForgeError as e:
        raise host._fail(st, e) from None


def env_config_get(key: int) -> int:
    inst, st = _inst()
    host._require(st, "config")
    name = _take(inst, st, key, "config_get key", host.MAX_KEY)
    value = st.env.config.get(name.decode("utf-8", "replace"))
    if value is None:
        return 0
    return inst.put(value.encode(), "config_get")


def env_var_get(key: int) -> int:
    inst, st = _inst()
    name = _take(inst, st, key, "var_get key", MAX_VAR_BYTES)
    value = inst.vars.get(name)
    return inst.put(value, "var_get") if value else 0


def env_var_set(key: int, value: int) -> None:
    inst, st = _inst()
    name = _take(inst, st, key, "var_set key", MAX_VAR_BYTES)
    old = inst.vars.pop(name, None)
    if old is not None:
        inst.var_bytes -= len(name) + len(old)
    if not value:
        return  # var_set(key, 0) removes the var
    data = _take(inst, st, value, "var_set value", MAX_VAR_BYTES)
    if inst.var_bytes + len(name) + len(data) > MAX_VAR_BYTES:
        raise host._fail(
            st, Trap(f"var_set: vars would exceed the {MAX_VAR_BYTES} byte cap of an instance")
        )
    inst.vars[name] = data
    inst.var_bytes += len(name) + len(data)


def _logger(level: int) -> Any:
    def log(offset: int) -> None:
        inst, st = _inst()
        host._require(st, "log")
        line = _take(inst, st, offset, "log", host.MAX_LOG_LINE, truncate=True)
        if len(st.logs) < host.MAX_LOG_LINES:
            st.logs.append((level, line.decode("utf-8", "replace")))

    return log


def env_get_log_level() -> int:
    st = host._state()
    return LOG_LEVEL_DEBUG if st.env.grants.has(Permission("log")) else LOG_LEVEL_OFF


def env_http_request(request: int, body: int) -> int:
    inst, st = _inst()
    raw = _take(inst, st, request, "http_request", MAX_HTTP_REQUEST)
    try:
        req = json.loads(raw)
        url = req["url"]
        method = str(req.get("method") or "GET").upper()
        headers = {str(k): str(v) for k, v in (req.get("headers") or {}).items()}
        parts = urlsplit(url)
        hostname = parts.hostname or ""
        port = parts.port
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise host._fail(st, Trap(f"http_request: not a valid request: {e}")) from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise host._fail(st, Trap(f"http_request: {str(url)[:200]!r} is not an http(s) URL"))
    wanted = [Permission("http", hostname)]
    if port is not None:
        wanted.append(Permission("http", f"{hostname}:{port}"))
    if not any(st.env.grants.has(p) for p in wanted):
        raise host._fail(
            st,
            Denied(
                f"{st.env.plugin}: http_request to {hostname} needs the 'http:{hostname}' grant"
            ),
        )
    payload = _take(inst, st, body, "http_request body", MAX_HTTP_BODY) if body else None
    remaining = st.meta.deadline - time.monotonic() if st.meta.deadline else 5.0
    if remaining <= 0:
        raise host._fail(st, Timeout("deadline reached before http_request could start"))
    try:
        status, resp_headers, content = _http(
            st, method, url, headers, payload, remaining, MAX_HTTP_RESPONSE
        )
    except TimeoutError:
        raise host._fail(
            st, Timeout(f"deadline reached while waiting for {hostname} (http_request)")
        ) from None
    except ForgeError as e:
        raise host._fail(st, e) from None
    except Exception as e:
        raise host._fail(
            st, Trap(f"http_request to {hostname} failed: {type(e).__name__}: {e}")
        ) from None
    inst.http_status = status
    inst.http_headers = json.dumps(resp_headers).encode()
    return inst.put(content, "http_request response")


def _http(
    st: CallState,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    timeout_s: float,
    cap: int,
) -> tuple[int, dict[str, str], bytes]:
    """One request through aiohttp, on the worker's event loop when there is one."""
    coro = _fetch(method, url, headers, body, timeout_s, cap)
    bridge = st.env.bridge
    if bridge is None:  # no worker around it (a local run, a bench): a private loop
        with released():
            return asyncio.run(coro)
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is bridge.loop:
        coro.close()
        raise Trap("http_request cannot wait on the event loop thread")
    fut = asyncio.run_coroutine_threadsafe(coro, bridge.loop)
    with released():  # waiting on the network is not CPU work
        try:
            return fut.result(timeout=timeout_s + 0.5)
        except TimeoutError:
            fut.cancel()
            raise


async def _fetch(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    timeout_s: float,
    cap: int,
) -> tuple[int, dict[str, str], bytes]:
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=timeout_s)
    # No redirects: a redirect to a host without a grant would slip past the policy.
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(method, url, headers=headers, data=body, allow_redirects=False) as resp,
    ):
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):  # decompressed bytes
            size += len(chunk)
            if size > cap:
                raise Trap(f"http_request: response from {resp.url.host} is over {cap} bytes")
            chunks.append(chunk)
        return resp.status, dict(resp.headers.items()), b"".join(chunks)


def env_http_status_code() -> int:
    inst, _ = _inst()
    return inst.http_status


def env_http_headers() -> int:
    inst, _ = _inst()
    return inst.put(inst.http_headers, "http_headers") if inst.http_headers else 0


ENV_FUNCS: dict[str, Any] = {
    "config_get": env_config_get,
    "var_get": env_var_get,
    "var_set": env_var_set,
    "http_request": env_http_request,
    "http_status_code": env_http_status_code,
    "http_headers": env_http_headers,
    "get_log_level": env_get_log_level,
    **{name: _logger(level) for name, level in _LOG_LEVELS.items()},
}


# --- ForgeOne's host functions for Extism guests (extism:host/user) ---------------------
def _pair(inst: ExtismInstance, offset: int) -> tuple[int, int]:
    """A block as the (ptr, len) pair forge host functions read (from the block memory)."""
    offset &= 0xFFFFFFFFFFFFFFFF
    if not offset:
        return 0, 0
    return offset, inst._length.call_l_l(offset)


def _block_result(packed: int) -> int:
    """A forge ``ptr << 32 | len`` result as a block offset; negative codes unchanged."""
    return packed if packed <= 0 else packed >> 32


def user_emit(subject: int, data: int) -> int:
    inst, _ = _inst()
    return host.host_emit(*_pair(inst, subject), *_pair(inst, data))


def user_kv_get(bucket: int, key: int) -> int:
    inst, _ = _inst()
    return _block_result(host.host_kv_get(*_pair(inst, bucket), *_pair(inst, key)))


def user_kv_put(bucket: int, key: int, value: int) -> int:
    inst, _ = _inst()
    return host.host_kv_put(*_pair(inst, bucket), *_pair(inst, key), *_pair(inst, value))


def user_call(plugin: int, fn: int, data: int) -> int:
    inst, _ = _inst()
    return _block_result(host.host_call(*_pair(inst, plugin), *_pair(inst, fn), *_pair(inst, data)))


USER_FUNCS: dict[str, Any] = {
    "emit": user_emit,
    "kv_get": user_kv_get,
    "kv_put": user_kv_put,
    "call": user_call,
}

assert set(ENV_FUNCS) == set(EXTISM_HOST_IMPORTS) and set(USER_FUNCS) == set(EXTISM_USER_IMPORTS)
