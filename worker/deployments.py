"""Follow the deployments bucket and make this worker host what it says.

The KV watch delivers the latest record of every plugin first (so a worker
started late catches up), then every change. Each plugin reconciles on its
own task, latest record wins, so a slow compile of one plugin never holds
up another.

A record with ``replicas`` > 0 is hosted only while the plugin's key in the
assignments bucket (written by the coordinator's placement) lists this worker;
an assignment change reconciles that plugin like a record change. Records with
replicas == 0 are hosted by every worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from nats.js.kv import KeyValue

from schemas.codec import DecodeError, decode
from schemas.errors import ForgeError, Unavailable
from schemas.messages import Assignment, DeploymentRecord, VersionEntry
from schemas.policy import missing

from . import metrics
from .executor import Executor
from .hosted import HostedPlugin, HostedVersion
from .kv_watch import watch_bucket
from .loader import Loader
from .policy import PolicyView
from .syscalls import SyscallBus

log = logging.getLogger("forge.worker.deployments")

#: Retries of a load that failed for a transient reason (bus, object store).
LOAD_RETRIES = 5


class PluginServer(Protocol):
    """Something that serves a plugin's calls once it is hosted (fast path, jobs, ...)."""

    async def start(self, plugin: str) -> None: ...

    async def stop(self, plugin: str) -> None: ...


@dataclass(frozen=True, slots=True)
class _Desired:
    record: DeploymentRecord | None  # None: undeployed


