"""deploy/kubernetes renders with kustomize and every object is valid Kubernetes.

Each overlay is rendered with ``kubectl kustomize`` (skipped only where kubectl is
not installed) and every object is validated, strictly (unknown fields refused),
against the Kubernetes 1.32 OpenAPI schemas that ``kubernetes-validate`` ships.

The KEDA ScaledObject is a custom resource, and kubernetes-validate has no CRD
schemas, so it is checked here by hand instead: the fields KEDA requires
(``scaleTargetRef.name``, at least one trigger with a type and metadata, and for
``nats-jetstream`` the metadata its scaler refuses to start without: monitoring
endpoint, account, stream, consumer, integer thresholds), replica bounds that make
sense, ``scaleTargetRef`` naming the worker Deployment *as rendered* (same name,
same namespace, so a namePrefix or a rename cannot silently detach it), and each
trigger's stream and consumer equal to the jobs stream and a plugin's jobs consumer
as ``schemas.subjects.Subjects`` names them for the prefix the ConfigMap sets.

Beyond schemas, the test follows the references between objects (ConfigMaps and
Secrets mounted, Services selecting pods, probes naming ports) and parses each
container's command line with the project's own argument parsers, with the
environment the ConfigMap gives it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from coordinator.cli import build_parser
from schemas.manifest import NAME_PATTERN
from schemas.subjects import Subjects
from worker.settings import parse_args

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
OVERLAYS = ["dev", "production"]
#: A Kubernetes version kubernetes-validate ships schemas for (and kubectl's here).
K8S_VERSION = "1.32.0"
#: Secrets the operator creates (components/nats-auth says how); not in the repo.
EXTERNAL_SECRETS = {"forgeone-coordinator-nats", "forgeone-worker-nats"}

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")


def render(overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(KUBE / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert docs, f"{overlay} renders nothing"
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def component(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [
        d
        for d in by_kind(docs, kind)
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") == name
    ]
    assert len(found) == 1, f"expected one {kind} for the {name}, found {len(found)}"
    return found[0]


def config(docs: list[dict[str, Any]]) -> dict[str, str]:
    """The forgeone-config ConfigMap's data (the environment both processes get)."""
    (cm,) = [
        d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].startswith("forgeone-config")
    ]
    return dict(cm["data"])


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(request.param)


