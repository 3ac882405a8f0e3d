"""The trigger set on this worker: the triggers bucket watched, each trigger of a
plugin hosted here (and not paused) bound to its source, and the stats reported."""

from __future__ import annotations

import asyncio
import logging
import time

import nats
from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue

from schemas.codec import DecodeError, decode, encode
from schemas.subjects import Subjects
from schemas.triggers import SourceKind, TriggerSpec, TriggerStats

from .. import metrics
from ..executor import Executor
from ..hosted import HostedPlugin
from ..kv_watch import watch_bucket
from ..pulling import keep_held_alive
from ..syscalls import SyscallBus
from ..tracing import Tracing
from . import core_subject, stream_consumer
from .binding import UNBIND_GRACE_S, Binding
from .counters import Counters, TriggerMetrics
from .handler import EventHandler

log = logging.getLogger("forge.worker.triggers")


def _now_ms() -> int:
    return int(time.time() * 1000)


class TriggerRunner:
    """A PluginServer: binds the triggers of the plugins this worker hosts."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        hosted: dict[str, HostedPlugin],
        executor: Executor,
        syscalls: SyscallBus,
        worker_id: str,
        stats_interval_s: float = 2.0,
        tracing: Tracing | None = None,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.worker_id = worker_id
        self.events = EventHandler(nc, subjects, hosted, executor, syscalls, worker_id, tracing)
        self.js = self.events.js
        self.stats_interval_s = stats_interval_s
        self.started_at_ms = _now_ms()
        self.synced = asyncio.Event()
        """Set once every trigger present at start has been seen."""
        self._specs: dict[str, TriggerSpec] = {}
        self._hosting: set[str] = set()
        self._bound: dict[str, Binding] = {}
        self._counters: dict[str, Counters] = {}
        self._metrics: dict[str, TriggerMetrics] = {}
        self._dirty: set[str] = set()
        self._reconciling: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    # --- PluginServer ---------------------------------------------------------------
    async def start(self, plugin: str) -> None:
        """The plugin is hosted here: bind its triggers (idempotent)."""
        if plugin not in self._hosting:
            self._hosting.add(plugin)
            for name, spec in self._specs.items():
                if spec.plugin == plugin:
                    self._kick(name)

    async def stop(self, plugin: str) -> None:
        """The plugin left this worker: unbind its triggers, letting in-flight events end."""
        self._hosting.discard(plugin)
        names = [n for n, b in self._bound.items() if b.spec.plugin == plugin]
        for name in names:
            self._kick(name)
        await self._settle(names)

    async def stop_all(self, timeout_s: float) -> None:
        """Unbind everything (in-flight events get ``timeout_s`` to finish) and say so."""
        self._stopping = True
        names = list(self._bound)
        for name in names:
            self._kick(name)
        await self._settle(names, timeout_s)
        await self._send_stats(stopping=True)

    async def _settle(self, names: list[str], timeout_s: float = UNBIND_GRACE_S + 5) -> None:
        tasks = [t for n in names if (t := self._reconciling.get(n)) is not None and not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)

    # --- the triggers bucket ------------------------------------------------------------
    def _on_synced(self, seen: set[str]) -> None:
        """Every current definition has been delivered: drop the ones deleted meanwhile."""
        for gone in set(self._specs) - seen:
            self._on_entry(gone, None, "DEL")
        self.synced.set()

    async def run(self) -> None:
        """Watch the triggers bucket forever (and publish stats); restart the watch if it
        breaks, for example across a reconnect."""
        stats = asyncio.create_task(self._stats_loop())
        try:
            kv = await self._bucket()
            await watch_bucket(kv, "triggers", self._on_entry, self._on_synced)
        finally:
            stats.cancel()

    async def _bucket(self) -> KeyValue:
        delay = 0.2
        while True:
            try:
                return await self.js.key_value(self.subjects.triggers_bucket)
            except (
                BucketNotFoundError,
                NotFoundError,
                ServiceUnavailableError,
                nats.errors.TimeoutError,
            ) as e:
                log.info("event=waiting_for_triggers_bucket error=%r", e)
                await asyncio.sleep(delay)  # the coordinator has not created it yet
                delay = min(delay * 2, 2.0)

    def _on_entry(self, key: str, value: bytes | None, op: str | None) -> None:
        if op in ("DEL", "PURGE"):
            self._specs.pop(key, None)
        else:
            try:
                spec = decode(TriggerSpec, value or b"")
                if spec.name != key:
                    raise DecodeError(f"trigger {spec.name!r} stored under key {key!r}")
            except DecodeError as e:
                metrics.BAD_MESSAGES.labels("triggers").inc()
                log.error("event=bad_trigger key=%s error=%s", key, e)
                return
            self._specs[key] = spec
        self._kick(key)

    # --- binding ----------------------------------------------------------------------
    def _kick(self, name: str) -> None:
        self._dirty.add(name)
        task = self._reconciling.get(name)
        if task is None or task.done():
            self._reconciling[name] = asyncio.create_task(self._reconcile_loop(name))

    async def _reconcile_loop(self, name: str) -> None:
        while name in self._dirty:
            self._dirty.discard(name)
            try:
                await self._reconcile(name)
            except Exception:
                log.exception("event=trigger_reconcile_failed trigger=%s", name)

    async def _reconcile(self, name: str) -> None:
        spec = self._specs.get(name)
        want = (
            spec
            if spec is not None
            and not spec.paused
            and spec.plugin in self._hosting
            and not self._stopping
            else None
        )
        current = self._bound.get(name)
        if current is not None and current.spec != want:
            del self._bound[name]
            await current.unbind()
            current = None
        if want is not None and current is None:
            self._bound[name] = await self._bind(want)

    async def _bind(self, spec: TriggerSpec) -> Binding:
        counters = self._counters.setdefault(spec.name, Counters())
        b = Binding.of(
            spec, counters, self._metrics.setdefault(spec.name, TriggerMetrics(spec.name))
        )
        if spec.source is SourceKind.SUBJECT:
            b.sub = await core_subject.subscribe(self.events, b)
        else:
            b.loop_task = asyncio.create_task(stream_consumer.pull_loop(self.events, b))
            b.ticker = asyncio.create_task(keep_held_alive(b.held, b.spec.ack_wait_ms / 1000))
        log.info(
            "event=trigger_bound trigger=%s plugin=%s fn=%s source=%s",
            spec.name,
            spec.plugin,
            spec.fn,
            spec.subject or f"{spec.stream}:{spec.filter or '>'}",
        )
        return b

    # --- statistics ------------------------------------------------------------------------------
    def stats(self, stopping: bool = False) -> TriggerStats:
        names = sorted(set(self._counters) | set(self._bound))
        return TriggerStats(
            worker_id=self.worker_id,
            started_at_ms=self.started_at_ms,
            sent_at_ms=_now_ms(),
            interval_ms=max(1, int(self.stats_interval_s * 1000)),
            triggers=[
                self._counters.setdefault(n, Counters()).snapshot(
                    n, n in self._bound and not stopping
                )
                for n in names
            ],
            stopping=stopping,
        )

    async def _send_stats(self, stopping: bool = False) -> None:
        try:
            await self.nc.publish(
                self.subjects.trigger_stats(self.worker_id), encode(self.stats(stopping))
            )
        except Exception as e:
            log.warning("event=trigger_stats_failed error=%r", e)

    async def _stats_loop(self) -> None:
        while True:
            await self._send_stats()
            await asyncio.sleep(self.stats_interval_s)  # the reporting period itself
