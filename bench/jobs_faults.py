"""Durable jobs under faults: kill workers, restart the server, lose a cluster node.

    python bench/jobs_faults.py worker   --jobs 5000 --workers 3 --kills 3
    python bench/jobs_faults.py server   --jobs 5000
    python bench/jobs_faults.py cluster  --jobs 5000
    python bench/jobs_faults.py poison

Each run starts its own nats-server(s), coordinator and worker processes on
loopback, submits jobs to a plugin that works ~1 ms per job and logs each
completed run, injects the fault while jobs are in flight, and prints:
submitted, results, duplicates run (completed executions beyond one per job),
lost (jobs without a stored result), and stored duplicates (results beyond one
per job in the results stream). The test suite runs smaller versions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from coordinator.client import ForgeClient
from schemas.codec import decode
from schemas.messages import LogEvent
from tests.cluster import Cluster, eventually

#: ~1 ms of work per job, then one log line naming the job, then echo the input.
JOBWORK_WAT = """(module
  (import "forge" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) i32.const 1024)
  (func (export "work") (param $p i32) (param $n i32) (result i64)
    (local $i i32)
    (local.set $i (i32.const 1500000))
    (block $done (loop $spin
      (br_if $done (i32.eqz (local.get $i)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br $spin)))
    (call $log (i32.const 1) (local.get $p) (local.get $n))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.extend_i32_u (local.get $n))))
  (func (export "poison") (param i32 i32) (result i64) unreachable))"""


@dataclass
class Report:
    mode: str
    submitted: int
    results: int
    ok_results: int
    duplicates_run: int
    redelivered: int
    lost: int
    stored_duplicates: int
    faults: list[str]
    seconds: float

    def line(self) -> str:
        return (
            f"{self.mode}: submitted {self.submitted}, results {self.results} "
            f"({self.ok_results} ok), duplicates run {self.duplicates_run}, redelivered "
            f"{self.redelivered}, lost {self.lost}, "
            f"stored duplicates {self.stored_duplicates}; faults: {', '.join(self.faults)}; "
            f"{self.seconds:.1f}s"
        )


async def _deploy_jobwork(cluster: Cluster, client: ForgeClient, workers: int) -> None:
    await client.grant("plugin.jobwork", "log")
    await client.deploy(
        cluster.wat_package(
            "jobwork",
            JOBWORK_WAT,
            exports=["work", "poison"],
            permissions=["log"],
            limits={"max_input_bytes": 1024, "timeout_ms": 10_000, "pool_size": 2},
        )
    )
    await cluster.wait_ready(client, "jobwork", workers, timeout=60)


async def run_faults(
    root: Path,
    mode: str,
    jobs: int = 5000,
    workers: int = 3,
    kills: int = 3,
    ack_wait: float = 2.0,
    seed: int = 7,
) -> Report:
    """One fault run; ``mode`` is worker, server or cluster."""
    rng = random.Random(seed)
    cluster = Cluster(root, nodes=3 if mode == "cluster" else 1)
    faults: list[str] = []
    try:
        cluster.start_coordinator("--job-ack-wait", str(ack_wait), "--job-max-deliver", "50")
        procs = [
            cluster.start_worker(f"w{i}", extra=["--slots", "2", "--job-backoff", "0.2"])
            for i in range(workers)
        ]
        client = await ForgeClient.connect(cluster.url)
        await _deploy_jobwork(cluster, client, workers)

        runs: Counter[str] = Counter()

        async def on_log(msg) -> None:  # type: ignore[no-untyped-def]
            runs[decode(LogEvent, msg.data).message] += 1

        await client.nc.subscribe(client.subjects.syscall("jobwork", "log"), cb=on_log)
        await client.nc.flush()

        started = time.monotonic()
        ids = [f"job-{i:06d}" for i in range(jobs)]
        sem = asyncio.Semaphore(256)

        async def submit(job_id: str) -> None:
            async with sem:
                await client.submit("jobwork", "work", job_id.encode(), job_id=job_id)

        submitting = asyncio.gather(*(submit(j) for j in ids))
        done: dict[str, bool] = {}

        async def collect() -> None:
            async for res in client.results(ids, timeout=600):
                done[res.job_id] = res.result.ok

        collecting = asyncio.create_task(collect())

        async def reached(fraction: float) -> None:
            async def probe() -> bool:
                return len(done) >= int(jobs * fraction)

            await eventually(probe, 300, f"{fraction:.0%} of results")

        if mode == "worker":
            for k in range(kills):
                await reached((k + 1) / (kills + 2))
                victim = rng.choice([p for p in procs if p.popen.poll() is None])
                victim.stop("kill")
                faults.append(f"SIGKILL {victim.name} at {len(done)} results")
                procs.append(
                    cluster.start_worker(
                        f"w{workers + k}", extra=["--slots", "2", "--job-backoff", "0.2"]
                    )
                )
        elif mode == "server":
            await reached(1 / 3)
            cluster.restart_node(0, kill=True)
            faults.append(f"SIGKILL + restart nats-server at {len(done)} results")
        elif mode == "cluster":
            await reached(1 / 3)
            victim = rng.randrange(len(cluster.servers))
            cluster.servers[victim].stop(kill=True)
            faults.append(f"SIGKILL nats node n{victim} at {len(done)} results (not restarted)")
        await submitting
        await collecting
        seconds = time.monotonic() - started
        stored = await _stored_results(client, cluster, expected=len(done))
        redelivered = sum(
            int(p.metric("forge_jobs_redelivered_total")) for p in procs if p.popen.poll() is None
        )
        await client.close()
        return Report(
            mode=mode,
            submitted=jobs,
            results=len(done),
            ok_results=sum(done.values()),
            duplicates_run=sum(n - 1 for n in runs.values() if n > 1),
            redelivered=redelivered,
            lost=jobs - len(done),
            stored_duplicates=stored - len(done),
            faults=faults,
            seconds=seconds,
        )
    finally:
        cluster.close()


async def _stored_results(client: ForgeClient, cluster: Cluster, expected: int) -> int:
    """Messages in the results stream, once it holds ``expected`` of them (or after 30 s).

    A result can reach a subscriber while its store is lost in a leader election; the job
    then stays unacked, is redelivered after the ack wait and stored, so the count
    converges rather than being final at the moment the last result arrived.
    """
    js = client.nc.jetstream()
    last = 0

    async def probe() -> bool:
        nonlocal last
        info = await js.stream_info(client.subjects.results_stream)
        last = int(info.state.messages)
        return last >= expected

    # on timeout, report what is there: the caller compares it with the results seen
    with contextlib.suppress(AssertionError):
        await eventually(probe, 30, "the results stream to hold every result")
    return last


async def run_poison(root: Path, max_deliver: int = 3) -> dict[str, object]:
    """A job that traps every time: dead-lettered after max deliveries; others keep flowing."""
    cluster = Cluster(root)
    try:
        cluster.start_coordinator("--job-ack-wait", "5", "--job-max-deliver", str(max_deliver))
        cluster.start_worker("w0", extra=["--job-backoff", "0.1"])
        client = await ForgeClient.connect(cluster.url)
        await _deploy_jobwork(cluster, client, 1)
        poison = await client.submit("jobwork", "poison", b"x", job_id="poison-1")
        good = [await client.submit("jobwork", "work", f"g{i}".encode()) for i in range(20)]
        poisoned = await client.job_result(poison, timeout=60)
        outputs = [await client.result(j, timeout=60) for j in good]
        stats = {s.plugin: s for s in await client.job_stats()}
        await client.close()
        return {
            "poison_error": poisoned.result.error.code.value if poisoned.result.error else "",
            "poison_attempts": poisoned.attempts,
            "good_ok": len(outputs),
            "dead_lettered": stats["jobwork"].dead_lettered,
        }
    finally:
        cluster.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", choices=["worker", "server", "cluster", "poison"])
    p.add_argument("--jobs", type=int, default=5000)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="forge-faults-") as tmp:
        if a.mode == "poison":
            print(json.dumps(asyncio.run(run_poison(Path(tmp)))))
            return
        report = asyncio.run(run_faults(Path(tmp), a.mode, a.jobs, a.workers, a.kills))
    print(json.dumps(asdict(report)) if a.json else report.line())
    if report.lost or report.stored_duplicates:
        sys.exit(1)


if __name__ == "__main__":
    main()
