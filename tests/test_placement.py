"""Placement: replicas, reassignment after a lost worker, labels, memory budgets,
rebalancing onto a new worker and calls/s, on real processes; place() on its own.

Workers beat every 0.3 s (tests/cluster.py); the coordinator declares a worker lost after
3 missed beats (about 0.9 s) and re-places every heartbeat period, so a replica lost to
SIGKILL is back on another worker well within REASSIGN_S (which also covers loading and
compiling the plugin on the new worker).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import replace

import pytest
from nats.js.errors import NoKeysError
from nats.js.kv import KeyValue

from coordinator.client import ForgeClient
from coordinator.placement import (
    MOVES_PER_TICK,
    memory_need,
    place,
    place_all,
    short_reason,
)
from coordinator.registry import calls_rate, per_second
from schemas.codec import decode
from schemas.errors import ForgeError
from schemas.manifest import MIB, Limits
from schemas.messages import Assignment, DeploymentRecord, Heartbeat, LoadedPlugin, VersionEntry
from tests.cluster import PLUGINS, Cluster, built_plugins, eventually, manifest_for
from tests.test_cli import forgeone
from tests.test_codec import DIGEST_A, sample_manifest, sample_record
from worker.settings import parse_args, parse_size

#: Seconds within which a lost replica must be ready on another worker.
REASSIGN_S = 15.0
#: Most fast calls that may fail while a replica is killed. The caller below is sequential,
#: so at most one call is in flight on the killed worker when it dies; NATS drops the dead
#: connection's queue subscription at once, so later calls go to the surviving replica
#: (which never stops serving, so NO_WORKERS cannot happen while one of two survives).
MAX_FAILED_CALLS = 1
#: Most calls that may fail while a replica moves: none. Placement drops the old host only
#: once the new one is ready, so a host is always subscribed, and a worker leaves a queue
#: group with ``drain()`` (worker/invoke.py), serving the calls NATS routed to it before
#: the server saw the UNSUB.
MAX_FAILED_ON_MOVE = 0


async def ready_on(client: ForgeClient, plugin: str) -> set[str]:
    for p in await client.plugins():
        if p.record.plugin == plugin:
            return set(p.ready_workers)
    return set()


async def hosts_of(client: ForgeClient, plugin: str) -> set[str]:
    """Workers whose latest heartbeat lists ``plugin`` in any state."""
    return {
        w.worker_id for w in await client.workers() if any(p.plugin == plugin for p in w.plugins)
    }


async def settle(client: ForgeClient, plugin: str, want: int, timeout: float = 20) -> set[str]:
    """Wait until exactly ``want`` workers report ``plugin`` ready, and only those host it."""

    async def probe() -> set[str] | None:
        ready = await ready_on(client, plugin)
        if len(ready) == want and await hosts_of(client, plugin) == ready:
            return ready
        return None

    return await eventually(probe, timeout, f"{plugin} on exactly {want} workers")


async def test_two_replicas_of_three_and_reassignment_after_kill(cluster: Cluster) -> None:
    procs = {w: cluster.start_worker(w) for w in ("w1", "w2", "w3")}
    client = await cluster.client()
    try:
        reply = await client.deploy(cluster.example_package("echo"), replicas=2)
        assert reply.record.replicas == 2
        hosting = await settle(client, "echo", 2)
        (spare,) = set(procs) - hosting
        assert procs[spare].metric("forge_plugins_loaded", state="ready") == 0
        (status,) = [p for p in await client.plugins() if p.record.plugin == "echo"]
        assert status.wanted == 2

        failed: Counter[str] = Counter()
        ok = 0
        stop = asyncio.Event()

        async def caller() -> None:
            nonlocal ok
            deadline = time.monotonic() + 60  # bounded in time and in calls
            for i in range(20_000):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                try:
                    out = await client.invoke("echo", "echo", str(i).encode(), timeout=2)
                    assert out == str(i).encode()
                    ok += 1
                except ForgeError as e:
                    failed[e.code.value] += 1

        async def calls_beyond(n: int) -> bool:
            return ok > n

        task = asyncio.create_task(caller())
        await eventually(lambda: calls_beyond(20), 10, "calls flowing")
        victim = sorted(hosting)[0]
        survivor = (hosting - {victim}).pop()
        killed_at = time.monotonic()
        procs[victim].stop("kill")

        async def replaced() -> bool:
            return await ready_on(client, "echo") == {survivor, spare}

        await eventually(replaced, REASSIGN_S, f"{spare} to take over echo from {victim}")
        took = time.monotonic() - killed_at
        before = ok
        await eventually(lambda: calls_beyond(before + 50), 10, "calls after takeover")
        stop.set()
        await asyncio.wait_for(task, 10)
        print(f"reassigned in {took:.2f}s; calls ok={ok} failed={dict(failed)}")
        assert took < REASSIGN_S
        assert sum(failed.values()) <= MAX_FAILED_CALLS, dict(failed)
        assert await hosts_of(client, "echo") == {survivor, spare}

        # the coordinator is not on the call path: with it stopped, workers keep serving
        coordinator = next(p for p in cluster.procs if p.name == "coordinator")
        assert coordinator.stop() == 0
        for _ in range(20):
            assert await client.invoke("echo", "upper", b"still", timeout=5) == b"STILL"
    finally:
        await client.close()


async def test_labels_restrict_placement(cluster: Cluster) -> None:
    cluster.start_worker("a1", extra=["--label", "zone=a"])
    cluster.start_worker("b1", extra=["--label", "zone=b"])
    cluster.start_worker("a2", extra=["--label", "zone=a"])
    client = await cluster.client()
    try:

        async def three() -> bool:
            return len(await client.workers()) == 3

        await eventually(three, 10, "three workers heartbeating")
        reply = await client.deploy(
            cluster.example_package("echo"), replicas=3, labels={"zone": "a"}
        )
        assert reply.record.labels == {"zone": "a"}
        assert await settle(client, "echo", 2) == {"a1", "a2"}  # only two workers match
        for _ in range(20):
            r = await client.invoke_result("echo", "echo", b"x", timeout=5)
            assert r.ok and r.worker in {"a1", "a2"}

        # back to replicas 0: every worker hosts it and the assignment key goes away
        await client.deploy(cluster.example_package("echo"))
        assert await settle(client, "echo", 3) == {"a1", "b1", "a2"}
        (status,) = [p for p in await client.plugins() if p.record.plugin == "echo"]
        assert status.wanted == 3
        kv = await client.nc.jetstream().key_value(client.subjects.assignments_bucket)

        async def unassigned() -> bool:
            return "echo" not in await _keys(kv)

        await eventually(unassigned, 10, "echo's assignment deleted")
    finally:
        await client.close()


def echo_as(cluster: Cluster, name: str, **limits: int) -> bytes:
    """The echo example plugin packaged under another name (and limits)."""
    wasm = built_plugins()["echo"].read_bytes()
    source = json.loads((PLUGINS / "echo" / "forge.json").read_text())
    fields = {k: v for k, v in source.items() if k != "name"}
    fields["limits"] = limits
    return cluster.package(manifest_for(name, wasm, **fields), wasm)


async def live_workers(client: ForgeClient, n: int) -> list[Heartbeat]:
    async def probe() -> list[Heartbeat] | None:
        workers = await client.workers()
        return workers if len(workers) == n else None

    return await eventually(probe, 10, f"{n} workers heartbeating")


async def test_replica_moves_to_a_new_worker_without_failed_calls(cluster: Cluster) -> None:
    """Four plugins with one replica each on two workers (2 + 2); a third worker joins and
    one replica moves onto it, make before break, while every call keeps succeeding."""
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    client = await cluster.client()
    names = ["m1", "m2", "m3", "m4"]
    try:
        await live_workers(client, 2)
        for name in names:
            await client.deploy(echo_as(cluster, name), replicas=1)
        before = {name: (await settle(client, name, 1)).pop() for name in names}
        assert Counter(before.values()) == {"w1": 2, "w2": 2}

        failed: Counter[str] = Counter()
        ok = 0
        stop = asyncio.Event()

        async def caller() -> None:
            nonlocal ok
            deadline = time.monotonic() + 25  # bounded in time and in calls
            for i in range(40_000):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                data = str(i).encode()
                try:
                    assert await client.invoke(names[i % 4], "echo", data, timeout=2) == data
                    ok += 1
                except ForgeError as e:
                    failed[e.code.value] += 1

        async def calls_beyond(n: int) -> bool:
            return ok > n

        task = asyncio.create_task(caller())
        await eventually(lambda: calls_beyond(50), 10, "calls flowing")
        await asyncio.to_thread(cluster.start_worker, "w3")  # calls go on meanwhile

        async def moved() -> str | None:
            on_w3 = [n for n in names if await hosts_of(client, n) == {"w3"}]
            return on_w3[0] if len(on_w3) == 1 else None

        plugin = await eventually(moved, 20, "one replica moved onto w3")
        done = ok
        await eventually(lambda: calls_beyond(done + 200), 10, "calls after the move")
        stop.set()
        await asyncio.wait_for(task, 10)
        print(f"moved {plugin} from {before[plugin]} to w3; calls ok={ok} failed={dict(failed)}")
        assert set(failed) <= {"TIMEOUT"}, dict(failed)  # never NO_WORKERS: no capacity dip
        assert sum(failed.values()) <= MAX_FAILED_ON_MOVE, dict(failed)
        for name in names:  # one move, nothing else changed
            want = {"w3"} if name == plugin else {before[name]}
            assert await hosts_of(client, name) == want

        # make before break: the source stayed listed until w3 had the plugin ready
        kv = await client.nc.jetstream().key_value(client.subjects.assignments_bucket)
        history = [decode(Assignment, e.value or b"").workers for e in await kv.history(plugin)]
        assert history[-2:] == [["w3", before[plugin]], ["w3"]], history
    finally:
        await client.close()


async def test_worker_with_too_small_a_memory_budget_never_gets_the_plugin(
    cluster: Cluster,
) -> None:
    cluster.start_worker("tiny", extra=["--memory-budget", "64MiB"])
    cluster.start_worker("big", extra=["--memory-budget", "1GiB"])
    client = await cluster.client()
    try:
        budgets = {w.worker_id: w.memory_budget_bytes for w in await live_workers(client, 2)}
        assert budgets == {"tiny": 64 * MIB, "big": 1024 * MIB}
        # 64 MiB x 4 instances: 256 MiB, more than tiny's whole budget
        await client.deploy(echo_as(cluster, "wide", memory_mb=64, pool_size=4), replicas=2)
        assert await settle(client, "wide", 1) == {"big"}
        r = await asyncio.to_thread(forgeone, "list", url=cluster.url)
        assert b"ready 1/2" in r.stdout, r.stdout
        assert (
            b"SHORT: on 1 of 2: 1 worker(s) lack memory (need 256MiB, most free 64MiB)" in r.stdout
        ), r.stdout
        coordinator = next(p for p in cluster.procs if p.name == "coordinator")

        async def logged() -> bool:
            return "event=placement_short plugin=wide" in coordinator.log_text()

        await eventually(logged, 10, "the coordinator to log why wide is short")
        # a plugin that fits goes to both; placement has run since, and wide stayed off tiny
        await client.deploy(echo_as(cluster, "narrow", memory_mb=8, pool_size=2), replicas=2)
        assert await settle(client, "narrow", 2) == {"tiny", "big"}
        assert await hosts_of(client, "wide") == {"big"}
        assert (await ready_on(client, "wide")) == {"big"}
        kv = await client.nc.jetstream().key_value(client.subjects.assignments_bucket)
        history = [decode(Assignment, e.value or b"").workers for e in await kv.history("wide")]
        assert all("tiny" not in workers for workers in history), history
    finally:
        await client.close()


async def test_workers_show_calls_per_second(cluster: Cluster) -> None:
    cluster.start_worker("w1")
    client = await cluster.client()
    try:
        await client.deploy(echo_as(cluster, "busy"))
        await cluster.wait_ready(client, "busy", 1)
        stop = asyncio.Event()

        async def caller() -> None:
            deadline = time.monotonic() + 20  # bounded in time and in calls
            for _ in range(50_000):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                await client.invoke("busy", "echo", b"x", timeout=2)

        task = asyncio.create_task(caller())

        async def rate() -> float:
            (w,) = await client.workers()
            return w.calls_per_s

        assert await eventually(rate, 10, "a calls/s rate") > 0
        r = await asyncio.to_thread(forgeone, "workers", "--json", url=cluster.url)
        (worker,) = json.loads(r.stdout)
        assert worker["calls_per_s"] > 0 and worker["calls_total"] > 0
        r = await asyncio.to_thread(forgeone, "workers", url=cluster.url)
        assert b"calls/s " in r.stdout, r.stdout
        stop.set()
        await asyncio.wait_for(task, 10)

        async def idle() -> bool:
            return await rate() == 0.0

        await eventually(idle, 10, "calls/s back to 0 once calls stop")
    finally:
        await client.close()


async def _keys(kv: KeyValue) -> list[str]:
    try:
        return list(await kv.keys())
    except NoKeysError:
        return []


def _beat(wid: str, *ready: str, budget_mib: int = 0, **labels: str) -> Heartbeat:
    """A worker's heartbeat; ``ready`` are the plugins it reports ready."""
    plugins = [LoadedPlugin(p, "1.2.0", DIGEST_A) for p in ready]
    return Heartbeat(
        worker_id=wid, labels=labels, plugins=plugins, memory_budget_bytes=budget_mib * MIB
    )


