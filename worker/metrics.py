"""Prometheus metrics of a worker (one registry per process, served on /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

CALLS = Counter(
    "forge_calls",
    "Calls finished, by plugin, function, version and outcome (ok or error code).",
    ["plugin", "fn", "version", "outcome"],
    registry=REGISTRY,
)
CALL_SECONDS = Histogram(
    "forge_call_duration_seconds",
    "Time from receiving a call to replying, by plugin and fn.",
    ["plugin", "fn"],
    registry=REGISTRY,
    buckets=(
        0.0001,
        0.00025,
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1,
        2.5,
        5,
        10,
        30,
    ),
)
GUEST_SECONDS = Histogram(
    "forge_guest_duration_seconds",
    "Time inside the guest per call, by plugin and fn.",
    ["plugin", "fn"],
    registry=REGISTRY,
    buckets=(0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
)
POOL_INSTANCES = Gauge(
    "forge_pool_instances",
    "Instances per plugin version, idle or busy.",
    ["plugin", "version", "state"],
    registry=REGISTRY,
)
INSTANCES_CREATED = Counter(
    "forge_instances_created",
    "Instances created (warm-up and on demand).",
    ["plugin", "version"],
    registry=REGISTRY,
)
INSTANCES_DISCARDED = Counter(
    "forge_instances_discarded",
    "Instances thrown away after a trap or a broken limit.",
    ["plugin", "version"],
    registry=REGISTRY,
)
COMPILE_CACHE = Counter(
    "forge_compile_cache",
    "Compiled-module cache lookups by result (hit, miss, corrupt).",
    ["result"],
    registry=REGISTRY,
)
COMPILE_SECONDS = Histogram(
    "forge_compile_seconds",
    "Time to get a compiled module (cache load or compile).",
    ["result"],
    registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)
PLUGINS_LOADED = Gauge(
    "forge_plugins_loaded",
    "Plugin versions by state (loading, ready, failed).",
    ["state"],
    registry=REGISTRY,
)
PACKAGES_REJECTED = Counter(
    "forge_packages_rejected",
    "Packages that failed verification at load.",
    registry=REGISTRY,
)
SLOTS_BUSY = Gauge("forge_slots_busy", "Execution slots running a guest call.", registry=REGISTRY)
SLOTS_TOTAL = Gauge("forge_slots_total", "Execution slots (threads).", registry=REGISTRY)
BAD_MESSAGES = Counter(
    "forge_bad_messages",
    "Messages refused as malformed, by where they arrived.",
    ["source"],
    registry=REGISTRY,
)
SYSCALLS = Counter(
    "forge_syscalls",
    "Fire-and-forget syscalls published, by kind.",
    ["kind"],
    registry=REGISTRY,
)
SYSCALLS_DROPPED = Counter(
    "forge_syscalls_dropped",
    "Syscalls dropped (buffer full or publish failed).",
    ["kind"],
    registry=REGISTRY,
)

JOBS_FETCHED = Counter(
    "forge_jobs_fetched",
    "Durable jobs pulled from JetStream, by plugin.",
    ["plugin"],
    registry=REGISTRY,
)
JOBS_DONE = Counter(
    "forge_jobs_acked",
    "Job deliveries finished, by plugin and outcome (ok, an error code, already_stored).",
    ["plugin", "outcome"],
    registry=REGISTRY,
)
JOBS_REDELIVERED = Counter(
    "forge_jobs_redelivered",
    "Job deliveries that were not the first.",
    ["plugin"],
    registry=REGISTRY,
)
JOBS_DEAD_LETTERED = Counter(
    "forge_jobs_dead_lettered",
    "Jobs sent to the dead-letter stream.",
    ["plugin"],
    registry=REGISTRY,
)
JOBS_RESULT_DUPLICATES = Counter(
    "forge_jobs_result_duplicates",
    "Results not stored because the job already had one.",
    ["plugin"],
    registry=REGISTRY,
)


class CallSeries:
    """The call metrics of one plugin function, with label lookups done once."""

    def __init__(self, plugin: str, fn: str) -> None:
        self.plugin = plugin
        self.fn = fn
        self.seconds = CALL_SECONDS.labels(plugin, fn)
        self.guest = GUEST_SECONDS.labels(plugin, fn)
        self._calls: dict[tuple[str, str], Counter] = {}

    def calls(self, version: str, outcome: str) -> Counter:
        key = (version, outcome)
        child = self._calls.get(key)
        if child is None:
            child = self._calls[key] = CALLS.labels(self.plugin, self.fn, version, outcome)
        return child
