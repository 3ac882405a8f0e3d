"""``forgeone trigger add|list|show|pause|resume|rm`` and ``forgeone gateway``."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Awaitable, Callable

from schemas.codec import DecodeError, to_obj
from schemas.errors import BadRequest
from schemas.triggers import SourceKind, TriggerSpec, TriggerStatus

from .client import ForgeClient

Bus = Callable[[argparse.ArgumentParser], argparse.ArgumentParser]
WithClient = Callable[[argparse.Namespace, Callable[[ForgeClient], Awaitable[int]]], Awaitable[int]]


def _ms_list(text: str) -> list[int]:
    try:
        values = [int(float(x) * 1000) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BadRequest(f"--backoff {text!r}: expected comma-separated seconds") from None
    if not values:
        raise BadRequest(f"--backoff {text!r}: expected comma-separated seconds")
    return values


def _token_index(text: str) -> int:
    """``--ordered-by 2`` or ``--ordered-by '{2}'``: a 1-based subject token index."""
    m = re.fullmatch(r"\{?([0-9]{1,2})\}?", text.strip())
    if not m or int(m.group(1)) < 1:
        raise BadRequest(f"--ordered-by {text!r}: expected a subject token index such as 2")
    return int(m.group(1))


def spec_from_args(a: argparse.Namespace) -> TriggerSpec:
    if bool(a.subject) == bool(a.stream):
        raise BadRequest("give exactly one source: --subject SUBJECT or --stream STREAM")
    try:
        return TriggerSpec(
            name=a.name,
            source=SourceKind.SUBJECT if a.subject else SourceKind.STREAM,
            plugin=a.plugin,
            fn=a.fn,
            subject=a.subject or "",
            stream=a.stream or "",
            filter=a.filter or "",
            start=a.start,
            output=a.output or "",
            max_in_flight=a.max_in_flight,
            max_deliver=a.max_deliver,
            backoff_ms=_ms_list(a.backoff),
            ack_wait_ms=int(a.ack_wait * 1000),
            timeout_ms=int(a.timeout * 1000) if a.timeout else 0,
            dead_letter=a.dead_letter or "",
            ordered_by=_token_index(a.ordered_by) if a.ordered_by else 0,
        )
    except (ValueError, DecodeError) as e:
        raise BadRequest(str(e)) from None


def _source(s: TriggerSpec) -> str:
    if s.source is SourceKind.SUBJECT:
        return f"subject {s.subject}"
    return f"stream {s.stream}" + (f" ({s.filter})" if s.filter else "")


def _age(ms: int | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms}ms"
    if ms < 120_000:
        return f"{ms / 1000:.1f}s"
    return f"{ms / 60_000:.0f}m"


def _num(value: int | None) -> str:
    return "-" if value is None else str(value)


def print_table(statuses: list[TriggerStatus]) -> None:
    if not statuses:
        print("no triggers")
        return
    print(
        f"{'TRIGGER':<20} {'TARGET':<24} {'STATE':<10} {'PENDING':>8} {'OLDEST':>7} "
        f"{'RATE/S':>8} {'EVENTS':>8} {'ERRORS':>7} {'DEAD':>5}  SOURCE -> OUTPUT"
    )
    for t in statuses:
        s = t.spec
        print(
            f"{s.name:<20} {s.plugin + '.' + s.fn:<24} {t.state:<10} {_num(t.pending):>8} "
            f"{_age(t.oldest_age_ms):>7} {t.rate_per_s:>8.1f} {t.events:>8} {t.errors:>7} "
            f"{t.dead_lettered:>5}  {_source(s)} -> {s.output or '-'}"
        )


def print_status(t: TriggerStatus) -> None:
    s = t.spec
    print(f"trigger {s.name}: {t.state}")
    print(f"  runs        {s.plugin}.{s.fn}")
    print(f"  source      {_source(s)}" + (f", start {s.start}" if s.stream else ""))
    print(f"  output      {s.output or '-'}")
    print(f"  dead letter {s.dead_letter or '(default) forge.triggers.dlq.' + s.name}")
    backoff = ",".join(f"{b / 1000:g}" for b in s.backoff_ms)
    print(
        f"  delivery    max in flight {s.max_in_flight}, max deliver {s.max_deliver}, "
        f"backoff {backoff}s, ack wait {s.ack_wait_ms / 1000:g}s"
        + (f", ordered by token {s.ordered_by}" if s.ordered_by else "")
    )
    print(f"  hosted by   {', '.join(t.hosted_by) or 'no workers'}")
    print(f"  bound on    {', '.join(t.bound_on) or '-'}")
    print(
        f"  lag         pending {_num(t.pending)}, in flight {_num(t.in_flight)}, "
        f"redelivered {_num(t.redelivered)}, oldest {_age(t.oldest_age_ms)}"
    )
    print(
        f"  counters    rate {t.rate_per_s:.1f}/s, events {t.events}, ok {t.ok}, "
        f"errors {t.errors}, dead-lettered {t.dead_lettered}"
    )
    if t.last_error:
        print(f"  last error  {t.last_error}")


def add_trigger_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    bus: Bus,
    with_client: WithClient,
) -> None:
    trg = sub.add_parser("trigger", help="bind subjects and streams to plugin functions")
    tsub = trg.add_subparsers(dest="trigger_command", required=True, metavar="ACTION")

    async def add(a: argparse.Namespace) -> int:
        spec = spec_from_args(a)

        async def body(c: ForgeClient) -> int:
            reply = await c.add_trigger(spec)
            for w in reply.warnings:
                print(f"warning: {w}")
            print_status(reply.status)
            return 0

        return await with_client(a, body)

    async def listing(a: argparse.Namespace) -> int:
        async def body(c: ForgeClient) -> int:
            statuses = await c.triggers()
            if a.json:
                print(json.dumps([to_obj(t) for t in statuses], indent=2))
            else:
                print_table(statuses)
            return 0

        return await with_client(a, body)

    def one(op: str) -> Callable[[argparse.Namespace], Awaitable[int]]:
        async def run(a: argparse.Namespace) -> int:
            async def body(c: ForgeClient) -> int:
                if op == "rm":
                    await c.remove_trigger(a.name)
                    print(f"removed trigger {a.name}")
                    return 0
                call = {
                    "show": c.trigger,
                    "pause": c.pause_trigger,
                    "resume": c.resume_trigger,
                }[op]
                status = await call(a.name)
                if getattr(a, "json", False):
                    print(json.dumps(to_obj(status), indent=2))
                else:
                    print_status(status)
                return 0

            return await with_client(a, body)

        return run

    s = bus(tsub.add_parser("add", help="add a trigger"))
    s.add_argument("name", help="trigger name (letters, digits, '_' and '-')")
    s.add_argument("--plugin", required=True)
    s.add_argument("--fn", required=True, help="function run for each event")
    s.add_argument("--subject", help="core NATS subject (wildcards allowed): at most once")
    s.add_argument("--stream", help="JetStream stream you own: at least once")
    s.add_argument("--filter", help="stream triggers: only events on this subject pattern")
    s.add_argument(
        "--start", default="new", help="stream triggers: new (default), all, seq:N or time:ISO"
    )
    s.add_argument("--output", help="output subject template, e.g. 'orders.enriched.{2}'")
    s.add_argument("--max-in-flight", type=int, default=32, help="events at once per worker")
    s.add_argument("--max-deliver", type=int, default=5, help="attempts before dead letter")
    s.add_argument("--backoff", default="0.5,2,5", help="seconds before each retry")
    s.add_argument(
        "--ack-wait", type=float, default=30.0, help="seconds before a silent worker's events move"
    )
    s.add_argument("--timeout", type=float, help="seconds per attempt (default: the plugin's)")
    s.add_argument("--dead-letter", help="dead-letter subject (default forge.triggers.dlq.NAME)")
    s.add_argument("--ordered-by", help="subject token (1-based) whose events are handled in order")
    s.set_defaults(func=add)

    s = bus(tsub.add_parser("list", help="triggers with lag, rate, errors, dead-lettered"))
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=listing)
    for op, text in (
        ("show", "one trigger in detail"),
        ("pause", "stop pulling (events stay in the stream)"),
        ("resume", "carry on where it stopped"),
        ("rm", "remove the trigger (and its consumer)"),
    ):
        s = bus(tsub.add_parser(op, help=text))
        s.add_argument("name")
        if op == "show":
            s.add_argument("--json", action="store_true")
        s.set_defaults(func=one(op))

    def gateway(a: argparse.Namespace) -> int:
        from .gateway import run_gateway

        return run_gateway(a)

    s = bus(sub.add_parser("gateway", help="HTTP gateway: POST /invoke/P/F and /hooks/NAME"))
    s.add_argument("--config", required=True, help="JSON file: routes, tokens, limits")
    s.add_argument("--host", default=None, help="listen address (default: config or 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="listen port (default: config or 8080)")
    s.set_defaults(func=gateway)