def _record(
    replicas: int, name: str = "textstats", memory_mb: int = 32, pool: int = 8, **labels: str
) -> DeploymentRecord:
    manifest = replace(
        sample_manifest("1.2.0"), name=name, limits=Limits(memory_mb=memory_mb, pool_size=pool)
    )
    entry = VersionEntry("1.2.0", DIGEST_A, manifest)
    return DeploymentRecord(name, [entry], replicas=replicas, labels=labels)


def test_place_spreads_zones_keeps_assignees_and_balances() -> None:
    workers = [_beat("a1", zone="a"), _beat("a2", zone="a"), _beat("b1", zone="b")]
    # a fresh placement spreads over zones before it doubles up in one
    assert sorted(place(_record(2), [], workers).workers) == ["a1", "b1"]
    # live, matching assignees are kept; only the missing replica is placed
    assert place(_record(2), ["a2", "gone"], workers).workers == ["a2", "b1"]
    # the least loaded eligible worker is chosen within a zone
    assert place(_record(1, zone="a"), [], workers, Counter({"a1": 3})).workers == ["a2"]
    # never more than the eligible workers, never an unlabelled one
    placed = place(_record(5, zone="b"), [], workers)
    assert placed.workers == ["b1"]
    assert placed.short == "placed 1 of 5: 2 worker(s) lack labels zone=b"
    # while the coordinator warms up, assignees it has not heard from are kept
    assert place(_record(2), ["gone"], workers, keep_unseen=True).workers[0] == "gone"


