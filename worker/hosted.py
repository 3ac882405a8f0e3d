"""Plugins a worker hosts: each version's runtime, pool, admission control and drain."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from dataclasses import dataclass, field

from schemas.errors import (
    FunctionNotFound,
    InputTooLarge,
    Overloaded,
    PluginNotFound,
    Timeout,
)
from schemas.manifest import Manifest
from schemas.messages import MAX_CALL_DEPTH, DeploymentRecord, LoadedPlugin

from . import metrics
from .executor import Executor
from .host import CallMeta, HostEnv
from .inline import INLINE_BUDGET_S, InlinePolicy
from .pool import InstancePool, Outcome
from .runtime import CallLimits, PluginRuntime


class CallStats:
    """Calls, errors and recent call times of one version, for heartbeats (forgeone top)."""

    WINDOW = 512

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self._recent: deque[float] = deque(maxlen=self.WINDOW)

    def count(self, out: Outcome) -> Outcome:
        if out.error is not None:
            self.errors += 1
        return out

    def add(self, seconds: float) -> None:
        self.calls += 1
        self._recent.append(seconds)

    def percentiles(self) -> tuple[int, int]:
        if not self._recent:
            return 0, 0
        ordered = sorted(self._recent)
        last = len(ordered) - 1
        return int(ordered[last // 2] * 1e6), int(ordered[(last * 99) // 100] * 1e6)


class HostedVersion:
    """One ready plugin version: runs at most ``pool_size`` calls at once, queues a bounded few."""

    def __init__(
        self,
        plugin: str,
        version: str,
        digest: str,
        key_id: str,
        runtime: PluginRuntime,
        limits: CallLimits,
        env: HostEnv,
        max_queue: int,
    ) -> None:
        self.plugin = plugin
        self.version = version
        self.digest = digest
        self.key_id = key_id
        """The publisher key that signed the package (policy records may grant by key)."""
        self.runtime = runtime
        self.limits = limits
        self.env = env
        self.manifest: Manifest = runtime.manifest
        self.pool = InstancePool(runtime, limits.pool_size)
        self.max_queue = max_queue
        self._slots = asyncio.Semaphore(limits.pool_size)
        self.inline = InlinePolicy(runtime.replayable)
        self.stats = CallStats()
        self.startup_logs: list[tuple[int, str]] = []
        """What the guests' ``init`` hooks logged while the pool was warmed."""
        # Read when scraped, not updated per call (the call path stays free of metric locks).
        metrics.POOL_INSTANCES.labels(plugin, version, "busy").set_function(
            lambda: self.running - self.waiting
        )
        metrics.POOL_INSTANCES.labels(plugin, version, "idle").set_function(lambda: self.pool.idle)
        # Nested calls (a plugin calling itself through other plugins) get instances of
        # their own, so a chain up to MAX_CALL_DEPTH deep never waits on its own callers.
        self._nested_slots = asyncio.Semaphore(limits.pool_size * MAX_CALL_DEPTH)
        self.waiting = 0
        self.running = 0
        self.draining = False
        self._idle_event = asyncio.Event()
        self._idle_event.set()

    def check(self, fn: str, input_len: int) -> None:
        """Refuse a call this version cannot take, before it queues."""
        if fn not in self.manifest.exports:
            raise FunctionNotFound(
                f"{self.plugin}@{self.version} does not export {fn!r} "
                f"(it exports {', '.join(self.manifest.exports)})"
            )
        if input_len > self.limits.max_input_bytes:
            raise InputTooLarge(f"input of {input_len} bytes exceeds {self.limits.max_input_bytes}")

    def meta(
        self,
        asked_timeout_ms: int | None = None,
        depth: int = 0,
        traceparent: str | None = None,
        not_after: float | None = None,
    ) -> CallMeta:
        """The call's deadline: the plugin's timeout, shortened by the caller's and by
        ``not_after`` (a monotonic time, e.g. a job's deadline)."""
        timeout_ms = self.limits.timeout_ms
        if asked_timeout_ms is not None:
            timeout_ms = min(timeout_ms, asked_timeout_ms)
        deadline = time.monotonic() + timeout_ms / 1000
        if not_after is not None:
            deadline = min(deadline, not_after)
        return CallMeta(deadline, depth, traceparent)

    async def call(self, executor: Executor, fn: str, data: bytes, meta: CallMeta) -> Outcome:
        """Admit, queue (bounded), and run one call before ``meta.deadline`` (monotonic)."""
        deadline = meta.deadline
        if self.waiting >= self.max_queue:
            raise Overloaded(f"{self.plugin}@{self.version}: {self.waiting} calls already queued")
        self.waiting += 1
        self.running += 1
        self._idle_event.clear()
        try:
            try:
                slots = self._nested_slots if meta.depth else self._slots
                if slots.locked():  # wait (bounded by the deadline) only when we must
                    await asyncio.wait_for(slots.acquire(), deadline - time.monotonic())
                else:
                    await slots.acquire()  # free: returns without suspending
            except TimeoutError:
                raise Timeout("deadline passed while waiting for a free instance") from None
            finally:
                self.waiting -= 1
            started = time.perf_counter()
            try:
                if self.inline.eligible(fn):
                    out = self._call_inline(fn, data, meta)
                    if out is not None:
                        return self.stats.count(out)
                out = await executor.run(self.pool, fn, data, meta)
                if out.invocation is not None:
                    self.inline.record(fn, out.invocation.duration_us)
                return self.stats.count(out)
            finally:
                slots.release()
                self.stats.add(time.perf_counter() - started)
        finally:
            self.running -= 1
            if self.running == 0:
                self._idle_event.set()

    def _call_inline(self, fn: str, data: bytes, meta: CallMeta) -> Outcome | None:
        """Run on the event loop thread within a small budget; None if it overran."""
        budget = meta.until(min(meta.deadline, time.monotonic() + INLINE_BUDGET_S))
        out = self.pool.run(fn, data, budget)
        if (
            isinstance(out.error, Timeout)
            and budget.deadline < meta.deadline
            and time.monotonic() < meta.deadline
        ):
            self.inline.overran(fn)
            return None  # the aborted attempt had no side effects: run it again on a thread
        if out.invocation is not None:
            self.inline.record(fn, out.invocation.duration_us)
        out.inline = True
        return out

    async def drain(self, executor: Executor, timeout_s: float) -> list[tuple[int, str]]:
        """Take no new calls, let in-flight ones finish (bounded), then close the pool;
        returns what the guests' ``shutdown`` hooks logged."""
        self.draining = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle_event.wait(), timeout_s)
        logs = await executor.blocking(self.pool.close)
        metrics.POOL_INSTANCES.remove(self.plugin, self.version, "busy")
        metrics.POOL_INSTANCES.remove(self.plugin, self.version, "idle")
        return logs

    def status(self) -> LoadedPlugin:
        p50, p99 = self.stats.percentiles()
        return LoadedPlugin(
            self.plugin,
            self.version,
            self.digest,
            "ready",
            "",
            self.pool.idle,
            self.running - self.waiting,
            self.stats.calls,
            self.stats.errors,
            p50,
            p99,
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
        if not pin and len(self.versions) == 1 and len(self.record.versions) == 1:
            (only,) = self.versions.values()  # the common case: one version, all traffic
            if not only.draining and self.record.versions[0].version == only.version:
                return only
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
