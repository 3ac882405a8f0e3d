"""``forgeone``: the command line for publishers, operators and plugin authors."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from schemas.codec import to_obj
from schemas.errors import ForgeError
from schemas.package import package_digest

from .auth import add_auth_commands
from .cli_common import fail
from .cli_ops import add_ops_commands
from .cli_packages import add_package_commands
from .cli_triggers import add_trigger_commands
from .cli_versions import add_version_commands, deploy_line, record_line, weights_text
from .client import ForgeClient
from .placement import mib, short_reason
from .settings import CoordinatorSettings, JobSettings, env_default

DEFAULT_URL = "nats://127.0.0.1:4222"


# --- commands that talk to the cluster ---------------------------------------------
async def _with_client(a: argparse.Namespace, body: Callable[[ForgeClient], Awaitable[int]]) -> int:
    client = await ForgeClient.connect(a.nats_url, a.prefix, a.creds, persistent=False)
    try:
        return await body(client)
    finally:
        await client.close()


def cmd_deploy(a: argparse.Namespace) -> Awaitable[int]:
    data = Path(a.package).read_bytes()
    config = dict(_pairs(a.config, "--config"))
    labels = dict(_pairs(a.label, "--label"))

    async def body(c: ForgeClient) -> int:
        reply = await c.deploy(data, config, canary=a.canary, replicas=a.replicas, labels=labels)
        print(deploy_line(reply, package_digest(data), a.canary))
        return 0

    return _with_client(a, body)


async def cmd_undeploy(a: argparse.Namespace) -> int:
    async def body(c: ForgeClient) -> int:
        if a.version:  # one version that takes no traffic; the others stay
            reply = await c.undeploy_version(a.plugin, a.version)
            print(f"undeployed {a.plugin}@{a.version}; {record_line(reply)}")
            return 0
        await c.undeploy(a.plugin)
        print(f"undeployed {a.plugin}")
        return 0

    return await _with_client(a, body)


async def cmd_list(a: argparse.Namespace) -> int:
    async def body(c: ForgeClient) -> int:
        plugins = await c.plugins()
        if a.json:
            print(json.dumps([to_obj(p) for p in plugins], default=_json_default, indent=2))
            return 0
        if not plugins:
            print("no plugins deployed")
        short = any(len(p.ready_workers) < p.wanted for p in plugins)
        workers = await c.workers() if short else []
        for p in plugins:
            v = p.record.active()
            versions = weights_text(p.record) if len(p.record.versions) > 1 else v.version
            where = ", ".join(p.ready_workers) or "-"
            print(
                f"{p.record.plugin:<20} {versions:<10} ready {len(p.ready_workers)}/{p.wanted} "
                f"on {where}  fns: {', '.join(v.manifest.exports)}"
            )
            for w, err in p.failed_workers.items():
                print(f"    FAILED on {w}: {err}")
            if len(p.ready_workers) < p.wanted:
                why = short_reason(p.record, workers, [q.record for q in plugins])
                print(f"    SHORT: {why or 'waiting for heartbeats'}")
        return 0

    return await _with_client(a, body)


async def cmd_workers(a: argparse.Namespace) -> int:
    async def body(c: ForgeClient) -> int:
        workers = await c.workers()
        if a.json:
            print(json.dumps([to_obj(w) for w in workers], default=_json_default, indent=2))
            return 0
        if not workers:
            print("no workers")
        for w in workers:
            plugins = ", ".join(
                f"{p.plugin}@{p.version}" + ("" if p.state == "ready" else f"({p.state})")
                for p in w.plugins
            )
            labels = ",".join(f"{k}={v}" for k, v in w.labels.items()) or "-"
            budget = mib(w.memory_budget_bytes) if w.memory_budget_bytes else "unlimited"
            print(
                f"{w.worker_id:<24} slots {w.slots_busy}/{w.slots_total}  calls/s "
                f"{w.calls_per_s:.1f}  calls {w.calls_total}  rss {mib(w.rss_bytes)}  "
                f"budget {budget}  labels {labels}  plugins: {plugins or '-'}"
            )
        return 0

    return await _with_client(a, body)


def cmd_invoke(a: argparse.Namespace) -> Awaitable[int]:
    data = _payload(a)

    async def body(c: ForgeClient) -> int:
        result = await c.invoke_result(a.plugin, a.fn, data, a.timeout, a.version)
        if a.json:
            print(json.dumps(to_obj(result), default=_json_default))
        elif result.ok:
            sys.stdout.buffer.write(result.output)
            if sys.stdout.isatty() and not result.output.endswith(b"\n"):
                sys.stdout.write("\n")
        if not result.ok:
            assert result.error is not None
            raise result.error.to_exception()
        return 0

    return _with_client(a, body)


def _payload(a: argparse.Namespace) -> bytes:
    if a.file:
        return Path(a.file).read_bytes()
    if a.data == "-" or (a.data is None and not sys.stdin.isatty()):
        return sys.stdin.buffer.read()
    return (a.data or "").encode()


def cmd_submit(a: argparse.Namespace) -> Awaitable[int]:
    data = _payload(a)

    async def body(c: ForgeClient) -> int:
        job_id = await c.submit(a.plugin, a.fn, data, a.deadline, a.job_id, a.version)
        print(job_id)
        return 0

    return _with_client(a, body)


async def cmd_result(a: argparse.Namespace) -> int:
    async def body(c: ForgeClient) -> int:
        res = await c.job_result(a.job_id, a.timeout)
        if a.json:
            print(json.dumps(to_obj(res), default=_json_default))
        elif res.result.ok:
            sys.stdout.buffer.write(res.result.output)
        if not res.result.ok:
            assert res.result.error is not None
            raise res.result.error.to_exception()
        return 0

    return await _with_client(a, body)


async def cmd_jobs(a: argparse.Namespace) -> int:
    async def body(c: ForgeClient) -> int:
        stats = await c.job_stats()
        if a.json:
            print(json.dumps([dataclasses.asdict(s) for s in stats], indent=2))
            return 0
        print(f"{'PLUGIN':<20} {'PENDING':>8} {'IN FLIGHT':>10} {'REDELIVERED':>12} {'DEAD':>6}")
        for s in stats:
            print(
                f"{s.plugin:<20} {s.pending:>8} {s.in_flight:>10} {s.redelivered:>12} "
                f"{s.dead_lettered:>6}"
            )
        return 0

    return await _with_client(a, body)


def cmd_coordinator(a: argparse.Namespace) -> int:
    from .service import run_coordinator

    _setup_logging()
    jobs = JobSettings(
        ack_wait_s=a.job_ack_wait,
        max_deliver=a.job_max_deliver,
        dedupe_window_s=a.job_dedupe_window,
        results_max_age_s=a.results_max_age,
    )
    settings = CoordinatorSettings(
        jobs=jobs,
        nats_url=a.nats_url,
        prefix=a.prefix,
        trust_store=Path(a.trust),
        replicas=a.replicas,
        status_host=a.status_host,
        status_port=a.status_port,
        credentials=a.creds,
    )
    return uvloop.run(run_coordinator(settings))


def cmd_dev(a: argparse.Namespace) -> int:
    from .dev import run_dev

    return run_dev(a)


# --- plumbing ----------------------------------------------------------------------
def _json_default(o: object) -> Any:
    if isinstance(o, bytes):
        try:
            return o.decode()
        except UnicodeDecodeError:
            return o.hex()
    return str(o)


def _pairs(items: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise SystemExit(f"forgeone: {flag} {item!r}: expected key=value")
        out.append((k, v))
    return out


def _setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="forgeone",
        description="Run untrusted WebAssembly plugins on a cluster of workers joined by NATS.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def bus(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument(
            "--nats-url",
            default=env_default("FORGE_NATS_URL", DEFAULT_URL),
            help="NATS server URL(s), comma-separated (env FORGE_NATS_URL)",
        )
        sp.add_argument("--prefix", default=env_default("FORGE_PREFIX", "forge"))
        sp.add_argument(
            "--creds",
            default=os.environ.get("FORGE_NATS_CREDS"),
            help="NATS credentials file (env FORGE_NATS_CREDS)",
        )
        return sp

    trust_default = env_default("FORGE_TRUST", "trust.json")
    add_package_commands(sub, trust_default)

    s = bus(sub.add_parser("deploy", help="upload and deploy a package"))
    s.add_argument("package")
    s.add_argument("--config", action="append", default=[], help="deployment config k=v")
    s.add_argument(
        "--canary",
        action="store_true",
        help="add it beside the deployed versions at weight 0 (then `forgeone rollout`)",
    )
    s.add_argument("--replicas", type=int, default=0, help="workers that host it (0: every worker)")
    s.add_argument("--label", action="append", default=[], help="hosts must carry label k=v")
    s.set_defaults(func=cmd_deploy)

    s = bus(sub.add_parser("undeploy", help="remove a plugin's deployment"))
    s.add_argument("plugin")
    s.add_argument("--version", help="remove only this version (it must take no traffic)")
    s.set_defaults(func=cmd_undeploy)

    s = bus(sub.add_parser("list", help="deployed plugins and where they run"))
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)

    s = bus(sub.add_parser("workers", help="live workers"))
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_workers)

    s = bus(sub.add_parser("invoke", help="call a plugin function"))
    s.add_argument("plugin")
    s.add_argument("fn")
    s.add_argument("data", nargs="?", help="payload; '-' reads stdin")
    s.add_argument("-f", "--file", help="read the payload from a file")
    s.add_argument("--timeout", type=float, default=5.0, help="seconds")
    s.add_argument("--version", help="pin a plugin version")
    s.add_argument("--json", action="store_true", help="print the whole result as JSON")
    s.set_defaults(func=cmd_invoke)

    s = bus(sub.add_parser("submit", help="submit a durable job; prints its id"))
    s.add_argument("plugin")
    s.add_argument("fn")
    s.add_argument("data", nargs="?", help="payload; '-' reads stdin")
    s.add_argument("-f", "--file", help="read the payload from a file")
    s.add_argument("--deadline", type=float, help="seconds from now after which it must not run")
    s.add_argument("--job-id", help="idempotency key (default: a random id)")
    s.add_argument("--version", help="pin a plugin version")
    s.set_defaults(func=cmd_submit)

    s = bus(sub.add_parser("result", help="wait for and print a job's result"))
    s.add_argument("job_id")
    s.add_argument("--timeout", type=float, default=30.0, help="seconds to wait")
    s.add_argument("--json", action="store_true", help="print the whole stored result")
    s.set_defaults(func=cmd_result)

    s = bus(sub.add_parser("jobs", help="pending, in-flight, redelivered, dead-lettered jobs"))
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_jobs)

    s = bus(sub.add_parser("coordinator", help="run the coordinator service"))
    s.add_argument("--trust", default=trust_default)
    s.add_argument("--replicas", type=int, default=int(env_default("FORGE_REPLICAS", "1")))
    s.add_argument("--status-host", default=env_default("FORGE_STATUS_HOST", "127.0.0.1"))
    s.add_argument("--status-port", type=int, default=int(env_default("FORGE_STATUS_PORT", "0")))
    d = JobSettings()
    s.add_argument(
        "--job-ack-wait",
        type=float,
        default=d.ack_wait_s,
        help="seconds before an unacked job is redelivered",
    )
    s.add_argument(
        "--job-max-deliver",
        type=int,
        default=d.max_deliver,
        help="deliveries before a failing job is dead-lettered",
    )
    s.add_argument(
        "--job-dedupe-window",
        type=float,
        default=d.dedupe_window_s,
        help="seconds in which a resubmitted job id is stored once",
    )
    s.add_argument(
        "--results-max-age",
        type=float,
        default=d.results_max_age_s,
        help="seconds job results are kept",
    )
    s.set_defaults(func=cmd_coordinator)

    add_ops_commands(sub, bus, _with_client)
    add_trigger_commands(sub, bus, _with_client)
    add_version_commands(sub, bus, _with_client)
    add_auth_commands(sub, bus)

    s = sub.add_parser("dev", help="run a local cluster: NATS, coordinator, workers, examples")
    s.add_argument("--dir", default=".forge/dev", help="state folder (keys, NATS data, caches)")
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--port", type=int, default=4222, help="NATS client port")
    s.add_argument("--plugins", default="plugins", help="folder of example plugins")
    s.add_argument(
        "--auth",
        action="store_true",
        help="NATS users per role (made under DIR/auth on first run); each runs as its role",
    )
    s.add_argument(
        "--once",
        action="store_true",
        help="stop after the example calls instead of serving until Ctrl-C",
    )
    s.set_defaults(func=cmd_dev)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
        if asyncio.iscoroutine(result):
            result = uvloop.run(result)
        code = int(result or 0)
    except ForgeError as e:
        code = fail(str(e))
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