def test_memory_need_is_memory_times_pool_size_over_versions() -> None:
    assert memory_need(_record(1, memory_mb=64, pool=4)) == 256 * MIB
    two = replace(sample_record(), replicas=1)  # two versions of 32 MiB x 8 instances
    assert memory_need(two) == 2 * 32 * 8 * MIB


def test_place_respects_memory_budgets() -> None:
    big = _record(2, memory_mb=64, pool=4)  # needs 256 MiB per worker
    workers = [_beat("small", budget_mib=128), _beat("roomy", budget_mib=512), _beat("free")]
    placed = place(big, [], workers)
    assert sorted(placed.target) == ["free", "roomy"]
    # memory already taken counts: 300 MiB of 512 used leaves too little on roomy
    placed = place(big, [], workers, used={"roomy": 300 * MIB})
    assert placed.target == ["free"]
    assert placed.short == (
        "placed 1 of 2: 2 worker(s) lack memory (need 256MiB, most free 212MiB)"
    )
    # an assignee that no longer fits is dropped, not kept
    assert place(big, ["small", "free"], workers).target == ["free", "roomy"]


def test_place_all_counts_plugins_on_every_worker_and_assigned_ones() -> None:
    everywhere = _record(0, "everywhere", memory_mb=16, pool=4)  # 64 MiB on every worker
    first = _record(1, "first", memory_mb=32, pool=4)  # 128 MiB
    second = _record(1, "second", memory_mb=32, pool=4)  # 128 MiB
    records = {r.plugin: r for r in (everywhere, first, second)}
    workers = [_beat("w1", budget_mib=256), _beat("w2", budget_mib=200)]
    out = place_all(records, {}, workers)
    assert "everywhere" not in out  # replicas 0 has no assignment
    assert out["first"].target == ["w1"]  # 64 + 128 fits on w1 and w2; w1 sorts first
    assert out["second"].target == ["w2"]  # w1 would need 64 + 128 + 128 > 256
    # a third plugin fits nowhere: short, with the reason
    third = _record(1, "third", memory_mb=32, pool=4)
    out = place_all({**records, "third": third}, {"first": ["w1"], "second": ["w2"]}, workers)
    assert out["third"].target == []
    assert "2 worker(s) lack memory" in out["third"].short


