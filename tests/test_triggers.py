"""Triggers on real processes: core subjects, streams, delivery settings, ordering, lag."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg
from nats.js.api import StreamConfig
from nats.js.errors import NotFoundError

from bench.triggers_bench import read_all, run_kill
from coordinator import cli
from coordinator.cli_triggers import add_trigger_commands
from coordinator.client import ForgeClient
from schemas.codec import decode
from schemas.errors import BadRequest, ErrorCode
from schemas.triggers import (
    HEADER_ERROR_CODE,
    HEADER_PLUGIN_VERSION,
    HEADER_SOURCE_STREAM,
    HEADER_SOURCE_SUBJECT,
    HEADER_STREAM_SEQ,
    HEADER_TRIGGER,
    OutputTemplate,
    SourceKind,
    TriggerDeadLetter,
    TriggerSpec,
    parse_start,
    patterns_overlap,
    render_output,
)
from tests.cluster import Cluster, eventually

#: A plugin for trigger tests. ``work``: input starting with P traps (poison), R is
#: rejected for good, F fails (set_error), S spins ~20 ms; anything else is echoed.
#: ``subject``: the event's subject; ``header``: the value of the header named by the input.
TPLUG_WAT = """(module
  (import "forge" "reject" (func $reject (param i32 i32)))
  (import "forge" "set_error" (func $set_error (param i32 i32)))
  (import "forge" "event_subject" (func $event_subject (result i64)))
  (import "forge" "event_header" (func $event_header (param i32 i32) (result i64)))
  (memory (export "memory") 1)
  (data (i32.const 0) "rejected")
  (data (i32.const 16) "failed")
  (global $top (mut i32) (i32.const 1024))
  (global $fresh (mut i32) (i32.const 1))
  (func $alloc (export "alloc") (param $size i32) (result i32)
    (local $ptr i32)
    (if (global.get $fresh)
      (then (global.set $top (i32.const 1024)) (global.set $fresh (i32.const 0))))
    (local.set $ptr (global.get $top))
    (global.set $top (i32.add (local.get $ptr) (i32.add (local.get $size) (i32.const 8))))
    (if (i32.gt_u (global.get $top) (i32.const 65536)) (then (return (i32.const 0))))
    (local.get $ptr))
  (func $done (param $r i64) (result i64) (global.set $fresh (i32.const 1)) (local.get $r))
  (func $pack (param $p i32) (param $n i32) (result i64)
    (call $done (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
                        (i64.extend_i32_u (local.get $n)))))
  (func (export "work") (param $p i32) (param $n i32) (result i64)
    (local $c i32) (local $i i32)
    (if (i32.eqz (local.get $n)) (then (return (call $pack (local.get $p) (local.get $n)))))
    (local.set $c (i32.load8_u (local.get $p)))
    (if (i32.eq (local.get $c) (i32.const 80)) (then unreachable))
    (if (i32.eq (local.get $c) (i32.const 82))
      (then (call $reject (i32.const 0) (i32.const 8)) (return (call $done (i64.const 0)))))
    (if (i32.eq (local.get $c) (i32.const 70))
      (then (call $set_error (i32.const 16) (i32.const 6)) (return (call $done (i64.const 0)))))
    (if (i32.eq (local.get $c) (i32.const 83))
      (then
        (local.set $i (i32.const 30000000))
        (block $out (loop $spin
          (br_if $out (i32.eqz (local.get $i)))
          (local.set $i (i32.sub (local.get $i) (i32.const 1)))
          (br $spin)))))
    (call $pack (local.get $p) (local.get $n)))
  (func (export "subject") (param i32 i32) (result i64)
    (local $r i64)
    (local.set $r (call $event_subject))
    (if (i64.lt_s (local.get $r) (i64.const 0)) (then (return (call $done (i64.const 0)))))
    (call $done (local.get $r)))
  (func (export "header") (param $p i32) (param $n i32) (result i64)
    (local $r i64)
    (local.set $r (call $event_header (local.get $p) (local.get $n)))
    (if (i64.lt_s (local.get $r) (i64.const 0)) (then (return (call $done (i64.const 0)))))
    (call $done (local.get $r))))"""


async def deploy_tplug(cluster: Cluster, client: ForgeClient, workers: int = 1) -> None:
    await client.deploy(
        cluster.wat_package(
            "tplug",
            TPLUG_WAT,
            exports=["work", "subject", "header"],
            limits={"timeout_ms": 2000, "pool_size": 4},
        )
    )
    if workers:
        await cluster.wait_ready(client, "tplug", workers)


@dataclass
class Collector:
    """Messages on a subject pattern, in arrival order."""

    msgs: list[Msg] = field(default_factory=list)

    async def on_msg(self, msg: Msg) -> None:
        self.msgs.append(msg)

    async def count(self, n: int, timeout: float = 20, what: str = "messages") -> list[Msg]:
        async def probe() -> bool:
            return len(self.msgs) >= n

        await eventually(probe, timeout, f"{n} {what} (have {len(self.msgs)})")
        return self.msgs


async def collect(client: ForgeClient, subject: str) -> Collector:
    c = Collector()
    await client.nc.subscribe(subject, cb=c.on_msg)
    await client.nc.flush()
    return c


def spec(name: str, **kw: Any) -> TriggerSpec:
    base: dict[str, Any] = {"plugin": "tplug", "fn": "work"}
    if "stream" in kw:
        base["source"] = SourceKind.STREAM
    else:
        base["source"] = SourceKind.SUBJECT
    return TriggerSpec(name=name, **{**base, **kw})


async def bound(client: ForgeClient, name: str, workers: int = 1) -> None:
    async def probe() -> bool:
        return len((await client.trigger(name)).bound_on) >= workers

    await eventually(probe, 20, f"trigger {name} bound on {workers} worker(s)")


async def stored(client: ForgeClient, stream: str) -> int:
    return int((await client.nc.jetstream().stream_info(stream)).state.messages)


async def run_cli(*argv: str) -> tuple[int, str]:
    """A ``forgeone`` command of this module, in process, with its printed output."""
    import contextlib
    import io

    p = argparse.ArgumentParser(prog="forgeone")
    sub = p.add_subparsers(dest="command", required=True)

    def bus(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--nats-url", required=True)
        sp.add_argument("--prefix", default="forge")
        sp.add_argument("--creds", default=None)
        return sp

    add_trigger_commands(sub, bus, cli._with_client)
    a = p.parse_args(list(argv))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = a.func(a)
        code = await result if isinstance(result, Awaitable) else result
    return int(code), out.getvalue()


# --- pure helpers ---------------------------------------------


def test_templates_keys_starts_and_validation() -> None:
    assert render_output("orders.enriched.{2}", "orders.eu.created") == "orders.enriched.eu"
    t = OutputTemplate("out.{3}-x.{1}")
    assert t.render("a.b.c") == "out.c-x.a"
    with pytest.raises(BadRequest, match="token"):
        t.render("a.b")
    assert OutputTemplate("fixed.subject").render("any") == "fixed.subject"
    assert patterns_overlap("orders.>", "orders.enriched.*")
    assert not patterns_overlap("orders.*.created", "orders.enriched.*.x")
    assert parse_start("seq:42").seq == 42
    assert parse_start("time:2024-05-01T10:00:00Z").time is not None
    with pytest.raises(BadRequest):
        parse_start("yesterday")
    with pytest.raises(ValueError, match="ordered_by needs a stream"):
        spec("x", subject="a.b", ordered_by=1)
    with pytest.raises(ValueError, match="not a subject template"):
        spec("x", subject="a.b", output="out.*")
    with pytest.raises(ValueError, match="not a valid NATS subject"):
        spec("x", subject="a..b")


# --- core subjects ---------------------------------------------


async def test_subject_trigger_reply_wildcard_template_and_event_abi(cluster: Cluster) -> None:
    cluster.start_worker("w1")
    client = await cluster.client()
    try:
        await deploy_tplug(cluster, client)
        await client.add_trigger(spec("shop", subject="shop.*.order", output="done.{2}.{3}"))
        await client.add_trigger(spec("meta", subject="meta.>", fn="subject"))
        await client.add_trigger(spec("hdr", subject="hdr.x", fn="header"))
        with pytest.raises(BadRequest, match="overlaps the trigger's source"):
            await client.add_trigger(spec("loop", subject="loop.*", output="loop.{2}"))
        with pytest.raises(BadRequest, match="exists"):
            await client.add_trigger(spec("shop", subject="shop2.*"))
        for name in ("shop", "meta", "hdr"):
            await bound(client, name)
        outputs = await collect(client, "done.>")
        dlq = await collect(client, client.subjects.trigger_dead_letter("shop"))

        # with a reply: the output is the reply, with the trigger's headers
        reply = await client.nc.request("shop.eu.order", b"hello", timeout=5)
        assert reply.data == b"hello"
        assert (reply.headers or {})[HEADER_TRIGGER] == "shop"
        assert (reply.headers or {})[HEADER_SOURCE_SUBJECT] == "shop.eu.order"
        # without a reply: the output goes to the template's subject
        await client.nc.publish("shop.us.order", b"plain")
        (out, first) = await outputs.count(2)
        assert {out.subject, first.subject} == {"done.eu.order", "done.us.order"}
        plain = next(m for m in outputs.msgs if m.subject == "done.us.order")
        assert plain.data == b"plain"
        assert (plain.headers or {})[HEADER_PLUGIN_VERSION] == "1.0.0"
        # a failure with a reply: the error in headers; without: the dead letter
        reply = await client.nc.request("shop.eu.order", b"Rno", timeout=5)
        assert reply.data == b"" and (reply.headers or {})[HEADER_ERROR_CODE] == "REJECTED"
        await client.nc.publish("shop.eu.order", b"Pboom")
        (letter_msg,) = await dlq.count(1)
        letter = decode(TriggerDeadLetter, letter_msg.data)
        assert letter.error.code is ErrorCode.TRAP and letter.data == b"Pboom"
        assert letter.subject == "shop.eu.order" and letter.trigger == "shop"

        # the host ABI: the event's subject and headers
        reply = await client.nc.request("meta.a.b.c", b"", timeout=5)
        assert reply.data == b"meta.a.b.c"
        reply = await client.nc.request("hdr.x", b"X-Key", headers={"X-Key": "v-42"}, timeout=5)
        assert reply.data == b"v-42"
        reply = await client.nc.request("hdr.x", b"Absent", timeout=5)
        assert reply.data == b""
        # outside a trigger there is no event
        assert await client.invoke("tplug", "subject", b"") == b""

        # the example plugin of docs/triggers.md
        await client.deploy(cluster.example_package("enrich"))
        await cluster.wait_ready(client, "enrich", 1)
        await client.add_trigger(
            spec("enr", subject="orders.*.created", plugin="enrich", fn="enrich")
        )
        await bound(client, "enr")
        reply = await client.nc.request("orders.eu.created", b'{"id": 7 }', timeout=5)
        assert json.loads(reply.data) == {
            "id": 7,
            "enriched_by": "forgeone",
            "subject": "orders.eu.created",
        }
        reply = await client.nc.request("orders.eu.created", b"{}", timeout=5)
        assert json.loads(reply.data)["subject"] == "orders.eu.created"
        reply = await client.nc.request("orders.eu.created", b"[1]", timeout=5)
        assert (reply.headers or {})[HEADER_ERROR_CODE] == "REJECTED"
    finally:
        await client.close()


# --- streams: dead letters, lag and counters in list and metrics ------------------


async def test_stream_poison_and_reject_dead_lettered_then_list_and_metrics(
    cluster: Cluster,
) -> None:
    worker = cluster.start_worker("w1")
    client = await cluster.client()
    js = client.nc.jetstream()
    try:
        await deploy_tplug(cluster, client)
        await js.add_stream(StreamConfig(name="EV", subjects=["ev.>"]))
        await js.add_stream(StreamConfig(name="EVOUT", subjects=["evout.>"]))
        bodies = [b"ok0", b"Pbad", b"ok1", b"Rno", *(f"ok{i}".encode() for i in range(2, 10))]
        for i, body in enumerate(bodies):
            await js.publish(f"ev.k{i}", body)
        reply = await client.add_trigger(
            spec(
                "ev",
                stream="EV",
                start="all",
                output="evout.{2}",
                max_deliver=3,
                backoff_ms=[50],
                ack_wait_ms=5000,
            )
        )
        assert reply.warnings == []

        async def outputs() -> bool:
            return await stored(client, "EVOUT") == 10

        await eventually(outputs, 30, "ten outputs")

        async def letters() -> bool:
            return await stored(client, client.subjects.trigger_dead_letter_stream) == 2

        await eventually(letters, 30, "two dead letters")
        stream = client.subjects.trigger_dead_letter_stream
        dead = {}
        for seq in (1, 2):
            raw = await js.get_msg(stream, seq)
            letter = decode(TriggerDeadLetter, raw.data or b"")
            dead[letter.data] = letter
        assert dead[b"Pbad"].error.code is ErrorCode.TRAP and dead[b"Pbad"].attempts == 3
        assert dead[b"Rno"].error.code is ErrorCode.REJECTED and dead[b"Rno"].attempts == 1
        assert dead[b"Pbad"].stream == "EV" and dead[b"Pbad"].stream_seq == 2
        out = await js.get_msg("EVOUT", 1)
        headers = out.headers or {}
        assert headers[HEADER_SOURCE_STREAM] == "EV" and headers[HEADER_STREAM_SEQ] == "1"

        async def counted() -> Any:
            t = await client.trigger("ev")
            return t if t.dead_lettered == 2 and t.ok == 10 and t.pending == 0 else None

        status = await eventually(counted, 20, "counters in trigger show")
        assert status.errors == 4 and status.state == "active" and status.in_flight == 0
        code, text = await run_cli("trigger", "list", "--nats-url", cluster.url)
        assert code == 0
        row = next(line for line in text.splitlines() if line.startswith("ev "))
        assert "tplug.work" in row and "active" in row and "evout.{2}" in row
        assert row.split()[3] == "0"  # pending
        assert worker.metric("forge_trigger_dead_lettered_total", trigger="ev") == 2
        assert worker.metric("forge_trigger_errors_total", trigger="ev", code="TRAP") == 3
        assert worker.metric("forge_trigger_events_total", trigger="ev", outcome="ok") == 10
        assert worker.metric("forge_trigger_pending", trigger="ev") == 0
    finally:
        await client.close()


# --- ordering ---------------------------------------------


async def test_ordered_by_key_order_parallel_keys_and_a_failing_key(cluster: Cluster) -> None:
    """Key a is slow, key b fast, key c's first event is poison: b is not held up by a, each
    key's outputs keep stream order, and c's later events wait until its first is dead-lettered."""
    cluster.start_worker("w1")
    client = await cluster.client()
    js = client.nc.jetstream()
    try:
        await deploy_tplug(cluster, client)
        await js.add_stream(StreamConfig(name="ORD", subjects=["ord.>"]))
        events = []
        for i in range(6):
            events += [("a", f"S-a-{i}"), ("b", f"b-{i}")]
        events += [("c", "P-c-0"), ("c", "c-1"), ("c", "c-2")]
        for key, body in events:
            await js.publish(f"ord.{key}.new", body.encode())
        seen = await collect(client, "ordout.>")
        dlq = await collect(client, client.subjects.trigger_dead_letter("ord"))
        marks: list[tuple[float, str]] = []

        async def mark(msg: Msg) -> None:
            marks.append((time.monotonic(), msg.subject))

        await client.nc.subscribe("ordout.>", cb=mark)
        await client.nc.subscribe(client.subjects.trigger_dead_letter("ord"), cb=mark)
        await client.add_trigger(
            spec(
                "ord",
                stream="ORD",
                start="all",
                output="ordout.{2}",
                ordered_by=2,
                max_deliver=3,
                backoff_ms=[300],
            )
        )
        await seen.count(14, 30, "ordered outputs")
        (letter_msg,) = await dlq.count(1)
        assert decode(TriggerDeadLetter, letter_msg.data).data == b"P-c-0"
        by_key: dict[str, list[str]] = {}
        for m in seen.msgs:
            by_key.setdefault(m.subject.split(".")[1], []).append(m.data.decode())
        assert by_key["a"] == [f"S-a-{i}" for i in range(6)]
        assert by_key["b"] == [f"b-{i}" for i in range(6)]
        assert by_key["c"] == ["c-1", "c-2"]
        order = [subject for _, subject in sorted(marks)]
        last_b = max(i for i, s in enumerate(order) if s == "ordout.b")
        last_a = max(i for i, s in enumerate(order) if s == "ordout.a")
        assert last_b < last_a, f"key b waited for key a: {order}"
        first_c = order.index("ordout.c")
        letter_at = order.index(client.subjects.trigger_dead_letter("ord"))
        assert letter_at < first_c, f"c's later events ran before its poison was settled: {order}"
        assert last_b < letter_at, "key b was held up by the failing key c"
    finally:
        await client.close()


# --- start positions, pause and resume, no workers ---------------------------------------------


async def test_start_positions_all_new_and_seq(cluster: Cluster) -> None:
    cluster.start_worker("w1")
    client = await cluster.client()
    js = client.nc.jetstream()
    try:
        await deploy_tplug(cluster, client)
        await js.add_stream(StreamConfig(name="SP", subjects=["sp.>"]))
        await js.add_stream(StreamConfig(name="SPOUT", subjects=["spout.>"]))
        for start in range(0, 1000, 250):
            await asyncio.gather(
                *(js.publish("sp.x", f"e{i}".encode()) for i in range(start, start + 250))
            )
        for name, start in (("sp-all", "all"), ("sp-new", "new"), ("sp-seq", "seq:991")):
            await client.add_trigger(spec(name, stream="SP", start=start, output=f"spout.{name}"))
            await bound(client, name)

        async def count(subject: str, n: int) -> None:
            async def probe() -> bool:
                info = await js.stream_info("SPOUT", subjects_filter=subject)
                return (info.state.subjects or {}).get(subject, 0) >= n

            await eventually(probe, 30, f"{n} outputs on {subject}")

        await count("spout.sp-all", 1000)
        await count("spout.sp-seq", 10)
        await js.publish("sp.x", b"after")
        await count("spout.sp-all", 1001)
        await count("spout.sp-new", 1)
        await count("spout.sp-seq", 11)
        info = await js.stream_info("SPOUT", subjects_filter="spout.>")
        assert info.state.subjects == {
            "spout.sp-all": 1001,
            "spout.sp-new": 1,
            "spout.sp-seq": 11,
        }
    finally:
        await client.close()


async def test_no_workers_then_pause_publish_resume_handles_each_once(cluster: Cluster) -> None:
    client = await cluster.client()
    js = client.nc.jetstream()
    try:
        await deploy_tplug(cluster, client, workers=0)
        await js.add_stream(StreamConfig(name="PR", subjects=["pr.>"]))
        await js.add_stream(StreamConfig(name="PROUT", subjects=["prout.>"]))
        await client.add_trigger(spec("pr", stream="PR", output="prout.{2}"))
        code, text = await run_cli("trigger", "list", "--nats-url", cluster.url)
        assert code == 0 and "no workers" in text, text

        cluster.start_worker("w1")
        await cluster.wait_ready(client, "tplug", 1)
        await bound(client, "pr")
        await js.publish("pr.warm", b"x")

        async def one() -> bool:
            return await stored(client, "PROUT") == 1

        await eventually(one, 20, "the first output")

        code, text = await run_cli("trigger", "pause", "pr", "--nats-url", cluster.url)
        assert code == 0 and "paused" in text

        async def unbound() -> bool:
            return (await client.trigger("pr")).bound_on == []

        await eventually(unbound, 20, "the worker to stop consuming")
        await asyncio.gather(*(js.publish(f"pr.k{i % 7}", f"p{i}".encode()) for i in range(500)))

        async def held() -> bool:
            return (await client.trigger("pr")).pending == 500

        await eventually(held, 20, "500 events pending while paused")
        assert await stored(client, "PROUT") == 1

        status = await client.resume_trigger("pr")
        assert status.state == "active"

        async def all_out() -> bool:
            t = await client.trigger("pr")
            return await stored(client, "PROUT") == 501 and t.pending == 0 and t.in_flight == 0

        await eventually(all_out, 30, "the 500 events handled")
        msgs = await read_all(js, "PROUT", "prout.>", 501)
        seqs = [(m.headers or {})[HEADER_STREAM_SEQ] for m in msgs]
        assert len(seqs) == len(set(seqs)) == 501

        await client.remove_trigger("pr")
        code, text = await run_cli("trigger", "list", "--nats-url", cluster.url)
        assert "no triggers" in text
        with pytest.raises(NotFoundError):
            await js.consumer_info("PR", client.subjects.trigger_consumer("pr"))
    finally:
        await client.close()


# --- the SIGKILL run ---------------------------------------------


def test_stream_trigger_exactly_one_output_through_sigkill(tmp_path: Path) -> None:
    """A smaller run of bench/triggers_bench.py kill (README has the 10,000-event figures)."""
    report = asyncio.run(run_kill(tmp_path, events=2000, workers=2))
    assert report.outputs_total == report.events == 2000, report.line()
    assert report.outputs_distinct == 2000 and report.lost == 0, report.line()
