"""Turn a deployment's version entry into a ready HostedVersion.

Fetch the package by digest, verify it completely (archive, signature,
digest, ABI shape) and validate the module, all before compiling; then get
the compiled module from the cache, build the runtime and warm the pool.
Compiling runs on its own thread so calls keep flowing meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import wasmtime
from nats.js.object_store import ObjectStore

from schemas.errors import Denied, ForgeError, PackageRejected
from schemas.messages import VersionEntry
from schemas.package import VerifiedPackage, verify_package
from schemas.signing import TrustStore

from . import metrics
from .adapters import make_runtime
from .compile_cache import CompileCache
from .engine import Engines
from .host import Grants, HostEnv
from .host_bridge import HostBridge
from .hosted import HostedVersion
from .policy import PolicyView
from .runtime import WorkerCaps, effective_limits, engine_settings_for

log = logging.getLogger("forge.worker.loader")


class Loader:
    def __init__(
        self,
        packages: ObjectStore,
        trust_path: Path,
        cache: CompileCache,
        engines: Engines,
        caps: WorkerCaps,
        max_queue: int,
        warm: int,
        policy: PolicyView,
        bridge: HostBridge | None,
    ) -> None:
        self.policy = policy
        self.bridge = bridge
        self.packages = packages
        self.trust_path = trust_path
        self.cache = cache
        self.engines = engines
        self.caps = caps
        self.max_queue = max_queue
        self.warm = warm
        self._compile_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="compile")

    async def fetch(self, digest: str) -> bytes:
        res = await self.packages.get(digest)
        data = bytes(res.data or b"")
        if hashlib.sha256(data).hexdigest() != digest:
            raise PackageRejected(
                f"package {digest[:16]}… in the object store does not match its digest"
            )
        return data

    def _prepare(
        self, plugin: str, entry: VersionEntry, data: bytes, config: dict[str, str]
    ) -> HostedVersion:
        """Blocking part: verify, validate, compile (or load), instantiate and init."""
        trust = TrustStore.load(self.trust_path)  # re-read: revocations apply at the next load
        try:
            pkg: VerifiedPackage = verify_package(data, trust)
        except PackageRejected:
            metrics.PACKAGES_REJECTED.inc()
            raise
        m = pkg.manifest
        if m.name != plugin or m.version != entry.version:
            raise PackageRejected(
                f"package is {m.name}@{m.version}, but the deployment names "
                f"{plugin}@{entry.version}"
            )
        absent = self.policy.missing(plugin, pkg.key_id, m.permissions)
        if absent:
            raise Denied(f"the policy does not grant {plugin}: {', '.join(absent)}")
        limits = effective_limits(m, self.caps, self.policy.caps(plugin, pkg.key_id))
        settings = engine_settings_for(limits)
        engine = self.engines.get(settings)
        try:
            wasmtime.Module.validate(engine, pkg.wasm)
        except wasmtime.WasmtimeError as e:
            metrics.PACKAGES_REJECTED.inc()
            raise PackageRejected(f"module does not validate: {e}") from None
        started = time.perf_counter()
        compiled = self.cache.load(engine, settings, pkg.wasm, m.wasm_sha256)
        metrics.COMPILE_SECONDS.labels(compiled.cache_result).observe(time.perf_counter() - started)
        env = HostEnv(plugin, entry.version, Grants(m.permissions), dict(config), self.bridge)
        runtime = make_runtime(self.engines, m, compiled.module, limits, env)
        hosted = HostedVersion(
            plugin, entry.version, entry.digest, pkg.key_id, runtime, limits, env, self.max_queue
        )
        hosted.startup_logs = hosted.pool.warm(self.warm)
        metrics.INSTANCES_CREATED.labels(plugin, entry.version).inc(hosted.pool.created)
        return hosted

    async def load(self, plugin: str, entry: VersionEntry, config: dict[str, str]) -> HostedVersion:
        """A ready version, or a ForgeError saying why it cannot be loaded."""
        data = await self.fetch(entry.digest)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(
                self._compile_thread, self._prepare, plugin, entry, data, config
            )
        except ForgeError:
            raise
        except Exception as e:
            log.exception("event=load_failed plugin=%s version=%s", plugin, entry.version)
            raise PackageRejected(f"could not load: {type(e).__name__}: {e}") from None

    def close(self) -> None:
        self._compile_thread.shutdown(wait=False, cancel_futures=True)
