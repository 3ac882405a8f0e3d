"""The coordinator process: buckets, admin service, worker registry, metrics."""

from __future__ import annotations

import asyncio
import logging
import signal

from schemas.subjects import Subjects

from . import metrics
from .admin import AdminService
from .buckets import ensure_assignments, ensure_buckets, ensure_job_streams, ensure_triggers
from .connection import connect
from .jobs_client import Jobs
from .placement import Placement
from .policy_store import PolicyStore
from .registry import WorkerRegistry
from .settings import CoordinatorSettings
from .status_http import serve_status
from .triggers_admin import TriggerAdmin

log = logging.getLogger("forge.coordinator")


async def run_coordinator(settings: CoordinatorSettings) -> int:
    subjects = Subjects(settings.prefix)
    nc = await connect(settings.nats_url, "forge-coordinator", settings.credentials)
    js = nc.jetstream()
    kv, packages, policy_kv = await ensure_buckets(js, subjects, settings.replicas)
    await ensure_job_streams(js, subjects, settings.jobs, settings.replicas)
    registry = WorkerRegistry()
    await registry.start(nc, subjects)
    triggers = TriggerAdmin(
        nc, subjects, await ensure_triggers(js, subjects, settings.replicas), kv, registry
    )
    await triggers.start()
    admin = AdminService(
        nc,
        subjects,
        kv,
        packages,
        settings.trust_store,
        registry,
        settings.jobs,
        PolicyStore(policy_kv),
        settings.replicas,
        triggers,
    )
    await admin.start()
    placement = Placement(kv, await ensure_assignments(js, subjects, settings.replicas), registry)

    def ready() -> tuple[bool, str]:
        return (True, "ok") if nc.is_connected else (False, "not connected to NATS")

    http = serve_status(settings.status_host, settings.status_port, metrics.REGISTRY, ready)
    log.info(
        "event=coordinator_started status=http://%s:%d/metrics",
        settings.status_host,
        http.server_port,
    )
    print(f"coordinator ready status_port={http.server_port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def gauges() -> None:
        while True:
            metrics.WORKERS_ALIVE.set(len(registry.alive()))
            if placement.deployments.is_synced():  # the watched view of the bucket
                metrics.PLUGINS_DEPLOYED.set(len(placement.deployments.values))
            try:  # job queue depth per plugin, from the jobs consumers' info
                metrics.set_job_queues(
                    {s.plugin: (s.pending, s.in_flight) for s in await jobs.stats()}
                )
            except Exception as e:
                log.debug("event=job_gauges_failed error=%r", e)
            await asyncio.sleep(2.0)  # gauge refresh period

    jobs = Jobs(nc, subjects)
    task = asyncio.create_task(gauges())
    placing = asyncio.create_task(placement.run())
    await stop.wait()
    task.cancel()
    placing.cancel()
    await admin.stop()
    try:
        await nc.drain()
    except Exception as e:
        log.warning("event=drain_failed error=%r", e)
    http.shutdown()
    log.info("event=coordinator_stopped")
    return 0
