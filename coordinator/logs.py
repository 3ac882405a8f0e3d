"""Reading plugin logs back from the bounded logs stream (``forgeone logs``)."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator

from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas.codec import DecodeError, decode
from schemas.messages import LogEvent
from schemas.subjects import Subjects


async def read_logs(
    nc: Client, subjects: Subjects, plugin: str, last: int = 100, follow: bool = False
) -> AsyncIterator[LogEvent]:
    """The plugin's last ``last`` log lines, then (with ``follow``) new ones as they come."""
    js = nc.jetstream()
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        await queue.put(msg)

    # the lines stored before we subscribe are the backlog; the consumer delivers them first
    subject = subjects.syscall_logs(plugin)
    info = await js.stream_info(subjects.logs_stream, subjects_filter=subject)
    backlog = sum((info.state.subjects or {}).values())
    sub = await js.subscribe(subject, stream=subjects.logs_stream, cb=on_msg, ordered_consumer=True)
    try:
        tail: deque[LogEvent] = deque(maxlen=max(0, last))
        for _ in range(backlog):
            event = _event(await queue.get())
            if event is not None:
                tail.append(event)
        for event in tail:
            yield event
        while follow:
            event = _event(await queue.get())
            if event is not None:
                yield event
    finally:
        await sub.unsubscribe()


def _event(msg: Msg) -> LogEvent | None:
    try:
        return decode(LogEvent, msg.data)
    except DecodeError:
        return None
