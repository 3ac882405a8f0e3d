"""Low-level access to a guest: direct calls through the wasmtime C API and checked memory I/O.

wasmtime-py's ``Func.__call__`` re-reads the function type and converts every
value on each call; for the handful of fixed signatures the ABI uses we keep
the argument and result buffers and call ``wasmtime_func_call`` directly.
ctypes releases the GIL for the duration of the call, so guests on
different threads run in parallel.
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, byref

import wasmtime
from wasmtime import _ffi as ffi

from schemas.errors import Trap as TrapError

_KINDS = {"i32": ffi.WASMTIME_I32, "i64": ffi.WASMTIME_I64}


class GuestTrap(Exception):
    """A call into the guest ended in a trap or engine error."""

    def __init__(self, message: str, code: wasmtime.TrapCode | None) -> None:
        super().__init__(message)
        self.code = code


class RawFunc:
    """A guest export with a fixed integer signature, callable without per-call reflection."""

    __slots__ = ("_ctx", "_func", "_nparams", "_nresults", "_params", "_results", "_store")

    def __init__(
        self,
        store: wasmtime.Store,
        func: wasmtime.Func,
        params: tuple[str, ...],
        results: tuple[str, ...],
    ) -> None:
        self._store = store  # keeps the context alive
        self._ctx = store._context()
        self._func = func._func
        self._nparams = len(params)
        self._nresults = len(results)
        self._params = (ffi.wasmtime_val_t * max(1, len(params)))()
        self._results = (ffi.wasmtime_val_t * max(1, len(results)))()
        for i, p in enumerate(params):
            self._params[i].kind = _KINDS[p]
        for i, r in enumerate(results):
            self._results[i].kind = _KINDS[r]

    def __call__(self, *args: int) -> int | None:
        params = self._params
        for i, a in enumerate(args):
            if params[i].kind == ffi.WASMTIME_I32:
                params[i].of.i32 = a
            else:
                params[i].of.i64 = a
        trap = POINTER(ffi.wasm_trap_t)()
        err = ffi.wasmtime_func_call(
            self._ctx,
            byref(self._func),
            params,
            self._nparams,
            self._results,
            self._nresults,
            byref(trap),
        )
        if err:
            e = wasmtime.WasmtimeError._from_ptr(err)
            raise GuestTrap(str(e), None)
        if trap:
            t = wasmtime.Trap._from_ptr(trap)
            raise GuestTrap(t.message, t.trap_code)
        if not self._nresults:
            return None
        r = self._results[0]
        return int(r.of.i32 if r.kind == ffi.WASMTIME_I32 else r.of.i64)


class GuestMemory:
    """Bounds-checked reads and writes of a guest's linear memory."""

    __slots__ = ("_mem", "_store")

    def __init__(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        self._store = store
        self._mem = memory

    def size(self) -> int:
        return int(self._mem.data_len(self._store))

    def _base(self, ptr: int, length: int, what: str) -> int:
        if ptr < 0 or length < 0 or ptr > 0xFFFFFFFF or length > 0xFFFFFFFF:
            raise TrapError(f"{what}: pointer {ptr} / length {length} out of range")
        size = self.size()
        if ptr + length > size:
            raise TrapError(f"{what}: [{ptr}, {ptr + length}) is outside memory of {size} bytes")
        return ctypes.addressof(self._mem.data_ptr(self._store).contents) + ptr

    def read(self, ptr: int, length: int, what: str = "read", cap: int | None = None) -> bytes:
        """Bytes at ``[ptr, ptr+length)``, checked whole; at most ``cap`` of them returned."""
        if length == 0:
            return b""
        base = self._base(ptr, length, what)
        return ctypes.string_at(base, length if cap is None else min(length, cap))

    def write(self, ptr: int, data: bytes, what: str = "write") -> None:
        if data:
            ctypes.memmove(self._base(ptr, len(data), what), data, len(data))
