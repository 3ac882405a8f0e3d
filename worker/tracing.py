"""Spans for the calls a worker serves, exported with OpenTelemetry (off by default).

A call the worker serves (a fast-path invoke, a durable job, a trigger event)
becomes a span: the child of the caller's W3C ``traceparent`` (same trace id,
new span id), or the root of a new trace when none came. What the call passes
on (nested ``call``s, ``emit``s, trigger outputs and replies, log lines) carries
the span's own traceparent, so the tree stays right across workers.

Off by default: then the OpenTelemetry packages are not imported, nothing is
wrapped, and a traceparent passes through unchanged, so serving a call costs
nothing extra. On (``--otlp-endpoint``, or ``OTEL_EXPORTER_OTLP_ENDPOINT``), the
serving methods are wrapped once at start-up; ended spans go to the SDK's batch
span processor, which exports them over OTLP/HTTP on its own thread, so no call
waits on the collector. A traceparent that does not parse gets no span and
passes on unchanged (the call runs as usual), as does one whose sampled flag is
off.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from nats.aio.msg import Msg

from schemas.errors import ForgeError
from schemas.messages import HEADER_TRACEPARENT, CallResult, JobRequest

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

#: The service name spans carry unless OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES) names one.
SERVICE_NAME = "forgeone-worker"
#: Longest traceparent read; anything longer is not one (W3C version 00 is 55 characters).
MAX_TRACEPARENT = 256

# Span attributes.
KIND = "forge.kind"
"""``invoke``, ``job`` or ``trigger``."""
PLUGIN = "forge.plugin"
FN = "forge.fn"
VERSION = "forge.version"
WORKER = "forge.worker"
OUTCOME = "forge.outcome"
"""``ok`` or the error code (``TRAP``, ``TIMEOUT`` ...)."""
TRIGGER = "forge.trigger"
JOB_ID = "forge.job_id"
ERROR_TYPE = "error.type"
"""The error code again, under OpenTelemetry's own name."""


class TracingUnavailable(RuntimeError):
    """Tracing was asked for but the OpenTelemetry packages are not installed."""


