"""Shared pieces of the JetStream pull consumers (durable jobs and stream triggers).

Binding to a durable consumer the control plane created (retried until it
exists), fetching with the errors a pull can meet turned into "nothing this
time", keeping a long-running delivery from being redelivered, the errors no
retry can fix, and a pull request for consumers in a pinned priority group
(which nats-py's ``fetch`` does not speak).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.client import JetStreamContext

from schemas.errors import ErrorCode
from schemas.subjects import js_pull_next

log = logging.getLogger("forge.worker.pulling")

#: Errors no retry can fix: the delivery goes to dead letter at once.
PERMANENT = frozenset(
    {
        ErrorCode.BAD_REQUEST,
        ErrorCode.FUNCTION_NOT_FOUND,
        ErrorCode.INPUT_TOO_LARGE,
        ErrorCode.DEADLINE_EXCEEDED,
        ErrorCode.DENIED,
        ErrorCode.REJECTED,
    }
)
#: Pause after a fetch failed for a reason other than "no messages" (bus trouble).
FETCH_ERROR_PAUSE_S = 0.5


class PullRefusedError(Exception):
    """The server answered a pull request with an error status."""


class Fetcher(Protocol):
    async def fetch(self, batch: int = 1, timeout: float | None = 5) -> list[Msg]: ...


def retry_delay(backoff_s: Sequence[float], attempt: int) -> float:
    """Delay before retrying after failed attempt ``attempt`` (1-based); the last repeats."""
    return backoff_s[min(max(attempt, 1), len(backoff_s)) - 1]


async def bind_pull(
    js: JetStreamContext, stream: str, durable: str, what: str
) -> tuple[JetStreamContext.PullSubscription, int, float]:
    """Bind to a durable pull consumer, waiting until it exists; returns the subscription,
    its max deliveries and its ack wait (seconds)."""
    delay = 0.2
    while True:
        try:
            psub = await js.pull_subscribe_bind(durable=durable, stream=stream)
            info = await psub.consumer_info()
            return psub, int(info.config.max_deliver or 1), float(info.config.ack_wait or 30)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # consumer not there yet, or the bus is down
            log.warning("event=bind_retry what=%s error=%r", what, e)
            await asyncio.sleep(delay)  # back off before binding again
            delay = min(delay * 2, 5.0)


async def fetch_some(fetcher: Fetcher, batch: int, wait_s: float, what: str) -> list[Msg]:
    """Up to ``batch`` messages within ``wait_s``; [] when there were none or the bus failed."""
    try:
        return await fetcher.fetch(batch=batch, timeout=wait_s)
    except TimeoutError:  # nats-py raises its own subclass, or asyncio's
        return []
    except asyncio.CancelledError:
        raise
    except Exception as e:  # disconnected or server restarting: try again shortly
        log.warning("event=fetch_failed what=%s error=%r", what, e)
        await asyncio.sleep(FETCH_ERROR_PAUSE_S)  # back off while the connection recovers
        return []


async def keep_held_alive(held: Mapping[int, Msg], ack_wait: float) -> None:
    """Mark every held delivery in progress well inside the ack wait, so a long call,
    a backoff or a wait behind a busy key is not mistaken for a dead worker.

    One loop per consumer rather than a task per delivery: creating and cancelling a
    task per message costs more than the message's own handling on short calls."""
    period = max(0.2, ack_wait / 3)
    while True:
        await asyncio.sleep(period)  # the keep-alive period itself
        for msg in list(held.values()):
            with contextlib.suppress(Exception):
                await msg.in_progress()


class PinnedPull:
    """Pull requests in a JetStream priority group with the ``pinned_client`` policy.

    The server delivers to one client at a time (the one holding the pin id it
    handed out with the first message); others' requests wait until that client
    stops pulling for the consumer's priority timeout. Same contract as
    ``PullSubscription.fetch``: a list of messages, or ``nats.errors.TimeoutError``.
    """

    def __init__(self, nc: Client, stream: str, durable: str, group: str) -> None:
        self.nc = nc
        self.subject = js_pull_next(stream, durable)
        self.group = group
        self.pin: str | None = None
        self._inbox = ""
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox, pending_msgs_limit=65536)

    async def unsubscribe(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    async def fetch(self, batch: int = 1, timeout: float | None = 5) -> list[Msg]:
        assert self._sub is not None, "start() first"
        wait = timeout or 5.0
        request: dict[str, object] = {
            "batch": batch,
            "expires": max(1, int((wait - 0.05) * 1e9)),
            "group": self.group,
        }
        if self.pin:
            request["id"] = self.pin
        await self.nc.publish(self.subject, json.dumps(request).encode(), reply=self._inbox)
        msgs: list[Msg] = []
        give_up = time.monotonic() + wait + 0.5
        while len(msgs) < batch:
            try:
                msg = await self._sub.next_msg(timeout=max(0.01, give_up - time.monotonic()))
            except (TimeoutError, nats.errors.TimeoutError):
                break
            status = JetStreamContext.is_status_msg(msg)
            if status is None:
                pin = (msg.headers or {}).get("Nats-Pin-Id")
                if pin:
                    self.pin = pin
                msgs.append(msg)
                continue
            if status == "100":  # idle heartbeat
                continue
            if status == "423":  # the pin moved to another client: ask for a new one
                self.pin = None
            elif status not in ("404", "408") and not msgs:
                # e.g. 409 consumer deleted or leadership change, 503 no JetStream: an error,
                # so that the caller backs off instead of pulling again at once
                description = (msg.headers or {}).get("Description", "")
                raise PullRefusedError(f"pull refused: {status} {description}".strip())
            break  # 408 request expired (or 404): this request is over
        if not msgs:
            raise nats.errors.TimeoutError
        return msgs
