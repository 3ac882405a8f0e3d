"""``forgeone top``: a live view, refreshed in place, of the cluster by worker and by plugin.

Everything comes from what the coordinator already knows (worker heartbeats,
job and trigger state); rates are differences between two refreshes.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from schemas.errors import ForgeError
from schemas.messages import Heartbeat

from .client import ForgeClient
from .jobs_client import JobStats
from .registry import per_second


@dataclass(frozen=True, slots=True)
class Snapshot:
    at: float
    workers: list[Heartbeat]
    jobs: list[JobStats]
    trigger_lag: dict[str, tuple[int, float]]
    """trigger name -> (pending events, events per second)."""


async def snapshot(client: ForgeClient) -> Snapshot:
    workers = await client.workers()
    try:
        jobs = await client.job_stats()
    except ForgeError:
        jobs = []
    lag: dict[str, tuple[int, float]] = {}
    try:
        for t in await client.triggers():
            lag[t.spec.name] = (t.pending or 0, t.rate_per_s)
    except ForgeError:
        pass
    return Snapshot(time.monotonic(), workers, jobs, lag)


def _rate(now: int, before: int | None, seconds: float) -> str:
    rate = per_second(now, before, seconds)
    return "-" if rate is None else f"{rate:.1f}"


def render(cur: Snapshot, prev: Snapshot | None) -> Group:
    dt = cur.at - prev.at if prev else 0.0
    before_w = {w.worker_id: w for w in prev.workers} if prev else {}
    wt = Table(title="workers", expand=True)
    for col in ("worker", "labels", "slots busy", "calls/s", "errors/s", "rss MiB", "plugins"):
        wt.add_column(col)
    for w in cur.workers:
        old = before_w.get(w.worker_id)
        wt.add_row(
            w.worker_id,
            ",".join(f"{k}={v}" for k, v in w.labels.items()) or "-",
            f"{w.slots_busy}/{w.slots_total}",
            _rate(w.calls_total, old.calls_total if old else None, dt),
            _rate(w.errors_total, old.errors_total if old else None, dt),
            f"{w.rss_bytes / 2**20:.0f}",
            str(len(w.plugins)),
        )
    before_p = {
        (w.worker_id, p.plugin, p.version): p
        for w in (prev.workers if prev else [])
        for p in w.plugins
    }
    pt = Table(title="plugins (per worker)", expand=True)
    for col in (
        "plugin",
        "worker",
        "state",
        "calls/s",
        "errors/s",
        "p50 ms",
        "p99 ms",
        "busy/idle",
    ):
        pt.add_column(col)
    for w in cur.workers:
        for p in sorted(w.plugins, key=lambda p: (p.plugin, p.version)):
            was = before_p.get((w.worker_id, p.plugin, p.version))
            pt.add_row(
                f"{p.plugin}@{p.version}",
                w.worker_id,
                p.state,
                _rate(p.calls_total, was.calls_total if was else None, dt),
                _rate(p.errors_total, was.errors_total if was else None, dt),
                f"{p.p50_us / 1000:.2f}",
                f"{p.p99_us / 1000:.2f}",
                f"{p.pool_busy}/{p.pool_idle}",
            )
    jt = Table(title="lag", expand=True)
    for col in ("source", "pending", "in flight", "redelivered", "dead", "rate/s"):
        jt.add_column(col)
    for j in cur.jobs:
        jt.add_row(
            f"jobs {j.plugin}",
            str(j.pending),
            str(j.in_flight),
            str(j.redelivered),
            str(j.dead_lettered),
            "-",
        )
    for name, (pending, rate) in sorted(cur.trigger_lag.items()):
        jt.add_row(f"trigger {name}", str(pending), "-", "-", "-", f"{rate:.1f}")
    return Group(wt, pt, jt)


async def run_top(
    client: ForgeClient, interval_s: float, once: bool, console: Console | None = None
) -> int:
    console = console or Console()
    prev = await snapshot(client)
    if once:
        await asyncio.sleep(interval_s)  # one refresh period, so rates can be computed
        console.print(render(await snapshot(client), prev))
        return 0
    with Live(render(prev, None), console=console, refresh_per_second=4, screen=False) as live:
        while True:
            await asyncio.sleep(interval_s)  # the refresh period
            cur = await snapshot(client)
            live.update(render(cur, prev))
            prev = cur
