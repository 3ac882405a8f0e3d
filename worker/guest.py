"""Low-level access to a guest: direct calls through the wasmtime C API and checked memory I/O.

wasmtime-py's ``Func.__call__`` re-reads the function type and converts every
value on each call (tens of microseconds). The ABIs use a handful of fixed
integer signatures, checked at deploy, so we keep one raw value buffer per
function and call ``wasmtime_func_call_unchecked`` on it directly. ctypes
releases the GIL for the duration of the call, so guests on different
threads run in parallel.
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, byref

import wasmtime
from wasmtime import _bindings as b

from schemas.errors import Trap as TrapError

_call_unchecked = b._wasmtime_func_call_unchecked
_memory_data = b._wasmtime_memory_data
_memory_size = b._wasmtime_memory_data_size
_set_epoch_deadline = b._wasmtime_context_set_epoch_deadline
_TrapPtr = POINTER(b.wasm_trap_t)
_void_p = ctypes.c_void_p


def functype(params: tuple[str, ...], results: tuple[str, ...]) -> wasmtime.FuncType:
    """A wasmtime FuncType from the ABI tables' type names (i32, i64)."""
    vt = {"i32": wasmtime.ValType.i32(), "i64": wasmtime.ValType.i64()}
    return wasmtime.FuncType([vt[p] for p in params], [vt[r] for r in results])


class GuestTrap(Exception):
    """A call into the guest ended in a trap or engine error."""

    def __init__(self, message: str, code: wasmtime.TrapCode | None) -> None:
        super().__init__(message)
        self.code = code


def _raise(err: object, trap: object) -> None:
    if err:
        e = wasmtime.WasmtimeError._from_ptr(err)  # type: ignore[arg-type]
        raise GuestTrap(str(e), None)
    t = wasmtime.Trap._from_ptr(trap)  # type: ignore[arg-type]
    raise GuestTrap(t.message, t.trap_code)


class RawFunc:
    """A guest export with a fixed integer signature (checked at deploy), called unchecked."""

    __slots__ = ("_ctx", "_fref", "_func", "_kinds", "_n", "_result", "_store", "_vals")

    def __init__(
        self,
        store: wasmtime.Store,
        func: wasmtime.Func,
        params: tuple[str, ...],
        results: tuple[str, ...],
    ) -> None:
        self._store = store  # keeps the context alive
        self._func = func  # keeps the func struct alive for the byref below
        self._ctx = store._context()
        self._fref = byref(func._func)
        self._n = max(1, len(params), len(results))
        self._vals = (b.wasmtime_val_raw_t * self._n)()
        self._kinds = params
        self._result = results[0] if results else None

    def __call__(self, *args: int) -> int | None:
        vals = self._vals
        for i, (kind, a) in enumerate(zip(self._kinds, args, strict=True)):
            if kind == "i32":
                vals[i].i32 = a
            else:
                vals[i].i64 = a
        trap = _TrapPtr()
        err = _call_unchecked(self._ctx, self._fref, vals, self._n, byref(trap))
        if err or trap:
            _raise(err, trap)
        if self._result is None:
            return None
        return int(vals[0].i32 if self._result == "i32" else vals[0].i64)

    def call_ii_l(self, a: int, c: int) -> int:
        """``(i32, i32) -> i64``, the handler signature, without the generic loop."""
        vals = self._vals
        vals[0].i32 = a
        vals[1].i32 = c
        trap = _TrapPtr()
        err = _call_unchecked(self._ctx, self._fref, vals, 2, byref(trap))
        if err or trap:
            _raise(err, trap)
        return int(vals[0].i64)

    def call_i_i(self, a: int) -> int:
        """``(i32) -> i32``, the allocator signature."""
        vals = self._vals
        vals[0].i32 = a
        trap = _TrapPtr()
        err = _call_unchecked(self._ctx, self._fref, vals, self._n, byref(trap))
        if err or trap:
            _raise(err, trap)
        return int(vals[0].i32)


def set_epoch_deadline(store: wasmtime.Store, ticks: int) -> None:
    _set_epoch_deadline(store._context(), ticks)


class GuestMemory:
    """Bounds-checked reads and writes of a guest's linear memory."""

    __slots__ = ("_ctx", "_mem", "_mref", "_store")

    def __init__(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        self._store = store
        self._mem = memory
        self._ctx = store._context()
        self._mref = byref(memory._memory)

    def size(self) -> int:
        return int(_memory_size(self._ctx, self._mref))

    def _base(self, ptr: int, length: int, what: str) -> int:
        if ptr < 0 or length < 0 or ptr > 0xFFFFFFFF or length > 0xFFFFFFFF:
            raise TrapError(f"{what}: pointer {ptr} / length {length} out of range")
        size = _memory_size(self._ctx, self._mref)
        if ptr + length > size:
            raise TrapError(f"{what}: [{ptr}, {ptr + length}) is outside memory of {size} bytes")
        base = ctypes.cast(_memory_data(self._ctx, self._mref), _void_p).value or 0
        return base + ptr

    def read(self, ptr: int, length: int, what: str = "read", cap: int | None = None) -> bytes:
        """Bytes at ``[ptr, ptr+length)``, checked whole; at most ``cap`` of them returned."""
        if length == 0:
            return b""
        base = self._base(ptr, length, what)
        return ctypes.string_at(base, length if cap is None else min(length, cap))

    def write(self, ptr: int, data: bytes, what: str = "write") -> None:
        if data:
            ctypes.memmove(self._base(ptr, len(data), what), data, len(data))
