"""``forgeone dev`` (what ``make run`` starts): a whole local cluster in one command.

An embedded nats-server with JetStream, a coordinator and N workers as child
processes; a development signing key and trust store on first run; the
bundled example plugins built, signed, deployed and called; then a live
status line until Ctrl-C, which stops every process started here.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from types import ModuleType

import uvloop

from schemas.errors import ForgeError
from schemas.manifest import manifest_from_source
from schemas.package import build_package
from schemas.signing import TrustStore, generate_key, key_id, load_private_key, save_private_key

from .auth import CONFIG_NAME, ROLES, creds_name, init_auth
from .client import ForgeClient
from .embedded_nats import MAX_PAYLOAD, NatsServer

#: (plugin, function, input) calls shown after deployment; failures are expected for chaos.
EXAMPLES: list[tuple[str, str, bytes]] = [
    ("echo", "upper", b"hello, forgeone"),
    ("hello", "greet", b"operator"),
    ("textstats", "stats", b"The quick brown fox\njumps over the lazy dog"),
    ("textstats", "validate_json", b'{"plugins": ["echo", "hello"], "ok": true}'),
    ("counter", "incr", b"visits"),
    ("vowels-as", "count_vowels", b"ForgeOne runs Extism plugins unmodified"),
    ("chaos", "trap", b""),
    ("chaos", "spin", b""),
]


def _load_builder(plugins_dir: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("forge_plugin_build", plugins_dir / "build.py")
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"no build.py in {plugins_dir}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ensure_dev_key(base: Path) -> tuple[Path, Path]:
    """The development signing key and trust store, created on first run."""
    key_path, trust_path = base / "keys" / "dev.key", base / "trust.json"
    if not key_path.exists():
        key = generate_key()
        save_private_key(key, key_path)
        TrustStore().with_key(key.public_key(), "development key").save(trust_path)
        print(f"created development signing key {key_id(key.public_key())} in {key_path}")
    return key_path, trust_path


def build_examples(plugins_dir: Path, out: Path, key_path: Path) -> list[Path]:
    """Build every example plugin and sign it into a package under ``out``."""
    built = _load_builder(plugins_dir).build_all(out)
    key = load_private_key(key_path)
    packages = []
    for name, wasm_path in sorted(built.items()):
        source = json.loads((plugins_dir / name / "forge.json").read_text())
        wasm = wasm_path.read_bytes()
        pkg = out / f"{name}.forgepkg"
        pkg.write_bytes(build_package(manifest_from_source(source, wasm), wasm, key))
        packages.append(pkg)
    return packages


async def grant_examples(client: ForgeClient, packages: list[Path]) -> None:
    """As the operator of this development cluster, grant each example what it requests."""
    for pkg in packages:
        with zipfile.ZipFile(pkg) as zf:
            manifest = json.loads(zf.read("plugin.json"))
        if manifest["permissions"]:
            await client.grant(f"plugin.{manifest['name']}", *manifest["permissions"])
            print(f"granted {manifest['name']}: {', '.join(manifest['permissions'])}")


def ensure_dev_auth(base: Path) -> tuple[Path, Path]:
    """NATS users for every role (created on first run) and a server config using them."""
    auth_dir = base / "auth"
    if not (auth_dir / CONFIG_NAME).exists():
        init_auth(auth_dir, force=True)
        print(f"created NATS users for {', '.join(ROLES)} in {auth_dir}")
    config = base / "nats-server-auth.conf"  # include paths are relative to this file
    config.write_text(f'max_payload: {MAX_PAYLOAD}\ninclude "auth/{CONFIG_NAME}"\n')
    return auth_dir, config


class Processes:
    """Child processes started by dev; all stopped together."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL
            )
        self.procs.append((name, proc))

    def stop(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for name, proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop in time; killing it", file=sys.stderr)
                proc.kill()
                proc.wait()


async def _wait_ready(
    client: ForgeClient, plugins: list[str], workers: int, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            statuses = {p.record.plugin: p for p in await client.plugins()}
            if all(p in statuses and len(statuses[p].ready_workers) >= workers for p in plugins):
                return
            failed = [
                f"{p}: {err}"
                for p in plugins
                if p in statuses
                for err in statuses[p].failed_workers.values()
            ]
            if failed:
                raise RuntimeError("plugins failed to load: " + "; ".join(failed))
        except ForgeError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"plugins not ready on {workers} workers within {timeout_s}s")
        await asyncio.sleep(0.2)  # poll interval while workers load


async def _demo(
    url: str, packages: list[Path], workers: int, once: bool, credentials: str | None = None
) -> None:
    client = await ForgeClient.connect(url, credentials=credentials)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if len(await client.workers()) >= workers:
                    break
            except ForgeError:  # the coordinator is still starting
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("coordinator and workers did not come up within 30s")
            await asyncio.sleep(0.2)  # poll interval while processes start
        names = []
        await grant_examples(client, packages)
        for pkg in packages:
            reply = await client.deploy(pkg.read_bytes())
            v = reply.record.active()
            names.append(reply.record.plugin)
            print(f"deployed {reply.record.plugin}@{v.version} ({', '.join(v.manifest.exports)})")
        await _wait_ready(client, names, workers, 60)
        print("\nexample calls:")
        for plugin, fn, data in EXAMPLES:
            try:
                r = await client.invoke_result(plugin, fn, data, timeout=2.0)
            except ForgeError as e:
                print(f"  {plugin}.{fn}({data[:40]!r}) -> {e}")
                continue
            shown = (
                r.output.decode(errors="replace")
                if r.ok
                else f"{r.error.code.value}: {r.error.message}"
                if r.error
                else "?"
            )
            print(f"  {plugin}.{fn}({data[:40]!r}) -> {shown}   [{r.worker}, {r.duration_us} us]")
        if once:
            return
        print("\nserving; Ctrl-C stops every process started here")
        last_calls, last_t = None, time.monotonic()
        while True:
            ws = await client.workers()
            plugins = await client.plugins()
            calls = sum(w.calls_total for w in ws)
            now = time.monotonic()
            rate = 0.0 if last_calls is None else (calls - last_calls) / (now - last_t)
            last_calls, last_t = calls, now
            line = (
                f"workers up: {len(ws)} | plugins deployed: {len(plugins)} | "
                f"calls/s: {rate:.1f} | calls total: {calls}"
            )
            print("\r" + line.ljust(78), end="", flush=True)
            await asyncio.sleep(1.0)  # status refresh period
    finally:
        await client.close()


def run_dev(a: argparse.Namespace) -> int:
    base = Path(a.dir).resolve()
    base.mkdir(parents=True, exist_ok=True)
    key_path, trust_path = ensure_dev_key(base)
    packages = build_examples(Path(a.plugins), base / "packages", key_path)
    auth_dir, config = ensure_dev_auth(base) if getattr(a, "auth", False) else (None, None)
    nats = NatsServer(
        store_dir=base / "nats", port=a.port, log_file=base / "nats-server.log", config_file=config
    )
    try:
        nats.start()
    except TimeoutError as e:
        print(
            f"forgeone dev: nats-server did not start ({e}); is port {a.port} free? "
            f"See {base / 'nats-server.log'}",
            file=sys.stderr,
        )
        return 1
    print(f"nats-server with JetStream on {nats.url} (data in {base / 'nats'})")
    env = {**os.environ, "FORGE_NATS_URL": nats.url, "FORGE_TRUST": str(trust_path)}

    def creds(role: str) -> str | None:
        return None if auth_dir is None else str(auth_dir / creds_name(role))

    def role_env(role: str) -> dict[str, str]:
        path = creds(role)
        return env if path is None else {**env, "FORGE_NATS_CREDS": path}

    if auth_dir is not None:
        print(
            f"NATS users on: each process runs as its role; other terminals add "
            f"--creds {creds('publisher')} (or {creds_name('client')} to only invoke)"
        )
    procs = Processes(base / "logs")
    try:
        procs.start(
            "coordinator",
            [sys.executable, "-m", "coordinator", "coordinator"],
            role_env("coordinator"),
        )
        for i in range(a.workers):
            procs.start(
                f"worker-{i + 1}",
                [
                    sys.executable,
                    "-m",
                    "worker",
                    "--id",
                    f"worker-{i + 1}",
                    "--cache-dir",
                    str(base / "cache"),
                ],
                role_env("worker"),
            )
        print(f"coordinator and {a.workers} workers started (logs in {base / 'logs'})")
        uvloop.run(_demo(nats.url, packages, a.workers, a.once, creds("publisher")))
    except KeyboardInterrupt:
        print("\nstopping...")
    except (ForgeError, TimeoutError, RuntimeError) as e:
        print(f"\nforgeone dev: {e}", file=sys.stderr)
        return 1
    finally:
        procs.stop()
        nats.stop()
        print("stopped nats-server, coordinator and workers")
    return 0
