"""compose.yaml, the Dockerfile and the Prometheus config agree with the code they run.

Docker is not needed: the compose file is read as YAML and every command it runs is
parsed by the project's own argument parsers, with the service's environment applied,
so a renamed flag or subcommand fails here rather than in a container restart loop.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client import CollectorRegistry

from coordinator.cli import build_parser
from worker.settings import WorkerSettings, parse_args
from worker.status_http import serve_status

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "compose.yaml"
PYPROJECT = ROOT / "pyproject.toml"

NATS_CLIENT_PORT = 4222
"""nats-server's default client port, used unless a server is given -p/--port."""
NATS_EXPORTER_PORT = 7777
"""prometheus-nats-exporter's default listen port, used unless given -port/-p."""
PROMETHEUS_CONFIG = "/etc/prometheus/prometheus.yml"
"""The prom/prometheus image's default --config.file."""


# --- reading compose.yaml ----------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), "compose.yaml is not a mapping"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    svcs = compose.get("services")
    assert isinstance(svcs, dict) and svcs, "compose.yaml has no services"
    return svcs


@pytest.fixture(scope="module")
def scripts() -> dict[str, str]:
    with PYPROJECT.open("rb") as f:
        return dict(tomllib.load(f)["project"]["scripts"])


def command(svc: dict[str, Any]) -> list[str]:
    cmd = svc.get("command")
    if cmd is None:
        return []
    if isinstance(cmd, str):
        return shlex.split(cmd)
    return [str(c) for c in cmd]


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, dict):
        return {str(k): "" if v is None else str(v) for k, v in env.items()}
    out = {}
    for item in env:
        k, _, v = str(item).partition("=")
        out[k] = v
    return out


def build_context(svc: dict[str, Any]) -> tuple[Path, str] | None:
    """The build context directory and Dockerfile name of a service that builds."""
    build = svc.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return (COMPOSE_FILE.parent / build).resolve(), "Dockerfile"
    context = (COMPOSE_FILE.parent / build.get("context", ".")).resolve()
    return context, str(build.get("dockerfile", "Dockerfile"))


def builds_from_repo(svc: dict[str, Any]) -> bool:
    ctx = build_context(svc)
    return ctx is not None and ctx[0] == ROOT


def mounts(svc: dict[str, Any]) -> Iterator[tuple[str, str, bool]]:
    """(source, target, read_only) for each of a service's volumes, short or long syntax."""
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            if len(parts) == 1:  # anonymous volume
                yield "", parts[0], False
            else:
                opts = parts[2].split(",") if len(parts) > 2 else []
                yield parts[0], parts[1], "ro" in opts
        else:
            yield str(v.get("source", "")), str(v["target"]), bool(v.get("read_only", False))


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def mount_at(svc: dict[str, Any], target: str | Path) -> tuple[str, str, bool] | None:
    for m in mounts(svc):
        if PurePosixPath(m[1]) == PurePosixPath(target):
            return m
    return None


def go_flags(args: list[str], booleans: frozenset[str]) -> dict[str, str]:
    """Flags of a Go program (``-x v``, ``--x=v``, ``-bool``), keyed by name without dashes."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if not arg.startswith("-"):
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if not eq:
            if name in booleans or i == len(args) or args[i].startswith("-"):
                value = "true"
            else:
                value = args[i]
                i += 1
        out[name] = value
    return out


def first(flags: dict[str, str], *names: str) -> str | None:
    return next((flags[n] for n in names if n in flags), None)


def urls(value: str) -> list[str]:
    return [u.strip() for u in value.split(",") if u.strip()]


# --- running the project's parsers on a service's command ------------------------------
@pytest.fixture
def service_env(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Apply a service's environment (and nothing else FORGE_*) to os.environ."""

    def apply(svc: dict[str, Any]) -> None:
        for k in list(os.environ):
            if k.startswith("FORGE_"):
                monkeypatch.delenv(k)
        for k, v in environment(svc).items():
            monkeypatch.setenv(k, v)

    return apply


