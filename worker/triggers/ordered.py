"""Ordered-by key scheduling for stream triggers: events with the same key (a token of
the subject) run one at a time in stream order, other keys in parallel. A failing
event is retried in place; the events behind it wait until it succeeds or is
dead-lettered."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from nats.aio.msg import Msg

from schemas.triggers import order_key

from .binding import Binding
from .handler import EventHandler

log = logging.getLogger("forge.worker.triggers")


def enqueue_ordered(h: EventHandler, b: Binding, msg: Msg) -> None:
    """Run ``msg`` now if its key is idle, else queue it behind the key's events."""
    key = order_key(msg.subject, b.spec.ordered_by)
    queue = b.queues.get(key)
    if queue is not None:  # the key is busy: wait behind it, in stream order
        queue.append(msg)
        return
    b.queues[key] = deque()
    b.spawn(_key_chain(h, b, key, msg))


async def _key_chain(h: EventHandler, b: Binding, key: str, first: Msg) -> None:
    """Handle one key's events one after another until its queue is empty."""
    msg: Msg | None = first
    try:
        while msg is not None:
            await ordered_event(h, b, msg)
            queue = b.queues.get(key)
            msg = queue.popleft() if queue else None
    finally:
        b.queues.pop(key, None)


async def ordered_event(h: EventHandler, b: Binding, msg: Msg) -> None:
    """One event of an ordered trigger: retried in place (its key waits) until it is
    handled or dead-lettered; acked either way."""
    spec = b.spec
    try:
        md = msg.metadata
        attempt = md.num_delivered
        while True:
            async with b.running:
                err = await h.attempt(b, msg, md.sequence.stream)
            if await h.settle(b, msg, err, attempt):
                return
            b.finished("retried")
            await asyncio.sleep(spec.retry_delay_s(attempt))  # the retry backoff
            attempt += 1
    except asyncio.CancelledError:
        raise
    except Exception:  # the bus failed under us: leave it to the ack wait (redelivery)
        log.exception("event=trigger_event_failed trigger=%s", spec.name)
    finally:
        b.release(msg)
