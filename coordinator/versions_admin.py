"""Versions on the admin service: ``rollout``, ``history``, ``rollback``, ``undeploy_version``,
the canary branch of ``deploy``, and the client-side helper ``ForgeClient`` delegates to.

Each change reads the plugin's record, computes the new one with the pure
functions in :mod:`coordinator.versions`, and writes it back only if the key
still has the revision it read (compare-and-set), so two operators changing
weights at once cannot lose one another's change. Workers see every write as
a deployment event: a version new to them is loaded, compiled, warmed and
initialised before any call reaches it, and a version that leaves drains.

A rollback writes an earlier record from the bucket's history (``DEPLOYMENT_HISTORY``
revisions per plugin) again with a fresh ``deployed_at_ms``; the packages are
already in the object store, so nothing is uploaded. The policy is checked
again first: a rollback cannot bring back a version the policy no longer allows.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.js.errors import (
    KeyDeletedError,
    KeyWrongLastSequenceError,
    NoKeysError,
    NotFoundError,
    ObjectNotFoundError,
)
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from schemas.admin import (
    DeployReply,
    HistoryEntry,
    HistoryReply,
    HistoryRequest,
    RollbackRequest,
    RolloutRequest,
    UndeployVersionRequest,
)
from schemas.codec import DecodeError, Message, decode, encode
from schemas.errors import BadRequest, Denied, InternalError, NotFound, Unavailable
from schemas.messages import DeploymentRecord, VersionEntry
from schemas.policy import effective_grants, missing, parse_permission
from schemas.subjects import Subjects

from . import versions
from .buckets import ensure_jobs_consumer, ensure_plugin_kv
from .policy_store import PolicyStore
from .registry import WorkerRegistry
from .settings import JobSettings

log = logging.getLogger("forge.coordinator.versions")

Handler = Callable[[Message], Awaitable[Message]]
AdminCall = Callable[[str, Message, type[Message]], Awaitable[Message]]
Change = Callable[[DeploymentRecord | None], DeploymentRecord]

#: Compare-and-set attempts before a change gives up (others kept writing the same key).
CAS_ATTEMPTS = 5
#: Bytes of a NATS message kept free for headers when a history reply is sized.
REPLY_HEADROOM = 4096


def _now_ms() -> int:
    return int(time.time() * 1000)


def _weights(record: DeploymentRecord) -> str:
    return ",".join(f"{v.version}:{v.weight}" for v in record.versions)


class VersionAdmin:
    """The admin handlers that change which versions of a plugin take its calls."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        kv: KeyValue,
        packages: ObjectStore,
        policy: PolicyStore,
        registry: WorkerRegistry,
        jobs: JobSettings,
        replicas: int = 1,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.kv = kv
        self.packages = packages
        self.policy = policy
        self.registry = registry
        self.jobs = jobs
        self.replicas = replicas

    def handlers(self) -> dict[str, Handler]:
        return {
            "rollout": self._rollout,
            "history": self._history,
            "rollback": self._rollback,
            "undeploy_version": self._undeploy_version,
        }

    # --- deploy --canary ------------------------------------------------------------------
    async def stage(self, entry: VersionEntry, config: dict[str, str]) -> DeployReply:
        """Add a verified, admitted version beside the deployed ones at weight 0."""
        plugin = entry.manifest.name
        record, revision = await self._change(
            plugin, lambda cur: versions.add_version(cur, entry, config, _now_ms())
        )
        log.info(
            "event=staged plugin=%s version=%s digest=%s weights=%s revision=%d",
            plugin,
            entry.version,
            entry.digest[:12],
            _weights(record),
            revision,
        )
        return DeployReply(record, revision)

    # --- handlers -------------------------------------------------------------------------
    async def _rollout(self, msg: Message) -> Message:
        assert isinstance(msg, RolloutRequest)
        if msg.weight > 0:
            ready, failed = self._readiness(msg.plugin, msg.version)
            if failed and not ready:
                why = "; ".join(f"{w}: {e}" for w, e in sorted(failed.items()))
                raise BadRequest(
                    f"{msg.plugin}@{msg.version} failed to load on every worker that tried, "
                    f"so it would take no calls ({why})"
                )

        def change(cur: DeploymentRecord | None) -> DeploymentRecord:
            record = self._deployed(msg.plugin, cur)
            return versions.set_weight(record, msg.version, msg.weight, _now_ms())

        record, revision = await self._change(msg.plugin, change)
        log.info(
            "event=rollout plugin=%s version=%s weight=%d weights=%s revision=%d",
            msg.plugin,
            msg.version,
            msg.weight,
            _weights(record),
            revision,
        )
        return DeployReply(record, revision)

    async def _undeploy_version(self, msg: Message) -> Message:
        assert isinstance(msg, UndeployVersionRequest)

        def change(cur: DeploymentRecord | None) -> DeploymentRecord:
            return versions.drop_version(self._deployed(msg.plugin, cur), msg.version, _now_ms())

        record, revision = await self._change(msg.plugin, change)
        log.info(
            "event=version_undeployed plugin=%s version=%s weights=%s revision=%d",
            msg.plugin,
            msg.version,
            _weights(record),
            revision,
        )
        return DeployReply(record, revision)

    async def _history(self, msg: Message) -> Message:
        assert isinstance(msg, HistoryRequest)
        entries = await self._entries(msg.plugin)
        reply = HistoryReply(msg.plugin, entries)
        # A reply must fit in one NATS message: drop the oldest records until it does.
        limit = self.nc.max_payload - REPLY_HEADROOM
        while len(entries) > 1 and len(encode(reply)) > limit:
            entries = entries[max(1, len(entries) // 8) :]
            reply = HistoryReply(msg.plugin, entries)
        return reply

    async def _rollback(self, msg: Message) -> Message:
        assert isinstance(msg, RollbackRequest)
        if msg.to_version and msg.revision:
            raise BadRequest("give a version or a revision to roll back to, not both")
        target = versions.rollback_target(
            msg.plugin, await self._entries(msg.plugin), msg.to_version, msg.revision
        )
        earlier = target.record
        assert earlier is not None
        await self._admit(earlier)
        record, revision = await self._change(
            msg.plugin, lambda cur: versions.restore(earlier, cur, _now_ms())
        )
        log.info(
            "event=rolled_back plugin=%s from_revision=%d weights=%s revision=%d",
            msg.plugin,
            target.revision,
            _weights(record),
            revision,
        )
        return DeployReply(record, revision)

    # --- reading and writing the bucket -------------------------------------------------------
    @staticmethod
    def _deployed(plugin: str, current: DeploymentRecord | None) -> DeploymentRecord:
        if current is None:
            raise NotFound(f"plugin {plugin!r} is not deployed")
        return current

    async def _current(self, plugin: str) -> tuple[DeploymentRecord | None, int]:
        """The plugin's record (None if absent or undeployed) and the key's last revision."""
        try:
            entry = await self.kv.get(plugin)
        except KeyDeletedError as e:
            return None, (e.entry.revision or 0) if e.entry is not None else 0
        except NotFoundError:
            return None, 0
        try:
            return decode(DeploymentRecord, entry.value or b""), entry.revision or 0
        except DecodeError as e:
            raise InternalError(f"the deployment record of {plugin} is unreadable: {e}") from None

    async def _change(self, plugin: str, change: Change) -> tuple[DeploymentRecord, int]:
        """Apply ``change`` to the plugin's record with compare-and-set; retry on a race."""
        for _ in range(CAS_ATTEMPTS):
            current, last = await self._current(plugin)
            record = change(current)
            if record is current:  # nothing to change
                return record, last
            try:
                return record, await self.kv.update(plugin, encode(record), last=last)
            except KeyWrongLastSequenceError:
                log.info("event=record_changed_meanwhile plugin=%s retrying=true", plugin)
        raise Unavailable(f"the deployment of {plugin} kept changing under this request; try again")

    async def _entries(self, plugin: str) -> list[HistoryEntry]:
        """The plugin's key history, oldest first (undeploys have no record)."""
        try:
            raw = await self.kv.history(plugin)
        except (NoKeysError, NotFoundError):
            raise NotFound(f"{plugin} has never been deployed") from None
        out = []
        for e in raw:
            record = None
            if e.operation not in ("DEL", "PURGE"):
                try:
                    record = decode(DeploymentRecord, e.value or b"")
                except DecodeError as err:
                    log.warning(
                        "event=skip_history_entry plugin=%s revision=%s error=%s",
                        plugin,
                        e.revision,
                        err,
                    )
                    continue
            out.append(HistoryEntry(e.revision or 0, _at_ms(e.created, record), record))
        return out

    # --- checks ----------------------------------------------------------------------------
    def _readiness(self, plugin: str, version: str) -> tuple[list[str], dict[str, str]]:
        """Live workers that report ``plugin@version`` ready, and those it failed on."""
        ready: list[str] = []
        failed: dict[str, str] = {}
        for w in self.registry.alive():
            for lp in w.plugins:
                if lp.plugin == plugin and lp.version == version:
                    if lp.state == "ready":
                        ready.append(w.worker_id)
                    elif lp.state == "failed":
                        failed[w.worker_id] = lp.error
        return ready, failed

    async def _admit(self, record: DeploymentRecord) -> None:
        """What deploy checks and prepares, for a record that comes back from the history:
        the policy still grants every version's permissions, every package is still in the
        object store, and the plugin's KV buckets and jobs consumer exist."""
        policy = await self.policy.records()
        for v in record.versions:
            absent = missing(
                v.manifest.permissions, effective_grants(policy, record.plugin, v.key_id)
            )
            if absent:
                raise Denied(
                    f"{record.plugin}@{v.version} requests permissions the policy no longer "
                    f"grants: {', '.join(absent)} (grant them with `forgeone policy grant`)"
                )
            try:
                await self.packages.get_info(v.digest)
            except (ObjectNotFoundError, NotFoundError):
                raise NotFound(
                    f"the package of {record.plugin}@{v.version} ({v.digest[:12]}) is no longer "
                    "in the object store; deploy it again"
                ) from None
        js = self.nc.jetstream()
        for v in record.versions:
            for perm in v.manifest.permissions:
                p = parse_permission(perm)
                if p.kind == "kv" and p.arg != "*":
                    await ensure_plugin_kv(js, self.subjects, p.arg, self.replicas)
        await ensure_jobs_consumer(js, self.subjects, record.plugin, self.jobs, self.replicas)


def _at_ms(created: object, record: DeploymentRecord | None) -> int:
    """When a history entry was written: the stream's timestamp, else the record's own."""
    if isinstance(created, datetime.datetime):
        return int(created.timestamp() * 1000)
    if isinstance(created, int) and created > 0:  # some client versions give nanoseconds
        return created // 1_000_000
    return record.deployed_at_ms if record is not None else 0


class VersionsClient:
    """What ``ForgeClient``'s version methods delegate to (typed admin requests)."""

    def __init__(self, admin: AdminCall) -> None:
        self._admin = admin

    async def _record(self, op: str, req: Message) -> DeployReply:
        reply = await self._admin(op, req, DeployReply)
        assert isinstance(reply, DeployReply)
        return reply

    async def rollout(self, plugin: str, version: str, weight: int) -> DeployReply:
        return await self._record("rollout", RolloutRequest(plugin, version, weight))

    async def history(self, plugin: str) -> list[HistoryEntry]:
        reply = await self._admin("history", HistoryRequest(plugin), HistoryReply)
        assert isinstance(reply, HistoryReply)
        return reply.entries

    async def rollback(self, plugin: str, to_version: str = "", revision: int = 0) -> DeployReply:
        return await self._record("rollback", RollbackRequest(plugin, to_version, revision))

    async def undeploy_version(self, plugin: str, version: str) -> DeployReply:
        return await self._record("undeploy_version", UndeployVersionRequest(plugin, version))