@pytest.fixture
def seen_parsers(monkeypatch: pytest.MonkeyPatch) -> list[argparse.ArgumentParser]:
    """Every ArgumentParser that parses during the test, to read its exact options."""
    seen: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_args

    def spy(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        seen.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", spy)
    return seen


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def long_flags(argv: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


def assert_flags_exact(parser: argparse.ArgumentParser, argv: list[str], where: str) -> None:
    """argparse accepts unambiguous prefixes; compose should spell flags out in full."""
    for flag in long_flags(argv):
        assert flag in parser._option_string_actions, (
            f"{where}: {flag} is not an option of `{parser.prog}` "
            f"(it has {sorted(o for o in parser._option_string_actions if o.startswith('--'))})"
        )


def parse_coordinator(argv: list[str], where: str) -> argparse.Namespace:
    """``forgeone SUBCOMMAND ...`` through build_parser(), built after the env is applied."""
    parser = build_parser()
    assert len(argv) >= 2, f"{where}: `forgeone` needs a subcommand"
    sub = subcommands(parser)
    assert argv[1] in sub, f"{where}: `forgeone {argv[1]}` is not a subcommand ({sorted(sub)})"
    assert_flags_exact(sub[argv[1]], argv[2:], where)
    try:
        return parser.parse_args(argv[1:])
    except SystemExit as e:
        pytest.fail(f"{where}: `{shlex.join(argv)}` is rejected by forgeone (exit {e.code})")


def parse_worker(
    argv: list[str], where: str, seen: list[argparse.ArgumentParser]
) -> WorkerSettings:
    try:
        settings = parse_args(argv[1:])
    except SystemExit as e:
        pytest.fail(f"{where}: `{shlex.join(argv)}` is rejected by forgeone-worker (exit {e.code})")
    assert seen, "worker.settings.parse_args did not use argparse"
    assert_flags_exact(seen[-1], argv[1:], where)
    return settings


# --- the services, by role ----------------------------------------------------------------
def forge_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services.items() if builds_from_repo(svc)}


def with_program(
    services: dict[str, dict[str, Any]], program: str, sub: str | None = None
) -> dict[str, dict[str, Any]]:
    out = {}
    for name, svc in forge_services(services).items():
        argv = command(svc)
        if argv[:1] == [program] and (sub is None or argv[1:2] == [sub]):
            out[name] = svc
    return out


def one(found: dict[str, dict[str, Any]], what: str) -> tuple[str, dict[str, Any]]:
    assert len(found) == 1, f"expected one {what} service, found {sorted(found)}"
    return next(iter(found.items()))


def nats_servers(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in services.items()
        if str(svc.get("image", "")).split("/")[-1].split(":")[0] == "nats"
    }


NATS_BOOLEANS = frozenset({"js", "jetstream", "D", "V", "DV", "help", "h"})
EXPORTER_BOOLEANS = frozenset(
    {
        "varz",
        "connz",
        "connz_detailed",
        "routez",
        "subz",
        "healthz",
        "gatewayz",
        "leafz",
        "accstatz",
        "D",
        "V",
        "DV",
    }
)


def nats_flags(svc: dict[str, Any]) -> dict[str, str]:
    argv = command(svc)
    if argv[:1] == ["nats-server"]:
        argv = argv[1:]
    return go_flags(argv, NATS_BOOLEANS)


def nats_client_url(name: str, svc: dict[str, Any]) -> str:
    port = first(nats_flags(svc), "p", "port") or NATS_CLIENT_PORT
    return f"nats://{name}:{port}"


def nats_monitor_port(svc: dict[str, Any]) -> int | None:
    port = first(nats_flags(svc), "m", "http_port")
    return int(port) if port else None


@pytest.fixture(scope="module")
def prometheus_config(services: dict[str, dict[str, Any]]) -> dict[str, Any]:
    prom = {n: s for n, s in services.items() if "prom/prometheus" in str(s.get("image", ""))}
    name, svc = one(prom, "prom/prometheus")
    config = PROMETHEUS_CONFIG
    for arg in command(svc):
        if arg.startswith("--config.file="):
            config = arg.split("=", 1)[1]
    mount = mount_at(svc, config)
    assert mount is not None, f"{name}: nothing is mounted at its config file {config}"
    source, _, read_only = mount
    assert is_bind(source), f"{name}: {config} should be a bind mount of a repo file"
    assert read_only, f"{name}: mount {config} read-only"
    path = (COMPOSE_FILE.parent / source).resolve()
    assert path.is_file(), f"{name}: {source} does not exist"
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict) and data.get("scrape_configs"), f"{source}: no scrape_configs"
    return data


def static_targets(prom: dict[str, Any]) -> set[str]:
    return {
        t
        for job in prom["scrape_configs"]
        for sc in job.get("static_configs") or []
        for t in sc.get("targets") or []
    }


