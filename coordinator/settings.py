"""The coordinator's configuration: one typed object built from flags and environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class JobSettings:
    """How durable jobs are kept and retried (applied to the streams and consumers)."""

    ack_wait_s: float = 30.0
    """A job not acked (nor marked in progress) this long after delivery is redelivered."""
    max_deliver: int = 5
    """Deliveries before a failing job is dead-lettered."""
    dedupe_window_s: float = 120.0
    """Window in which a resubmitted job id is stored only once."""
    results_max_age_s: float = 24 * 3600.0
    """How long job results are kept."""
    dead_letter_max_age_s: float = 7 * 24 * 3600.0
    """How long dead-lettered jobs are kept."""


@dataclass(frozen=True)
class CoordinatorSettings:
    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server(s), comma-separated (env FORGE_NATS_URL)."""
    prefix: str = "forge"
    """Subject and bucket prefix (env FORGE_PREFIX)."""
    trust_store: Path = Path("trust.json")
    """Publisher keys deployments may be signed with (env FORGE_TRUST)."""
    replicas: int = 1
    """JetStream replicas for the buckets it creates (3 on a 3-node cluster)."""
    status_host: str = "127.0.0.1"
    """Address of the /metrics and /healthz server."""
    status_port: int = 0
    """Port of the /metrics and /healthz server; 0 picks a free one (env FORGE_STATUS_PORT)."""
    jobs: JobSettings = field(default_factory=lambda: JobSettings())
    """Durable job streams and consumers."""
    credentials: str | None = None
    """NATS credentials file, if the server requires auth (env FORGE_NATS_CREDS)."""


def env_default(name: str, default: str) -> str:
    return os.environ.get(name, default)
