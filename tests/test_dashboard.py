"""The Grafana dashboard (deploy/grafana/forgeone.json) queries only metrics ForgeOne exports,
and compose.yaml wires Grafana to the Prometheus that scrapes them.

The live test starts a real coordinator and worker, makes a call and a durable job
so that their series exist, scrapes both ``/metrics``, and checks every metric name
the dashboard's PromQL (panels and template variables) mentions. Names are mapped
back to their metric family the way Prometheus exposes them: ``_bucket``, ``_sum``
and ``_count`` to a histogram, ``_total`` to a counter.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from tests.cluster import Cluster, eventually

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "forgeone.json"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
COMPOSE = ROOT / "compose.yaml"

#: Declared by every worker but without a series until the event they count happens
#: (a trigger bound, a trap, a redelivery, a malformed message...). A quiet cluster
#: cannot show them, so for these the test requires the family, not a sample.
ONLY_AFTER_EVENTS = {
    "forge_trigger_pending",
    "forge_trigger_in_flight",
    "forge_trigger_events_total",
    "forge_instances_discarded_total",
    "forge_jobs_redelivered_total",
    "forge_jobs_dead_lettered_total",
    "forge_bad_messages_total",
    "forge_syscalls_dropped_total",
}

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
    | {"and", "or", "unless", "offset", "inf", "nan"}
)
_SUFFIXES = {"_bucket": "histogram", "_sum": "histogram", "_count": "histogram"}


# --- reading the dashboard ------------------------------------------------------------------
def load_dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels") or []  # panels inside a collapsed row


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and query variables."""
    out = [t["expr"] for p in panels(dashboard) for t in p.get("targets") or []]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            q = var["query"]
            out.append(q["query"] if isinstance(q, dict) else q)
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana ``label_values`` query) selects."""
    lv = re.fullmatch(r"\s*label_values\(\s*(?:([^,()]+?)\s*,)?\s*\w+\s*\)\s*", expr)
    if lv:  # label_values(metric, label): only the metric is a name
        expr = lv.group(1) or ""
    s = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range selectors and subqueries
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)  # Grafana variables
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", s):
        if s[m.end() :].lstrip().startswith("("):
            continue  # a function: sum, rate, histogram_quantile ...
        if m.group().lower() not in _KEYWORDS:
            names.add(m.group())
    return names


def test_metric_names_parser() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, plugin) (rate(forge_x_bucket{plugin=~"$p",'
        'fn!="a b"}[$__rate_interval]))) / ignoring(version) group_left '
        "sum without (instance) (forge_y_total offset 5m) > bool 1e3"
    )
    assert metric_names(expr) == {"forge_x_bucket", "forge_y_total"}
    assert metric_names("label_values(forge_calls_total, plugin)") == {"forge_calls_total"}
    assert metric_names("max(up)") == {"up"}


def test_dashboard_is_well_formed() -> None:
    d = load_dashboard()
    assert d["uid"] == "forgeone" and d["title"]
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    ds_vars = [v for v in d["templating"]["list"] if v["type"] == "datasource"]
    assert [v["query"] for v in ds_vars] == ["prometheus"]
    for p in panels(d):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, f"{p['title']}: wider than the grid"
        if p["type"] == "row":
            continue
        assert p["targets"], f"{p['title']}: no queries"
        assert p.get("description"), f"{p['title']}: say what the panel shows"
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            assert metric_names(t["expr"]), f"{p['title']}: {t['expr']} selects no metric"
    titles = " ".join(p["title"].lower() for p in panels(d))
    for topic in ("version", "latency", "pool", "cache", "job lag", "trigger lag", "workers"):
        assert topic in titles, f"no panel about {topic}"


def test_compose_provisions_grafana_with_prometheus_and_the_dashboard() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    grafana = [s for s in services.values() if "grafana/grafana" in str(s.get("image", ""))]
    assert len(grafana) == 1, "compose.yaml should run one Grafana"
    binds = {}
    for v in grafana[0]["volumes"]:
        source, target, *opts = v.split(":")
        binds[target] = (source, opts)
    prov_source, prov_opts = binds["/etc/grafana/provisioning"]
    assert (COMPOSE.parent / prov_source).resolve() == PROVISIONING and prov_opts == ["ro"]

    providers = yaml.safe_load((PROVISIONING / "dashboards" / "forgeone.yml").read_text())
    paths = [p["options"]["path"] for p in providers["providers"]]
    mounted = [t for t, (src, _) in binds.items() if (COMPOSE.parent / src).resolve() == DASHBOARD]
    assert mounted and any(m.rsplit("/", 1)[0] in paths for m in mounted), (
        f"the dashboard is mounted at {mounted}, outside the provider paths {paths}"
    )

    sources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    (ds,) = sources["datasources"]
    assert ds["type"] == "prometheus"
    host, port = re.fullmatch(r"http://([\w-]+):(\d+)", ds["url"]).groups()  # type: ignore[union-attr]
    assert host in services and "prom/prometheus" in services[host]["image"]
    assert any(p.endswith(f":{port}") for p in services[host].get("ports", [])), (
        f"{host} does not listen on {port}"
    )


# --- against running processes ----------------------------------------------------------------
def families(text: str) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def resolve(name: str, exported: dict[str, Metric]) -> Metric | None:
    """The family a queried series name belongs to, if it is exported with a fitting type."""
    if name in exported:
        return exported[name]
    for suffix, kind in _SUFFIXES.items():
        base = exported.get(name.removesuffix(suffix))
        if name.endswith(suffix) and base is not None and base.type == kind:
            return base
    base = exported.get(name.removesuffix("_total"))
    if name.endswith("_total") and base is not None and base.type == "counter":
        return base
    return None


async def test_every_metric_the_dashboard_queries_is_exported(cluster: Cluster) -> None:
    worker = cluster.start_worker("w1")
    coordinator = cluster.procs[0]
    client = await cluster.client()
    try:
        await client.deploy(cluster.example_package("echo"))
        await cluster.wait_ready(client, "echo", 1)
        assert await client.invoke("echo", "upper", b"metrics") == b"METRICS"
        job = await client.submit("echo", "echo", b"a job")
        assert await client.result(job, timeout=20) == b"a job"

        async def job_gauge() -> bool:  # the coordinator refreshes its gauges every 2 s
            return 'forge_jobs_pending{plugin="echo"}' in coordinator.metrics()

        await eventually(job_gauge, 20, "the coordinator's job queue gauge for echo")
    finally:
        await client.close()

    by_process = {
        "worker": families(worker.metrics()),
        "coordinator": families(coordinator.metrics()),
    }
    queried = {n for e in expressions(load_dashboard()) for n in metric_names(e)}
    assert len(queried) >= 15, sorted(queried)
    missing, silent = [], []
    for name in sorted(queried):
        found = [(p, f) for p, fams in by_process.items() if (f := resolve(name, fams))]
        if not found:
            missing.append(name)
        elif name not in ONLY_AFTER_EVENTS and not any(
            s.name == name for _, f in found for s in f.samples
        ):
            silent.append(f"{name} (declared by {', '.join(p for p, _ in found)})")
    assert not missing, f"the dashboard queries metrics nobody exports: {missing}"
    assert not silent, f"exported but without a series after a call and a job: {silent}"


@pytest.mark.parametrize("name", sorted(ONLY_AFTER_EVENTS))
def test_event_only_metrics_are_still_queried(name: str) -> None:
    """Keep the allowance honest: each name there is really on the dashboard."""
    queried = {n for e in expressions(load_dashboard()) for n in metric_names(e)}
    assert name in queried
