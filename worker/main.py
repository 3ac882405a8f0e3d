"""The worker process: wires the parts together and runs until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from typing import Any

import nats
import uvloop
from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError, NotFoundError, ServiceUnavailableError

from schemas.credentials import connect_options
from schemas.subjects import Subjects

from . import metrics
from .compile_cache import CompileCache
from .deployments import DeploymentWatcher
from .engine import Engines
from .executor import Executor
from .heartbeat import Heartbeats
from .host_bridge import HostBridge
from .hosted import HostedPlugin
from .invoke import InvokeServer
from .jobs import JobRunner
from .loader import Loader
from .policy import PolicyView
from .settings import WorkerSettings, parse_args
from .status_http import serve_status
from .syscalls import SyscallBus
from .tracing import Tracing, TracingUnavailable, traces_url
from .triggers import TriggerRunner

log = logging.getLogger("forge.worker")

#: Bound on how long a stopping worker waits for in-flight calls.
STOP_GRACE_S = 10.0


async def connect(settings: WorkerSettings, name: str) -> Client:
    """Connect, waiting for NATS as long as it takes; exit at once if it refuses the
    credentials, and stop (SIGTERM) if it refuses them later."""
    try:
        auth = connect_options(settings.credentials)
    except ValueError as e:
        raise SystemExit(f"forgeone-worker: {e}") from None
    nc = Client()
    connecting = True

    def refused(e: BaseException) -> bool:
        return isinstance(e, nats.errors.AuthorizationError) or (
            isinstance(e, nats.errors.Error) and "authorization violation" in str(e).lower()
        )

    stopping = False

    def stop_refused(e: BaseException) -> None:
        # The server no longer takes these credentials (rotated or revoked): a worker
        # without NATS only looks alive, so stop it the ordinary way and let its
        # supervisor start it again with the current ones.
        nonlocal stopping
        if not stopping:
            stopping = True
            log.error("event=nats_auth_refused error=%r: credentials refused; stopping", e)
            signal.raise_signal(signal.SIGTERM)
            # the ordinary stop may itself be waiting on the bus: do not linger past it
            asyncio.get_running_loop().call_later(STOP_GRACE_S + 5, exit_refused)

    def exit_refused() -> None:
        log.error("event=worker_exit reason=nats_auth_refused")
        logging.shutdown()
        os._exit(1)

    async def on_error(e: Exception) -> None:
        if connecting and refused(e):
            nc.options["allow_reconnect"] = False  # stop the connect loop: retrying cannot help
        elif refused(e):
            stop_refused(e)
        else:
            log.warning("event=nats_error error=%r", e)

    async def on_disconnect() -> None:
        if not connecting:  # a refused first connection is reported below instead
            log.warning("event=nats_disconnected")

    async def on_reconnect() -> None:
        log.info("event=nats_reconnected")

    async def on_closed() -> None:
        # nats-py closes for good, without reconnecting, when the server ends a session
        # with an authorization error
        if not connecting and nc.last_error is not None and refused(nc.last_error):
            stop_refused(nc.last_error)

    options: dict[str, Any] = {
        "servers": settings.nats_url.split(","),
        "name": name,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,  # seconds; nats-py's annotation says int, it takes floats
        "error_cb": on_error,
        "disconnected_cb": on_disconnect,
        "reconnected_cb": on_reconnect,
        "closed_cb": on_closed,
        "connect_timeout": 5,
        "allow_reconnect": True,
        **auth,
    }
    try:
        await nc.connect(**options)
    except nats.errors.Error as e:
        if not refused(e):
            raise
        with contextlib.suppress(Exception):
            await nc.close()
        given = (
            f"in {settings.credentials}"
            if settings.credentials
            else "(none given: set --creds or FORGE_NATS_CREDS)"
        )
        raise SystemExit(
            f"forgeone-worker: NATS at {settings.nats_url} refused the credentials {given}"
        ) from None
    connecting = False
    return nc


async def wait_for_buckets(nc: Client, subjects: Subjects):  # type: ignore[no-untyped-def]
    """The deployments bucket and package store; the coordinator creates them."""
    js = nc.jetstream()
    delay = 0.2
    while True:
        try:
            kv = await js.key_value(subjects.deployments_bucket)
            obj = await js.object_store(subjects.packages_bucket)
            policy = await js.key_value(subjects.policy_bucket)
            assignments = await js.key_value(subjects.assignments_bucket)
            return kv, obj, policy, assignments
        except (
            BucketNotFoundError,
            NotFoundError,
            ServiceUnavailableError,
            nats.errors.TimeoutError,
        ) as e:
            log.info("event=waiting_for_buckets error=%r", e)
            await asyncio.sleep(delay)  # the coordinator has not created them yet
            delay = min(delay * 2, 2.0)


def start_tracing(settings: WorkerSettings) -> Tracing | None:
    """The span exporter --otlp-endpoint asks for, or None (the default: no spans)."""
    if not settings.otlp_endpoint:
        return None
    try:
        tracing = Tracing(settings.worker_id, settings.otlp_endpoint)
    except TracingUnavailable as e:
        raise SystemExit(f"forgeone-worker: {e}") from None
    log.info("event=tracing_on endpoint=%s", traces_url(settings.otlp_endpoint))
    return tracing


async def run(settings: WorkerSettings) -> int:
    tracing = start_tracing(settings)
    subjects = Subjects(settings.prefix)
    nc = await connect(settings, f"forge-worker {settings.worker_id}")
    kv, obj, policy_kv, assignments = await wait_for_buckets(nc, subjects)
    engines = Engines()
    executor = Executor(settings.effective_slots)
    cache = CompileCache(
        settings.cache_dir, on_result=lambda r: metrics.COMPILE_CACHE.labels(r).inc()
    )
    hosted: dict[str, HostedPlugin] = {}
    syscalls = SyscallBus(nc, subjects, settings.worker_id)
    server = InvokeServer(
        nc, subjects, hosted, executor, syscalls, settings.worker_id, settings.caps, tracing
    )
    policy = PolicyView(policy_kv)
    bridge = HostBridge(asyncio.get_running_loop(), nc, subjects)
    loader = Loader(
        obj,
        settings.trust_store,
        cache,
        engines,
        settings.caps,
        settings.max_queue,
        settings.warm_instances,
        policy,
        bridge,
    )
    jobs = JobRunner(
        nc,
        subjects,
        hosted,
        executor,
        syscalls,
        settings.worker_id,
        settings.caps,
        settings.job_backoff_s,
        tracing,
    )
    triggers = TriggerRunner(
        nc, subjects, hosted, executor, syscalls, settings.worker_id, settings.heartbeat_s, tracing
    )
    watcher = DeploymentWatcher(
        kv,
        loader,
        hosted,
        [server, jobs, triggers],
        executor,
        policy,
        assignments,
        settings.worker_id,
        syscalls,
    )
    beats = Heartbeats(
        nc,
        subjects,
        settings.worker_id,
        settings.labels,
        settings.heartbeat_s,
        hosted,
        executor,
        server,
        memory_budget_bytes=settings.memory_budget_bytes,
    )

    def ready() -> tuple[bool, str]:
        if not nc.is_connected:
            return False, "not connected to NATS"
        if not watcher.synced.is_set():
            return False, "deployments not yet synced"
        return True, "ok"

    http = serve_status(settings.status_host, settings.status_port, metrics.REGISTRY, ready)
    log.info(
        "event=worker_started id=%s status=http://%s:%d/metrics slots=%d",
        settings.worker_id,
        settings.status_host,
        http.server_port,
        executor.slots,
    )
    print(f"worker {settings.worker_id} ready status_port={http.server_port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(policy.run())]
    # know the grants before loading anything, unless told to stop first
    synced = asyncio.create_task(policy.synced.wait())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({synced, stopping}, return_when=asyncio.FIRST_COMPLETED)
    synced.cancel()
    stopping.cancel()
    tasks += [asyncio.create_task(watcher.run()), asyncio.create_task(beats.run())]
    tasks.append(asyncio.create_task(triggers.run()))
    await stop.wait()

    log.info("event=worker_stopping id=%s", settings.worker_id)
    await asyncio.gather(
        server.stop_all(STOP_GRACE_S),
        jobs.stop_all(STOP_GRACE_S),
        triggers.stop_all(STOP_GRACE_S),
    )
    for t in tasks:
        t.cancel()
    await beats.send(stopping=True)
    for hp in list(hosted.values()):
        for hv in hp.versions.values():
            await hv.drain(executor, 1.0)
    try:
        await nc.drain()
    except Exception as e:
        log.warning("event=drain_failed error=%r", e)
    http.shutdown()
    loader.close()
    executor.shutdown()
    engines.close()
    if tracing is not None:  # export the last spans
        await asyncio.to_thread(tracing.shutdown)
    log.info("event=worker_stopped id=%s", settings.worker_id)
    return 0


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    settings = parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", settings.worker_id):
        sys.exit(
            f"forgeone-worker: worker id {settings.worker_id!r} may only use letters, "
            "digits, '_' and '-'"
        )
    try:
        code = uvloop.run(run(settings))
    except (OSError, nats.errors.NoServersError) as e:
        sys.exit(f"forgeone-worker: cannot reach NATS at {settings.nats_url}: {e}")
    sys.exit(code)


if __name__ == "__main__":
    main()
