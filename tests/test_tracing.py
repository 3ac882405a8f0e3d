"""Tracing: a span per call served, children of the caller's traceparent, exported over OTLP.

The unit tests drive worker.tracing with the SDK's in-memory exporter; the cluster
test runs a real worker with ``--otlp-endpoint`` pointing at an OTLP/HTTP receiver
served here, which decodes what arrives with the OpenTelemetry protobufs.
"""

from __future__ import annotations

import asyncio
import gzip
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from nats.aio.msg import Msg
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from schemas.codec import decode
from schemas.errors import Trap, Unavailable
from schemas.messages import HEADER_TRACEPARENT, CallResult, JobRequest, LogEvent
from schemas.subjects import Subjects
from schemas.triggers import SourceKind, TriggerSpec
from tests.cluster import REPO, Cluster, eventually
from worker import tracing as tracing_mod
from worker.invoke import InvokeServer
from worker.main import start_tracing
from worker.runtime import WorkerCaps
from worker.settings import parse_args
from worker.tracing import Tracing, TracingUnavailable, traces_url

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
CALLER = f"00-{TRACE}-{PARENT}-01"

BAD_TRACEPARENTS = [
    "garbage",
    "00-xyz",
    f"00-{TRACE.upper()}-{PARENT}-01",  # upper case hex
    f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
    f"00-{TRACE}-{'0' * 16}-01",  # all-zero span id
    f"ff-{TRACE}-{PARENT}-01",  # the forbidden version
    f"00-{TRACE}-{PARENT}-01-more",  # version 00 has nothing after the flags
    f"00-{TRACE[:-1]}-{PARENT}-01",  # short trace id
    f"00-{TRACE}-{PARENT}-1",  # short flags
    f"00_{TRACE}_{PARENT}_01",
    f"00-{TRACE}-{PARENT}-01" + "x" * 10_000,
    "00-é" + "0" * 60,
]


# --- unit tests: worker.tracing with the in-memory exporter ------------------------------


def traced() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Tracing("w1", exporter=exporter), exporter


def finished(tracing: Tracing, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    assert tracing.flush()
    return list(exporter.get_finished_spans())


def request(headers: dict[str, str] | None) -> Msg:
    return Msg(_client=None, subject="forge.invoke.echo.upper", reply="", data=b"", headers=headers)  # type: ignore[arg-type]


def ok_result() -> CallResult:
    return CallResult(ok=True, plugin="echo", fn="upper", version="1.0.0", worker="w1")


def header_of(span: ReadableSpan) -> str:
    assert span.context is not None
    ctx = span.context
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}"


async def test_a_call_is_a_child_of_the_callers_span_and_passes_its_own_on() -> None:
    tracing, exporter = traced()
    seen: list[str] = []

    async def serve(msg: Msg) -> CallResult:
        seen.append((msg.headers or {})[HEADER_TRACEPARENT])
        return ok_result()

    assert (await tracing.invoke(serve)(request({HEADER_TRACEPARENT: CALLER}))).ok
    (span,) = finished(tracing, exporter)
    assert span.context is not None and span.parent is not None
    assert f"{span.context.trace_id:032x}" == TRACE  # the same trace
    assert f"{span.parent.span_id:016x}" == PARENT  # under the caller's span
    assert f"{span.context.span_id:016x}" != PARENT  # a span of its own
    assert seen == [header_of(span)]  # what the call passes on is the worker's span
    assert span.name == "invoke echo.upper" and span.kind is SpanKind.SERVER
    assert span.attributes == {
        "forge.kind": "invoke",
        "forge.worker": "w1",
        "forge.plugin": "echo",
        "forge.fn": "upper",
        "forge.version": "1.0.0",
        "forge.outcome": "ok",
    }
    assert span.status.status_code is StatusCode.UNSET


async def test_no_traceparent_starts_a_trace_and_failures_are_errors() -> None:
    tracing, exporter = traced()
    seen: list[str] = []

    async def serve(msg: Msg) -> CallResult:
        seen.append((msg.headers or {})[HEADER_TRACEPARENT])
        return CallResult.failure(Trap("unreachable"), plugin="echo", fn="upper", worker="w1")

    for headers in (None, {}, {HEADER_TRACEPARENT: ""}):
        assert not (await tracing.invoke(serve)(request(headers))).ok
    spans = finished(tracing, exporter)
    assert len(spans) == 3 and len({s.context.trace_id for s in spans if s.context}) == 3
    for span, header in zip(spans, seen, strict=True):
        assert span.parent is None and header == header_of(span)
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "TRAP: unreachable"
        assert span.attributes is not None
        assert span.attributes["forge.outcome"] == span.attributes["error.type"] == "TRAP"


