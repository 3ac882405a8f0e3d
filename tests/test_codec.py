"""The MessagePack codec of the wire messages (schemas/codec.py, schemas/messages.py).

Decoding is the first thing that touches bytes from the network, so every
refusal must be a :class:`DecodeError` naming the field, and nothing else may
escape, whatever the bytes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas.admin as admin
import schemas.codec as codec
import schemas.messages as messages
import schemas.policy as policy
import schemas.triggers as triggers
from schemas.admin import (
    DeployReply,
    DeployRequest,
    ErrorReply,
    HistoryEntry,
    HistoryReply,
    HistoryRequest,
    ListReply,
    ListRequest,
    PluginStatus,
    PolicyDeleteRequest,
    PolicyListReply,
    PolicyListRequest,
    PolicySetRequest,
    RollbackRequest,
    RolloutRequest,
    UndeployReply,
    UndeployRequest,
    UndeployVersionRequest,
    WorkersReply,
    WorkersRequest,
)
from schemas.codec import (
    DEFAULT_MAX_ITEMS,
    DEFAULT_MAX_STR,
    DecodeError,
    Message,
    Struct,
    decode,
    decode_any,
    encode,
    field_spec,
    from_obj,
    to_obj,
)
from schemas.errors import ErrorCode, PluginNotFound, Trap
from schemas.manifest import Limits, Manifest
from schemas.messages import (
    Assignment,
    CallResult,
    DeadLetter,
    DeploymentRecord,
    ErrorInfo,
    Heartbeat,
    InvokeRequest,
    JobRequest,
    JobResult,
    LoadedPlugin,
    LogEvent,
    VersionEntry,
)
from schemas.policy import PolicyRecord
from schemas.triggers import (
    SourceKind,
    TriggerAddRequest,
    TriggerCounters,
    TriggerDeadLetter,
    TriggerListReply,
    TriggerListRequest,
    TriggerPauseRequest,
    TriggerRemoved,
    TriggerRemoveRequest,
    TriggerReply,
    TriggerResumeRequest,
    TriggerShowRequest,
    TriggerSpec,
    TriggerStats,
    TriggerStatus,
)

FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Every top-level message type the bus carries.
MESSAGE_CLASSES: tuple[type[Message], ...] = tuple(
    dict.fromkeys(
        cls
        for module in (messages, admin, policy, triggers)
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, Message) and cls is not Message
    )
)

# --- realistic samples --------------------------------------------------------------------

DIGEST_A = "3f2a9c1d0b7e4f6a8c5d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b"
DIGEST_B = "9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b1a0f9e8d"
WASM_SHA = "0d1c2b3a4f5e6d7c8b9a0f1e2d3c4b5a6f7e8d9c0b1a2f3e4d5c6b7a8f9e0d1c"


def sample_manifest(version: str = "1.2.0") -> Manifest:
    return Manifest(
        name="textstats",
        version=version,
        abi="forge/1",
        wasm_sha256=WASM_SHA,
        exports=["count_words", "top_words"],
        permissions=["log"],
        limits=Limits(timeout_ms=2000, memory_mb=32, fuel=50_000_000, pool_size=8),
        description="Word counts and the top-N words of a UTF-8 text — für alle Sprachen.",
    )


def sample_record() -> DeploymentRecord:
    return DeploymentRecord(
        plugin="textstats",
        versions=[
            VersionEntry("1.2.0", DIGEST_A, sample_manifest("1.2.0"), 90, "0c6cf46c6953fcb5"),
            VersionEntry("1.1.0", DIGEST_B, sample_manifest("1.1.0"), 10, "0c6cf46c6953fcb5"),
        ],
        config={"language": "en", "stopwords": "the,a,an"},
        deployed_at_ms=1_717_171_717_171,
    )


def sample_heartbeat() -> Heartbeat:
    return Heartbeat(
        worker_id="w-3f9a2c",
        host="node-7.eu-west-1.internal",
        pid=41_213,
        software_version="0.1.0",
        started_at_ms=1_717_171_000_000,
        sent_at_ms=1_717_171_717_000,
        interval_ms=2000,
        slots_total=8,
        slots_busy=3,
        calls_total=1_234_567,
        errors_total=12,
        rss_bytes=187 * 1024 * 1024,
        labels={"zone": "eu-west-1a", "tier": "gold"},
        plugins=[
            LoadedPlugin("textstats", "1.2.0", DIGEST_A, "ready", "", pool_idle=3, pool_busy=1),
            LoadedPlugin("chaos", "0.3.1", DIGEST_B, "failed", "compile error: unknown import"),
        ],
        stopping=False,
    )


JOB = JobRequest(
    job_id="01HZX3K9Q7V2M8N4R6T0W5Y1B3",
    input=b"Lorem ipsum dolor sit amet",
    deadline_ms=1_717_175_317_000,
    submitted_at_ms=1_717_171_717_000,
    version="1.2.0",
)


def sample_trigger() -> TriggerSpec:
    return TriggerSpec(
        name="orders-enrich",
        source=SourceKind.STREAM,
        plugin="textstats",
        fn="count_words",
        stream="ORDERS",
        filter="orders.*.created",
        start="time:2024-06-01T00:00:00Z",
        output="orders.{2}.enriched",
        max_in_flight=64,
        max_deliver=8,
        backoff_ms=[250, 1000, 5000],
        ack_wait_ms=60_000,
        timeout_ms=1500,
        dead_letter="orders.dlq",
        ordered_by=2,
        created_at_ms=1_717_171_700_000,
    )


SUBJECT_TRIGGER = TriggerSpec(
    name="echo-requests",
    source=SourceKind.SUBJECT,
    plugin="echo",
    fn="echo",
    subject="svc.echo.>",
    paused=True,
)


def sample_trigger_status() -> TriggerStatus:
    return TriggerStatus(
        spec=sample_trigger(),
        state="active",
        hosted_by=["w-3f9a2c", "w-77b1"],
        bound_on=["w-3f9a2c"],
        pending=1_204,
        in_flight=64,
        redelivered=3,
        oldest_age_ms=850,
        rate_per_s=412.5,
        events=98_311,
        ok=98_240,
        errors=71,
        dead_lettered=2,
        last_error="TRAP: wasm trap: unreachable executed",
    )


def trigger_samples() -> list[Message]:
    """The trigger definitions, worker reports and admin messages (schemas/triggers)."""
    status = sample_trigger_status()
    return [
        sample_trigger(),
        SUBJECT_TRIGGER,
        TriggerStats(
            worker_id="w-3f9a2c",
            started_at_ms=1_717_171_000_000,
            sent_at_ms=1_717_171_717_000,
            interval_ms=2000,
            triggers=[
                TriggerCounters(
                    name="orders-enrich",
                    bound=True,
                    events=50_120,
                    ok=50_011,
                    errors=40,
                    dead_lettered=1,
                    in_flight=64,
                    rate_per_s=206.25,
                    last_error="TIMEOUT: call exceeded 1500 ms",
                ),
                TriggerCounters(name="echo-requests"),
            ],
        ),
        TriggerStats(worker_id="w-1", stopping=True),
        TriggerDeadLetter(
            trigger="orders-enrich",
            plugin="textstats",
            fn="count_words",
            subject="orders.eu.created",
            error=ErrorInfo(ErrorCode.TRAP, "wasm trap: unreachable executed"),
            data=b'{"order": 1234, "items": 3}',
            headers={"Nats-Msg-Id": "order-1234", "traceparent": "00-4bf9-00f0-01"},
            stream="ORDERS",
            stream_seq=88_412,
            attempts=8,
            worker="w-3f9a2c",
            at_ms=1_717_171_799_000,
        ),
        TriggerDeadLetter(
            trigger="echo-requests",
            plugin="echo",
            fn="echo",
            subject="svc.echo.x",
            error=ErrorInfo(ErrorCode.INPUT_TOO_LARGE, "input is 2 MiB, the limit is 1 MiB"),
            attempts=1,
        ),
        TriggerAddRequest(spec=sample_trigger()),
        TriggerAddRequest(spec=SUBJECT_TRIGGER),
        TriggerListRequest(),
        TriggerShowRequest(name="orders-enrich"),
        TriggerPauseRequest(name="orders-enrich"),
        TriggerResumeRequest(name="orders-enrich"),
        TriggerRemoveRequest(name="echo-requests"),
        TriggerReply(status=status, warnings=["stream ORDERS keeps 1 day of events"]),
        TriggerReply(status=TriggerStatus(spec=SUBJECT_TRIGGER, state="paused")),
        TriggerListReply(
            triggers=[status, TriggerStatus(spec=SUBJECT_TRIGGER, state="no workers")]
        ),
        TriggerListReply(),
        TriggerRemoved(name="echo-requests"),
    ]


def sample_messages() -> list[Message]:
    """At least one realistic instance of every message type (several for the rich ones)."""
    record = sample_record()
    return [
        InvokeRequest(input=b'{"text": "the quick brown fox"}'),
        InvokeRequest(input=bytes(range(256)) * 4),
        InvokeRequest(),
        CallResult(
            ok=True,
            output=b'{"words": 4}',
            plugin="textstats",
            fn="count_words",
            version="1.2.0",
            worker="w-3f9a2c",
            duration_us=1834,
            fuel_used=120_455,
        ),
        CallResult.failure(
            Trap("wasm trap: unreachable executed"), plugin="chaos", fn="crash", worker="w-1"
        ),
        JOB,
        JobRequest(job_id="j1"),
        JobResult(
            job_id=JOB.job_id,
            result=CallResult(ok=True, output=b"4", plugin="textstats", fn="count_words"),
            attempts=2,
            finished_at_ms=1_717_171_718_000,
        ),
        DeadLetter(
            job=JOB,
            plugin="textstats",
            fn="count_words",
            error=ErrorInfo(ErrorCode.TIMEOUT, "call exceeded 2000 ms"),
            attempts=5,
            worker="w-3f9a2c",
            at_ms=1_717_171_799_000,
        ),
        record,
        dataclasses.replace(record, replicas=2, labels={"zone": "a", "disk": "ssd"}),
        Assignment(plugin="textstats", workers=["w-1", "w-3f9a2c"], replicas=2, at_ms=17),
        Assignment(plugin="textstats"),
        sample_heartbeat(),
        Heartbeat(worker_id="w-1", stopping=True),
        LogEvent(
            plugin="textstats",
            version="1.2.0",
            fn="count_words",
            worker="w-3f9a2c",
            level=2,
            message="input had 3 invalid UTF-8 sequences; replaced ✓",
            at_ms=1_717_171_717_123,
        ),
        DeployRequest(digest=DIGEST_A, config={"language": "de"}),
        DeployRequest(digest=DIGEST_A, replicas=3, labels={"zone": "b"}),
        DeployReply(record=record, revision=42),
        DeployRequest(digest=DIGEST_B, canary=True),
        RolloutRequest(plugin="textstats", version="1.1.0", weight=10),
        UndeployVersionRequest(plugin="textstats", version="1.1.0"),
        HistoryRequest(plugin="textstats"),
        HistoryReply(
            plugin="textstats",
            entries=[
                HistoryEntry(
                    revision=40,
                    at_ms=1_717_000_000_000,
                    record=DeploymentRecord(
                        plugin="textstats",
                        versions=[VersionEntry("1.2.0", DIGEST_A, sample_manifest("1.2.0"))],
                        deployed_at_ms=1_717_000_000_000,
                    ),
                ),
                HistoryEntry(revision=42, at_ms=record.deployed_at_ms, record=record),
                HistoryEntry(revision=57, at_ms=1_717_171_800_000),  # undeployed
            ],
        ),
        RollbackRequest(plugin="textstats"),
        RollbackRequest(plugin="textstats", to_version="1.2.0"),
        RollbackRequest(plugin="textstats", revision=40),
        UndeployRequest(plugin="textstats"),
        UndeployReply(plugin="textstats"),
        ListRequest(),
        PolicySetRequest(
            key="plugin.textstats",
            record=PolicyRecord(grants=["log", "publish:orders.>", "kv:cache"], max_fuel=10**9),
        ),
        PolicyDeleteRequest(key="key.0123456789abcdef"),
        PolicyRecord(grants=["call:textstats", "fs:/srv/data:ro", "env:TZ"], max_pool_size=2),
        PolicyListRequest(),
        PolicyListReply(
            records={
                "default": PolicyRecord(grants=["log"]),
                "plugin.echo": PolicyRecord(max_memory_mb=32),
            }
        ),
        ListReply(
            plugins=[
                PluginStatus(
                    record=record,
                    ready_workers=["w-3f9a2c", "w-77b1"],
                    failed_workers={"w-0042": "out of memory while compiling"},
                ),
                PluginStatus(record=record),
            ]
        ),
        WorkersRequest(),
        WorkersReply(workers=[sample_heartbeat(), Heartbeat(worker_id="w-2")]),
        ErrorReply(error=ErrorInfo.of(PluginNotFound("no deployment for 'nope'"))),
        *trigger_samples(),
    ]


SAMPLES = sample_messages()


def _sample(cls: type[Message]) -> Message:
    return next(m for m in SAMPLES if type(m) is cls)


def _packed(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _with(cls: type[Message], **changes: Any) -> bytes:
    """The msgpack of ``cls``'s sample with some top-level fields replaced (or removed)."""
    obj = to_obj(_sample(cls))
    for k, v in changes.items():
        if v is _DROP:
            del obj[k]
        else:
            obj[k] = v
    return _packed(obj)


