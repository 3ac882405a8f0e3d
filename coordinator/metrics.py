"""Prometheus metrics of the coordinator."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

ADMIN_REQUESTS = Counter(
    "forge_admin_requests",
    "Admin requests by operation and outcome.",
    ["op", "outcome"],
    registry=REGISTRY,
)
ADMIN_SECONDS = Histogram(
    "forge_admin_duration_seconds",
    "Admin request handling time.",
    ["op"],
    registry=REGISTRY,
)
DEPLOYS_REJECTED = Counter(
    "forge_deploys_rejected",
    "Deployments refused because the package failed verification.",
    registry=REGISTRY,
)
WORKERS_ALIVE = Gauge("forge_workers_alive", "Workers with a recent heartbeat.", registry=REGISTRY)
PLUGINS_DEPLOYED = Gauge(
    "forge_plugins_deployed", "Plugins in the deployments bucket.", registry=REGISTRY
)
JOBS_PENDING = Gauge(
    "forge_jobs_pending",
    "Durable jobs stored and not yet delivered to any worker, by plugin (the jobs consumer's lag).",
    ["plugin"],
    registry=REGISTRY,
)
JOBS_IN_FLIGHT = Gauge(
    "forge_jobs_in_flight",
    "Durable jobs delivered to a worker and not yet acknowledged, by plugin.",
    ["plugin"],
    registry=REGISTRY,
)
_job_plugins: set[str] = set()


def set_job_queues(queues: Mapping[str, tuple[int, int]]) -> None:
    """Set the job gauges from (pending, in flight) per plugin; drop plugins now gone."""
    for plugin, (pending, in_flight) in queues.items():
        JOBS_PENDING.labels(plugin).set(pending)
        JOBS_IN_FLIGHT.labels(plugin).set(in_flight)
    for plugin in _job_plugins - set(queues):
        JOBS_PENDING.remove(plugin)
        JOBS_IN_FLIGHT.remove(plugin)
    _job_plugins.clear()
    _job_plugins.update(queues)