class _Spec(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def plugin(self) -> str: ...
    @property
    def fn(self) -> str: ...


class _Bound(Protocol):
    """A trigger binding: what its spans need of it."""

    @property
    def spec(self) -> _Spec: ...


B = TypeVar("B", bound=_Bound)


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector: ``/v1/traces`` is added to a base URL."""
    url = endpoint.rstrip("/")
    return url if url.endswith("/v1/traces") else url + "/v1/traces"


class Tracing:
    """One worker's tracer: wraps its serving methods and exports what they record."""

    def __init__(
        self, worker_id: str, endpoint: str = "", exporter: SpanExporter | None = None
    ) -> None:
        """Export to the OTLP/HTTP collector at ``endpoint`` (a base URL such as
        ``http://collector:4318``), or to ``exporter``."""
        try:
            from opentelemetry.context import Context
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace import SpanKind, Status, StatusCode, get_current_span
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )

            if exporter is None:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                    OTLPSpanExporter,
                )

                exporter = OTLPSpanExporter(endpoint=traces_url(endpoint))
        except ImportError as e:
            raise TracingUnavailable(
                f"span export needs the OpenTelemetry SDK ({e.name} is missing): "
                "pip install 'forgeone[otel]'"
            ) from None
        self.worker_id = worker_id
        resource = Resource.create({"service.instance.id": worker_id})
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
        self._provider = TracerProvider(resource=resource)
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("forgeone.worker")
        self._extract = TraceContextTextMapPropagator().extract
        self._parent_of = get_current_span
        self._no_parent = Context()
        self._kinds = {
            "invoke": SpanKind.SERVER,
            "job": SpanKind.CONSUMER,
            "trigger": SpanKind.CONSUMER,
        }
        self._status = Status
        self._error = StatusCode.ERROR

    # --- the three ways a worker serves a call -------------------------------------------
    def invoke(
        self, serve: Callable[[Msg], Coroutine[Any, Any, CallResult]]
    ) -> Callable[[Msg], Coroutine[Any, Any, CallResult]]:
        """Wrap the fast path's per-request method: the request's traceparent header is
        replaced by the span's for everything the call does (the message is used once)."""

        async def traced(msg: Msg) -> CallResult:
            headers = msg.headers
            started = self.start("invoke", headers.get(HEADER_TRACEPARENT) if headers else None)
            if started is None:
                return await serve(msg)
            span, traceparent = started
            if headers is None:
                msg.headers = headers = {}
            headers[HEADER_TRACEPARENT] = traceparent
            try:
                result = await serve(msg)
            except BaseException as e:
                self.abort(span, e)
                raise
            self.end_result(span, "invoke", result)
            return result

        return traced

    def job(
        self, execute: Callable[[str, str, JobRequest, str | None], Coroutine[Any, Any, CallResult]]
    ) -> Callable[[str, str, JobRequest, str | None], Coroutine[Any, Any, CallResult]]:
        """Wrap one job attempt (plugin, fn, job, traceparent) -> its result."""

        async def traced(
            plugin: str, fn: str, job: JobRequest, traceparent: str | None
        ) -> CallResult:
            started = self.start("job", traceparent)
            if started is None:
                return await execute(plugin, fn, job, traceparent)
            span, child = started
            span.set_attribute(JOB_ID, job.job_id)
            try:
                result = await execute(plugin, fn, job, child)
            except BaseException as e:
                self.abort(span, e)
                raise
            self.end_result(span, "job", result)
            return result

        return traced

    def trigger(
        self, attempt: Callable[[B, Msg, int], Coroutine[Any, Any, ForgeError | None]]
    ) -> Callable[[B, Msg, int], Coroutine[Any, Any, ForgeError | None]]:
        """Wrap one attempt at a trigger event (binding, event, stream sequence) -> its
        error or None. The attempt sees a copy of the event whose traceparent is the
        span's (a retried event is a new span under the same parent)."""

        async def traced(b: B, msg: Msg, stream_seq: int) -> ForgeError | None:
            headers = msg.headers
            started = self.start("trigger", headers.get(HEADER_TRACEPARENT) if headers else None)
            if started is None:
                return await attempt(b, msg, stream_seq)
            span, traceparent = started
            spec = b.spec
            span.set_attribute(TRIGGER, spec.name)
            event = copy.copy(msg)
            event.headers = {**(headers or {}), HEADER_TRACEPARENT: traceparent}
            try:
                err = await attempt(b, event, stream_seq)
            except BaseException as e:
                self.abort(span, e)
                raise
            code, message = (err.code.value, err.message) if err else (None, None)
            self.end(span, "trigger", spec.plugin, spec.fn, "", code, message)
            return err

        return traced

    # --- spans ------------------------------------------------------------------------
    def start(self, kind: str, traceparent: str | None) -> tuple[Span, str] | None:
        """A started span of ``kind`` under ``traceparent`` (a new trace when there is
        none) and the traceparent to pass on; None when ``traceparent`` is unreadable
        or not sampled."""
        if not traceparent:
            context = self._no_parent
        else:
            if len(traceparent) > MAX_TRACEPARENT:
                return None
            context = self._extract({HEADER_TRACEPARENT: traceparent})
            parent = self._parent_of(context).get_span_context()
            if not parent.is_valid or not parent.trace_flags.sampled:
                return None
        span = self._tracer.start_span(
            kind,
            context=context,
            kind=self._kinds[kind],
            attributes={KIND: kind, WORKER: self.worker_id},
        )
        ctx = span.get_span_context()
        return span, f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"

    def end_result(self, span: Span, kind: str, result: CallResult) -> None:
        error = result.error
        code, message = (error.code.value, error.message) if error else (None, None)
        self.end(span, kind, result.plugin, result.fn, result.version, code, message)

    def end(
        self,
        span: Span,
        kind: str,
        plugin: str,
        fn: str,
        version: str,
        code: str | None,
        message: str | None,
    ) -> None:
        """Name the span after the function, record the outcome, and end it."""
        if plugin:
            span.update_name(f"{kind} {plugin}.{fn}")
        attrs = {PLUGIN: plugin, FN: fn, OUTCOME: code or "ok"}
        if version:
            attrs[VERSION] = version
        if code:
            attrs[ERROR_TYPE] = code
            span.set_status(self._status(self._error, f"{code}: {message or ''}"[:1024]))
        span.set_attributes(attrs)
        span.end()

    def abort(self, span: Span, e: BaseException) -> None:
        """End a span whose call raised (cancelled while stopping, or a bug)."""
        span.set_attribute(OUTCOME, type(e).__name__)
        span.set_status(self._status(self._error, type(e).__name__))
        span.end()

    # --- lifetime ---------------------------------------------------------------------
    def flush(self, timeout_s: float = 10.0) -> bool:
        """Export every ended span now (blocking; for tests and tools)."""
        return bool(self._provider.force_flush(int(timeout_s * 1000)))

    def shutdown(self) -> None:
        """Export what is left and stop the exporter thread (blocking: run it off the loop)."""
        self._provider.shutdown()