def test_rebalance_moves_one_replica_make_before_break() -> None:
    records = {p: _record(1, p) for p in ("p1", "p2", "p3", "p4")}
    current = {"p1": ["w1"], "p2": ["w2"], "p3": ["w1"], "p4": ["w2"]}
    old = [_beat("w1", "p1", "p3"), _beat("w2", "p2", "p4")]
    # balanced: nothing moves
    out = place_all(records, current, old)
    assert {p: o.workers for p, o in out.items()} == current
    # a new, empty worker: exactly one replica moves, with its source still listed
    out = place_all(records, current, [*old, _beat("w3")])
    moved = {p: o for p, o in out.items() if o.moved}
    assert list(moved) == ["p4"]  # largest gap, then the last plugin name
    assert moved["p4"].workers == ["w3", "w2"]  # target, then the leaving source
    assert moved["p4"].moved == ("w2", "w3")
    assert all(o.workers == current[p] for p, o in out.items() if p != "p4")
    current = {**current, "p4": ["w3", "w2"]}
    # the new host has not reported ready yet: the source keeps serving, nothing else moves
    out = place_all(records, current, [*old, _beat("w3")])
    assert out["p4"].workers == ["w3", "w2"] and not any(o.moved for o in out.values())
    # ready on the new host: the source is dropped, and 2/1/1 is balanced enough
    ready = [_beat("w1", "p1", "p3"), _beat("w2", "p2", "p4"), _beat("w3", "p4")]
    out = place_all(records, current, ready)
    assert out["p4"].workers == ["w3"] and not any(o.moved for o in out.values())