@pytest.mark.parametrize("bad", BAD_TRACEPARENTS)
async def test_an_unreadable_traceparent_gets_no_span_and_passes_through(bad: str) -> None:
    tracing, exporter = traced()
    seen: list[dict[str, str] | None] = []

    async def serve(msg: Msg) -> CallResult:
        seen.append(msg.headers)
        return ok_result()

    assert (await tracing.invoke(serve)(request({HEADER_TRACEPARENT: bad}))).ok
    assert seen == [{HEADER_TRACEPARENT: bad}]
    assert finished(tracing, exporter) == []


async def test_a_parent_that_is_not_sampled_gets_no_span() -> None:
    tracing, exporter = traced()
    unsampled = f"00-{TRACE}-{PARENT}-00"
    seen: list[str | None] = []

    async def execute(plugin: str, fn: str, job: JobRequest, tp: str | None) -> CallResult:
        seen.append(tp)
        return ok_result()

    await tracing.job(execute)("echo", "upper", JobRequest("j1"), unsampled)
    assert seen == [unsampled] and finished(tracing, exporter) == []


async def test_job_spans() -> None:
    tracing, exporter = traced()
    seen: list[str | None] = []

    async def execute(plugin: str, fn: str, job: JobRequest, tp: str | None) -> CallResult:
        seen.append(tp)
        return ok_result()

    await tracing.job(execute)("echo", "upper", JobRequest("j1"), CALLER)
    (span,) = finished(tracing, exporter)
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT
    assert seen == [header_of(span)]
    assert span.name == "job echo.upper" and span.kind is SpanKind.CONSUMER
    assert span.attributes is not None
    assert span.attributes["forge.kind"] == "job" and span.attributes["forge.job_id"] == "j1"


@dataclass
class FakeBinding:
    spec: TriggerSpec = field(
        default_factory=lambda: TriggerSpec(
            name="tr", plugin="echo", fn="upper", source=SourceKind.SUBJECT, subject="in.x"
        )
    )


async def test_trigger_attempts_see_a_copy_of_the_event_under_their_own_span() -> None:
    tracing, exporter = traced()
    seen: list[Msg] = []

    async def attempt(b: FakeBinding, msg: Msg, stream_seq: int) -> Unavailable | None:
        seen.append(msg)
        return None if len(seen) == 1 else Unavailable("output stream gone")

    event = Msg(
        _client=None, subject="in.x", data=b"e", headers={HEADER_TRACEPARENT: CALLER, "k": "v"}
    )  # type: ignore[arg-type]
    attempt_traced = tracing.trigger(attempt)
    assert await attempt_traced(FakeBinding(), event, 0) is None
    err = await attempt_traced(FakeBinding(), event, 0)  # a retry of the same event
    assert err is not None
    assert event.headers == {HEADER_TRACEPARENT: CALLER, "k": "v"}  # the event is untouched
    first, retry = finished(tracing, exporter)
    for span, msg in zip((first, retry), seen, strict=True):
        assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT
        assert msg.headers == {HEADER_TRACEPARENT: header_of(span), "k": "v"}
        assert msg.subject == "in.x" and msg.data == b"e"
        assert span.name == "trigger echo.upper" and span.attributes is not None
        assert span.attributes["forge.trigger"] == "tr"
    assert retry.status.status_code is StatusCode.ERROR
    assert retry.attributes is not None and retry.attributes["forge.outcome"] == "UNAVAILABLE"


async def test_a_call_that_raises_still_ends_its_span() -> None:
    tracing, exporter = traced()

    async def serve(msg: Msg) -> CallResult:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await tracing.invoke(serve)(request({HEADER_TRACEPARENT: CALLER}))
    (span,) = finished(tracing, exporter)
    assert span.status.status_code is StatusCode.ERROR


def test_off_by_default_wraps_nothing_and_imports_no_opentelemetry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    settings = parse_args(["--id", "w1"])
    assert settings.otlp_endpoint == "" and start_tracing(settings) is None
    server = InvokeServer(None, Subjects(), {}, None, None, "w1", WorkerCaps())  # type: ignore[arg-type]
    assert "_serve" not in vars(server)  # the method itself serves: no wrapper, no test
    traced_server = InvokeServer(None, Subjects(), {}, None, None, "w1", WorkerCaps(), traced()[0])  # type: ignore[arg-type]
    assert "_serve" in vars(traced_server)
    # the worker runs without the OpenTelemetry packages: nothing imports them unless asked
    probe = (
        "import sys, worker.main, worker.tracing; "
        "sys.exit(any(m.startswith('opentelemetry') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", probe], cwd=REPO).returncode == 0


