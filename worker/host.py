"""Host functions of the ``forge`` module, and the per-call state they work on.

Host functions run on the guest's thread, inside a guest call. Every pointer
and length is bounds-checked; every grant is checked at call time (a revoked
grant takes effect on the next host call); and any host function that waits
(kv, call) waits at most the call's remaining deadline, since epoch
interruption cannot stop time spent in the host. Fire-and-forget ones
(log, emit) never wait on the bus.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import wasmtime

from schemas.abi import (
    HOST_DENIED,
    HOST_FAILED,
    HOST_NOT_FOUND,
    HOST_TIMEOUT,
    HOST_TOO_LARGE,
)
from schemas.errors import Denied, ForgeError, Timeout, Trap
from schemas.messages import (
    HEADER_TRACEPARENT,
    MAX_CALL_DEPTH,
)
from schemas.policy import Permission, covers, parse_permission, subject_matches
from schemas.subjects import TOKEN_RE

from .guest import GuestMemory, GuestTrap, RawFunc
from .host_bridge import HostBridge

T = TypeVar("T")

MAX_LOG_LINES = 256
MAX_LOG_LINE = 16 * 1024
MAX_ERROR = 8192
MAX_SUBJECT = 256
MAX_EMIT = 1024 * 1024
MAX_EMIT_PER_CALL = 8 * 1024 * 1024
MAX_KV_VALUE = 1024 * 1024
MAX_KEY = 256
MAX_CALL_IO = 8 * 1024 * 1024
MAX_RANDOM = 64 * 1024
KV_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_/=.")


class Grants:
    """The permissions a plugin version holds right now; swapped when the policy changes."""

    def __init__(self, permissions: list[str]) -> None:
        self._perms: tuple[Permission, ...] = tuple(parse_permission(p) for p in permissions)

    def replace(self, permissions: list[str]) -> None:
        self._perms = tuple(parse_permission(p) for p in permissions)  # atomic swap

    def has(self, request: Permission) -> bool:
        return any(covers(g, request) for g in self._perms)

    def may_publish(self, subject: str) -> bool:
        return any(p.kind == "publish" and subject_matches(p.arg, subject) for p in self._perms)

    def granted(self, kind: str) -> list[Permission]:
        return [p for p in self._perms if p.kind == kind]


@dataclass(slots=True)
class HostEnv:
    """What host functions know about the plugin version they serve."""

    plugin: str
    version: str
    grants: Grants
    config: dict[str, str] = field(default_factory=dict)
    bridge: HostBridge | None = None


@dataclass(slots=True)
class CallMeta:
    """Per-call facts the host needs: the deadline, nesting depth and trace context."""

    deadline: float = 0.0
    """time.monotonic() value; 0 means none (lifecycle hooks use their own)."""
    depth: int = 0
    traceparent: str | None = None
    event_subject: str | None = None
    """The subject of the event a trigger is handling (None outside triggers)."""
    event_headers: dict[str, str] | None = None
    """That event's headers."""

    def until(self, deadline: float) -> CallMeta:
        """The same call with another deadline (``dataclasses.replace``, without its cost)."""
        return CallMeta(
            deadline, self.depth, self.traceparent, self.event_subject, self.event_headers
        )


class CallState:
    """Everything host functions may touch during one guest call."""

    __slots__ = ("alloc", "emitted", "env", "error", "fault", "logs", "memory", "meta", "rejected")

    def __init__(
        self, env: HostEnv, memory: GuestMemory | None, alloc: RawFunc | None, meta: CallMeta
    ) -> None:
        self.env = env
        self.memory = memory
        self.alloc = alloc
        self.meta = meta
        self.error: str | None = None
        self.rejected = False
        self.fault: ForgeError | None = None
        self.logs: list[tuple[int, str]] = []
        self.emitted = 0
        """Bytes emitted so far in this call (capped: emit is fire-and-forget, not free)."""


_current = threading.local()


def enter(state: CallState) -> None:
    _current.state = state


def leave() -> None:
    _current.state = None


def _state() -> CallState:
    st: CallState | None = getattr(_current, "state", None)
    if st is None:
        raise RuntimeError("host function called outside a guest call")
    return st


def _fail(st: CallState, err: ForgeError) -> ForgeError:
    """Record why the call fails; raising it from a host function traps the guest."""
    st.fault = err
    return err


def _read(st: CallState, ptr: int, length: int, what: str, cap: int | None = None) -> bytes:
    if st.memory is None:
        raise _fail(st, Trap(f"{what} called before memory was exported"))
    try:
        return st.memory.read(ptr & 0xFFFFFFFF, length & 0xFFFFFFFF, what, cap)
    except ForgeError as e:
        raise _fail(st, e) from None


