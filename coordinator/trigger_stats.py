"""Trigger counters as the workers report them, summed per trigger over worker
incarnations (what ``forgeone trigger list`` shows as events, errors, rate and hosts)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import OrderedDict

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas.codec import DecodeError, decode
from schemas.subjects import Subjects
from schemas.triggers import TriggerCounters, TriggerStats

from .registry import MISSED_BEATS

log = logging.getLogger("forge.coordinator.triggers")

#: Worker incarnations whose counters are remembered after they stop reporting.
MAX_INCARNATIONS = 512


class TriggerStatsView:
    """Per-trigger counters summed over worker incarnations, from their stats messages."""

    def __init__(self) -> None:
        self._seen: OrderedDict[tuple[str, int], tuple[TriggerStats, float]] = OrderedDict()
        self._sub: Subscription | None = None

    async def start(self, nc: Client, subjects: Subjects) -> None:
        self._sub = await nc.subscribe(subjects.trigger_stats_all(), cb=self._on_stats)

    async def _on_stats(self, msg: Msg) -> None:
        try:
            stats = decode(TriggerStats, msg.data)
        except DecodeError as e:
            log.warning("event=bad_trigger_stats subject=%s error=%s", msg.subject, e)
            return
        self.record(stats)

    def record(self, stats: TriggerStats) -> None:
        key = (stats.worker_id, stats.started_at_ms)
        self._seen[key] = (stats, time.monotonic())
        self._seen.move_to_end(key)
        while len(self._seen) > MAX_INCARNATIONS:
            self._seen.popitem(last=False)

    def _alive(self, stats: TriggerStats, at: float) -> bool:
        return not stats.stopping and (
            time.monotonic() - at <= MISSED_BEATS * stats.interval_ms / 1000
        )

    def aggregate(self, name: str) -> tuple[TriggerCounters, list[str]]:
        """Summed counters of trigger ``name`` (rate of live workers only) and the live
        workers bound to it."""
        total = TriggerCounters(name=name)
        bound: list[str] = []
        latest_error_at = -1
        for stats, at in self._seen.values():
            alive = self._alive(stats, at)
            for c in stats.triggers:
                if c.name != name:
                    continue
                total = dataclasses.replace(
                    total,
                    events=total.events + c.events,
                    ok=total.ok + c.ok,
                    errors=total.errors + c.errors,
                    dead_lettered=total.dead_lettered + c.dead_lettered,
                    in_flight=total.in_flight + (c.in_flight if alive else 0),
                    rate_per_s=total.rate_per_s + (c.rate_per_s if alive else 0.0),
                )
                if c.last_error and stats.sent_at_ms > latest_error_at:
                    latest_error_at = stats.sent_at_ms
                    total = dataclasses.replace(total, last_error=c.last_error)
                if alive and c.bound:
                    bound.append(stats.worker_id)
        return total, sorted(set(bound))