_DROP = object()


# --- round trips ---------------------------------------------------------------------------


def test_every_message_type_has_a_sample() -> None:
    missing = {c.__name__ for c in MESSAGE_CLASSES} - {type(m).__name__ for m in SAMPLES}
    assert not missing, f"add a realistic sample for {sorted(missing)}"


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(msg: Message) -> None:
    data = encode(msg)
    assert isinstance(data, bytes)
    back = decode(type(msg), data)
    assert back == msg
    assert type(back) is type(msg)
    # the wire form is a map tagged with the kind
    raw = msgpack.unpackb(data, raw=False)
    assert raw["kind"] == type(msg).KIND
    # decode_any picks the type by kind
    assert decode_any(data, *MESSAGE_CLASSES) == msg
    # bytearray and memoryview are accepted like bytes
    assert decode(type(msg), bytearray(data)) == msg
    assert decode(type(msg), memoryview(data)) == msg


def test_kinds_are_unique() -> None:
    kinds = [c.KIND for c in MESSAGE_CLASSES]
    assert all(kinds)
    assert len(set(kinds)) == len(kinds)


def test_bytes_travel_as_msgpack_bin_and_enums_as_strings() -> None:
    raw = msgpack.unpackb(encode(_sample(ErrorReply)), raw=False)
    assert raw["error"]["code"] == "PLUGIN_NOT_FOUND"
    assert type(raw["error"]["code"]) is str
    raw = msgpack.unpackb(encode(InvokeRequest(input=b"\x00\xff")), raw=False)
    assert raw["input"] == b"\x00\xff"


