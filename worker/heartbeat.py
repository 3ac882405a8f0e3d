"""Periodic heartbeats: who this worker is, what it hosts, how busy it is."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

from nats.aio.client import Client

from schemas.codec import encode
from schemas.messages import Heartbeat, LoadedPlugin
from schemas.subjects import Subjects

from .executor import Executor
from .hosted import HostedPlugin
from .invoke import InvokeServer

log = logging.getLogger("forge.worker.heartbeat")

SOFTWARE_VERSION = "0.1.0"


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Heartbeats:
    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        worker_id: str,
        labels: dict[str, str],
        interval_s: float,
        hosted: dict[str, HostedPlugin],
        executor: Executor,
        server: InvokeServer,
        memory_budget_bytes: int = 0,
    ) -> None:
        self.nc = nc
        self.subject = subjects.heartbeat(worker_id)
        self.worker_id = worker_id
        self.labels = labels
        self.interval_s = interval_s
        self.hosted = hosted
        self.executor = executor
        self.server = server
        self.memory_budget_bytes = memory_budget_bytes
        self.started_at_ms = int(time.time() * 1000)

    def snapshot(self, stopping: bool = False) -> Heartbeat:
        plugins: list[LoadedPlugin] = []
        for hp in self.hosted.values():
            plugins.extend(hv.status() for hv in hp.versions.values())
            plugins.extend(
                LoadedPlugin(hp.record.plugin, v, "", "failed", err[:2048])
                for v, err in hp.failed.items()
            )
        return Heartbeat(
            worker_id=self.worker_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            software_version=SOFTWARE_VERSION,
            started_at_ms=self.started_at_ms,
            sent_at_ms=int(time.time() * 1000),
            interval_ms=int(self.interval_s * 1000),
            slots_total=self.executor.slots,
            slots_busy=max(0, self.executor.busy),
            calls_total=self.server.calls_total,
            errors_total=self.server.errors_total,
            rss_bytes=rss_bytes(),
            labels=self.labels,
            plugins=plugins,
            stopping=stopping,
            memory_budget_bytes=self.memory_budget_bytes,
        )

    async def send(self, stopping: bool = False) -> None:
        try:
            await self.nc.publish(self.subject, encode(self.snapshot(stopping)))
        except Exception as e:
            log.warning("event=heartbeat_failed error=%r", e)

    async def run(self) -> None:
        while True:
            await self.send()
            await asyncio.sleep(self.interval_s)  # the heartbeat period itself