def test_rebalance_converges_without_thrashing() -> None:
    """Ten plugins on one worker, then three more join: moves happen one per tick and
    stop at a balanced spread; then nothing changes."""
    names = [f"p{i}" for i in range(10)]
    records = {p: _record(1, p) for p in names}
    current: dict[str, list[str]] = {p: ["w1"] for p in names}
    ids = ["w1", "w2", "w3", "w4"]
    moves = 0
    for _tick in range(100):
        hosted = {w: [p for p in names if w in current[p]] for w in ids}
        out = place_all(records, current, [_beat(w, *hosted[w]) for w in ids])
        moved = sum(1 for o in out.values() if o.moved)
        assert moved <= MOVES_PER_TICK
        moves += moved
        new = {p: o.workers for p, o in out.items()}
        if new == current:
            break
        current = new
    else:
        raise AssertionError("placement never settled")
    load = Counter(ws[0] for ws in current.values())
    assert all(len(ws) == 1 for ws in current.values())
    assert max(load.values()) - min(load[w] for w in ids) <= 1, load
    assert moves == 7  # 10/0/0/0 -> 3/3/2/2 (or any order of it), one replica at a time


def test_rebalance_respects_labels_zones_budgets_and_warmup() -> None:
    records = {p: _record(1, p, zone="a") for p in ("p1", "p2")}
    current = {"p1": ["a1"], "p2": ["a1"]}
    a1 = _beat("a1", "p1", "p2", zone="a")
    # the empty worker lacks the label: no move
    assert not any(o.moved for o in place_all(records, current, [a1, _beat("b1")]).values())
    # too small a budget: no move
    tight = _beat("a2", budget_mib=64, zone="a")  # each plugin needs 256 MiB
    assert not any(o.moved for o in place_all(records, current, [a1, tight]).values())
    # fits: it moves, but not while the coordinator warms up
    roomy = _beat("a2", budget_mib=300, zone="a")
    assert any(o.moved for o in place_all(records, current, [a1, roomy]).values())
    out = place_all(records, current, [a1, roomy], keep_unseen=True)
    assert not any(o.moved for o in out.values())
    # zones: a replica in zone b never moves into zone a beside the other one
    records = {"p": _record(2, "p"), "o0": _record(1, "o0"), "o1": _record(1, "o1")}
    current = {"p": ["a1", "b1"], "o0": ["b1"], "o1": ["b1"]}
    busy = [_beat("a1", "p", zone="a"), _beat("b1", "p", "o0", "o1", zone="b")]
    out = place_all(records, current, [*busy, _beat("a2", zone="a")])
    assert out["p"].moved is None  # b1 -> a2 would leave p in zone a only
    assert out["o1"].moved == ("b1", "a2")  # a plugin without zones may go there
    out = place_all(records, current, [*busy, _beat("c1", zone="c")])
    assert out["p"].moved == ("b1", "c1") and out["p"].workers == ["a1", "c1", "b1"]


