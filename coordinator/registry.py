"""The coordinator's view of the cluster, built from worker heartbeats."""

from __future__ import annotations

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
        else:
            self._workers[beat.worker_id] = _Seen(beat, time.monotonic())

    def alive(self) -> list[Heartbeat]:
        now = time.monotonic()
        for wid, seen in list(self._workers.items()):
            if now - seen.at > MISSED_BEATS * seen.beat.interval_ms / 1000:
                del self._workers[wid]
        return sorted((s.beat for s in self._workers.values()), key=lambda b: b.worker_id)
