"""Plugins a worker hosts: each version's runtime, pool, admission control and drain."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field

from schemas.errors import Overloaded, PluginNotFound, Timeout
from schemas.manifest import Manifest
from schemas.messages import DeploymentRecord, LoadedPlugin

from . import metrics
from .executor import Executor
from .pool import InstancePool, Outcome
from .runtime import PluginRuntime


class HostedVersion:
    """One ready plugin version: runs at most ``pool_size`` calls at once, queues a bounded few."""

    def __init__(
        self,
        plugin: str,
        version: str,
        digest: str,
        runtime: PluginRuntime,
        pool_size: int,
        max_queue: int,
    ) -> None:
        self.plugin = plugin
        self.version = version
        self.digest = digest
        self.runtime = runtime
        self.manifest: Manifest = runtime.manifest
        self.pool = InstancePool(runtime, pool_size)
        self.max_queue = max_queue
        self._slots = asyncio.Semaphore(pool_size)
        self.waiting = 0
        self.running = 0
        self.draining = False
        self._idle_event = asyncio.Event()
        self._idle_event.set()

    async def call(self, executor: Executor, fn: str, data: bytes, deadline: float) -> Outcome:
        """Admit, queue (bounded), and run one call before ``deadline`` (monotonic)."""
        if self.waiting >= self.max_queue:
            raise Overloaded(f"{self.plugin}@{self.version}: {self.waiting} calls already queued")
        self.waiting += 1
        self.running += 1
        self._idle_event.clear()
        try:
            try:
                await asyncio.wait_for(self._slots.acquire(), deadline - time.monotonic())
            except TimeoutError:
                raise Timeout("deadline passed while waiting for a free instance") from None
            finally:
                self.waiting -= 1
            try:
                self._gauges(+1)
                return await executor.run(self.pool, fn, data, deadline)
            finally:
                self._slots.release()
                self._gauges(-1)
        finally:
            self.running -= 1
            if self.running == 0:
                self._idle_event.set()

    def _gauges(self, delta: int) -> None:
        metrics.POOL_INSTANCES.labels(self.plugin, self.version, "busy").inc(delta)
        metrics.POOL_INSTANCES.labels(self.plugin, self.version, "idle").set(self.pool.idle)

    async def drain(self, executor: Executor, timeout_s: float) -> None:
        """Take no new calls, let in-flight ones finish (bounded), then close the pool."""
        self.draining = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle_event.wait(), timeout_s)
        await executor.blocking(self.pool.close)
        metrics.POOL_INSTANCES.remove(self.plugin, self.version, "busy")
        metrics.POOL_INSTANCES.remove(self.plugin, self.version, "idle")

    def status(self) -> LoadedPlugin:
        return LoadedPlugin(
            self.plugin,
            self.version,
            self.digest,
            "ready",
            "",
            self.pool.idle,
            self.running - self.waiting,
        )


@dataclass
class HostedPlugin:
    """A plugin's deployment record and the versions of it this worker has ready."""

    record: DeploymentRecord
    versions: dict[str, HostedVersion] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    """version -> why it could not be loaded."""

    def capacity(self) -> int:
        """Calls this worker can run at once for the plugin (largest ready pool)."""
        return max((v.pool.max_size for v in self.versions.values() if not v.draining), default=0)

    def pick(self, pin: str | None) -> HostedVersion:
        """The version for one call: the pinned one, or by traffic weight."""
        if pin:
            v = self.versions.get(pin)
            if v is None or v.draining:
                raise PluginNotFound(f"{self.record.plugin} has no ready version {pin!r}")
            return v
        ready = [
            (e.weight, self.versions[e.version])
            for e in self.record.versions
            if e.version in self.versions and not self.versions[e.version].draining
        ]
        if not ready:
            why = "; ".join(f"{v}: {e}" for v, e in self.failed.items())
            raise PluginNotFound(
                f"{self.record.plugin} has no ready version here" + (f" ({why})" if why else "")
            )
        total = sum(w for w, _ in ready)
        if total <= 0:
            return ready[0][1]
        r = random.uniform(0, total)
        for w, v in ready:
            r -= w
            if r <= 0:
                return v
        return ready[-1][1]
