"""A trigger's output on the bus: its headers, and publishing it (a JetStream publish
with a message id when some stream stores the subject, so a redelivery never stores
a second copy; a plain publish otherwise)."""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from schemas.messages import HEADER_MSG_ID, HEADER_TRACEPARENT
from schemas.policy import subject_matches
from schemas.triggers import (
    HEADER_PLUGIN,
    HEADER_PLUGIN_VERSION,
    HEADER_SOURCE_STREAM,
    HEADER_SOURCE_SUBJECT,
    HEADER_STREAM_SEQ,
    HEADER_TRIGGER,
    TriggerSpec,
)

log = logging.getLogger("forge.worker.triggers")

#: Stream subjects are re-read this often to tell stored output subjects from plain ones.
STREAM_INDEX_TTL_S = 5.0
MAX_HEADER_VALUE = 512


def header_value(text: str) -> str:
    """A header-safe rendering of free text (no CR/LF, bounded)."""
    return " ".join(text.split())[:MAX_HEADER_VALUE]


def output_headers(spec: TriggerSpec, msg: Msg, version: str, stream_seq: int) -> dict[str, str]:
    """The headers of an output of ``spec`` for the event ``msg``."""
    headers = {
        HEADER_TRIGGER: spec.name,
        HEADER_SOURCE_SUBJECT: msg.subject,
        HEADER_PLUGIN: spec.plugin,
        HEADER_PLUGIN_VERSION: version,
    }
    if stream_seq:
        headers[HEADER_SOURCE_STREAM] = spec.stream
        headers[HEADER_STREAM_SEQ] = str(stream_seq)
    traceparent = (msg.headers or {}).get(HEADER_TRACEPARENT)
    if traceparent:
        headers[HEADER_TRACEPARENT] = traceparent
    return headers


class StreamIndex:
    """Which subjects some stream stores: outputs there get a JetStream publish with a
    message id (dedupe); others a plain publish. Refreshed every few seconds."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._patterns: list[str] = []
        self._known: dict[str, bool] = {}
        self._at = float("-inf")
        self._lock = asyncio.Lock()

    async def stored(self, subject: str) -> bool:
        if time.monotonic() - self._at > STREAM_INDEX_TTL_S:
            async with self._lock:
                if time.monotonic() - self._at > STREAM_INDEX_TTL_S:
                    await self._refresh()
        known = self._known.get(subject)
        if known is None:
            known = any(subject_matches(p, subject) for p in self._patterns)
            if len(self._known) >= 65536:
                self._known.clear()
            self._known[subject] = known
        return known

    async def _refresh(self) -> None:
        try:
            infos = await self.js.streams_info()
        except Exception as e:  # keep what we knew; try again on the next publish
            log.warning("event=stream_index_failed error=%r", e)
            self._at = time.monotonic() - STREAM_INDEX_TTL_S + 1.0
            return
        self._patterns = [s for i in infos for s in (i.config.subjects or [])]
        self._known = {}
        self._at = time.monotonic()


class OutputPublisher:
    """Publishes trigger outputs and dead letters."""

    def __init__(self, nc: Client, js: JetStreamContext) -> None:
        self.nc = nc
        self.js = js
        self._streams = StreamIndex(js)

    async def publish(
        self, subject: str, data: bytes, headers: dict[str, str], msg_id: str | None
    ) -> None:
        """JetStream publish (with the message id, awaiting the store's ack) when a stream
        stores ``subject``; a plain publish otherwise."""
        if await self._streams.stored(subject):
            if msg_id:
                headers = {**headers, HEADER_MSG_ID: msg_id}
            await self.js.publish(subject, data, headers=headers)
        else:
            await self.nc.publish(subject, data, headers=headers)
