"""Fire-and-forget syscalls (guest logs for now) published on ``<prefix>.syscall.<plugin>.<kind>``.

Publishing only appends to the client's outgoing buffer; it never waits on
the server, so a guest call is never held up by its logs.
"""

from __future__ import annotations

import logging
import time

from nats.aio.client import Client

from schemas.codec import encode
from schemas.messages import LogEvent
from schemas.subjects import Subjects

from . import metrics

log = logging.getLogger("forge.guest")


class SyscallBus:
    def __init__(self, nc: Client, subjects: Subjects, worker_id: str) -> None:
        self.nc = nc
        self.subjects = subjects
        self.worker_id = worker_id

    async def logs(
        self,
        plugin: str,
        version: str,
        fn: str,
        lines: list[tuple[int, str]],
        traceparent: str | None = None,
    ) -> None:
        if not lines:
            return
        subject = self.subjects.syscall(plugin, "log")
        now = int(time.time() * 1000)
        for level, text in lines:
            event = LogEvent(
                plugin,
                version,
                fn,
                self.worker_id,
                level,
                text[:16384],
                now,
                (traceparent or "")[:128],
            )
            try:
                await self.nc.publish(subject, encode(event))
                metrics.SYSCALLS.labels("log").inc()
            except Exception:
                metrics.SYSCALLS_DROPPED.labels("log").inc()
            log.debug(
                "plugin=%s version=%s fn=%s level=%d traceparent=%s msg=%r",
                plugin,
                version,
                fn,
                level,
                traceparent or "-",
                text,
            )
