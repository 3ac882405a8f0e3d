"""Prometheus metrics of the coordinator."""

from __future__ import annotations

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
