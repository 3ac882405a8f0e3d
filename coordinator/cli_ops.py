"""``forgeone policy ...`` and ``forgeone logs``: the operator's commands for grants and logs."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
from collections.abc import Awaitable, Callable

from schemas.codec import to_obj
from schemas.errors import BadRequest
from schemas.policy import POLICY_DEFAULT_KEY, PolicyRecord, parse_permission

from .client import ForgeClient

Bus = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]
WithClient = Callable[[argparse.Namespace, Callable[[ForgeClient], Awaitable[int]]], Awaitable[int]]

LEVELS = {0: "DEBUG", 1: "INFO", 2: "WARN", 3: "ERROR"}


def policy_key(a: argparse.Namespace) -> str:
    """The record a command addresses: --plugin NAME, --key KEY_ID, or the default."""
    if a.plugin and a.key:
        raise BadRequest("give --plugin or --key, not both")
    if a.plugin:
        return f"plugin.{a.plugin}"
    if a.key:
        return f"key.{a.key}"
    return POLICY_DEFAULT_KEY


def _print(records: dict[str, PolicyRecord]) -> None:
    if not records:
        print("no policy records: nothing is granted (deny by default)")
    for key, rec in sorted(records.items()):
        caps = {
            k: v
            for k, v in (
                ("memory_mb", rec.max_memory_mb),
                ("timeout_ms", rec.max_timeout_ms),
                ("fuel", rec.max_fuel),
                ("pool_size", rec.max_pool_size),
            )
            if v is not None
        }
        cap_text = " caps " + ",".join(f"{k}={v}" for k, v in caps.items()) if caps else ""
        print(f"{key:<28} grants {', '.join(rec.grants) or '-'}{cap_text}")


def add_ops_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    bus: Bus,
    with_client: WithClient,
) -> None:
    pol = sub.add_parser("policy", help="grant and revoke permissions (deny by default)")
    psub = pol.add_subparsers(dest="policy_command", required=True, metavar="ACTION")

    def target(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        bus(sp)
        sp.add_argument("--plugin", help="the record for one plugin")
        sp.add_argument("--key", help="the record for a publisher key id")
        return sp

    async def show(a: argparse.Namespace) -> int:
        async def body(c: ForgeClient) -> int:
            records = await c.policies()
            if a.json:
                print(json.dumps({k: to_obj(v) for k, v in records.items()}, indent=2))
            else:
                _print(records)
            return 0

        return await with_client(a, body)

    async def grant(a: argparse.Namespace) -> int:
        for p in a.permissions:
            parse_permission(p)

        async def body(c: ForgeClient) -> int:
            rec = await c.grant(policy_key(a), *a.permissions)
            _print({policy_key(a): rec})
            return 0

        return await with_client(a, body)

    async def revoke(a: argparse.Namespace) -> int:
        async def body(c: ForgeClient) -> int:
            rec = await c.revoke(policy_key(a), *a.permissions)
            _print({policy_key(a): rec})
            return 0

        return await with_client(a, body)

    async def caps(a: argparse.Namespace) -> int:
        async def body(c: ForgeClient) -> int:
            key = policy_key(a)
            current = (await c.policies()).get(key, PolicyRecord())
            rec = dataclasses.replace(
                current,
                max_memory_mb=a.memory_mb,
                max_timeout_ms=a.timeout_ms,
                max_fuel=a.fuel,
                max_pool_size=a.pool_size,
            )
            await c.set_policy(key, rec)
            _print({key: rec})
            return 0

        return await with_client(a, body)

    async def delete(a: argparse.Namespace) -> int:
        async def body(c: ForgeClient) -> int:
            await c.delete_policy(policy_key(a))
            print(f"deleted {policy_key(a)}")
            return 0

        return await with_client(a, body)

    s = bus(psub.add_parser("show", help="every policy record"))
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=show)
    s = target(psub.add_parser("grant", help="add grants, e.g. log 'publish:orders.>'"))
    s.add_argument("permissions", nargs="+")
    s.set_defaults(func=grant)
    s = target(psub.add_parser("revoke", help="remove grants; running workers apply it"))
    s.add_argument("permissions", nargs="+")
    s.set_defaults(func=revoke)
    s = target(psub.add_parser("caps", help="cap manifest limits (unset flags remove a cap)"))
    s.add_argument("--memory-mb", type=int)
    s.add_argument("--timeout-ms", type=int)
    s.add_argument("--fuel", type=int)
    s.add_argument("--pool-size", type=int)
    s.set_defaults(func=caps)
    s = target(psub.add_parser("delete", help="remove a whole record"))
    s.set_defaults(func=delete)

    async def logs(a: argparse.Namespace) -> int:
        from .logs import read_logs

        async def body(c: ForgeClient) -> int:
            async for ev in read_logs(c.nc, c.subjects, a.plugin, a.lines, a.follow):
                ts = datetime.datetime.fromtimestamp(ev.at_ms / 1000, datetime.UTC)
                print(
                    f"{ts:%Y-%m-%dT%H:%M:%S.%fZ} {LEVELS.get(ev.level, '?'):<5} "
                    f"{ev.plugin}@{ev.version} {ev.fn} [{ev.worker}] {ev.message}"
                    + (f"  trace={ev.traceparent}" if ev.traceparent else ""),
                    flush=True,
                )
            return 0

        return await with_client(a, body)

    async def top(a: argparse.Namespace) -> int:
        from .top import run_top

        async def body(c: ForgeClient) -> int:
            return await run_top(c, a.interval, a.once)

        return await with_client(a, body)

    s = bus(sub.add_parser("top", help="live view of calls, errors, latency and lag"))
    s.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    s.add_argument("--once", action="store_true", help="print one refresh and exit")
    s.set_defaults(func=top)

    s = bus(sub.add_parser("logs", help="a plugin's log lines (kept in a bounded stream)"))
    s.add_argument("plugin")
    s.add_argument("-n", "--lines", type=int, default=100, help="how many past lines")
    s.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    s.set_defaults(func=logs)
