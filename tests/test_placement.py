"""Placement on real processes: replicas, reassignment after a lost worker, labels.

Workers beat every 0.3 s (tests/cluster.py); the coordinator declares a worker lost after
3 missed beats (about 0.9 s) and re-places every heartbeat period, so a replica lost to
SIGKILL is back on another worker well within REASSIGN_S (which also covers loading and
compiling the plugin on the new worker).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from nats.js.errors import NoKeysError
from nats.js.kv import KeyValue

from coordinator.client import ForgeClient
from coordinator.placement import place
from schemas.errors import ForgeError
from schemas.messages import DeploymentRecord, Heartbeat, VersionEntry
from tests.cluster import Cluster, eventually

#: Seconds within which a lost replica must be ready on another worker.
REASSIGN_S = 15.0
#: Most fast calls that may fail while a replica is killed. The caller below is sequential,
#: so at most one call is in flight on the killed worker when it dies; NATS drops the dead
#: connection's queue subscription at once, so later calls go to the surviving replica
#: (which never stops serving, so NO_WORKERS cannot happen while one of two survives).
MAX_FAILED_CALLS = 1


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


async def _keys(kv: KeyValue) -> list[str]:
    try:
        return list(await kv.keys())
    except NoKeysError:
        return []


def _beat(wid: str, **labels: str) -> Heartbeat:
    return Heartbeat(worker_id=wid, labels=labels)


def _record(replicas: int, **labels: str) -> DeploymentRecord:
    from tests.test_codec import DIGEST_A, sample_manifest

    entry = VersionEntry("1.2.0", DIGEST_A, sample_manifest("1.2.0"))
    return DeploymentRecord("textstats", [entry], replicas=replicas, labels=labels)


def test_place_spreads_zones_keeps_assignees_and_balances() -> None:
    workers = [_beat("a1", zone="a"), _beat("a2", zone="a"), _beat("b1", zone="b")]
    # a fresh placement spreads over zones before it doubles up in one
    assert sorted(place(_record(2), [], workers, Counter())) == ["a1", "b1"]
    # live, matching assignees are kept; only the missing replica is placed
    assert place(_record(2), ["a2", "gone"], workers, Counter()) == ["a2", "b1"]
    # the least loaded eligible worker is chosen within a zone
    assert place(_record(1, zone="a"), [], workers, Counter({"a1": 3})) == ["a2"]
    # never more than the eligible workers, never an unlabelled one
    assert place(_record(5, zone="b"), [], workers, Counter()) == ["b1"]
    # while the coordinator warms up, assignees it has not heard from are kept
    assert place(_record(2), ["gone"], workers, Counter(), keep_unseen=True)[0] == "gone"