def test_error_info_round_trips_to_the_same_exception() -> None:
    back = decode(ErrorReply, encode(_sample(ErrorReply)))
    exc = back.error.to_exception()
    assert isinstance(exc, PluginNotFound)
    assert exc.message == "no deployment for 'nope'"
    assert back.error.code is ErrorCode.PLUGIN_NOT_FOUND


def test_unknown_fields_are_ignored() -> None:
    obj = to_obj(_sample(CallResult))
    obj["added_in_v2"] = {"nested": [1, 2, {"x": b"y"}]}
    obj["priority"] = 7
    assert decode(CallResult, _packed(obj)) == _sample(CallResult)
    rec = to_obj(sample_record())
    rec["versions"][0]["canary"] = True
    rec["versions"][0]["manifest"]["homepage"] = "https://example.com"
    assert decode(DeploymentRecord, _packed(rec)) == sample_record()


def test_optional_fields_take_their_defaults() -> None:
    hb = decode(Heartbeat, _packed({"kind": "heartbeat", "worker_id": "w-9"}))
    assert hb == Heartbeat(worker_id="w-9")
    assert hb.interval_ms == 2000
    assert hb.labels == {}
    assert hb.plugins == []


def test_string_at_max_len_is_accepted() -> None:
    data = _with(CallResult, plugin="p" * 64, worker="w" * 128)
    got = decode(CallResult, data)
    assert got.plugin == "p" * 64
    assert got.worker == "w" * 128