class DeploymentWatcher:
    def __init__(
        self,
        kv: KeyValue,
        loader: Loader,
        hosted: dict[str, HostedPlugin],
        servers: Sequence[PluginServer],
        executor: Executor,
        policy: PolicyView,
        assignments: KeyValue | None = None,
        worker_id: str = "",
        syscalls: SyscallBus | None = None,
    ) -> None:
        self.syscalls = syscalls
        """Where the guests' init and shutdown log lines go (None: nowhere)."""
        self.assignments = assignments
        self.worker_id = worker_id
        self._assigned: dict[str, frozenset[str]] = {}
        self.policy = policy
        policy.on_change(self._on_policy_change)
        self.kv = kv
        self.loader = loader
        self.hosted = hosted
        self.servers = servers
        self.executor = executor
        self.synced = asyncio.Event()
        """Set once every record present at start has been seen (not necessarily loaded)."""
        self._desired: dict[str, _Desired] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Watch deployments (and assignments) forever."""
        if self.assignments is None:
            await self._watch_deployments()
            return
        await asyncio.gather(self._watch_deployments(), self._watch_assignments(self.assignments))

    async def _watch_assignments(self, kv: KeyValue) -> None:
        """Follow the assignments bucket."""
        await watch_bucket(kv, "assignments", self._on_assignment)

    def _on_assignment(self, key: str, value: bytes | None, op: str | None) -> None:
        if op in ("DEL", "PURGE"):  # the record went to replicas 0 or away: it decides
            self._assigned.pop(key, None)
            return
        try:
            assignment = decode(Assignment, value or b"")
            if assignment.plugin != key:
                raise DecodeError(f"assignment for {assignment.plugin!r} under key {key!r}")
        except DecodeError as e:
            metrics.BAD_MESSAGES.labels("assignments").inc()
            log.error("event=bad_assignment key=%s error=%s", key, e)
            return
        workers = frozenset(assignment.workers)
        known = key in self._assigned
        before = self.worker_id in self._assigned.get(key, frozenset())
        self._assigned[key] = workers
        after = self.worker_id in workers
        if (not known or before != after) and key in self._desired:
            log.info("event=assignment_changed plugin=%s assigned=%s", key, after)
            self._kick(key)

    def hosts(self, record: DeploymentRecord) -> bool:
        """Whether this worker should host ``record``: every worker when replicas is 0;
        else while the assignment lists it. Before the coordinator has written any
        assignment for the plugin (a record just switched to replicas > 0), a worker
        keeps what it holds and loads nothing new, so nobody drops it meanwhile."""
        if record.replicas == 0:
            return True
        assigned = self._assigned.get(record.plugin)
        if assigned is None:
            return record.plugin in self.hosted
        return self.worker_id in assigned

    async def _watch_deployments(self) -> None:
        """Follow the deployments bucket; ``synced`` is set once every record was seen."""
        await watch_bucket(self.kv, "deployments", self._on_entry, lambda _keys: self.synced.set())

    def _on_entry(self, key: str, value: bytes | None, op: str | None) -> None:
        if op in ("DEL", "PURGE"):
            desired = _Desired(None)
        else:
            try:
                record = decode(DeploymentRecord, value or b"")
                if record.plugin != key:
                    raise DecodeError(f"record for {record.plugin!r} stored under key {key!r}")
            except DecodeError as e:
                metrics.BAD_MESSAGES.labels("deployments").inc()
                log.error("event=bad_deployment_record key=%s error=%s", key, e)
                return
            current = self._desired.get(key)
            if (
                current is not None
                and current.record is not None
                and record.deployed_at_ms < current.record.deployed_at_ms
            ):
                metrics.BAD_MESSAGES.labels("deployments").inc()
                log.error(
                    "event=replayed_deployment_record key=%s at_ms=%d current_at_ms=%d",
                    key,
                    record.deployed_at_ms,
                    current.record.deployed_at_ms,
                )
                return
            desired = _Desired(record)
        self._desired[key] = desired
        self._kick(key)

    def _kick(self, key: str) -> None:
        self._dirty.add(key)
        task = self._tasks.get(key)
        if task is None or task.done():
            self._tasks[key] = asyncio.create_task(self._reconcile(key))

    async def _reconcile(self, plugin: str) -> None:
        while plugin in self._dirty:
            self._dirty.discard(plugin)
            desired = self._desired[plugin]
            try:
                if desired.record is None or not self.hosts(desired.record):
                    await self._remove(plugin)
                else:
                    await self._apply(plugin, desired.record)
            except Exception:
                log.exception("event=reconcile_failed plugin=%s", plugin)

    def _on_policy_change(self) -> None:
        """Apply new grants at once (a revoked grant fails the next host call), then
        reconcile every plugin: ones that no longer fit are unloaded, ones that now fit load."""
        for plugin, hp in self.hosted.items():
            for hv in hp.versions.values():
                granted = self.policy.grants(plugin, hv.key_id)
                still = [p for p in hv.manifest.permissions if not missing([p], granted)]
                hv.env.grants.replace(still)
        for plugin in list(self._desired):
            self._kick(plugin)

    async def _apply(self, plugin: str, record: DeploymentRecord) -> None:
        hp = self.hosted.get(plugin)
        if hp is None:
            hp = HostedPlugin(record)
        wanted = {e.version: e for e in record.versions}
        for version, hv in list(hp.versions.items()):
            absent = self.policy.missing(plugin, hv.key_id, hv.manifest.permissions)
            if absent:
                self._drain(hp.versions.pop(version))
                hp.failed[version] = f"the policy no longer grants: {', '.join(absent)}"
                log.warning(
                    "event=unloaded_by_policy plugin=%s version=%s missing=%s",
                    plugin,
                    version,
                    ",".join(absent),
                )
            else:
                hv.env.config = dict(record.config)
        for entry in record.versions:
            current = hp.versions.get(entry.version)
            if current is not None and current.digest == entry.digest:
                continue
            if plugin in self._dirty:  # a newer record arrived: reconcile that one instead
                return
            metrics.PLUGINS_LOADED.labels("loading").inc()
            try:
                hv = await self._load(plugin, entry, record.config)
            except ForgeError as e:
                hp.failed[entry.version] = e.message
                metrics.PLUGINS_LOADED.labels("failed").inc()
                log.error(
                    "event=load_failed plugin=%s version=%s error=%s",
                    plugin,
                    entry.version,
                    e.message,
                )
                continue
            finally:
                metrics.PLUGINS_LOADED.labels("loading").dec()
            hp.failed.pop(entry.version, None)
            if current is not None:
                self._drain(current)
            hp.versions[entry.version] = hv
            await self._publish_logs(hv, "init", hv.startup_logs)
            metrics.PLUGINS_LOADED.labels("ready").inc()
            log.info(
                "event=version_ready plugin=%s version=%s digest=%s",
                plugin,
                entry.version,
                entry.digest[:12],
            )
        for version in [v for v in hp.versions if v not in wanted]:
            self._drain(hp.versions.pop(version))
        for version in [v for v in hp.failed if v not in wanted]:
            del hp.failed[version]
        hp.record = record
        self.hosted[plugin] = hp
        for server in self.servers:
            if hp.versions:
                await server.start(plugin)
            else:
                await server.stop(plugin)

    async def _load(
        self, plugin: str, entry: VersionEntry, config: dict[str, str]
    ) -> HostedVersion:
        delay = 0.2
        for attempt in range(LOAD_RETRIES):
            try:
                return await self.loader.load(plugin, entry, config)
            except ForgeError:
                raise
            except Exception as e:  # bus or object store trouble: worth another go
                if attempt == LOAD_RETRIES - 1:
                    raise Unavailable(f"could not fetch package: {type(e).__name__}: {e}") from e
                log.warning("event=fetch_retry plugin=%s error=%r", plugin, e)
                await asyncio.sleep(delay)  # backoff before the next fetch attempt
                delay *= 2
        raise AssertionError("unreachable")

    async def _remove(self, plugin: str) -> None:
        # Leave the subjects first, serving what NATS already routed here (drain), and
        # let the calls just handed to tasks pick their version; only then forget it.
        for server in self.servers:
            await server.stop(plugin)
        await asyncio.sleep(0)  # one loop turn: tasks created by the drain start running
        hp = self.hosted.pop(plugin, None)
        if hp is not None:
            for hv in hp.versions.values():
                self._drain(hv)
            log.info("event=undeployed plugin=%s", plugin)

    async def _publish_logs(
        self, hv: HostedVersion, hook: str, lines: list[tuple[int, str]]
    ) -> None:
        if lines and self.syscalls is not None:
            await self.syscalls.logs(hv.plugin, hv.version, hook, lines, None)

    def _drain(self, hv: HostedVersion) -> None:
        metrics.PLUGINS_LOADED.labels("ready").dec()

        async def drain() -> None:
            lines = await hv.drain(self.executor, hv.limits.timeout_ms / 1000 + 1)
            await self._publish_logs(hv, "shutdown", lines)

        task = asyncio.create_task(drain())
        self._background.add(task)
        task.add_done_callback(self._background.discard)
