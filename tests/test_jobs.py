"""Durable jobs: at least once, one stored result per job, through faults."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from bench.jobs_faults import JOBWORK_WAT, run_faults, run_poison
from schemas.errors import DeadlineExceeded, ErrorCode, FunctionNotFound
from tests.cluster import Cluster, eventually


async def test_submit_result_dedupe_deadline_and_stats(
    cluster_factory: Callable[..., Cluster],
) -> None:
    cluster = cluster_factory(coordinator_args=("--job-max-deliver", "2"))
    client = await cluster.client()
    try:
        await cluster.allow("jobwork", "log")
        await client.deploy(
            cluster.wat_package(
                "jobwork", JOBWORK_WAT, exports=["work", "poison"], permissions=["log"]
            )
        )
        # no worker yet: jobs wait in the stream
        first = await client.submit("jobwork", "work", b"once", job_id="same-id")
        again = await client.submit("jobwork", "work", b"once", job_id="same-id")
        assert first == again == "same-id"
        late = await client.submit("jobwork", "work", b"late", deadline=0.001)
        missing = await client.submit("jobwork", "nope", b"x")

        async def pending() -> bool:
            (s,) = await client.job_stats()
            return s.plugin == "jobwork" and s.pending == 3  # same-id was stored once

        await eventually(pending, 10, "three pending jobs")

        cluster.start_worker("w1")
        assert await client.result("same-id", timeout=30) == b"once"
        with pytest.raises(DeadlineExceeded):
            await client.result(late, timeout=30)
        with pytest.raises(FunctionNotFound):
            await client.result(missing, timeout=30)
        stored = await client.job_result("same-id")
        assert stored.result.worker == "w1" and stored.attempts == 1

        ids = [await client.submit("jobwork", "work", f"n{i}".encode()) for i in range(25)]
        got = {r.job_id: r.result.output async for r in client.results(ids, timeout=60)}
        assert got == {j: f"n{i}".encode() for i, j in enumerate(ids)}
        # a result fetched long after it finished is still there
        assert await client.result(ids[0], timeout=1) == b"n0"

        (s,) = await client.job_stats()
        assert s.pending == 0 and s.in_flight == 0
        assert s.dead_lettered == 2  # the deadline and the missing function
        assert cluster.procs[-1].metric("forge_jobs_dead_lettered_total", plugin="jobwork") == 2
    finally:
        await client.close()


def test_cli_submit_result_jobs(cluster: Cluster) -> None:
    import asyncio

    async def deploy() -> None:
        await cluster.allow("jobwork", "log")
        client = await cluster.client()
        await client.deploy(
            cluster.wat_package("jobwork", JOBWORK_WAT, exports=["work"], permissions=["log"])
        )
        await client.close()

    asyncio.run(deploy())
    cluster.start_worker("w1")

    def forgeone(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "coordinator", *args, "--nats-url", cluster.url],
            capture_output=True,
            timeout=60,
        )

    r = forgeone("submit", "jobwork", "work", "hello", "--job-id", "cli-1")
    assert r.returncode == 0 and r.stdout.strip() == b"cli-1", r.stderr
    r = forgeone("result", "cli-1", "--timeout", "30")
    assert r.returncode == 0 and r.stdout == b"hello", r.stderr
    r = forgeone("jobs")
    assert r.returncode == 0 and b"jobwork" in r.stdout and b"PENDING" in r.stdout
    r = forgeone("result", "never-submitted", "--timeout", "0.5")
    assert r.returncode == 1 and b"TIMEOUT" in r.stderr


def test_poison_job_is_dead_lettered_and_others_flow(tmp_path: Path) -> None:
    import asyncio

    out = asyncio.run(run_poison(tmp_path, max_deliver=3))
    assert out == {
        "poison_error": ErrorCode.TRAP.value,
        "poison_attempts": 3,
        "good_ok": 20,
        "dead_lettered": 1,
    }


@pytest.mark.parametrize("mode", ["worker", "server", "cluster"])
def test_nothing_lost_through_faults(tmp_path: Path, mode: str) -> None:
    """Smaller versions of bench/jobs_faults.py (README "Reliability" has the full runs)."""
    import asyncio

    report = asyncio.run(run_faults(tmp_path, mode, jobs=400, workers=3, kills=2))
    assert report.faults, "the fault was injected"
    assert report.lost == 0, report.line()
    assert report.results == report.submitted == 400
    assert report.ok_results == 400
    assert report.stored_duplicates == 0, report.line()


#: Logs "start", then spins until ``now()`` has advanced by the i64 nanoseconds given as
#: input (8 bytes, little-endian).
SLOW_WAT = """(module
  (import "forge" "now" (func $now (result i64)))
  (import "forge" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "start")
  (func (export "alloc") (param i32) (result i32) i32.const 1024)
  (func (export "wait") (param $p i32) (param $n i32) (result i64)
    (local $until i64)
    (call $log (i32.const 1) (i32.const 16) (i32.const 5))
    (local.set $until (i64.add (call $now) (i64.load (local.get $p))))
    (block $done (loop $spin
      (br_if $done (i64.ge_s (call $now) (local.get $until)))
      (br $spin)))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.extend_i32_u (local.get $n)))))"""


async def test_a_job_longer_than_the_ack_wait_runs_once(
    cluster_factory: Callable[..., Cluster],
) -> None:
    """Held jobs are marked in progress, so a 3 s job under a 1 s ack wait is not
    redelivered meanwhile (the consumer counts no redelivery; one "start" log line)."""
    cluster = cluster_factory(coordinator_args=("--job-ack-wait", "1"))
    client = await cluster.client()
    starts: list[bytes] = []
    try:
        await cluster.allow("slowjob", "clock", "log")
        await client.deploy(
            cluster.wat_package(
                "slowjob",
                SLOW_WAT,
                exports=["wait"],
                permissions=["clock", "log"],
                limits={"timeout_ms": 10_000},
            )
        )
        sub = await client.nc.subscribe(
            client.subjects.syscall_logs("slowjob"), cb=_append_to(starts)
        )
        cluster.start_worker("w1")
        cluster.start_worker("w2")
        job = await client.submit("slowjob", "wait", (3_000_000_000).to_bytes(8, "little"))
        assert len(await client.result(job, timeout=30)) == 8
        (stats,) = await client.job_stats()
        assert stats.redelivered == 0, stats

        async def logged() -> bool:
            return bool(starts)

        await eventually(logged, 10, "the job's start log line")
        assert len(starts) == 1, f"the job started {len(starts)} times"
        assert (await client.job_result(job)).attempts == 1
        await sub.unsubscribe()
    finally:
        await client.close()


def _append_to(sink: list[bytes]) -> Callable[[Msg], Awaitable[None]]:
    async def append(msg: Msg) -> None:
        sink.append(msg.data)

    return append
