"""The client library services use: invoke plugins, and administer deployments.

    client = await ForgeClient.connect("nats://127.0.0.1:4222")
    out = await client.invoke("echo", "upper", b"hello", timeout=2.0)

Every failure is a :class:`schemas.errors.ForgeError` subclass; no nats-py
exception reaches the caller.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterable

import nats
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from schemas.admin import (
    DeployReply,
    DeployRequest,
    ErrorReply,
    HistoryEntry,
    ListReply,
    ListRequest,
    PluginStatus,
    PolicyDeleteRequest,
    PolicyListReply,
    PolicyListRequest,
    PolicySetRequest,
    UndeployReply,
    UndeployRequest,
    WorkersReply,
    WorkersRequest,
)
from schemas.codec import DecodeError, Message, decode, decode_any, encode
from schemas.errors import (
    BadRequest,
    ForgeError,
    InputTooLarge,
    InternalError,
    NotFound,
    NoWorkers,
    PluginNotFound,
    Timeout,
    Unavailable,
)
from schemas.messages import (
    HEADER_TIMEOUT_MS,
    HEADER_TRACEPARENT,
    HEADER_VERSION,
    CallResult,
    Heartbeat,
    InvokeRequest,
    JobResult,
)
from schemas.package import package_digest
from schemas.policy import PolicyRecord
from schemas.subjects import Subjects
from schemas.triggers import TriggerReply, TriggerSpec, TriggerStatus

from .connection import connect
from .jobs_client import Jobs, JobStats
from .triggers_client import TriggerClient
from .versions_admin import VersionsClient

#: Extra time the client waits beyond the call's own deadline, so that the
#: worker's TIMEOUT reply (rather than silence) is what the caller sees.
REPLY_GRACE_S = 0.25
ADMIN_TIMEOUT_S = 30.0


class ForgeClient:
    """A connection to a ForgeOne cluster."""

    def __init__(self, nc: Client, prefix: str = "forge", owns_connection: bool = True) -> None:
        self.nc = nc
        self.subjects = Subjects(prefix)
        self._owns = owns_connection
        self._kv: KeyValue | None = None
        self._invoke_subjects: dict[tuple[str, str], str] = {}
        self._jobs = Jobs(nc, self.subjects)
        self._triggers = TriggerClient(self._admin)
        self._versions = VersionsClient(self._admin)

    @classmethod
    async def connect(
        cls,
        url: str = "nats://127.0.0.1:4222",
        prefix: str = "forge",
        credentials: str | None = None,
        persistent: bool = True,
    ) -> ForgeClient:
        """Connect to NATS; raises Unavailable when no server answers."""
        return cls(await connect(url, "forge-client", credentials, persistent), prefix)

    async def close(self) -> None:
        if self._owns and not self.nc.is_closed:
            await self.nc.drain()

    async def __aenter__(self) -> ForgeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- calls ---------------------------------------------------------------
    async def invoke(
        self,
        plugin: str,
        fn: str,
        data: bytes = b"",
        timeout: float = 5.0,
        version: str | None = None,
        traceparent: str | None = None,
    ) -> bytes:
        """Call ``fn`` of ``plugin`` with ``data``; return its output or raise a ForgeError."""
        result = await self.invoke_result(plugin, fn, data, timeout, version, traceparent)
        if not result.ok:
            assert result.error is not None
            raise result.error.to_exception()
        return result.output

    async def invoke_result(
        self,
        plugin: str,
        fn: str,
        data: bytes = b"",
        timeout: float = 5.0,
        version: str | None = None,
        traceparent: str | None = None,
    ) -> CallResult:
        """Like :meth:`invoke`, but return the whole result (worker, version, duration...)."""
        if timeout <= 0:
            raise BadRequest("timeout must be positive")
        subject = self._invoke_subjects.get((plugin, fn))
        if subject is None:
            subject = self.subjects.invoke(plugin, fn)  # validates the tokens
            if len(self._invoke_subjects) < 4096:
                self._invoke_subjects[(plugin, fn)] = subject
        headers = {HEADER_TIMEOUT_MS: str(max(1, int(timeout * 1000)))}
        if version:
            headers[HEADER_VERSION] = version
        if traceparent:
            headers[HEADER_TRACEPARENT] = traceparent
        try:
            msg = await self.nc.request(
                subject,
                encode(InvokeRequest(bytes(data))),
                timeout=timeout + REPLY_GRACE_S,
                headers=headers,
            )
        except nats.errors.NoRespondersError:
            raise await self._nobody_serves(plugin) from None
        except nats.errors.TimeoutError:
            raise Timeout(f"no reply from {plugin}.{fn} within {timeout}s") from None
        except (
            nats.errors.ConnectionClosedError,
            nats.errors.ConnectionReconnectingError,
            nats.errors.ConnectionDrainingError,
            OSError,
        ) as e:
            raise Unavailable(f"NATS connection: {type(e).__name__}") from None
        except nats.errors.MaxPayloadError:
            raise InputTooLarge(
                f"input of {len(data)} bytes is over the NATS server's "
                f"max_payload of {self.nc.max_payload}"
            ) from None
        try:
            return decode(CallResult, msg.data)
        except DecodeError as e:
            raise InternalError(f"malformed reply from worker: {e}") from None

    async def _nobody_serves(self, plugin: str) -> ForgeError:
        """No responders: tell "not deployed" from "deployed but no worker has it"."""
        try:
            if self._kv is None:
                self._kv = await self.nc.jetstream().key_value(self.subjects.deployments_bucket)
            await self._kv.get(plugin)
        except NotFoundError:
            return PluginNotFound(f"plugin {plugin!r} is not deployed")
        except Exception:
            return NoWorkers(f"no worker serves {plugin!r} (deployment state unknown)")
        return NoWorkers(f"plugin {plugin!r} is deployed but no worker serves it yet")

    # --- durable jobs ----------------------------------------------------------
    async def submit(
        self,
        plugin: str,
        fn: str,
        data: bytes = b"",
        deadline: float | None = None,
        job_id: str | None = None,
        version: str | None = None,
        traceparent: str | None = None,
    ) -> str:
        """Store a durable call; return its job id once JetStream has it.

        ``deadline`` is seconds from now after which the job must not start (it then
        gets DEADLINE_EXCEEDED as its result). Resubmitting a ``job_id`` within the
        dedupe window stores it once.
        """
        return await self._jobs.submit(plugin, fn, data, deadline, job_id, version, traceparent)

    async def result(self, job_id: str, timeout: float = 30.0) -> bytes:
        """A job's output, or its typed error raised; waits up to ``timeout`` for it."""
        res = await self._jobs.result(job_id, timeout)
        if not res.result.ok:
            assert res.result.error is not None
            raise res.result.error.to_exception()
        return res.result.output

    async def job_result(self, job_id: str, timeout: float = 30.0) -> JobResult:
        """The whole stored result of a job (attempts, worker, version, error)."""
        return await self._jobs.result(job_id, timeout)

    def results(self, job_ids: Iterable[str], timeout: float = 60.0) -> AsyncIterator[JobResult]:
        """Stream the results of many jobs as they finish."""
        return self._jobs.results(job_ids, timeout)

    async def job_stats(self) -> list[JobStats]:
        """Pending, in-flight, redelivered and dead-lettered counts per plugin."""
        return await self._jobs.stats()

    # --- administration -------------------------------------------------------
    async def _admin(
        self, op: str, req: Message, reply_type: type[Message], timeout: float = ADMIN_TIMEOUT_S
    ) -> Message:
        try:
            msg = await self.nc.request(self.subjects.admin(op), encode(req), timeout=timeout)
        except nats.errors.NoRespondersError:
            raise Unavailable(
                "no coordinator is running (no responders on the admin service)"
            ) from None
        except nats.errors.TimeoutError:
            raise Unavailable(f"the coordinator did not answer {op!r} within {timeout}s") from None
        try:
            reply = decode_any(msg.data, reply_type, ErrorReply)
        except DecodeError as e:
            raise InternalError(f"malformed admin reply: {e}") from None
        if isinstance(reply, ErrorReply):
            raise reply.error.to_exception()
        return reply

    async def upload(self, package: bytes) -> str:
        """Put a package in the object store; return its digest (its name there)."""
        digest = package_digest(package)
        obj = await self.nc.jetstream().object_store(self.subjects.packages_bucket)
        await obj.put(digest, package)
        return digest

    async def deploy(
        self,
        package: bytes,
        config: dict[str, str] | None = None,
        canary: bool = False,
        *,
        replicas: int = 0,
        labels: dict[str, str] | None = None,
    ) -> DeployReply:
        """Upload a signed package and deploy it; raises PackageRejected with the reason.

        ``canary``: add it beside the deployed versions at weight 0 (workers load and warm
        it; only calls that pin it reach it) instead of replacing them; see :meth:`rollout`.
        ``replicas``: how many workers host it (0: every worker); ``labels``: a worker must
        carry all of them to host it.
        """
        digest = await self.upload(package)
        request = DeployRequest(digest, config or {}, canary, replicas, dict(labels or {}))
        reply = await self._admin("deploy", request, DeployReply)
        assert isinstance(reply, DeployReply)
        return reply

    async def undeploy(self, plugin: str) -> None:
        await self._admin("undeploy", UndeployRequest(plugin), UndeployReply)

    # --- versions -----------------------------------------------------------------------
    async def rollout(self, plugin: str, version: str, weight: int) -> DeployReply:
        """Send ``weight`` percent of ``plugin``'s unpinned calls to ``version``."""
        return await self._versions.rollout(plugin, version, weight)

    async def undeploy_version(self, plugin: str, version: str) -> DeployReply:
        """Remove one version that takes no traffic (weight 0)."""
        return await self._versions.undeploy_version(plugin, version)

    async def history(self, plugin: str) -> list[HistoryEntry]:
        """Earlier records of ``plugin`` in the deployments bucket, oldest first."""
        return await self._versions.history(plugin)

    async def rollback(self, plugin: str, to_version: str = "", revision: int = 0) -> DeployReply:
        """Put an earlier record again (by default the one before the current)."""
        return await self._versions.rollback(plugin, to_version, revision)

    async def plugins(self) -> list[PluginStatus]:
        """Every deployment, with the workers that have it ready."""
        reply = await self._admin("list", ListRequest(), ListReply)
        assert isinstance(reply, ListReply)
        return reply.plugins

    async def policies(self) -> dict[str, PolicyRecord]:
        """Every policy record by key (default, plugin.<name>, key.<key id>)."""
        reply = await self._admin("policy_list", PolicyListRequest(), PolicyListReply)
        assert isinstance(reply, PolicyListReply)
        return reply.records

    async def set_policy(self, key: str, record: PolicyRecord) -> None:
        """Replace one policy record; workers apply it without restarting."""
        await self._admin("policy_set", PolicySetRequest(key, record), PolicyListReply)

    async def delete_policy(self, key: str) -> None:
        await self._admin("policy_delete", PolicyDeleteRequest(key), PolicyListReply)

    async def grant(self, key: str, *permissions: str) -> PolicyRecord:
        """Add grants to a policy record (created if absent)."""
        current = (await self.policies()).get(key, PolicyRecord())
        grants = list(current.grants) + [p for p in permissions if p not in current.grants]
        record = dataclasses.replace(current, grants=grants)
        await self.set_policy(key, record)
        return record

    async def revoke(self, key: str, *permissions: str) -> PolicyRecord:
        """Remove grants from a policy record."""
        current = (await self.policies()).get(key)
        if current is None:
            raise NotFound(f"no policy record {key!r}")
        record = dataclasses.replace(
            current, grants=[g for g in current.grants if g not in permissions]
        )
        await self.set_policy(key, record)
        return record

    async def workers(self) -> list[Heartbeat]:
        reply = await self._admin("workers", WorkersRequest(), WorkersReply)
        assert isinstance(reply, WorkersReply)
        return reply.workers

    # --- triggers ---------------------------------------------------------------
    async def add_trigger(self, spec: TriggerSpec) -> TriggerReply:
        """Bind an event source to a plugin function (docs/triggers.md)."""
        return await self._triggers.add(spec)

    async def triggers(self) -> list[TriggerStatus]:
        """Every trigger with its state, lag, rate, errors and dead-lettered count."""
        return await self._triggers.list()

    async def trigger(self, name: str) -> TriggerStatus:
        return await self._triggers.show(name)

    async def pause_trigger(self, name: str) -> TriggerStatus:
        return await self._triggers.pause(name)

    async def resume_trigger(self, name: str) -> TriggerStatus:
        return await self._triggers.resume(name)

    async def remove_trigger(self, name: str) -> None:
        await self._triggers.remove(name)