def test_settings_and_missing_packages(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_args(["--otlp-endpoint", "http://c:4318"]).otlp_endpoint == "http://c:4318"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318")
    assert parse_args([]).otlp_endpoint == "http://env:4318"
    assert parse_args(["--otlp-endpoint", ""]).otlp_endpoint == ""  # off despite the env
    assert traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert traces_url("http://c:4318/v1/traces") == "http://c:4318/v1/traces"
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # as if not installed
    with pytest.raises(TracingUnavailable, match=r"forgeone\[otel\]"):
        Tracing("w1", "http://c:4318")
    with pytest.raises(SystemExit, match=r"forgeone-worker: .*forgeone\[otel\]"):
        start_tracing(parse_args(["--id", "w1"]))


def test_resource_names_the_worker_and_honours_otel_service_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    attrs = Tracing("w1", exporter=InMemorySpanExporter())._provider.resource.attributes
    assert attrs["service.name"] == tracing_mod.SERVICE_NAME == "forgeone-worker"
    assert attrs["service.instance.id"] == "w1"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "plugins-eu")
    attrs = Tracing("w1", exporter=InMemorySpanExporter())._provider.resource.attributes
    assert attrs["service.name"] == "plugins-eu"


# --- a real worker exporting to an OTLP/HTTP receiver -------------------------------------


@dataclass
class Received:
    trace_id: str
    span_id: str
    parent: str
    name: str
    kind: int
    attrs: dict[str, Any]
    error: bool
    resource: dict[str, Any]


class OtlpReceiver:
    """Accepts OTLP/HTTP protobuf exports on /v1/traces and keeps the spans."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> OtlpReceiver:
        app = web.Application()
        app.router.add_post("/v1/traces", self._on_traces)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _on_traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest.FromString(body)
        for rs in export.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    self.spans.append(
                        Received(
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent=s.parent_span_id.hex(),
                            name=s.name,
                            kind=s.kind,
                            attrs={kv.key: _value(kv.value) for kv in s.attributes},
                            error=s.status.code == 2,  # STATUS_CODE_ERROR
                            resource=resource,
                        )
                    )
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )


def _value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


#: Logs a line, emits its input, and returns echo.upper of it (a nested call).
RELAY_WAT = """
(module
  (import "forge" "log" (func $log (param i32 i32 i32)))
  (import "forge" "emit" (func $emit (param i32 i32 i32 i32) (result i32)))
  (import "forge" "call" (func $call (param i32 i32 i32 i32 i32 i32) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "echo")
  (data (i32.const 8) "upper")
  (data (i32.const 16) "traced.out")
  (data (i32.const 32) "relaying")
  (global $top (mut i32) (i32.const 4096))
  (func (export "alloc") (param $n i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $top))
    (global.set $top (i32.add (global.get $top) (local.get $n)))
    (local.get $p))
  (func (export "dealloc") (param $p i32) (param $n i32))
  (func (export "relay") (param $p i32) (param $n i32) (result i64)
    (call $log (i32.const 1) (i32.const 32) (i32.const 8))
    (drop (call $emit (i32.const 16) (i32.const 10) (local.get $p) (local.get $n)))
    (call $call (i32.const 0) (i32.const 4) (i32.const 8) (i32.const 5)
                (local.get $p) (local.get $n))))
