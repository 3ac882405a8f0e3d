"""The admin service on ``<prefix>.admin.<op>`` (nats.micro): deploy, undeploy, list, workers.

Every reply is a typed message; failures are ErrorReply with a code.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import wasmtime
from nats.aio.client import Client
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service

from schemas.abi import WASM_FEATURES
from schemas.admin import (
    ADMIN_REQUESTS,
    DeployReply,
    DeployRequest,
    ErrorReply,
    ListReply,
    PluginStatus,
    PolicyDeleteRequest,
    PolicyListReply,
    PolicySetRequest,
    UndeployReply,
    UndeployRequest,
    WorkersReply,
)
from schemas.codec import DecodeError, Message, decode, decode_any, encode
from schemas.errors import (
    BadRequest,
    Denied,
    ForgeError,
    InternalError,
    NotFound,
    PackageRejected,
)
from schemas.messages import DeploymentRecord, ErrorInfo, VersionEntry
from schemas.package import VerifiedPackage, package_digest, verify_package
from schemas.policy import effective_grants, missing, parse_permission
from schemas.signing import TrustStore
from schemas.subjects import Subjects
from schemas.triggers import TRIGGER_REQUESTS

from . import metrics
from .buckets import bucket_keys, ensure_jobs_consumer, ensure_plugin_kv
from .policy_store import PolicyStore
from .registry import WorkerRegistry
from .settings import JobSettings
from .triggers_admin import TriggerAdmin
from .versions_admin import VersionAdmin

log = logging.getLogger("forge.coordinator.admin")

SERVICE_NAME = "forge-admin"
SERVICE_VERSION = "0.1.0"


def _validator() -> wasmtime.Engine:
    cfg = wasmtime.Config()
    for name, on in WASM_FEATURES.items():
        setattr(cfg, name, on)
    return wasmtime.Engine(cfg)


class AdminService:
    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        kv: KeyValue,
        packages: ObjectStore,
        trust_path: Path,
        registry: WorkerRegistry,
        jobs: JobSettings,
        policy: PolicyStore,
        replicas: int = 1,
        triggers: TriggerAdmin | None = None,
    ) -> None:
        self.policy = policy
        self.nc = nc
        self.jobs = jobs
        self.replicas = replicas
        self.subjects = subjects
        self.kv = kv
        self.packages = packages
        self.trust_path = trust_path
        self.registry = registry
        self._engine = _validator()
        self._service: Service | None = None
        self._handlers: dict[str, Callable[[Message], Awaitable[Message]]] = {
            "deploy": self._deploy,
            "undeploy": self._undeploy,
            "list": self._list,
            "workers": self._workers,
            "policy_set": self._policy_set,
            "policy_delete": self._policy_delete,
            "policy_list": self._policy_list,
        }
        self.versions = VersionAdmin(nc, subjects, kv, packages, policy, registry, jobs, replicas)
        self._handlers.update(self.versions.handlers())
        self._requests = dict(ADMIN_REQUESTS)
        if triggers is not None:
            self._requests.update(TRIGGER_REQUESTS)
            self._handlers.update(triggers.handlers())

    async def start(self) -> None:
        self._service = await add_service(
            self.nc,
            name=SERVICE_NAME,
            version=SERVICE_VERSION,
            description="ForgeOne control plane",
            queue_group="forge-coordinators",
        )
        for op in self._requests:
            await self._service.add_endpoint(
                EndpointConfig(name=op, subject=self.subjects.admin(op), handler=self._endpoint(op))
            )

    async def stop(self) -> None:
        if self._service is not None:
            await self._service.stop()

    def _endpoint(self, op: str) -> Callable[[Request], Awaitable[None]]:
        async def handle(req: Request) -> None:
            started = time.perf_counter()
            try:
                try:
                    msg = decode_any(req.data, self._requests[op])
                except DecodeError as e:
                    raise BadRequest(f"{op} request: {e}") from None
                reply: Message = await self._handlers[op](msg)
                outcome = "ok"
            except ForgeError as e:
                reply, outcome = ErrorReply(ErrorInfo.of(e)), e.code.value
            except Exception as e:
                log.exception("event=admin_failed op=%s", op)
                err = InternalError(f"{type(e).__name__}: {e}")
                reply, outcome = ErrorReply(ErrorInfo.of(err)), err.code.value
            metrics.ADMIN_REQUESTS.labels(op, outcome).inc()
            metrics.ADMIN_SECONDS.labels(op).observe(time.perf_counter() - started)
            await req.respond(encode(reply))

        return handle

    # --- operations -----------------------------------------------------------
    def _verify(self, data: bytes) -> VerifiedPackage:
        pkg = verify_package(data, TrustStore.load(self.trust_path))
        try:
            wasmtime.Module.validate(self._engine, pkg.wasm)
        except wasmtime.WasmtimeError as e:
            raise PackageRejected(f"module does not validate: {e}") from None
        return pkg

    async def _deploy(self, msg: Message) -> Message:
        assert isinstance(msg, DeployRequest)
        try:
            res = await self.packages.get(msg.digest)
        except (ObjectNotFoundError, NotFoundError):
            raise NotFound(f"no uploaded package {msg.digest}") from None
        data = bytes(res.data or b"")
        if package_digest(data) != msg.digest:
            raise PackageRejected("uploaded package does not match its digest")
        try:
            pkg = await asyncio.get_running_loop().run_in_executor(None, self._verify, data)
        except PackageRejected as e:
            metrics.DEPLOYS_REJECTED.inc()
            await self._forget_upload(msg.digest)
            log.warning("event=deploy_rejected digest=%s reason=%s", msg.digest[:12], e.message)
            raise
        m = pkg.manifest
        absent = missing(
            m.permissions, effective_grants(await self.policy.records(), m.name, pkg.key_id)
        )
        if absent:
            metrics.DEPLOYS_REJECTED.inc()
            raise Denied(
                f"{m.name}@{m.version} requests permissions the policy does not grant: "
                f"{', '.join(absent)} (grant them with `forgeone policy grant`)"
            )
        js = self.nc.jetstream()
        for perm in m.permissions:
            p = parse_permission(perm)
            if p.kind == "kv" and p.arg != "*":
                await ensure_plugin_kv(js, self.subjects, p.arg, self.replicas)
        record = DeploymentRecord(
            plugin=m.name,
            versions=[VersionEntry(m.version, msg.digest, m, 100, pkg.key_id)],
            config=msg.config,
            deployed_at_ms=int(time.time() * 1000),
            replicas=msg.replicas,
            labels=dict(msg.labels),
        )
        # the jobs consumer exists before any worker is told to host the plugin
        await ensure_jobs_consumer(
            self.nc.jetstream(), self.subjects, m.name, self.jobs, self.replicas
        )
        if msg.canary:  # beside the deployed versions at weight 0 (coordinator/versions.py)
            return await self.versions.stage(record.versions[0], msg.config)
        revision = await self.kv.put(m.name, encode(record))
        log.info(
            "event=deployed plugin=%s version=%s digest=%s key=%s revision=%d",
            m.name,
            m.version,
            msg.digest[:12],
            pkg.key_id,
            revision,
        )
        return DeployReply(record, revision)

    async def _forget_upload(self, digest: str) -> None:
        """Delete a rejected upload unless a live deployment still refers to it."""
        for status in await self._records():
            if any(v.digest == digest for v in status.versions):
                return
        try:
            await self.packages.delete(digest)
        except Exception as e:
            log.warning("event=delete_upload_failed digest=%s error=%r", digest[:12], e)

    async def _undeploy(self, msg: Message) -> Message:
        assert isinstance(msg, UndeployRequest)
        try:
            await self.kv.get(msg.plugin)
        except NotFoundError:  # never deployed, or already deleted
            raise NotFound(f"plugin {msg.plugin!r} is not deployed") from None
        await self.kv.delete(msg.plugin)
        log.info("event=undeployed plugin=%s", msg.plugin)
        return UndeployReply(msg.plugin)

    async def _records(self) -> list[DeploymentRecord]:
        out = []
        for key in await bucket_keys(self.kv):
            try:
                entry = await self.kv.get(key)
                out.append(decode(DeploymentRecord, entry.value or b""))
            except (NotFoundError, DecodeError) as e:
                log.warning("event=skip_record key=%s error=%r", key, e)
        return out

    async def _list(self, msg: Message) -> Message:
        workers = self.registry.alive()
        statuses = []
        for record in sorted(await self._records(), key=lambda r: r.plugin):
            ready, failed = [], {}
            for w in workers:
                for lp in w.plugins:
                    if lp.plugin != record.plugin:
                        continue
                    if lp.state == "ready":
                        ready.append(w.worker_id)
                    elif lp.state == "failed":
                        failed[w.worker_id] = f"{lp.version}: {lp.error}"
            wanted = record.replicas or len(workers)
            statuses.append(PluginStatus(record, sorted(set(ready)), failed, wanted))
        return ListReply(statuses)

    async def _workers(self, msg: Message) -> Message:
        return WorkersReply(self.registry.alive())

    async def _policy_set(self, msg: Message) -> Message:
        assert isinstance(msg, PolicySetRequest)
        await self.policy.set(msg.key, msg.record)
        return PolicyListReply(await self.policy.records())

    async def _policy_delete(self, msg: Message) -> Message:
        assert isinstance(msg, PolicyDeleteRequest)
        await self.policy.delete(msg.key)
        return PolicyListReply(await self.policy.records())

    async def _policy_list(self, msg: Message) -> Message:
        return PolicyListReply(await self.policy.records())
