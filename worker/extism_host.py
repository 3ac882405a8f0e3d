"""The host functions of Extism guests: ``extism:host/env`` (config, vars, logs, HTTP)
and ForgeOne's own ``extism:host/user`` (emit, kv, call), over the block memory of the
instance running on this thread (worker/abi_extism.py)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any, Protocol
from urllib.parse import urlsplit

from schemas.abi import EXTISM_HOST_IMPORTS, EXTISM_USER_IMPORTS
from schemas.errors import Denied, ForgeError, Timeout, Trap
from schemas.policy import Permission

from . import host
from .host import CallState
from .slots import released

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


class BlockInstance(Protocol):
    """What these functions use of the instance running the guest (abi_extism's
    ExtismInstance): its block memory and its per-instance state."""

    vars: dict[bytes, bytes]
    var_bytes: int
    http_status: int
    http_headers: bytes | None

    def length(self, offset: int) -> int: ...

    def take(self, offset: int, what: str, cap: int, truncate: bool) -> bytes: ...

    def put(self, data: bytes, what: str) -> int: ...


#: The instance whose guest is running on this thread (set around each guest call).
current = threading.local()


# --- host functions of extism:host/env ---------------------------------------------------
def _inst() -> tuple[BlockInstance, CallState]:
    inst: BlockInstance | None = getattr(current, "inst", None)
    if inst is None:
        raise RuntimeError("extism host function called outside a guest call")
    return inst, host._state()


def _take(
    inst: BlockInstance, st: CallState, offset: int, what: str, cap: int, truncate: bool = False
) -> bytes:
    """``inst.take``, with a failure recorded as the call's fault."""
    try:
        return inst.take(offset, what, cap, truncate)
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
def _pair(inst: BlockInstance, offset: int) -> tuple[int, int]:
    """A block as the (ptr, len) pair forge host functions read (from the block memory)."""
    offset &= 0xFFFFFFFFFFFFFFFF
    if not offset:
        return 0, 0
    return offset, inst.length(offset)


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
