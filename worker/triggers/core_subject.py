"""Core-subject triggers: a queue subscription in the trigger's queue group, shared by
every worker hosting the plugin; at most once. A request's reply subject gets the
output or the error; a failure without a reply goes to the dead letter."""

from __future__ import annotations

import logging

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas.triggers import HEADER_ERROR, HEADER_ERROR_CODE, HEADER_TRIGGER

from .binding import Binding
from .handler import EventHandler
from .output import header_value

log = logging.getLogger("forge.worker.triggers")


async def subscribe(h: EventHandler, b: Binding) -> Subscription:
    """Start receiving ``b``'s subject; at most ``max_in_flight`` events run at once."""
    spec = b.spec

    async def on_msg(msg: Msg) -> None:
        await b.running.acquire()  # backpressure: later events wait in the subscription
        b.spawn(core_event(h, b, msg))

    return await h.nc.subscribe(
        spec.subject,
        queue=h.subjects.trigger_queue(spec.name),
        cb=on_msg,
        pending_msgs_limit=65536,
        pending_bytes_limit=256 * 1024 * 1024,
    )


async def core_event(h: EventHandler, b: Binding, msg: Msg) -> None:
    """One core event: at most once. The reply (if asked for) gets the output or error;
    a failure without a reply goes to the dead letter."""
    try:
        b.counters.in_flight += 1
        err = await h.attempt(b, msg, 0)
        if err is None:
            b.finished("ok")
        elif msg.reply:
            headers = {
                HEADER_TRIGGER: b.spec.name,
                HEADER_ERROR_CODE: err.code.value,
                HEADER_ERROR: header_value(err.message),
            }
            await h.nc.publish(msg.reply, b"", headers=headers)
            b.finished("failed")
        else:
            await h.dead_letters.send(b, msg, err, 1)
            b.finished("dead_lettered")
    except Exception:
        log.exception("event=trigger_event_failed trigger=%s", b.spec.name)
    finally:
        b.counters.in_flight = max(0, b.counters.in_flight - 1)
        b.running.release()
