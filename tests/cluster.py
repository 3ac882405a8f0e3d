"""Real processes for tests: nats-server, coordinator and workers on loopback.

Nothing here is mocked: each Cluster starts a ``nats-server`` with JetStream
in a temporary folder on a free port, and coordinator and worker processes
exactly as an operator would.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import wasmtime

from coordinator.client import ForgeClient
from coordinator.embedded_nats import NatsServer, free_port
from schemas.codec import from_obj
from schemas.manifest import Manifest
from schemas.package import build_package
from schemas.signing import TrustStore, generate_key, save_private_key

REPO = Path(__file__).resolve().parent.parent
PLUGINS = REPO / "plugins"
T = TypeVar("T")


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)  # poll interval


async def eventually(
    probe: Callable[[], Awaitable[T | None]], timeout: float = 15.0, what: str = "condition"
) -> T:
    """Await ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = await probe()
            if value:
                return value
        except Exception as e:  # keep polling, but report the last error on timeout
            last_error = e
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}"
                + (f" (last error: {last_error!r})" if last_error else "")
            )
        await asyncio.sleep(0.05)  # poll interval


def built_plugins() -> dict[str, Path]:
    """Build the example plugins (cached by build.py when sources are unchanged)."""
    spec = importlib.util.spec_from_file_location("forge_plugin_build", PLUGINS / "build.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    result: dict[str, Path] = mod.build_all(PLUGINS / "build")
    return result


def manifest_for(name: str, wasm: bytes, **fields: Any) -> Manifest:
    obj = {
        "name": name,
        "version": "1.0.0",
        "abi": "forge/1",
        "exports": ["run"],
        "permissions": [],
        "limits": {},
        **fields,
        "wasm_sha256": hashlib.sha256(wasm).hexdigest(),
    }
    return from_obj(Manifest, obj)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    status_port: int = 0

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.status_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            return str(r.read().decode())

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name):
                continue
            m = re.match(r"([a-zA-Z_:]+)(\{[^}]*\})? ([0-9.e+-]+|NaN)$", line)
            if not m or m.group(1) != name:
                continue
            got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(m.group(3))
        return total

    def stop(self, sig: str = "term", timeout: float = 20) -> int:
        if self.popen.poll() is None:
            if sig == "kill":
                self.popen.kill()
            else:
                self.popen.terminate()
        return self.popen.wait(timeout=timeout)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


@dataclass
class Cluster:
    """A nats-server plus coordinator and worker processes in one temp folder."""

    root: Path
    nodes: int = 1
    """nats-server processes; more than one form a JetStream cluster with routes."""
    key_path: Path = field(init=False)
    trust_path: Path = field(init=False)
    procs: list[Proc] = field(default_factory=list)
    heartbeat_s: float = 0.3
    servers: list[NatsServer] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.key = generate_key()
        self.key_path = self.root / "signing.key"
        save_private_key(self.key, self.key_path)
        self.trust_path = self.root / "trust.json"
        TrustStore().with_key(self.key.public_key(), "test").save(self.trust_path)
        if self.nodes == 1:
            self.servers = [NatsServer(store_dir=self.root / "nats")]
        else:
            cluster_ports = [free_port() for _ in range(self.nodes)]
            routes = [f"nats://127.0.0.1:{p}" for p in cluster_ports]
            self.servers = [
                NatsServer(
                    store_dir=self.root / f"nats-{i}",
                    name=f"n{i}",
                    cluster_port=cluster_ports[i],
                    routes=[r for j, r in enumerate(routes) if j != i],
                )
                for i in range(self.nodes)
            ]
        for server in self.servers:
            server.start()

    @property
    def nats(self) -> NatsServer:
        return self.servers[0]

    @property
    def url(self) -> str:
        return ",".join(server.url for server in self.servers)

    def restart_node(self, i: int = 0, kill: bool = True) -> None:
        """Stop node ``i`` (SIGKILL by default) and start it again on the same port and store."""
        self.servers[i].stop(kill=kill)
        self.servers[i].start()

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "FORGE_NATS_URL": self.url,
            "FORGE_TRUST": str(self.trust_path),
            "PYTHONUNBUFFERED": "1",
        }

    def _spawn(self, name: str, args: list[str], ready_prefix: str) -> Proc:
        log = self.root / f"{name}.log"
        with open(log, "ab") as err:
            popen = subprocess.Popen(
                args,
                stdout=subprocess.PIPE,
                stderr=err,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                cwd=self.root,
            )
        proc = Proc(name, popen, log)
        assert popen.stdout is not None
        line = popen.stdout.readline().decode()  # blocks until the process says it is ready
        if not line.startswith(ready_prefix):
            popen.kill()
            raise AssertionError(f"{name} did not start: {line!r}\n{proc.log_text()}")
        proc.status_port = int(line.rsplit("status_port=", 1)[1])
        self.procs.append(proc)
        return proc

    def start_coordinator(self, *extra: str) -> Proc:
        args = [
            sys.executable,
            "-m",
            "coordinator",
            "coordinator",
            "--trust",
            str(self.trust_path),
            "--replicas",
            str(min(self.nodes, 3)),
            *extra,
        ]
        return self._spawn("coordinator", args, "coordinator ready")

    def start_worker(
        self, worker_id: str, cache_dir: Path | None = None, extra: list[str] | None = None
    ) -> Proc:
        cache = cache_dir or self.root / f"cache-{worker_id}"
        args = [
            sys.executable,
            "-m",
            "worker",
            "--id",
            worker_id,
            "--trust",
            str(self.trust_path),
            "--cache-dir",
            str(cache),
            "--heartbeat",
            str(self.heartbeat_s),
            *(extra or []),
        ]
        return self._spawn(worker_id, args, "worker ")

    def package(self, manifest: Manifest, wasm: bytes) -> bytes:
        return build_package(manifest, wasm, self.key)

    def example_package(self, name: str, **overrides: Any) -> bytes:
        wasm = built_plugins()[name].read_bytes()
        source = json.loads((PLUGINS / name / "forge.json").read_text())
        source.update(overrides)
        fields = {k: v for k, v in source.items() if k != "name"}
        return self.package(manifest_for(name, wasm, **fields), wasm)

    def wat_package(self, name: str, wat: str, **fields: Any) -> bytes:
        wasm = wasmtime.wat2wasm(wat)
        return self.package(manifest_for(name, bytes(wasm), **fields), bytes(wasm))

    async def client(self) -> ForgeClient:
        return await ForgeClient.connect(self.url)

    async def allow(self, plugin: str, *permissions: str) -> None:
        """Grant ``plugin`` permissions in the policy (nothing is granted by default)."""
        client = await self.client()
        try:
            await client.grant(f"plugin.{plugin}", *permissions)
        finally:
            await client.close()

    async def wait_ready(
        self, client: ForgeClient, plugin: str, workers: int, timeout: float = 20
    ) -> None:
        async def probe() -> bool:
            for p in await client.plugins():
                if p.record.plugin == plugin and len(p.ready_workers) >= workers:
                    return True
            return False

        await eventually(probe, timeout, f"{plugin} ready on {workers} workers")

    def close(self) -> None:
        for p in self.procs:
            try:
                p.stop(timeout=15)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()
        for server in self.servers:
            server.stop()

    def dump_logs(self) -> str:
        return "\n".join(f"==== {p.name} ====\n{p.log_text()[-4000:]}" for p in self.procs)
