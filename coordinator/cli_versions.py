"""``forgeone rollout``, ``history`` and ``rollback``: moving a plugin's traffic between versions.

A typical upgrade::

    forgeone deploy echo-2.0.0.forgepkg --canary   # 2.0.0 loads everywhere, takes no calls
    forgeone invoke echo upper hi --version 2.0.0  # try it with a pinned call
    forgeone rollout echo 2.0.0 --weight 10        # about 10% of calls
    forgeone rollout echo 2.0.0 --weight 100       # all of them; 1.0.0 stays warm at 0%
    forgeone rollback echo --to 1.0.0              # if 2.0.0 misbehaves: back, nothing uploaded
    forgeone undeploy echo --version 2.0.0         # drop the version that takes no traffic
"""

from __future__ import annotations

import argparse
import datetime
import json

from schemas.admin import DeployReply, HistoryEntry
from schemas.codec import to_obj
from schemas.errors import BadRequest
from schemas.messages import DeploymentRecord

from .cli_ops import Bus, WithClient
from .client import ForgeClient


def weights_text(record: DeploymentRecord) -> str:
    """``1.0.0 90%, 2.0.0 10%``: each version and its share of unpinned calls."""
    return ", ".join(f"{v.version} {v.weight}%" for v in record.versions)


def record_line(reply: DeployReply) -> str:
    """One line for a record an admin change wrote."""
    return f"{reply.record.plugin}: {weights_text(reply.record)} (revision {reply.revision})"


def deploy_line(reply: DeployReply, digest: str, canary: bool) -> str:
    """What ``forgeone deploy [--canary]`` prints for the record it wrote."""
    record = reply.record
    mine = next((v for v in record.versions if v.digest == digest), record.active())
    if canary and len(record.versions) > 1:
        return (
            f"staged {record.plugin}@{mine.version} at weight {mine.weight}% "
            f"({weights_text(record)}; revision {reply.revision}); it takes calls pinned to "
            f"it, and `forgeone rollout {record.plugin} {mine.version} --weight N` sends it more"
        )
    return (
        f"deployed {record.plugin}@{mine.version} digest={mine.digest[:16]} "
        f"revision={reply.revision}"
    )


def _when(at_ms: int) -> str:
    if not at_ms:
        return "-"
    return f"{datetime.datetime.fromtimestamp(at_ms / 1000, datetime.UTC):%Y-%m-%d %H:%M:%S}"


def history_lines(entries: list[HistoryEntry]) -> list[str]:
    """The history as a table, oldest first; the current record is marked ``*``."""
    out = [f"  {'REVISION':>8}  {'WRITTEN (UTC)':<19}  VERSIONS (share of calls)"]
    for i, e in enumerate(entries):
        mark = "*" if i == len(entries) - 1 else " "
        what = weights_text(e.record) if e.record is not None else "(undeployed)"
        out.append(f"{mark} {e.revision:>8}  {_when(e.at_ms):<19}  {what}")
    return out


def add_version_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    bus: Bus,
    with_client: WithClient,
) -> None:
    async def rollout(a: argparse.Namespace) -> int:
        if not 0 <= a.weight <= 100:
            raise BadRequest(f"--weight {a.weight}: give a percent between 0 and 100")

        async def body(c: ForgeClient) -> int:
            print(record_line(await c.rollout(a.plugin, a.version, a.weight)))
            return 0

        return await with_client(a, body)

    async def history(a: argparse.Namespace) -> int:
        async def body(c: ForgeClient) -> int:
            entries = await c.history(a.plugin)
            if a.json:
                print(json.dumps([to_obj(e) for e in entries], default=_json_default, indent=2))
            else:
                print("\n".join(history_lines(entries)))
            return 0

        return await with_client(a, body)

    async def rollback(a: argparse.Namespace) -> int:
        if a.to and a.revision:
            raise BadRequest("give --to or --revision, not both")

        async def body(c: ForgeClient) -> int:
            reply = await c.rollback(a.plugin, a.to or "", a.revision or 0)
            print(f"rolled back {record_line(reply)}")
            return 0

        return await with_client(a, body)

    s = bus(sub.add_parser("rollout", help="send a share of a plugin's calls to one version"))
    s.add_argument("plugin")
    s.add_argument("version", help="a deployed version (see `forgeone deploy --canary`)")
    s.add_argument(
        "--weight",
        type=int,
        required=True,
        help="percent of unpinned calls (100 completes the switch; the others keep 0%%)",
    )
    s.set_defaults(func=rollout)

    s = bus(sub.add_parser("history", help="a plugin's earlier deployments (the bucket history)"))
    s.add_argument("plugin")
    s.add_argument("--json", action="store_true", help="every record in full")
    s.set_defaults(func=history)

    s = bus(sub.add_parser("rollback", help="restore an earlier deployment; nothing is uploaded"))
    s.add_argument("plugin")
    s.add_argument("--to", metavar="VERSION", help="the latest record where it took every call")
    s.add_argument("--revision", type=int, help="exactly this revision (from `forgeone history`)")
    s.set_defaults(func=rollback)


def _json_default(o: object) -> object:
    if isinstance(o, bytes):
        return o.hex()
    return str(o)
