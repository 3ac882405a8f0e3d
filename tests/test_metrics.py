"""The worker's lock-free call metrics export what prometheus_client's own types would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from worker.metrics import CALL_BUCKETS, CallMetrics


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("plugin", "fn")))
            out[(s.name.replace("forge_call_duration_seconds", "h"), labels)] = s.value
    return out


def test_histogram_matches_prometheus_client_on_bounds_and_between() -> None:
    values = [0.0, 0.0001, 0.00010001, 0.0003, 0.001, 2.5, 29.9, 30.0, 31.0, 1e9]
    ours_registry, theirs_registry = CollectorRegistry(), CollectorRegistry()
    ours = CallMetrics()
    ours_registry.register(ours)
    theirs = Histogram(
        "forge_call_duration_seconds",
        "x",
        ["plugin", "fn"],
        buckets=CALL_BUCKETS,
        registry=theirs_registry,
    ).labels("p", "f")
    series = ours.series("p", "f")
    for v in values:
        series.seconds.observe(v)
        theirs.observe(v)
    mine = {k: v for k, v in samples(ours_registry).items() if k[0].startswith("h")}
    assert mine == samples(theirs_registry)
    assert mine[("h_count", ())] == len(values)


def test_calls_counted_by_version_and_outcome() -> None:
    registry = CollectorRegistry()
    calls = CallMetrics()
    registry.register(calls)
    s = calls.series("echo", "echo")
    for outcome in ("ok", "ok", "TRAP"):
        s.count("1.0.0", outcome)
    s.count("2.0.0", "ok")
    text = generate_latest(registry).decode()
    assert 'forge_calls_total{fn="echo",outcome="ok",plugin="echo",version="1.0.0"} 2.0' in text
    assert 'forge_calls_total{fn="echo",outcome="TRAP",plugin="echo",version="1.0.0"} 1.0' in text
    assert 'forge_calls_total{fn="echo",outcome="ok",plugin="echo",version="2.0.0"} 1.0' in text
    assert calls.series("echo", "echo") is s