def test_every_object_is_valid_kubernetes(rendered: list[dict[str, Any]]) -> None:
    kinds = set()
    for obj in rendered:
        kinds.add(obj["kind"])
        if obj["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: test_keda_scaled_object checks it
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {e}")
    assert {"Deployment", "Service", "ConfigMap", "ScaledObject"} <= kinds


def test_validation_would_catch_a_mistake() -> None:
    """The validator is strict: a misspelt field or a wrong type is an error, not a pass."""
    deployment = component(render("dev"), "Deployment", "worker")
    spec = deployment["spec"]["template"]["spec"]
    spec["containers"][0]["imagePulPolicy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    del spec["containers"][0]["imagePulPolicy"]
    spec["terminationGracePeriodSeconds"] = "thirty"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_keda_scaled_object(rendered: list[dict[str, Any]]) -> None:
    (so,) = by_kind(rendered, "ScaledObject")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    spec = so["spec"]
    worker = component(rendered, "Deployment", "worker")
    target = spec["scaleTargetRef"]
    assert target["name"] == worker["metadata"]["name"], "scaleTargetRef misses the worker"
    assert target.get("kind", "Deployment") == "Deployment"
    assert target.get("apiVersion", "apps/v1") == "apps/v1"
    assert so["metadata"].get("namespace") == worker["metadata"].get("namespace")
    assert "replicas" not in worker["spec"], "KEDA owns the worker count; apply would reset it"
    lo, hi = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
    assert isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi, (lo, hi)

    subjects = Subjects(config(rendered).get("FORGE_PREFIX", "forge"))
    consumer_re = re.compile(re.escape(subjects.jobs_consumer("x")[:-1]) + f"({NAME_PATTERN})")
    plugins = []
    assert spec["triggers"], "a ScaledObject needs at least one trigger"
    for trigger in spec["triggers"]:
        assert trigger["type"] == "nats-jetstream", trigger
        meta = trigger["metadata"]
        for key in ("natsServerMonitoringEndpoint", "account", "stream", "consumer"):
            assert isinstance(meta.get(key), str) and meta[key], f"trigger without {key}"
        assert re.fullmatch(r"[\w.-]+:\d+", meta["natsServerMonitoringEndpoint"])
        for key in ("lagThreshold", "activationLagThreshold"):
            if key in meta:  # KEDA takes strings and parses them as integers
                assert isinstance(meta[key], str) and int(meta[key]) >= 0, (key, meta[key])
        assert meta["stream"] == subjects.jobs_stream, meta["stream"]
        m = consumer_re.fullmatch(meta["consumer"])
        assert m, f"{meta['consumer']} is not a jobs consumer name ({subjects.jobs_consumer('p')})"
        assert subjects.jobs_consumer(m.group(1)) == meta["consumer"]
        plugins.append(m.group(1))
    assert len(set(plugins)) == len(plugins), f"a plugin has two triggers: {plugins}"


def test_references_between_objects_resolve(rendered: list[dict[str, Any]]) -> None:
    configmaps = {d["metadata"]["name"] for d in by_kind(rendered, "ConfigMap")}
    secrets = {d["metadata"]["name"] for d in by_kind(rendered, "Secret")} | EXTERNAL_SECRETS
    for dep in by_kind(rendered, "Deployment"):
        name = dep["metadata"]["name"]
        pod = dep["spec"]["template"]
        selector = dep["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod["metadata"]["labels"].items(), name
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        for v in volumes.values():
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps, f"{name}: {v}"
            if "secret" in v:
                assert v["secret"]["secretName"] in secrets, f"{name}: {v}"
        for c in pod["spec"]["containers"]:
            for ref in c.get("envFrom", []):
                assert ref["configMapRef"]["name"] in configmaps, f"{name}: {ref}"
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{name}: mounts unknown volume {m['name']}"
            ports = {p["name"] for p in c.get("ports", [])}
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                port = c[probe]["httpGet"]["port"]
                assert port in ports, f"{name}: {probe} on unknown port {port}"
    for svc in by_kind(rendered, "Service"):
        pods = [
            d
            for d in by_kind(rendered, "Deployment")
            if svc["spec"]["selector"].items()
            <= d["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert pods, f"Service {svc['metadata']['name']} selects no pods"


def _container(dep: dict[str, Any]) -> dict[str, Any]:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return dict(c)


def _env(docs: list[dict[str, Any]], c: dict[str, Any]) -> dict[str, str]:
    env = dict(config(docs))
    env.update({e["name"]: e["value"] for e in c.get("env", [])})
    return env


def _mounted(dep: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume a file path lies in, from the container's mounts."""
    c = _container(dep)
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    for m in c["volumeMounts"]:
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/"):
            return dict(volumes[m["name"]], relative=path[len(m["mountPath"]) :].lstrip("/"))
    raise AssertionError(f"{dep['metadata']['name']}: nothing mounted at {path}")


def test_commands_parse_and_agree_with_the_pod(
    rendered: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    trust_files = {
        d["metadata"]["name"]: set(d["data"])
        for d in by_kind(rendered, "ConfigMap")
        if d["metadata"]["name"].startswith("forgeone-trust")
    }

    for k in [k for k in os.environ if k.startswith("FORGE_")]:
        monkeypatch.delenv(k)
    coordinator = component(rendered, "Deployment", "coordinator")
    c = _container(coordinator)
    for k, v in _env(rendered, c).items():
        monkeypatch.setenv(k, v)
    assert c["args"][:2] == ["forgeone", "coordinator"]
    a = build_parser().parse_args(c["args"][1:])
    assert a.status_host == "0.0.0.0" and a.status_port == c["ports"][0]["containerPort"]
    assert 1 <= a.replicas <= 3
    trust = _mounted(coordinator, a.trust)
    assert trust["relative"] in trust_files[trust["configMap"]["name"]]
    if a.creds:
        assert "secret" in _mounted(coordinator, a.creds)

    worker = component(rendered, "Deployment", "worker")
    c = _container(worker)
    for k, v in _env(rendered, c).items():
        monkeypatch.setenv(k, v)
    assert c["args"][0] == "forgeone-worker"
    settings = parse_args(c["args"][1:])
    assert settings.status_host == "0.0.0.0"
    assert settings.status_port == c["ports"][0]["containerPort"]
    assert "--id" not in c["args"] and "FORGE_WORKER_ID" not in _env(rendered, c), (
        "a fixed worker id would be shared by every replica"
    )
    assert settings.slots >= 1, "slots per CPU would count the node's CPUs, not the limit's"
    trust = _mounted(worker, str(settings.trust_store))
    assert trust["relative"] in trust_files[trust["configMap"]["name"]]
    cache = _mounted(worker, str(settings.cache_dir))  # the root filesystem is read-only
    assert "emptyDir" in cache or "persistentVolumeClaim" in cache, cache
    if settings.credentials:
        assert "secret" in _mounted(worker, settings.credentials)


def test_production_overlay_reads_credentials_from_secrets() -> None:
    docs = render("production")
    for name in ("coordinator", "worker"):
        c = _container(component(docs, "Deployment", name))
        env = {e["name"]: e["value"] for e in c.get("env", [])}
        assert env.get("FORGE_NATS_CREDS"), f"{name}: no credentials in production"