"""
RELAY_PERMS = ["log", "publish:traced.>", "call:echo"]


def tp(trace: str, span: str) -> str:
    return f"00-{trace}-{span}-01"


async def test_a_worker_exports_spans_and_its_calls_carry_its_span(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver = await OtlpReceiver().start()
    try:
        await _exercise_and_check(cluster, receiver, monkeypatch)
    finally:
        await receiver.close()


async def _exercise_and_check(
    cluster: Cluster, receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # nothing is exported before the worker stops: what arrives was flushed on SIGTERM
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
    worker = cluster.start_worker("w1", extra=["--otlp-endpoint", receiver.url])
    client = await cluster.client()
    try:
        await cluster.allow("relay", *RELAY_PERMS)
        relay_pkg = cluster.wat_package(
            "relay", RELAY_WAT, exports=["relay"], permissions=RELAY_PERMS
        )
        await client.deploy(relay_pkg)
        await client.deploy(cluster.example_package("echo"))
        await cluster.wait_ready(client, "relay", 1)
        await cluster.wait_ready(client, "echo", 1)
        emitted: asyncio.Queue[Msg] = asyncio.Queue()
        logs: asyncio.Queue[Msg] = asyncio.Queue()
        await client.nc.subscribe("traced.out", cb=emitted.put)
        await client.nc.subscribe(client.subjects.syscall("relay", "log"), cb=logs.put)
        await client.nc.flush()

        # a call with a traceparent, which logs, emits and calls echo.upper
        assert await client.invoke("relay", "relay", b"hi", traceparent=CALLER) == b"HI"
        emit = await asyncio.wait_for(emitted.get(), 10)
        log_line = decode(LogEvent, (await asyncio.wait_for(logs.get(), 10)).data)
        # a job, a trigger event, a call without a traceparent and one with a bad one
        job_trace, job_parent = "1" * 32, "2" * 16
        job_id = await client.submit("echo", "upper", b"job", traceparent=tp(job_trace, job_parent))
        assert await client.result(job_id, timeout=30) == b"JOB"
        trigger_spec = TriggerSpec(
            name="tr", plugin="echo", fn="upper", source=SourceKind.SUBJECT, subject="traced.in"
        )
        await client.add_trigger(trigger_spec)

        async def bound() -> bool:
            return bool((await client.trigger("tr")).bound_on)

        await eventually(bound, 20, "trigger tr bound")
        trig_trace, trig_parent = "3" * 32, "4" * 16
        reply = await client.nc.request(
            "traced.in",
            b"ev",
            timeout=10,
            headers={HEADER_TRACEPARENT: tp(trig_trace, trig_parent)},
        )
        assert reply.data == b"EV"
        assert await client.invoke("echo", "upper", b"root") == b"ROOT"
        assert await client.invoke("echo", "upper", b"bad", traceparent="not-a-traceparent") == (
            b"BAD"
        )
    finally:
        await client.close()
    # SIGTERM: the worker exports what it holds before it exits (the receiver runs on this
    # loop, so wait for the exit off it)
    assert await asyncio.to_thread(worker.stop) == 0

    # relay, the nested echo, the job, the trigger event and the call without a
    # traceparent (the bad one got no span)
    async def arrived() -> list[Received]:
        return receiver.spans if len(receiver.spans) >= 5 else []

    spans = await eventually(arrived, 15, "5 spans at the receiver")
    assert len(spans) == 5, spans

    def only(**want: Any) -> Received:
        found = [s for s in spans if all(s.attrs.get(k) == v for k, v in want.items())]
        assert len(found) == 1, (want, spans)
        return found[0]

    relay = only(**{"forge.plugin": "relay"})
    assert relay.trace_id == TRACE and relay.parent == PARENT  # a child of the caller
    assert relay.name == "invoke relay.relay" and relay.kind == 2 and not relay.error  # SERVER
    assert relay.attrs == {
        "forge.kind": "invoke",
        "forge.worker": "w1",
        "forge.plugin": "relay",
        "forge.fn": "relay",
        "forge.version": "1.0.0",
        "forge.outcome": "ok",
    }
    assert relay.resource["service.name"] == "forgeone-worker"
    assert relay.resource["service.instance.id"] == "w1"
    # what the call passed on carries the worker's span, not the caller's
    relay_tp = tp(TRACE, relay.span_id)
    echo_invokes = [
        s
        for s in spans
        if s.attrs.get("forge.plugin") == "echo" and s.attrs.get("forge.kind") == "invoke"
    ]
    # the nested call and the call without a traceparent; the bad traceparent got none
    assert len(echo_invokes) == 2, spans
    (nested,) = [s for s in echo_invokes if s.trace_id == TRACE]
    assert nested.parent == relay.span_id
    (root,) = [s for s in echo_invokes if s.trace_id != TRACE]
    assert root.parent == "" and root.trace_id not in (job_trace, trig_trace)
    assert (emit.headers or {})[HEADER_TRACEPARENT] == relay_tp
    assert log_line.traceparent == relay_tp

    job = only(**{"forge.kind": "job"})
    assert (job.trace_id, job.parent) == (job_trace, job_parent)
    assert job.attrs["forge.job_id"] == job_id and job.attrs["forge.plugin"] == "echo"
    assert job.kind == 5  # CONSUMER
    trigger = only(**{"forge.kind": "trigger"})
    assert (trigger.trace_id, trigger.parent) == (trig_trace, trig_parent)
    assert trigger.attrs["forge.trigger"] == "tr"
    assert (reply.headers or {})[HEADER_TRACEPARENT] == tp(trig_trace, trigger.span_id)