def _text(st: CallState, ptr: int, length: int, what: str, cap: int) -> str:
    if length & 0xFFFFFFFF > cap:
        raise _fail(st, Trap(f"{what}: {length & 0xFFFFFFFF} bytes is over the {cap} byte cap"))
    try:
        return _read(st, ptr, length, what).decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(st, Trap(f"{what}: not UTF-8")) from None


def _give(st: CallState, data: bytes, what: str) -> int:
    """Copy ``data`` into a block from the guest's ``alloc``; return ``ptr << 32 | len``."""
    if not data:
        return 0
    if st.alloc is None or st.memory is None:
        raise _fail(st, Trap(f"{what}: guest has no allocator yet"))
    try:
        ptr = st.alloc.call_i_i(len(data)) & 0xFFFFFFFF
    except GuestTrap as e:  # the deadline (or a fault) struck inside the guest's alloc
        cause: ForgeError = (
            Timeout("deadline reached in the guest's alloc")
            if (e.code == wasmtime.TrapCode.INTERRUPT)
            else Trap(f"{what}: alloc trapped: {e}")
        )
        raise _fail(st, cause) from None
    if ptr == 0:
        return HOST_TOO_LARGE
    try:
        st.memory.write(ptr, data, f"{what} result block")
    except ForgeError as e:
        raise _fail(st, e) from None
    return (ptr << 32) | len(data)


def _require(st: CallState, request: str) -> None:
    if not st.env.grants.has(parse_permission(request)):
        raise _fail(st, Denied(f"{st.env.plugin}: host call needs the {request!r} grant"))


def _remaining(st: CallState) -> float:
    return st.meta.deadline - time.monotonic() if st.meta.deadline else 5.0


# --- the functions -------------------------------------------------------------------
def host_log(level: int, ptr: int, length: int) -> None:
    st = _state()
    _require(st, "log")
    data = _read(st, ptr, length, "forge.log", MAX_LOG_LINE)
    if len(st.logs) < MAX_LOG_LINES:
        st.logs.append((level if 0 <= level <= 3 else 1, data.decode("utf-8", "replace")))


def host_set_error(ptr: int, length: int) -> None:
    st = _state()
    st.error = _read(st, ptr, length, "forge.set_error", MAX_ERROR).decode("utf-8", "replace")


def host_reject(ptr: int, length: int) -> None:
    """Like set_error, but the input is bad for good: never retry it."""
    host_set_error(ptr, length)
    _state().rejected = True


def host_now() -> int:
    _require(_state(), "clock")
    return time.time_ns()


def host_random(ptr: int, length: int) -> int:
    st = _state()
    _require(st, "random")
    n = length & 0xFFFFFFFF
    if n > MAX_RANDOM:
        return HOST_TOO_LARGE
    _read(st, ptr, n, "forge.random")  # bounds check the whole target first
    assert st.memory is not None
    st.memory.write(ptr & 0xFFFFFFFF, os.urandom(n), "forge.random")
    return 0


def host_config_get(ptr: int, length: int) -> int:
    st = _state()
    _require(st, "config")
    key = _text(st, ptr, length, "forge.config_get key", MAX_KEY)
    value = st.env.config.get(key)
    if value is None:
        return HOST_NOT_FOUND
    return _give(st, value.encode(), "forge.config_get")


def host_emit(sp: int, sl: int, dp: int, dl: int) -> int:
    st = _state()
    subject = _text(st, sp, sl, "forge.emit subject", MAX_SUBJECT)
    tokens = subject.split(".")
    if not subject or any(
        not t or t in ("*", ">") or not t.isprintable() or " " in t for t in tokens
    ):
        raise _fail(st, Trap(f"forge.emit: {subject[:64]!r} is not a literal subject"))
    if not st.env.grants.may_publish(subject):
        raise _fail(
            st, Denied(f"{st.env.plugin}: emit to {subject!r} needs a 'publish:' grant covering it")
        )
    if dl & 0xFFFFFFFF > MAX_EMIT or st.emitted + (dl & 0xFFFFFFFF) > MAX_EMIT_PER_CALL:
        return HOST_TOO_LARGE
    data = _read(st, dp, dl, "forge.emit data")
    bridge = st.env.bridge
    if bridge is None:
        return HOST_FAILED
    headers = {"Forge-Plugin": st.env.plugin, "Forge-Version": st.env.version}
    if st.meta.traceparent:
        headers[HEADER_TRACEPARENT] = st.meta.traceparent
    st.emitted += len(data) + len(subject)
    bridge.publish(subject, data, headers)
    return 0


