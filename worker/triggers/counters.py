"""One trigger's numbers on this worker: its Prometheus series and the counters
reported in TriggerStats."""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import Counter, Gauge, Histogram

from schemas.triggers import TriggerCounters

from .. import metrics

RATE_WINDOW_S = 10.0

TRIGGER_EVENTS = Counter(
    "forge_trigger_events",
    "Trigger event deliveries finished, by trigger and outcome "
    "(ok, retried, dead_lettered, failed).",
    ["trigger", "outcome"],
    registry=metrics.REGISTRY,
)
TRIGGER_ERRORS = Counter(
    "forge_trigger_errors",
    "Failed attempts of trigger events, by trigger and error code.",
    ["trigger", "code"],
    registry=metrics.REGISTRY,
)
TRIGGER_DEAD_LETTERED = Counter(
    "forge_trigger_dead_lettered",
    "Trigger events sent to their dead-letter subject.",
    ["trigger"],
    registry=metrics.REGISTRY,
)
TRIGGER_IN_FLIGHT = Gauge(
    "forge_trigger_in_flight",
    "Trigger events received by this worker and not yet finished.",
    ["trigger"],
    registry=metrics.REGISTRY,
)
TRIGGER_PENDING = Gauge(
    "forge_trigger_pending",
    "Stream events not yet delivered to any worker (the consumer's lag), as of this "
    "worker's last pull.",
    ["trigger"],
    registry=metrics.REGISTRY,
)
TRIGGER_SECONDS = Histogram(
    "forge_trigger_event_seconds",
    "Time from receiving a trigger event to finishing it (one attempt).",
    ["trigger"],
    registry=metrics.REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class Counters:
    """One trigger's counters on this worker (reported in TriggerStats)."""

    def __init__(self) -> None:
        self.events = 0
        self.ok = 0
        self.errors = 0
        self.dead_lettered = 0
        self.in_flight = 0
        self.last_error = ""
        self._samples: deque[tuple[float, int]] = deque()

    def rate(self) -> float:
        now = time.monotonic()
        handled = self.ok + self.dead_lettered
        self._samples.append((now, handled))
        while len(self._samples) > 1 and now - self._samples[0][0] > RATE_WINDOW_S:
            self._samples.popleft()
        t0, h0 = self._samples[0]
        return (handled - h0) / (now - t0) if now - t0 > 0.2 else 0.0

    def snapshot(self, name: str, bound: bool) -> TriggerCounters:
        return TriggerCounters(
            name=name,
            bound=bound,
            events=self.events,
            ok=self.ok,
            errors=self.errors,
            dead_lettered=self.dead_lettered,
            in_flight=self.in_flight,
            rate_per_s=round(self.rate(), 3),
            last_error=self.last_error[:1024],
        )


class TriggerMetrics:
    """One trigger's metric series, with the label lookups done once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seconds = TRIGGER_SECONDS.labels(name)
        self.in_flight = TRIGGER_IN_FLIGHT.labels(name)
        self.pending = TRIGGER_PENDING.labels(name)
        self.dead = TRIGGER_DEAD_LETTERED.labels(name)
        self._outcomes: dict[str, Counter] = {}

    def outcome(self, outcome: str) -> Counter:
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = TRIGGER_EVENTS.labels(self.name, outcome)
        return child
