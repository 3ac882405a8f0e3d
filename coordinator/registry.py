"""The coordinator's view of the cluster, built from worker heartbeats.

Each live worker's latest heartbeat is kept, with ``calls_per_s`` filled in from it
and the one before (see :func:`per_second`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas.codec import DecodeError, decode
from schemas.messages import Heartbeat
from schemas.subjects import Subjects

log = logging.getLogger("forge.coordinator.registry")

#: Heartbeats a worker may miss before it counts as gone.
MISSED_BEATS = 3


def per_second(now: int, before: int | None, seconds: float) -> float | None:
    """How fast a counter grew between two readings ``seconds`` apart; None without an
    earlier reading or elapsed time. A counter that went down (reset) counts as 0."""
    if before is None or seconds <= 0:
        return None
    return max(0, now - before) / seconds


def calls_rate(beat: Heartbeat, prev: Heartbeat | None) -> float | None:
    """Calls per second between two heartbeats of one worker, timed by the worker's own
    clock (``sent_at_ms``); None when they cannot be compared (first beat, a restart)."""
    if prev is None or prev.started_at_ms != beat.started_at_ms:
        return None
    return per_second(
        beat.calls_total, prev.calls_total, (beat.sent_at_ms - prev.sent_at_ms) / 1000
    )


@dataclass(slots=True)
class _Seen:
    beat: Heartbeat
    at: float


class WorkerRegistry:
    def __init__(self) -> None:
        self._workers: dict[str, _Seen] = {}
        self._sub: Subscription | None = None

    async def start(self, nc: Client, subjects: Subjects) -> None:
        self._sub = await nc.subscribe(subjects.heartbeat_all(), cb=self._on_beat)

    async def _on_beat(self, msg: Msg) -> None:
        try:
            beat = decode(Heartbeat, msg.data)
        except DecodeError as e:
            log.warning("event=bad_heartbeat subject=%s error=%s", msg.subject, e)
            return
        if beat.stopping:
            self._workers.pop(beat.worker_id, None)
            return
        prev = self._workers.get(beat.worker_id)
        rate = calls_rate(beat, prev.beat if prev else None) or 0.0
        beat = dataclasses.replace(beat, calls_per_s=round(rate, 3))
        self._workers[beat.worker_id] = _Seen(beat, time.monotonic())

    def alive(self) -> list[Heartbeat]:
        now = time.monotonic()
        for wid, seen in list(self._workers.items()):
            if now - seen.at > MISSED_BEATS * seen.beat.interval_ms / 1000:
                del self._workers[wid]
        return sorted((s.beat for s in self._workers.values()), key=lambda b: b.worker_id)
