"""The worker's configuration: one typed object built from flags and environment."""

from __future__ import annotations

import argparse
import os
import re
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from .runtime import WorkerCaps


@dataclass(frozen=True)
class WorkerSettings:
    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server(s), comma-separated (env FORGE_NATS_URL)."""
    prefix: str = "forge"
    """Subject and bucket prefix (env FORGE_PREFIX)."""
    worker_id: str = ""
    """Unique id of this worker; defaults to host name plus a random suffix."""
    trust_store: Path = Path("trust.json")
    """Publisher keys this worker accepts packages from (env FORGE_TRUST)."""
    cache_dir: Path = Path(".forge/cache")
    """Compiled-module cache directory (env FORGE_CACHE_DIR)."""
    slots: int = 0
    """Execution threads; 0 means one per CPU (env FORGE_SLOTS)."""
    max_queue: int = 512
    """Most calls waiting per plugin version before OVERLOADED replies."""
    status_host: str = "127.0.0.1"
    """Address of the /metrics and /healthz server."""
    status_port: int = 0
    """Port of the /metrics and /healthz server; 0 picks a free one (env FORGE_STATUS_PORT)."""
    heartbeat_s: float = 2.0
    """Seconds between heartbeats."""
    warm_instances: int = 1
    """Instances created (and initialised) when a version loads."""
    labels: dict[str, str] = field(default_factory=dict)
    """Placement labels, from --label k=v."""
    memory_budget_bytes: int = 0
    """Plugin memory placement may assign here; 0 means unlimited (env FORGE_MEMORY_BUDGET)."""
    caps: WorkerCaps = field(default_factory=WorkerCaps)
    """Ceilings applied to every manifest's limits."""
    job_backoff_s: tuple[float, ...] = (0.5, 2.0, 5.0)
    """Delay before redelivering a failed job attempt, per attempt (the last repeats)."""
    credentials: str | None = None
    """NATS credentials file, if the server requires auth (env FORGE_NATS_CREDS)."""
    otlp_endpoint: str = ""
    """OTLP/HTTP collector to export spans to; empty: no spans (env OTEL_EXPORTER_OTLP_ENDPOINT)."""

    @property
    def effective_slots(self) -> int:
        return self.slots or (os.cpu_count() or 1)


def parse_args(argv: list[str] | None = None) -> WorkerSettings:
    env = os.environ
    p = argparse.ArgumentParser(prog="forgeone-worker", description="Run a ForgeOne worker.")
    p.add_argument("--nats-url", default=env.get("FORGE_NATS_URL", WorkerSettings.nats_url))
    p.add_argument("--prefix", default=env.get("FORGE_PREFIX", "forge"))
    p.add_argument("--id", dest="worker_id", default=env.get("FORGE_WORKER_ID", ""))
    p.add_argument("--trust", default=env.get("FORGE_TRUST", "trust.json"))
    p.add_argument("--cache-dir", default=env.get("FORGE_CACHE_DIR", ".forge/cache"))
    p.add_argument("--slots", type=int, default=int(env.get("FORGE_SLOTS", "0")))
    p.add_argument("--max-queue", type=int, default=512)
    p.add_argument("--status-host", default=env.get("FORGE_STATUS_HOST", "127.0.0.1"))
    p.add_argument("--status-port", type=int, default=int(env.get("FORGE_STATUS_PORT", "0")))
    p.add_argument("--heartbeat", type=float, default=2.0, help="seconds between heartbeats")
    p.add_argument("--label", action="append", default=[], help="placement label k=v")
    p.add_argument(
        "--memory-budget",
        default=env.get("FORGE_MEMORY_BUDGET", "0"),
        help="plugin memory placement may assign here, e.g. 512MiB or 2GiB (0: unlimited)",
    )
    p.add_argument("--creds", default=env.get("FORGE_NATS_CREDS"))
    p.add_argument(
        "--job-backoff",
        default=env.get("FORGE_JOB_BACKOFF", "0.5,2,5"),
        help="seconds before each retry of a failed job, comma-separated",
    )
    p.add_argument(
        "--otlp-endpoint",
        default=env.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
        help="export a span per call to this OTLP/HTTP collector, e.g. http://collector:4318",
    )
    a = p.parse_args(argv)
    labels = {}
    for item in a.label:
        k, sep, v = item.partition("=")
        if not sep or not k:
            p.error(f"--label {item!r}: expected key=value")
        labels[k] = v
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])[:64]
    worker_id = a.worker_id or f"{host}-{uuid.uuid4().hex[:6]}"
    return WorkerSettings(
        nats_url=a.nats_url,
        prefix=a.prefix,
        worker_id=worker_id,
        trust_store=Path(a.trust),
        cache_dir=Path(a.cache_dir),
        slots=a.slots,
        max_queue=a.max_queue,
        status_host=a.status_host,
        status_port=a.status_port,
        heartbeat_s=a.heartbeat,
        labels=labels,
        memory_budget_bytes=_size(p, a.memory_budget),
        credentials=a.creds,
        job_backoff_s=_floats(p, a.job_backoff),
        otlp_endpoint=a.otlp_endpoint.strip(),
    )


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}


def parse_size(text: str) -> int:
    """Bytes in ``text``: a number with an optional unit (``512MiB``, ``2GiB``, ``1.5G``,
    ``100MB``); K, M, G and T alone are binary units. Raises ValueError."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _SIZE_UNITS:
        raise ValueError(f"{text!r} is not a size (e.g. 512MiB, 2GiB, 1048576)")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def _size(p: argparse.ArgumentParser, text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        p.error(f"--memory-budget: {e}")


def _floats(p: argparse.ArgumentParser, text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        p.error(f"--job-backoff {text!r}: expected comma-separated seconds")
    if not values or any(v < 0 for v in values):
        p.error(f"--job-backoff {text!r}: expected comma-separated seconds")
    return values
