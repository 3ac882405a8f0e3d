"""Prometheus metrics of a worker (one registry per process, served on /metrics)."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

REGISTRY = CollectorRegistry(auto_describe=True)

CALL_BUCKETS = (
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
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
GUEST_BUCKETS = (0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)
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


class LoopHistogram:
    """A histogram written by the event loop thread alone, so without locks.

    prometheus_client's metrics take a lock per update and search buckets linearly;
    the fast path observes two histograms and a counter per call, so those are kept
    here as plain numbers and turned into metric families when scraped (a scrape on
    another thread may see one call in the counts but not yet in the sum: harmless).
    """

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; last is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += n
            out.append((floatToGoString(bound), float(running)))  # type: ignore[no-untyped-call]
        return out


class CallSeries:
    """The call metrics of one plugin function (forge_calls_total, the duration
    histograms), updated on the event loop thread without locks."""

    def __init__(self, plugin: str, fn: str) -> None:
        self.plugin = plugin
        self.fn = fn
        self.seconds = LoopHistogram(CALL_BUCKETS)
        self.guest = LoopHistogram(GUEST_BUCKETS)
        self.outcomes: dict[tuple[str, str], int] = {}
        """(version, outcome) -> calls."""

    def count(self, version: str, outcome: str) -> None:
        key = (version, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1


class CallMetrics(Collector):
    """Exports every CallSeries when scraped."""

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], CallSeries] = {}

    def series(self, plugin: str, fn: str) -> CallSeries:
        key = (plugin, fn)
        found = self._series.get(key)
        if found is None:
            found = self._series[key] = CallSeries(plugin, fn)
        return found

    def collect(self) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "forge_calls",
            "Calls finished, by plugin, function, version and outcome (ok or error code).",
            labels=["plugin", "fn", "version", "outcome"],
        )
        seconds = HistogramMetricFamily(
            "forge_call_duration_seconds",
            "Time from receiving a call to replying, by plugin and fn.",
            labels=["plugin", "fn"],
        )
        guest = HistogramMetricFamily(
            "forge_guest_duration_seconds",
            "Time inside the guest per call, by plugin and fn.",
            labels=["plugin", "fn"],
        )
        for s in list(self._series.values()):
            for (version, outcome), n in list(s.outcomes.items()):
                calls.add_metric([s.plugin, s.fn, version, outcome], n)
            seconds.add_metric([s.plugin, s.fn], s.seconds.buckets(), s.seconds.total)
            guest.add_metric([s.plugin, s.fn], s.guest.buckets(), s.guest.total)
        yield calls
        yield seconds
        yield guest


CALLS = CallMetrics()
REGISTRY.register(CALLS)
