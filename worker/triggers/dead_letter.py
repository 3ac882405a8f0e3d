"""Dead letters: an event that failed for good, with its error, published as a
TriggerDeadLetter on the trigger's dead-letter subject."""

from __future__ import annotations

import logging
import time

from nats.aio.msg import Msg

from schemas.codec import encode
from schemas.errors import ForgeError
from schemas.messages import ErrorInfo
from schemas.subjects import Subjects
from schemas.triggers import (
    HEADER_ERROR,
    HEADER_ERROR_CODE,
    HEADER_SOURCE_STREAM,
    HEADER_SOURCE_SUBJECT,
    HEADER_STREAM_SEQ,
    HEADER_TRIGGER,
    SourceKind,
    TriggerDeadLetter,
)

from .binding import Binding
from .output import OutputPublisher, header_value

log = logging.getLogger("forge.worker.triggers")


class DeadLetters:
    """Sends a trigger's failed events to its dead-letter subject."""

    def __init__(self, out: OutputPublisher, subjects: Subjects, worker_id: str) -> None:
        self.out = out
        self.subjects = subjects
        self.worker_id = worker_id

    async def send(self, b: Binding, msg: Msg, err: ForgeError, attempts: int) -> None:
        spec = b.spec
        subject = spec.dead_letter or self.subjects.trigger_dead_letter(spec.name)
        stream_seq = 0 if spec.source is SourceKind.SUBJECT else msg.metadata.sequence.stream
        letter = TriggerDeadLetter(
            trigger=spec.name,
            plugin=spec.plugin,
            fn=spec.fn,
            subject=msg.subject,
            error=ErrorInfo.of(err),
            data=bytes(msg.data),
            headers=dict(msg.headers or {}),
            stream=spec.stream,
            stream_seq=stream_seq,
            attempts=attempts,
            worker=self.worker_id,
            at_ms=int(time.time() * 1000),
        )
        headers = {
            HEADER_TRIGGER: spec.name,
            HEADER_SOURCE_SUBJECT: msg.subject,
            HEADER_ERROR_CODE: err.code.value,
            HEADER_ERROR: header_value(err.message),
        }
        msg_id = None
        if stream_seq:
            headers[HEADER_SOURCE_STREAM] = spec.stream
            headers[HEADER_STREAM_SEQ] = str(stream_seq)
            msg_id = f"trigger-dlq:{spec.name}:{spec.stream}:{stream_seq}"
        await self.out.publish(subject, encode(letter), headers, msg_id)
        b.counters.dead_lettered += 1
        b.metrics.dead.inc()
        log.warning(
            "event=trigger_dead_lettered trigger=%s subject=%s seq=%d attempts=%d error=%s",
            spec.name,
            msg.subject,
            stream_seq,
            attempts,
            err.code.value,
        )
