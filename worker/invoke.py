"""The fast path: serve ``<prefix>.invoke.<plugin>.<fn>`` requests in a queue group."""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas.codec import DecodeError, decode, encode
from schemas.errors import (
    BadRequest,
    Denied,
    ForgeError,
    InternalError,
    PluginNotFound,
)
from schemas.messages import (
    HEADER_DEPTH,
    HEADER_TIMEOUT_MS,
    HEADER_TRACEPARENT,
    HEADER_VERSION,
    MAX_CALL_DEPTH,
    CallResult,
    InvokeRequest,
)
from schemas.subjects import INVOKE_QUEUE, Subjects

from . import metrics
from .executor import Executor
from .hosted import HostedPlugin
from .runtime import WorkerCaps
from .syscalls import SyscallBus
from .tracing import Tracing

log = logging.getLogger("forge.worker.invoke")

#: Invoke subjects whose parse is remembered (cleared when full).
PARSED_CACHE = 4096
#: Messages a subscription may buffer before the server sees us as slow.
PENDING_MSGS = 65536


class InvokeServer:
    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        hosted: dict[str, HostedPlugin],
        executor: Executor,
        syscalls: SyscallBus,
        worker_id: str,
        caps: WorkerCaps,
        tracing: Tracing | None = None,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.hosted = hosted
        self.executor = executor
        self.syscalls = syscalls
        self.worker_id = worker_id
        self.caps = caps
        self._subs: dict[str, Subscription] = {}
        self._tasks: set[asyncio.Task[CallResult]] = set()
        self._inline_subjects: dict[str, bool] = {}
        self._parsed: dict[str, tuple[str, str]] = {}
        self.calls_total = 0
        self.errors_total = 0
        if tracing is not None:  # spans are off by default, and then cost nothing per call
            self._serve = tracing.invoke(self._serve)  # type: ignore[method-assign,assignment]

    async def start(self, plugin: str) -> None:
        """Join the plugin's queue group."""
        if plugin not in self._subs:
            self._subs[plugin] = await self.nc.subscribe(
                self.subjects.invoke_plugin(plugin),
                queue=INVOKE_QUEUE,
                cb=self._on_msg,
                pending_msgs_limit=PENDING_MSGS,
                pending_bytes_limit=512 * 1024 * 1024,
            )

    async def stop(self, plugin: str) -> None:
        """Leave the plugin's queue group, serving the calls already routed here."""
        sub = self._subs.pop(plugin, None)
        if sub is not None:
            try:
                await sub.drain()  # type: ignore[no-untyped-call]
            except Exception as e:  # the connection is closing: nothing more will come
                log.warning("event=drain_failed plugin=%s error=%r", plugin, e)

    async def stop_all(self, timeout_s: float) -> None:
        """Leave every queue group, then let in-flight calls finish (bounded)."""
        for plugin in list(self._subs):
            await self.stop(plugin)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout_s)

    async def _on_msg(self, msg: Msg) -> None:
        # A subject whose last call ran inline is served right here: no task, no hand-off
        # (the call does not suspend). Anything else gets a task so calls overlap.
        if self._inline_subjects.get(msg.subject):
            await self._serve(msg)
            return
        task = asyncio.create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, msg: Msg) -> CallResult:
        started = time.perf_counter()
        plugin = fn = version = ""
        logs: list[tuple[int, str]] = []
        try:
            parsed = self._parsed.get(msg.subject)
            if parsed is None:
                parsed = self.subjects.parse_invoke(msg.subject)
                if len(self._parsed) >= PARSED_CACHE:  # subjects come from callers: bound it
                    self._parsed.clear()
                self._parsed[msg.subject] = parsed
            plugin, fn = parsed
            result, logs = await self._call(msg, plugin, fn)
            version = result.version
        except ForgeError as e:
            result = CallResult.failure(e, plugin=plugin, fn=fn, worker=self.worker_id)
        except Exception as e:
            log.exception("event=invoke_failed plugin=%s fn=%s", plugin, fn)
            result = CallResult.failure(
                InternalError(f"{type(e).__name__}: {e}"),
                plugin=plugin,
                fn=fn,
                worker=self.worker_id,
            )
        outcome = "ok" if result.ok else (result.error.code.value if result.error else "error")
        self.calls_total += 1
        if not result.ok:
            self.errors_total += 1
            if result.error and result.error.code.value == "BAD_REQUEST":
                metrics.BAD_MESSAGES.labels("invoke").inc()
        series = metrics.CALLS.series(plugin, fn)
        series.count(version, outcome)
        series.seconds.observe(time.perf_counter() - started)
        if msg.reply:
            try:
                await msg.respond(encode(result))
            except Exception as e:  # the caller went away or the connection dropped
                log.warning("event=reply_failed plugin=%s fn=%s error=%s", plugin, fn, e)
        if logs:
            await self.syscalls.logs(
                plugin, version, fn, logs, (msg.headers or {}).get(HEADER_TRACEPARENT)
            )
        return result

    async def _call(
        self, msg: Msg, plugin: str, fn: str
    ) -> tuple[CallResult, list[tuple[int, str]]]:
        try:
            req = decode(InvokeRequest, msg.data)
        except DecodeError as e:
            raise BadRequest(f"invoke request: {e}") from None
        hosted = self.hosted.get(plugin)
        if hosted is None:
            raise PluginNotFound(f"plugin {plugin!r} is not deployed on this worker")
        headers = msg.headers or {}
        hv = hosted.pick(headers.get(HEADER_VERSION))
        hv.check(fn, len(req.input))
        meta = hv.meta(
            _header_int(headers, HEADER_TIMEOUT_MS, 1),
            _header_int(headers, HEADER_DEPTH, 0) or 0,
            headers.get(HEADER_TRACEPARENT),
        )
        if meta.depth > MAX_CALL_DEPTH:
            raise Denied(f"call nesting deeper than {MAX_CALL_DEPTH}")
        out = await hv.call(self.executor, fn, req.input, meta)
        if out.inline != self._inline_subjects.get(msg.subject):
            if len(self._inline_subjects) >= PARSED_CACHE:
                self._inline_subjects.clear()
            self._inline_subjects[msg.subject] = out.inline
        if out.created_instance:
            metrics.INSTANCES_CREATED.labels(plugin, hv.version).inc()
        if out.discarded:
            metrics.INSTANCES_DISCARDED.labels(plugin, hv.version).inc()
        if out.error is not None:
            return CallResult.failure(
                out.error, plugin=plugin, fn=fn, version=hv.version, worker=self.worker_id
            ), out.logs
        inv = out.invocation
        assert inv is not None
        metrics.CALLS.series(plugin, fn).guest.observe(inv.duration_us / 1e6)
        return CallResult(
            ok=True,
            output=inv.output,
            duration_us=inv.duration_us,
            fuel_used=inv.fuel_used,
            plugin=plugin,
            fn=fn,
            version=hv.version,
            worker=self.worker_id,
        ), out.logs


def _header_int(headers: dict[str, str], name: str, minimum: int) -> int | None:
    raw = headers.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} header {raw[:32]!r} is not an integer") from None
    if value < minimum:
        raise BadRequest(f"{name} must be at least {minimum}")
    return value