# --- tests ------------------------------------------------------------------------------------
def test_compose_spec_has_no_version_key(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "the Compose Specification has no `version:`"


def test_forge_services_build_this_repo_with_its_dockerfile(
    services: dict[str, dict[str, Any]],
) -> None:
    forge = forge_services(services)
    assert forge, "no service builds from the repository"
    for name, svc in services.items():
        ctx = build_context(svc)
        if ctx is None:
            continue
        context, dockerfile = ctx
        assert context == ROOT, f"{name}: builds from {context}, not the repository"
        assert (context / dockerfile).is_file(), f"{name}: {dockerfile} missing from {context}"


def test_dockerfile_is_a_small_non_root_image_of_this_project() -> None:
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    froms = [ln for ln in lines if ln.upper().startswith("FROM ")]
    assert froms, "Dockerfile has no FROM"
    assert "python:3.11-slim" in text, "base image should be python:3.11-slim"
    final = lines[lines.index(froms[-1]) :]
    users = [ln.split(None, 1)[1] for ln in final if ln.upper().startswith("USER ")]
    assert users, "the final stage should switch to a non-root USER"
    assert users[-1].split(":")[0] not in ("root", "0"), "the final stage runs as root"
    cmd = [ln for ln in final if ln.upper().startswith("CMD ")]
    assert cmd and "forgeone" in cmd[-1] and "--help" in cmd[-1], "CMD should be forgeone --help"
    # Every package setuptools would find must be copied into the build.
    with PYPROJECT.open("rb") as f:
        include = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    copied = {
        PurePosixPath(p).parts[0]
        for ln in lines
        if ln.upper().startswith("COPY ") and "--from" not in ln
        for p in ln.split()[1:-1]
    }
    for pattern in include:
        package = pattern.rstrip("*").rstrip(".")
        assert package in copied or "." in copied, f"Dockerfile does not COPY {package}/"
    assert "pyproject.toml" in copied or "." in copied, "Dockerfile does not COPY pyproject.toml"


def test_forge_commands_are_console_scripts(
    services: dict[str, dict[str, Any]], scripts: dict[str, str]
) -> None:
    for name, svc in forge_services(services).items():
        argv = command(svc)
        assert argv, f"{name}: no command (the image's CMD is only `forgeone --help`)"
        assert argv[0] in scripts, (
            f"{name}: runs {argv[0]!r}, not a [project.scripts] entry ({sorted(scripts)})"
        )


def test_forgeone_commands_parse(
    services: dict[str, dict[str, Any]],
    scripts: dict[str, str],
    service_env: Any,
    seen_parsers: list[argparse.ArgumentParser],
) -> None:
    assert scripts.get("forgeone") == "coordinator.cli:main"
    assert scripts.get("forgeone-worker") == "worker.main:main"
    checked = 0
    for name, svc in forge_services(services).items():
        argv = command(svc)
        service_env(svc)
        if argv[0] == "forgeone":
            parse_coordinator(argv, name)
        elif argv[0] == "forgeone-worker":
            parse_worker(argv, name, seen_parsers)
        else:
            pytest.fail(f"{name}: no parser check for {argv[0]}")
        checked += 1
    assert checked >= 2


def test_nats_cluster_routes_all_ways_with_jetstream(
    services: dict[str, dict[str, Any]], compose: dict[str, Any]
) -> None:
    servers = nats_servers(services)
    assert len(servers) == 3, f"expected three NATS servers, found {sorted(servers)}"
    named_volumes = set(compose.get("volumes") or {})
    cluster_names, server_names = set(), []
    cluster_ports = {}
    for name, svc in servers.items():
        flags = nats_flags(svc)
        listen = first(flags, "cluster")
        assert listen, f"{name}: no --cluster listen URL"
        cluster_ports[name] = urlsplit(listen).port
    for name, svc in servers.items():
        flags = nats_flags(svc)
        cluster = first(flags, "cluster_name")
        assert cluster, f"{name}: no --cluster_name"
        cluster_names.add(cluster)
        assert first(flags, "js", "jetstream") == "true", f"{name}: JetStream (-js) is off"
        store = first(flags, "sd", "store_dir")
        assert store, f"{name}: no JetStream store dir (-sd)"
        mount = mount_at(svc, store)
        assert mount is not None and mount[0] in named_volumes, (
            f"{name}: JetStream store {store} is not on a named volume"
        )
        server_names.append(first(flags, "n", "name", "server_name") or name)
        routes = [urlsplit(u) for u in urls(first(flags, "routes") or "")]
        routed = {r.hostname for r in routes}
        others = set(servers) - {name}
        assert others <= routed, f"{name}: --routes {routed} misses {others - routed}"
        for r in routes:
            if r.hostname in cluster_ports:
                assert r.port == cluster_ports[r.hostname], (
                    f"{name}: route to {r.hostname}:{r.port}, which listens on "
                    f"{cluster_ports[r.hostname]}"
                )
        assert nats_monitor_port(svc), f"{name}: no monitoring endpoint (-m)"
    assert len(cluster_names) == 1, f"NATS servers disagree on --cluster_name: {cluster_names}"
    assert len(set(server_names)) == len(server_names), "NATS server names must be unique"


def test_coordinator_settings(services: dict[str, dict[str, Any]], service_env: Any) -> None:
    name, svc = one(with_program(services, "forgeone", "coordinator"), "coordinator")
    service_env(svc)
    a = parse_coordinator(command(svc), name)
    servers = nats_servers(services)
    assert set(urls(a.nats_url)) == {nats_client_url(n, s) for n, s in servers.items()}, (
        f"{name}: --nats-url {a.nats_url} should list every NATS server"
    )
    assert 1 < a.replicas <= len(servers), (
        f"{name}: --replicas {a.replicas} on a {len(servers)}-node cluster"
    )
    assert a.status_host == "0.0.0.0", f"{name}: status server must listen beyond loopback"
    assert a.status_port > 0, f"{name}: status port must be fixed for scraping"
    trust = mount_at(svc, a.trust)
    assert trust is not None, f"{name}: nothing mounted at the trust store {a.trust}"
    assert is_bind(trust[0]) and trust[2], f"{name}: trust store should be a read-only bind"
    depends = svc.get("depends_on") or {}
    assert set(servers) <= set(depends), f"{name}: should wait for every NATS server"


def test_worker_settings_and_replicas(
    services: dict[str, dict[str, Any]],
    compose: dict[str, Any],
    service_env: Any,
    seen_parsers: list[argparse.ArgumentParser],
) -> None:
    name, svc = one(with_program(services, "forgeone-worker"), "worker")
    replicas = (svc.get("deploy") or {}).get("replicas", 1)
    assert int(replicas) >= 2, f"{name}: deploy.replicas is {replicas}"
    assert "container_name" not in svc, f"{name}: a fixed container_name cannot scale"
    assert not svc.get("ports"), f"{name}: published ports collide across replicas"
    service_env(svc)
    argv = command(svc)
    assert "--id" not in long_flags(argv) and "FORGE_WORKER_ID" not in environment(svc), (
        f"{name}: a fixed worker id would be shared by every replica"
    )
    settings = parse_worker(argv, name, seen_parsers)
    servers = nats_servers(services)
    assert set(urls(settings.nats_url)) == {nats_client_url(n, s) for n, s in servers.items()}
    assert settings.status_host == "0.0.0.0", f"{name}: status server must listen beyond loopback"
    assert settings.status_port > 0, f"{name}: status port must be fixed for scraping"
    trust = mount_at(svc, settings.trust_store)
    assert trust is not None, f"{name}: nothing mounted at the trust store"
    assert is_bind(trust[0]) and trust[2], f"{name}: trust store should be a read-only bind"
    cache = mount_at(svc, settings.cache_dir)
    assert cache is not None and cache[0] in set(compose.get("volumes") or {}), (
        f"{name}: compile cache {settings.cache_dir} should be on a named volume"
    )
    assert not cache[2], f"{name}: the compile cache must be writable"


def test_trust_store_is_the_same_file_everywhere(services: dict[str, dict[str, Any]]) -> None:
    sources = set()
    for name, svc in forge_services(services).items():
        target = environment(svc).get("FORGE_TRUST")
        assert target, f"{name}: FORGE_TRUST is not set"
        mount = mount_at(svc, target)
        assert mount is not None, f"{name}: FORGE_TRUST={target} is not mounted"
        sources.add(mount[0])
    assert sources == {"./.forge/trust.json"}, sources


def test_healthchecks_hit_healthz_with_python(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in forge_services(services).items():
        test = (svc.get("healthcheck") or {}).get("test")
        assert isinstance(test, list) and test[:1] == ["CMD"], f"{name}: healthcheck [CMD, ...]"
        assert test[1] in ("python", "python3"), f"{name}: slim images have no curl or wget"
        assert "/healthz" in " ".join(test), f"{name}: healthcheck should use /healthz"
    for name, svc in nats_servers(services).items():
        test = " ".join((svc.get("healthcheck") or {}).get("test") or [])
        assert f":{nats_monitor_port(svc)}/healthz" in test, f"{name}: healthcheck /healthz"


def test_healthcheck_command_works_against_the_status_server(
    services: dict[str, dict[str, Any]],
) -> None:
    """Run each python healthcheck against a real status server, then against a dead port."""
    server = serve_status("127.0.0.1", 0, CollectorRegistry(), lambda: (False, "starting"))
    port = server.server_port
    checks = []
    for name, svc in forge_services(services).items():
        test = svc["healthcheck"]["test"]
        assert test[1:3] in (["python", "-c"], ["python3", "-c"]), f"{name}: {test}"
        code = test[3]
        env = {**os.environ, **environment(svc)}
        status_port = env.get("FORGE_STATUS_PORT", "")
        if "FORGE_STATUS_PORT" not in code:  # a literal port: it must be the status port
            assert f":{status_port}/" in code, f"{name}: healthcheck misses port {status_port}"
            code = code.replace(f":{status_port}/", f":{port}/")
        env["FORGE_STATUS_PORT"] = str(port)
        checks.append((name, [sys.executable, "-c", code], env))
    try:
        for name, argv, env in checks:
            ok = subprocess.run(argv, env=env, capture_output=True, timeout=30)
            assert ok.returncode == 0, f"{name}: healthcheck failed: {ok.stderr.decode()}"
    finally:
        server.shutdown()
        server.server_close()
    for name, argv, env in checks:
        dead = subprocess.run(argv, env=env, capture_output=True, timeout=30)
        assert dead.returncode != 0, f"{name}: healthcheck passes with nothing listening"


def test_prometheus_scrapes_coordinator_and_workers(
    services: dict[str, dict[str, Any]],
    prometheus_config: dict[str, Any],
    service_env: Any,
    seen_parsers: list[argparse.ArgumentParser],
) -> None:
    coord_name, coord = one(with_program(services, "forgeone", "coordinator"), "coordinator")
    service_env(coord)
    coord_port = parse_coordinator(command(coord), coord_name).status_port
    assert f"{coord_name}:{coord_port}" in static_targets(prometheus_config), (
        f"prometheus does not scrape {coord_name}:{coord_port}"
    )

    worker_name, worker = one(with_program(services, "forgeone-worker"), "worker")
    service_env(worker)
    worker_port = parse_worker(command(worker), worker_name, seen_parsers).status_port
    dns = [
        sd
        for job in prometheus_config["scrape_configs"]
        for sd in job.get("dns_sd_configs") or []
        if worker_name in (sd.get("names") or [])
    ]
    assert dns, f"prometheus has no dns_sd_configs for {worker_name}"
    for sd in dns:
        assert sd.get("type", "SRV") == "A", "replicas resolve as A records, not SRV"
        assert int(sd.get("port", 0)) == worker_port, (
            f"dns_sd_configs port {sd.get('port')} != worker status port {worker_port}"
        )


def test_prometheus_scrapes_every_nats_server(
    services: dict[str, dict[str, Any]], prometheus_config: dict[str, Any]
) -> None:
    """nats-server's -m endpoint is JSON, so each server is scraped through an exporter."""
    servers = nats_servers(services)
    targets = static_targets(prometheus_config)
    covered = set()
    for name, svc in services.items():
        if "prometheus-nats-exporter" not in str(svc.get("image", "")):
            continue
        argv = command(svc)
        flags = go_flags(argv, EXPORTER_BOOLEANS)
        port = first(flags, "port", "p") or NATS_EXPORTER_PORT
        monitored = urlsplit(argv[-1])
        server = servers.get(monitored.hostname or "")
        assert server is not None, f"{name}: exports {argv[-1]}, not a NATS server"
        assert monitored.port == nats_monitor_port(server), (
            f"{name}: {argv[-1]} is not {monitored.hostname}'s -m port"
        )
        assert f"{name}:{port}" in targets, f"prometheus does not scrape {name}:{port}"
        covered.add(monitored.hostname)
    assert covered == set(servers), f"NATS servers without metrics: {set(servers) - covered}"