def _kv_args(st: CallState, bp: int, bl: int, kp: int, kl: int, what: str) -> tuple[str, str]:
    bucket = _text(st, bp, bl, f"{what} bucket", 64)
    key = _text(st, kp, kl, f"{what} key", MAX_KEY)
    if not TOKEN_RE.fullmatch(bucket):
        raise _fail(st, Trap(f"{what}: {bucket!r} is not a bucket name"))
    _require(st, f"kv:{bucket}")
    if not key or not set(key) <= KV_KEY_CHARS or key.startswith(".") or key.endswith("."):
        raise _fail(st, Trap(f"{what}: {key[:64]!r} is not a valid key"))
    return bucket, key


def host_kv_get(bp: int, bl: int, kp: int, kl: int) -> int:
    st = _state()
    bucket, key = _kv_args(st, bp, bl, kp, kl, "forge.kv_get")
    bridge = st.env.bridge
    if bridge is None:
        return HOST_FAILED
    remaining = _remaining(st)
    if remaining <= 0:
        return HOST_TIMEOUT
    try:
        value = bridge.kv_get(bucket, key, remaining)
    except TimeoutError:
        return HOST_TIMEOUT
    except Exception:
        return HOST_FAILED
    if value is None:
        return HOST_NOT_FOUND
    return _give(st, value, "forge.kv_get")


def host_kv_put(bp: int, bl: int, kp: int, kl: int, vp: int, vl: int) -> int:
    st = _state()
    bucket, key = _kv_args(st, bp, bl, kp, kl, "forge.kv_put")
    if vl & 0xFFFFFFFF > MAX_KV_VALUE:
        return HOST_TOO_LARGE
    value = _read(st, vp, vl, "forge.kv_put value")
    bridge = st.env.bridge
    if bridge is None:
        return HOST_FAILED
    remaining = _remaining(st)
    if remaining <= 0:
        return HOST_TIMEOUT
    try:
        bridge.kv_put(bucket, key, value, remaining)
    except TimeoutError:
        return HOST_TIMEOUT
    except Exception:
        return HOST_FAILED
    return 0


def host_call(pp: int, pl: int, fp: int, fl: int, ip: int, il: int) -> int:
    st = _state()
    plugin = _text(st, pp, pl, "forge.call plugin", 64)
    fn = _text(st, fp, fl, "forge.call function", 64)
    if not TOKEN_RE.fullmatch(plugin) or not TOKEN_RE.fullmatch(fn):
        raise _fail(st, Trap(f"forge.call: {plugin[:64]!r}.{fn[:64]!r} is not a function name"))
    _require(st, f"call:{plugin}")
    if st.meta.depth + 1 > MAX_CALL_DEPTH:
        raise _fail(st, Denied(f"forge.call: nesting deeper than {MAX_CALL_DEPTH} calls"))
    if il & 0xFFFFFFFF > MAX_CALL_IO:
        return HOST_TOO_LARGE
    data = _read(st, ip, il, "forge.call input")
    bridge = st.env.bridge
    if bridge is None:
        return HOST_FAILED
    remaining = _remaining(st)
    if remaining <= 0.002:
        return HOST_TIMEOUT
    try:
        result = bridge.call(plugin, fn, data, remaining, st.meta.depth + 1, st.meta.traceparent)
    except TimeoutError:
        return HOST_TIMEOUT
    except Exception:  # bus trouble or a malformed reply: the guest decides what to do
        return HOST_FAILED
    if not result.ok:
        code = result.error.code.value if result.error else "INTERNAL"
        return {
            "PLUGIN_NOT_FOUND": HOST_NOT_FOUND,
            "FUNCTION_NOT_FOUND": HOST_NOT_FOUND,
            "NO_WORKERS": HOST_NOT_FOUND,
            "DENIED": HOST_DENIED,
            "TIMEOUT": HOST_TIMEOUT,
        }.get(code, HOST_FAILED)
    return _give(st, result.output, "forge.call")


def host_event_subject() -> int:
    """The subject of the event being handled (a trigger), as a block from ``alloc``."""
    st = _state()
    if st.meta.event_subject is None:
        return HOST_NOT_FOUND
    return _give(st, st.meta.event_subject.encode(), "forge.event_subject")


def host_event_header(ptr: int, length: int) -> int:
    """One header of the event being handled, as a block from ``alloc``."""
    st = _state()
    name = _text(st, ptr, length, "forge.event_header name", MAX_KEY)
    headers = st.meta.event_headers
    value = None if headers is None else headers.get(name)
    if value is None:
        return HOST_NOT_FOUND
    return _give(st, value.encode(), "forge.event_header")


HOST_FUNCS: dict[str, Callable[..., Any]] = {
    "log": host_log,
    "set_error": host_set_error,
    "reject": host_reject,
    "now": host_now,
    "random": host_random,
    "config_get": host_config_get,
    "emit": host_emit,
    "kv_get": host_kv_get,
    "kv_put": host_kv_put,
    "call": host_call,
    "event_subject": host_event_subject,
    "event_header": host_event_header,
}
