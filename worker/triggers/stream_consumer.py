"""Stream triggers: the trigger's durable pull consumer, shared by every worker hosting
the plugin; at least once. Each delivery runs the function and is acked once its
output is published; a failed attempt is retried after the trigger's backoff (nak);
an event that failed ``max_deliver`` times, or was rejected for good, is
dead-lettered and acked. Ordered triggers pull as the pinned client of a priority
group and hand their events to the key scheduler (``ordered``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from schemas.subjects import TRIGGER_PIN_GROUP

from ..pulling import PinnedPull, bind_pull, fetch_some
from .binding import Binding
from .handler import EventHandler
from .ordered import enqueue_ordered

log = logging.getLogger("forge.worker.triggers")

#: How long one pull waits for events before checking capacity (and pause) again.
FETCH_WAIT_S = 2.0
MAX_BATCH = 256


async def pull_loop(h: EventHandler, b: Binding) -> None:
    """Pull ``b``'s events while it has room for them, until cancelled."""
    spec = b.spec
    durable = h.subjects.trigger_consumer(spec.name)
    what = f"trigger:{spec.name}"
    fetcher: PinnedPull | JetStreamContext.PullSubscription
    if spec.ordered_by:
        fetcher = PinnedPull(h.nc, spec.stream, durable, TRIGGER_PIN_GROUP)
        await fetcher.start()
    else:
        fetcher, _, _ = await bind_pull(h.js, spec.stream, durable, what)
    pending, in_flight = b.metrics.pending, b.metrics.in_flight
    try:
        while True:
            free = b.limit - len(b.held)
            if free < b.refill_at:  # fetch in batches, not one event per round trip
                b.freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(b.freed.wait(), FETCH_WAIT_S)
                continue
            msgs = await fetch_some(fetcher, min(free, MAX_BATCH), FETCH_WAIT_S, what)
            if not msgs:
                continue
            pending.set(msgs[-1].metadata.num_pending)
            for msg in msgs:
                b.hold(msg)
                if spec.ordered_by:
                    enqueue_ordered(h, b, msg)
                else:
                    b.spawn(stream_event(h, b, msg))
            in_flight.set(len(b.held))
    finally:
        with contextlib.suppress(Exception):
            await fetcher.unsubscribe()


async def stream_event(h: EventHandler, b: Binding, msg: Msg) -> None:
    """One delivery of an unordered stream trigger: ack, retry later (nak) or dead-letter."""
    spec = b.spec
    try:
        md = msg.metadata
        attempt = md.num_delivered
        err = await h.attempt(b, msg, md.sequence.stream)  # b.limit bounds these
        if not await h.settle(b, msg, err, attempt):
            await msg.nak(delay=spec.retry_delay_s(attempt))
            b.finished("retried")
    except asyncio.CancelledError:
        raise
    except Exception:  # the bus failed under us: leave it to the ack wait (redelivery)
        log.exception("event=trigger_event_failed trigger=%s", spec.name)
    finally:
        b.release(msg)