def test_lowering_replicas_keeps_extra_until_targets_ready() -> None:
    workers = [_beat("w1", "p"), _beat("w2"), _beat("w3", "p")]
    # w2 is a target still loading: w3, beyond replicas, keeps serving meanwhile
    assert place(_record(2, "p"), ["w1", "w2", "w3"], workers).workers == ["w1", "w2", "w3"]
    workers[1] = _beat("w2", "p")
    assert place(_record(2, "p"), ["w1", "w2", "w3"], workers).workers == ["w1", "w2"]


def test_calls_rate_from_two_heartbeats() -> None:
    first = Heartbeat(worker_id="w", started_at_ms=1, sent_at_ms=10_000, calls_total=100)
    later = replace(first, sent_at_ms=12_000, calls_total=600)
    assert calls_rate(later, first) == 250.0
    assert calls_rate(first, None) is None
    assert calls_rate(replace(later, started_at_ms=2), first) is None  # restarted
    assert per_second(5, 10, 1.0) == 0.0  # a counter that went down
    assert per_second(5, None, 1.0) is None and per_second(5, 1, 0.0) is None


def test_short_reason_from_heartbeats() -> None:
    big = _record(2, "big", memory_mb=64, pool=4)
    small = _record(0, "small", memory_mb=16, pool=4)
    workers = [_beat("w1", "big", "small"), _beat("w2", "small", budget_mib=256)]
    assert short_reason(big, workers, [big, small]) == (
        "on 1 of 2: 1 worker(s) lack memory (need 256MiB, most free 192MiB)"
    )
    assert short_reason(small, [*workers, _beat("w3")], [big, small]) == "not ready on w3"


def test_memory_budget_flag() -> None:
    assert parse_args(["--memory-budget", "512MiB"]).memory_budget_bytes == 512 * MIB
    assert parse_args([]).memory_budget_bytes == 0
    assert parse_size("2GiB") == 2 * 1024 * MIB and parse_size("1.5M") == 3 * MIB // 2
    assert parse_size("100MB") == 100_000_000 and parse_size("4096") == 4096
    with pytest.raises(ValueError):
        parse_size("lots")