# --- refusals ------------------------------------------------------------------------------


def _refused(cls: type[Message], data: bytes, *needles: str) -> DecodeError:
    with pytest.raises(DecodeError) as ei:
        decode(cls, data)
    for needle in needles:
        assert needle in str(ei.value), f"{needle!r} not in {str(ei.value)!r}"
    return ei.value


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # the one byte msgpack never uses
        b"\x81\xa4kind",  # map whose value is missing
        _packed({"kind": "invoke"}) + b"\x00",  # trailing data
        b"\x81\xa4kind\xa2\xff\xfe",  # string that is not UTF-8
        _packed(msgpack.ExtType(5, b"abc")),
        _packed({"kind": "invoke", "input": msgpack.ExtType(1, b"\x00" * 4)}),
        _packed({1: "int keys are refused"}),
        b"hello world, this is not msgpack",
    ],
    ids=[
        "empty",
        "reserved-byte",
        "half-map",
        "trailing-data",
        "bad-utf8",
        "ext-type",
        "ext-in-field",
        "int-key",
        "text",
    ],
)
def test_not_msgpack(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(InvokeRequest, data)
    with pytest.raises(DecodeError):
        decode_any(data, *MESSAGE_CLASSES)


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_truncation_is_refused(msg: Message) -> None:
    data = encode(msg)
    for n in range(len(data)):
        with pytest.raises(DecodeError):
            decode(type(msg), data[:n])


@pytest.mark.parametrize(
    "top", [[{"kind": "invoke"}], "invoke", 7, None, b"\x81\xa4kind", 1.5, True]
)
def test_non_map_top_level(top: Any) -> None:
    _refused(InvokeRequest, _packed(top), "expected map")
    with pytest.raises(DecodeError, match="expected map"):
        decode_any(_packed(top), *MESSAGE_CLASSES)


def test_wrong_kind() -> None:
    _refused(CallResult, encode(InvokeRequest(input=b"x")), "kind", "'result'", "'invoke'")
    _refused(CallResult, _with(CallResult, kind=_DROP), "kind", "None")
    _refused(CallResult, _with(CallResult, kind=1), "kind")
    _refused(CallResult, _with(CallResult, kind="RESULT"), "kind")


def test_decode_any_refuses_unknown_and_unlisted_kinds() -> None:
    with pytest.raises(DecodeError, match="is not one of"):
        decode_any(_packed({"kind": "exec", "cmd": "rm -rf /"}), *MESSAGE_CLASSES)
    with pytest.raises(DecodeError, match="is not one of"):
        decode_any(_packed({"input": b"no kind"}), *MESSAGE_CLASSES)
    # a valid message whose type the caller did not list is refused too
    with pytest.raises(DecodeError, match="is not one of"):
        decode_any(encode(_sample(DeployRequest)), ListRequest, UndeployRequest)
    # and a listed kind is still validated
    with pytest.raises(DecodeError, match="digest"):
        decode_any(_packed({"kind": "deploy", "digest": "nope"}), DeployRequest)


@pytest.mark.parametrize(
    ("cls", "data", "needle"),
    [
        (CallResult, _with(CallResult, ok=_DROP), "ok: missing"),
        (Heartbeat, _with(Heartbeat, worker_id=_DROP), "worker_id: missing"),
        (ErrorReply, _with(ErrorReply, error=_DROP), "error: missing"),
        (DeployReply, _with(DeployReply, record=_DROP), "record: missing"),
        (LogEvent, _with(LogEvent, plugin=_DROP), "plugin: missing"),
        (ErrorReply, _with(ErrorReply, error={"message": "x"}), "error.code: missing"),
    ],
    ids=["ok", "worker_id", "error", "record", "plugin", "nested-code"],
)
def test_missing_required_field(cls: type[Message], data: bytes, needle: str) -> None:
    _refused(cls, data, needle)


def test_missing_required_field_deep_in_a_list() -> None:
    obj = to_obj(sample_record())
    del obj["versions"][1]["digest"]
    _refused(DeploymentRecord, _packed(obj), "versions[1].digest: missing")
    obj = to_obj(sample_record())
    del obj["versions"][0]["manifest"]["wasm_sha256"]
    _refused(DeploymentRecord, _packed(obj), "versions[0].manifest.wasm_sha256: missing")


@pytest.mark.parametrize(
    ("cls", "changes", "needle"),
    [
        (CallResult, {"duration_us": "5"}, "duration_us: expected integer, got str"),
        (InvokeRequest, {"input": 5}, "input: expected bytes, got int"),
        (InvokeRequest, {"input": "text, not bin"}, "input: expected bytes, got str"),
        (Heartbeat, {"pid": True}, "pid: expected integer, got bool"),
        (CallResult, {"fuel_used": False}, "fuel_used: expected integer, got bool"),
        (CallResult, {"ok": "true"}, "ok: expected bool, got str"),
        (CallResult, {"ok": 1}, "ok: expected bool, got int"),
        (CallResult, {"ok": None}, "ok: expected bool, got NoneType"),
        (LogEvent, {"plugin": 7}, "plugin: expected string, got int"),
        (LogEvent, {"plugin": b"textstats"}, "plugin: expected string, got bytes"),
        (LogEvent, {"at_ms": 1.5}, "at_ms: expected integer, got float"),
        (DeploymentRecord, {"config": [["a", "b"]]}, "config: expected map, got list"),
        (DeploymentRecord, {"config": {"a": 1}}, "config.a: expected string, got int"),
        (DeploymentRecord, {"config": {b"k": "v"}}, "config.<key>: expected string"),
        (Heartbeat, {"plugins": {"a": 1}}, "plugins: expected list, got dict"),
        (Heartbeat, {"plugins": ["textstats"]}, "plugins[0]: expected map, got str"),
        (ErrorReply, {"error": "boom"}, "error: expected map, got str"),
        (ErrorReply, {"error": {"code": "NOPE"}}, "error.code: 'NOPE' is not one of"),
        (ErrorReply, {"error": {"code": ["TRAP"]}}, "error.code"),
        (
            WorkersReply,
            {"workers": [{"kind": "heartbeat", "worker_id": 5}]},
            "workers[0].worker_id: expected string",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_wrong_field_type(cls: type[Message], changes: dict[str, Any], needle: str) -> None:
    _refused(cls, _with(cls, **changes), needle)


def test_wrong_type_inside_a_nested_list_names_the_path() -> None:
    obj = to_obj(sample_record())
    obj["versions"][1]["weight"] = "10"
    _refused(DeploymentRecord, _packed(obj), "versions[1].weight: expected integer")
    obj = to_obj(sample_record())
    obj["versions"][0]["manifest"]["limits"]["memory_mb"] = 32.0
    _refused(DeploymentRecord, _packed(obj), "versions[0].manifest.limits.memory_mb")


@pytest.mark.parametrize(
    ("cls", "changes", "needle"),
    [
        (CallResult, {"plugin": "p" * 65}, "plugin: string longer than 64"),
        (CallResult, {"worker": "w" * 129}, "worker: string longer than 128"),
        (LogEvent, {"message": "m" * 16385}, "message: string longer than 16384"),
        (ErrorReply, {"error": {"code": "TRAP", "message": "x" * 8193}}, "longer than 8192"),
        (
            Heartbeat,
            {"labels": {"zone": "z" * (DEFAULT_MAX_STR + 1)}},
            f"labels.zone: string longer than {DEFAULT_MAX_STR}",
        ),
        (Heartbeat, {"labels": {"k" * 257: "v"}}, "labels.<key>: string longer than 256"),
        (Heartbeat, {"host": "h" * 257}, "host: string longer than 256"),
    ],
    ids=["plugin", "worker", "log-message", "error-message", "default-cap", "map-key", "host"],
)
def test_string_over_max_len(cls: type[Message], changes: dict[str, Any], needle: str) -> None:
    _refused(cls, _with(cls, **changes), needle)


@pytest.mark.parametrize(
    "name",
    ["text.stats", "text*", "*", ">", "textstats.>", "Textstats", "", "a b", "1abc", "echo\n"],
)
def test_plugin_name_pattern_mismatch(name: str) -> None:
    _refused(DeploymentRecord, _with(DeploymentRecord, plugin=name), "plugin:", "does not match")
    _refused(UndeployRequest, _packed({"kind": "undeploy", "plugin": name}), "does not match")


@pytest.mark.parametrize(
    ("cls", "changes", "needle"),
    [
        (Heartbeat, {"worker_id": "w.1"}, "worker_id"),
        (Heartbeat, {"worker_id": "w>"}, "worker_id"),
        (JobRequest, {"job_id": "jobs.>"}, "job_id"),
        (JobRequest, {"job_id": ""}, "job_id"),
        (DeployRequest, {"digest": DIGEST_A.upper()}, "digest"),
        (DeployRequest, {"digest": DIGEST_A[:-1]}, "digest"),
        (DeployRequest, {"digest": "../../etc/passwd"}, "digest"),
    ],
    ids=[
        "worker-dot",
        "worker-wildcard",
        "job-wildcard",
        "job-empty",
        "digest-upper",
        "digest-short",
        "digest-path",
    ],
)
def test_other_pattern_mismatches(cls: type[Message], changes: dict[str, Any], needle: str) -> None:
    _refused(cls, _with(cls, **changes), needle, "does not match")


def test_pattern_mismatch_in_nested_manifest() -> None:
    obj = to_obj(sample_record())
    obj["versions"][0]["manifest"]["name"] = "text.stats"
    _refused(DeploymentRecord, _packed(obj), "versions[0].manifest.name", "does not match")
    obj = to_obj(sample_record())
    obj["versions"][0]["version"] = "1.2.0 beta"
    _refused(DeploymentRecord, _packed(obj), "versions[0].version", "does not match")


@pytest.mark.parametrize(
    ("cls", "changes", "needle"),
    [
        (LogEvent, {"level": 4}, "level: 4 is above 3"),
        (LogEvent, {"level": -1}, "level: -1 is below 0"),
        (Heartbeat, {"interval_ms": 0}, "interval_ms: 0 is below 1"),
        (Heartbeat, {"rss_bytes": -5}, "rss_bytes: -5 is below 0"),
        (CallResult, {"duration_us": -1}, "duration_us: -1 is below 0"),
        (CallResult, {"fuel_used": -(2**63)}, "fuel_used"),
        (DeployReply, {"revision": -1}, "revision"),
    ],
    ids=["level-high", "level-low", "interval", "rss", "duration", "fuel", "revision"],
)
def test_int_out_of_range(cls: type[Message], changes: dict[str, Any], needle: str) -> None:
    _refused(cls, _with(cls, **changes), needle)


def test_int_out_of_range_in_nested_structs() -> None:
    obj = to_obj(sample_record())
    obj["versions"][0]["weight"] = 101
    _refused(DeploymentRecord, _packed(obj), "versions[0].weight: 101 is above 100")
    obj = to_obj(sample_record())
    obj["versions"][0]["manifest"]["limits"]["timeout_ms"] = 0
    _refused(DeploymentRecord, _packed(obj), "limits.timeout_ms: 0 is below 1")


def test_manifest_invariants_become_decode_errors() -> None:
    """Manifest.__post_init__ raises ValueError; the decoder turns it into DecodeError."""
    for exports, needle in [
        ([], "needs at least 1 item"),
        (["alloc"], "reserved by the ABI"),
        (["go", "go"], "duplicate"),
        (["not-an-ident"], "does not match"),
    ]:
        obj = to_obj(sample_record())
        obj["versions"][0]["manifest"]["exports"] = exports
        _refused(DeploymentRecord, _packed(obj), needle)


@dataclass(frozen=True, slots=True)
class Node(Struct):
    """A self-referential struct: the only way to reach the decoder's depth limit."""

    child: Node | None = field_spec(default=None)


def _chain(n: int) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for _ in range(n):
        obj = {"child": obj}
    return obj


def test_too_deep_nesting() -> None:
    assert from_obj(Node, _chain(8)) is not None
    with pytest.raises(DecodeError, match="nested too deeply"):
        from_obj(Node, _chain(codec.MAX_DEPTH + 5))
    # raw msgpack nesting far beyond any message's shape is refused before validation
    with pytest.raises(DecodeError, match="not valid MessagePack"):
        decode(CallResult, b"\x91" * 100_000 + b"\xc0")
    deep_map = b"\x81\xa1k" * 50_000 + b"\xc0"
    with pytest.raises(DecodeError):
        decode(Heartbeat, deep_map)
    # nesting inside a field is a type error, not a crash
    nested: Any = "leaf"
    for _ in range(200):
        nested = {"x": nested}
    _refused(DeploymentRecord, _with(DeploymentRecord, config=nested), "config.x")


@pytest.mark.parametrize("kind", [_DROP, "heartbeat"], ids=["missing", "wrong"])
def test_nested_message_kind_is_checked(kind: Any) -> None:
    obj = to_obj(_sample(DeployReply))
    if kind is _DROP:
        del obj["record"]["kind"]
    else:
        obj["record"]["kind"] = kind
    _refused(DeployReply, _packed(obj), "record")


def test_list_too_long() -> None:
    plugin = to_obj(LoadedPlugin("p", "1", DIGEST_A))
    # off the wire: msgpack itself refuses more than DEFAULT_MAX_ITEMS items
    data = _with(Heartbeat, plugins=[plugin] * (DEFAULT_MAX_ITEMS + 1))
    _refused(Heartbeat, data)
    # from plain objects (e.g. JSON): the field check refuses it
    obj = to_obj(sample_heartbeat())
    obj["plugins"] = [plugin] * (DEFAULT_MAX_ITEMS + 1)
    with pytest.raises(DecodeError, match="plugins: too many items"):
        from_obj(Heartbeat, obj)
    obj = to_obj(sample_heartbeat())
    obj["labels"] = {f"k{i}": "v" for i in range(DEFAULT_MAX_ITEMS + 1)}
    with pytest.raises(DecodeError, match="labels: too many entries"):
        from_obj(Heartbeat, obj)
    # exactly the cap is fine
    ok = _with(Heartbeat, plugins=[plugin] * DEFAULT_MAX_ITEMS)
    assert len(decode(Heartbeat, ok).plugins) == DEFAULT_MAX_ITEMS


def test_oversized_message_is_refused_before_unpacking(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encode(_sample(InvokeRequest))
    monkeypatch.setattr(codec, "MAX_MESSAGE_BYTES", len(data) - 1)
    with pytest.raises(DecodeError, match="exceeds"):
        decode(InvokeRequest, data)
    with pytest.raises(DecodeError, match="exceeds"):
        decode_any(data, InvokeRequest)


def test_decode_error_is_a_value_error_not_a_forge_error() -> None:
    with pytest.raises(ValueError):
        decode(InvokeRequest, b"\xc1")


# --- property tests ------------------------------------------------------------------------

FUZZ_TARGETS = (CallResult, InvokeRequest, DeploymentRecord, Heartbeat)


def _decode_or_refuse(cls: type[Message], data: bytes) -> None:
    try:
        got = decode(cls, data)
    except DecodeError:
        return
    assert type(got) is cls
    # anything accepted re-encodes and decodes to itself
    assert decode(cls, encode(got)) == got


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    for cls in FUZZ_TARGETS:
        _decode_or_refuse(cls, data)
    with contextlib.suppress(DecodeError):
        decode_any(data, *MESSAGE_CLASSES)


@FUZZ
@given(st.binary(min_size=1, max_size=64), st.integers(0, 10_000))
def test_bytes_after_a_valid_map_header(tail: bytes, pick: int) -> None:
    """Bytes that start like a message (a fixmap with 'kind') reach the field checks."""
    cls = FUZZ_TARGETS[pick % len(FUZZ_TARGETS)]
    head = b"\x82\xa4kind" + msgpack.packb(cls.KIND)
    _decode_or_refuse(cls, head + tail)


_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
plain_objects = st.recursive(
    _leaves,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=30,
)


def _shaped(cls: type[Message]) -> st.SearchStrategy[dict[str, Any]]:
    """Maps with the right kind and the type's own field names, holding arbitrary values."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    return st.fixed_dictionaries(
        {"kind": st.just(cls.KIND)}, optional={n: plain_objects for n in names}
    )


@FUZZ
@given(plain_objects)
def test_arbitrary_msgpack_objects_decode_or_raise_decode_error(obj: Any) -> None:
    data = _packed(obj)
    for cls in FUZZ_TARGETS:
        _decode_or_refuse(cls, data)


@FUZZ
@given(st.data())
def test_shaped_maps_decode_or_raise_decode_error(data: st.DataObject) -> None:
    cls = data.draw(st.sampled_from(MESSAGE_CLASSES))
    obj = data.draw(_shaped(cls))
    _decode_or_refuse(cls, _packed(obj))
    with contextlib.suppress(DecodeError):
        from_obj(cls, obj)


uint64 = st.integers(min_value=0, max_value=2**64 - 1)
error_infos = st.builds(
    ErrorInfo, code=st.sampled_from(list(ErrorCode)), message=st.text(max_size=300)
)
call_results = st.builds(
    CallResult,
    ok=st.booleans(),
    output=st.binary(max_size=512),
    error=st.none() | error_infos,
    plugin=st.text(max_size=64),
    fn=st.text(max_size=64),
    version=st.text(max_size=64),
    worker=st.text(max_size=128),
    duration_us=uint64,
    fuel_used=st.none() | uint64,
)
invoke_requests = st.builds(InvokeRequest, input=st.binary(max_size=2048))
log_events = st.builds(
    LogEvent,
    plugin=st.text(max_size=64),
    version=st.text(max_size=64),
    fn=st.text(max_size=64),
    worker=st.text(max_size=128),
    level=st.integers(0, 3),
    message=st.text(max_size=500),
    at_ms=uint64,
)


@FUZZ
@given(st.one_of(call_results, invoke_requests, log_events))
def test_valid_messages_round_trip_exactly(msg: Message) -> None:
    data = encode(msg)
    back = decode(type(msg), data)
    assert back == msg
    assert encode(back) == data
    assert decode_any(data, CallResult, InvokeRequest, LogEvent) == msg
