"""Low-level access to a guest: direct calls through the wasmtime C API and checked memory I/O.

wasmtime-py's ``Func.__call__`` re-reads the function type and converts every
value on each call (tens of microseconds). The ABIs use a handful of fixed
integer signatures, checked at deploy, so each export gets one raw value
buffer and is called through ``wasmtime_func_call_unchecked`` with plain
addresses: our own ctypes prototypes take ``c_void_p`` arguments, so a call
converts a few Python ints and nothing else. ctypes releases the GIL for the
duration of a foreign call, so guests on different threads run in parallel.
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, c_size_t, c_uint64, c_void_p
from typing import Any

import wasmtime
from wasmtime import _bindings as b
from wasmtime import _ffi

from schemas.errors import ForgeError, Timeout
from schemas.errors import Trap as TrapError


def _c(name: str, restype: object, *argtypes: object) -> Any:
    """A fresh prototype for a wasmtime C function (wasmtime-py's own stays untouched)."""
    return ctypes.CFUNCTYPE(restype, *argtypes)((name, _ffi.dll))  # type: ignore[arg-type]


#: wasmtime_func_call_unchecked(context, func, values, count, trap out) -> error: the raw call.
c_func_call = _c(
    "wasmtime_func_call_unchecked", c_void_p, c_void_p, c_void_p, c_void_p, c_size_t, c_void_p
)
_memory_data = _c("wasmtime_memory_data", c_void_p, c_void_p, c_void_p)
_memory_size = _c("wasmtime_memory_data_size", c_size_t, c_void_p, c_void_p)
#: wasmtime_context_set_epoch_deadline(context, ticks from now).
c_set_epoch_deadline = _c("wasmtime_context_set_epoch_deadline", None, c_void_p, c_uint64)


def context_address(store: wasmtime.Store) -> int:
    """The address of ``store``'s context, what the ``c_*`` functions take."""
    return _addr(store._context())


def _addr(obj: object) -> int:
    """The address a ctypes pointer holds."""
    return ctypes.cast(obj, c_void_p).value or 0  # type: ignore[arg-type]


def functype(params: tuple[str, ...], results: tuple[str, ...]) -> wasmtime.FuncType:
    """A wasmtime FuncType from the ABI tables' type names (i32, i64)."""
    vt = {"i32": wasmtime.ValType.i32(), "i64": wasmtime.ValType.i64()}
    return wasmtime.FuncType([vt[p] for p in params], [vt[r] for r in results])


class GuestTrap(Exception):
    """A call into the guest ended in a trap or engine error."""

    def __init__(self, message: str, code: wasmtime.TrapCode | None) -> None:
        super().__init__(message)
        self.code = code


def raise_trap(err: int | None, trap: int | None) -> None:
    """Raise the GuestTrap for a failed ``c_func_call`` (its error, else its trap)."""
    if err:
        e = wasmtime.WasmtimeError._from_ptr(
            ctypes.cast(c_void_p(err), POINTER(b.wasmtime_error_t))
        )
        raise GuestTrap(str(e), None)
    t = wasmtime.Trap._from_ptr(ctypes.cast(c_void_p(trap), POINTER(b.wasm_trap_t)))
    raise GuestTrap(t.message, t.trap_code)


class RawFunc:
    """A guest export with a fixed integer signature (checked at deploy), called unchecked.

    The ``call_*`` methods name their signature (``ii_l``: two i32 in, i64 out) and skip
    the generic conversion loop; ``__call__`` handles any signature. ``ctx`` and ``fref``
    (the store context and function addresses) are for a hot path that makes its own
    ``c_func_call``s.
    """

    __slots__ = ("_func", "_kinds", "_n", "_result", "_store", "_trap", "_vals", "ctx", "fref")

    def __init__(
        self,
        store: wasmtime.Store,
        func: wasmtime.Func,
        params: tuple[str, ...],
        results: tuple[str, ...],
    ) -> None:
        self._store = store  # keeps the context alive
        self._func = func  # keeps the func struct alive for the address below
        self.ctx = context_address(store)
        self.fref = ctypes.addressof(func._func)
        self._n = max(1, len(params), len(results))
        self._vals = (b.wasmtime_val_raw_t * self._n)()
        self._trap = c_void_p()
        self._kinds = params
        self._result = results[0] if results else None

    def _run(self) -> None:
        """The C call on the prepared values; raises GuestTrap on a trap or engine error."""
        trap = self._trap
        trap.value = None
        err = c_func_call(self.ctx, self.fref, self._vals, self._n, ctypes.byref(trap))
        if err or trap.value:
            raise_trap(err, trap.value)

    def __call__(self, *args: int) -> int | None:
        vals = self._vals
        for i, (kind, a) in enumerate(zip(self._kinds, args, strict=True)):
            if kind == "i32":
                vals[i].i32 = a
            else:
                vals[i].i64 = a
        self._run()
        if self._result is None:
            return None
        return int(vals[0].i32 if self._result == "i32" else vals[0].i64)

    def call_ii_l(self, a: int, c: int) -> int:
        """``(i32, i32) -> i64``: a forge/1 handler."""
        vals = self._vals
        vals[0].i32 = a
        vals[1].i32 = c
        self._run()
        return int(vals[0].i64)

    def call_ii(self, a: int, c: int) -> None:
        """``(i32, i32) -> ()``: forge/1 ``dealloc``."""
        vals = self._vals
        vals[0].i32 = a
        vals[1].i32 = c
        self._run()

    def call_i_i(self, a: int) -> int:
        """``(i32) -> i32``: forge/1 ``alloc``."""
        vals = self._vals
        vals[0].i32 = a
        self._run()
        return int(vals[0].i32)

    def call_l_l(self, a: int) -> int:
        """``(i64) -> i64``: the extism/1 kernel's begin, alloc and length."""
        vals = self._vals
        vals[0].i64 = a
        self._run()
        return int(vals[0].i64)

    def call_v_i(self) -> int:
        """``() -> i32`` (or ``() -> ()``, read as 0): an extism/1 handler."""
        vals = self._vals
        vals[0].i64 = 0
        self._run()
        return int(vals[0].i32) if self._result else 0


class GuestMemory:
    """Bounds-checked reads and writes of a guest's linear memory.

    The base address and size are cached. Linear memory never shrinks, so a range
    inside the size seen last needs no query; and engines are made with
    ``memory_may_move`` off (worker/engine.py), so the base seen last still holds. Only
    a range beyond the cached size asks wasmtime again (the guest may have grown).
    """

    __slots__ = ("_base_addr", "_base_size", "_ctx", "_mem", "_mref", "_store")

    def __init__(self, store: wasmtime.Store, memory: wasmtime.Memory) -> None:
        self._store = store
        self._mem = memory
        self._ctx = context_address(store)
        self._mref = ctypes.addressof(memory._memory)
        self._base_size = -1
        self._base_addr = 0

    def size(self) -> int:
        return int(_memory_size(self._ctx, self._mref))

    def address(self) -> tuple[int, int]:
        """(base address, size in bytes) of the memory now."""
        size = _memory_size(self._ctx, self._mref)
        if size != self._base_size:
            self._base_addr = _memory_data(self._ctx, self._mref) or 0
            self._base_size = size
        return self._base_addr, size

    def at(self, ptr: int, length: int, what: str) -> int:
        """The address of ``[ptr, ptr+length)``, checked to lie inside the memory."""
        end = ptr + length
        if ptr < 0 or length < 0 or end > self._base_size:
            if ptr < 0 or length < 0 or ptr > 0xFFFFFFFF or length > 0xFFFFFFFF:
                raise TrapError(f"{what}: pointer {ptr} / length {length} out of range")
            size = self.address()[1]
            if end > size:
                raise TrapError(f"{what}: [{ptr}, {end}) is outside memory of {size} bytes")
        return self._base_addr + ptr

    def read(self, ptr: int, length: int, what: str = "read", cap: int | None = None) -> bytes:
        """Bytes at ``[ptr, ptr+length)``, checked whole; at most ``cap`` of them returned."""
        if length == 0:
            return b""
        at = self.at(ptr, length, what)
        return ctypes.string_at(at, length if cap is None else min(length, cap))

    def write(self, ptr: int, data: bytes, what: str = "write") -> None:
        if data:
            ctypes.memmove(self.at(ptr, len(data), what), data, len(data))


#: Bytes in a WebAssembly page (the unit memories grow by).
WASM_PAGE = 65536
#: Deadline for instantiation plus a guest's start-up exports, and for its shutdown.
LIFECYCLE_TIMEOUT_S = 5.0


def engine_fault(e: GuestTrap, fuel: int | None) -> ForgeError | None:
    """The typed error for a trap the engine itself raised (deadline, fuel, stack), or
    None when the guest trapped on its own (each ABI looks closer at those)."""
    if e.code == wasmtime.TrapCode.INTERRUPT:
        return Timeout("deadline reached while the guest was running")
    if e.code == wasmtime.TrapCode.OUT_OF_FUEL:
        return Timeout(f"fuel budget of {fuel} exhausted")
    if e.code == wasmtime.TrapCode.STACK_OVERFLOW:
        return TrapError("stack overflow")
    return None


def trap_cause(message: str) -> str:
    """wasmtime messages carry a backtrace; callers get the cause."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("wasm trap:"):
            return ln
    return lines[-1] if lines else message
