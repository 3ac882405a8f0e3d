"""The client side of durable jobs: submit, fetch results, and read queue statistics.

``submit`` returns once JetStream has stored the job; the job id is the
message id, so resubmitting the same id within the dedupe window stores it
once (and makes retrying a submit after a connection error safe).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from schemas.codec import DecodeError, decode, encode
from schemas.errors import BadRequest, InternalError, Timeout, Unavailable
from schemas.messages import HEADER_MSG_ID, HEADER_TRACEPARENT, JobRequest, JobResult
from schemas.subjects import TOKEN_RE, Subjects

#: Transient errors worth retrying a submit or a lookup for (dedupe makes it safe).
_TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    OSError,
)


@dataclass(frozen=True, slots=True)
class JobStats:
    """Queue state of one plugin's jobs."""

    plugin: str
    pending: int
    """Stored, not yet delivered."""
    in_flight: int
    """Delivered, not yet acked."""
    redelivered: int
    """Delivered more than once and not yet acked."""
    dead_lettered: int
    """In the dead-letter stream."""


class Jobs:
    def __init__(self, nc: Client, subjects: Subjects) -> None:
        self.nc = nc
        self.subjects = subjects
        self.js = nc.jetstream(timeout=5)

    async def submit(
        self,
        plugin: str,
        fn: str,
        data: bytes,
        deadline: float | None = None,
        job_id: str | None = None,
        version: str | None = None,
        traceparent: str | None = None,
        timeout: float = 30.0,
    ) -> str:
        job_id = job_id or uuid.uuid4().hex
        if not TOKEN_RE.fullmatch(job_id):
            raise BadRequest(f"job id {job_id!r} may only use letters, digits, '_' and '-'")
        now_ms = int(time.time() * 1000)
        deadline_ms = 0 if deadline is None else now_ms + int(deadline * 1000)
        body = encode(JobRequest(job_id, bytes(data), deadline_ms, now_ms, version or ""))
        headers = {HEADER_MSG_ID: job_id}
        if traceparent:
            headers[HEADER_TRACEPARENT] = traceparent
        subject = self.subjects.jobs(plugin, fn)
        give_up = time.monotonic() + timeout
        while True:
            try:
                await self.js.publish(
                    subject, body, stream=self.subjects.jobs_stream, headers=headers
                )
                return job_id
            except _TRANSIENT as e:
                if time.monotonic() > give_up:
                    raise Unavailable(
                        f"could not store job {job_id} ({type(e).__name__}); is "
                        "NATS up and the coordinator running?"
                    ) from e
                await asyncio.sleep(0.2)  # the server may be restarting or electing a leader

    async def _stored(self, job_id: str, patience_s: float = 15.0) -> JobResult | None:
        """The stored result, or None; rides out a reconnect or leader election."""
        give_up = time.monotonic() + patience_s
        while True:
            try:
                raw = await self.js.get_last_msg(
                    self.subjects.results_stream, self.subjects.result(job_id)
                )
                return _decode_result(raw.data or b"")
            except NotFoundError:
                return None
            except _TRANSIENT as e:
                if time.monotonic() > give_up:
                    raise Unavailable(f"cannot read job results: {type(e).__name__}") from e
                await asyncio.sleep(0.2)  # the server may be restarting or electing a leader

    async def result(self, job_id: str, timeout: float = 30.0) -> JobResult:
        """The job's stored result, waiting up to ``timeout`` for it to appear."""
        subject = self.subjects.result(job_id)
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def on_msg(msg: Msg) -> None:
            await queue.put(msg)

        sub = await self.nc.subscribe(subject, cb=on_msg)  # before looking, so none is missed
        try:
            give_up = time.monotonic() + timeout
            while True:
                try:
                    found = await self._stored(job_id)
                    if found is not None:
                        return found
                    remaining = give_up - time.monotonic()
                    if remaining <= 0:
                        raise Timeout(f"job {job_id} has no result after {timeout}s")
                    msg = await asyncio.wait_for(queue.get(), min(remaining, 5.0))
                    return _decode_result(msg.data)
                except TimeoutError:
                    continue  # look in the stream again (covers a reconnect gap)
                except _TRANSIENT:
                    if time.monotonic() > give_up:
                        raise Timeout(f"job {job_id} has no result after {timeout}s") from None
                    await asyncio.sleep(0.2)  # the connection is recovering
        finally:
            await sub.unsubscribe()

    async def results(
        self, job_ids: Iterable[str], timeout: float = 60.0
    ) -> AsyncIterator[JobResult]:
        """Yield each job's result as it becomes available (stored ones first)."""
        waiting = set(job_ids)
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def on_msg(msg: Msg) -> None:
            await queue.put(msg)

        sub = await self.nc.subscribe(self.subjects.results_all(), cb=on_msg)
        try:
            for job_id in list(waiting):
                found = await self._stored(job_id)
                if found is not None and job_id in waiting:
                    waiting.discard(job_id)
                    yield found
            give_up = time.monotonic() + timeout
            while waiting:
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    raise Timeout(f"{len(waiting)} jobs have no result after {timeout}s")
                try:
                    msg = await asyncio.wait_for(queue.get(), min(remaining, 5.0))
                except TimeoutError:
                    for job_id in list(waiting):  # results stored while we were not listening
                        found = await self._stored(job_id)
                        if found is not None:
                            waiting.discard(job_id)
                            yield found
                    continue
                res = _decode_result(msg.data)
                if res.job_id in waiting:
                    waiting.discard(res.job_id)
                    yield res
        finally:
            await sub.unsubscribe()

    async def stats(self) -> list[JobStats]:
        """Pending, in-flight, redelivered and dead-lettered counts per plugin."""
        try:
            consumers = await self.js.consumers_info(self.subjects.jobs_stream)
            dlq = await self.js.stream_info(
                self.subjects.dead_letter_stream, subjects_filter=self.subjects.dead_letter_all()
            )
        except NotFoundError:
            raise Unavailable("no jobs stream: is the coordinator running?") from None
        dead: dict[str, int] = {}
        for subject, count in (dlq.state.subjects or {}).items():
            plugin = subject.split(".")[2]
            dead[plugin] = dead.get(plugin, 0) + count
        prefix = self.subjects.jobs_consumer("x")[:-1]
        out = []
        for c in consumers:
            if not c.name.startswith(prefix):
                continue
            plugin = c.name[len(prefix) :]
            out.append(
                JobStats(
                    plugin,
                    c.num_pending or 0,
                    c.num_ack_pending or 0,
                    c.num_redelivered or 0,
                    dead.get(plugin, 0),
                )
            )
        return sorted(out, key=lambda s: s.plugin)


def _decode_result(data: bytes) -> JobResult:
    try:
        return decode(JobResult, data)
    except DecodeError as e:
        raise InternalError(f"malformed job result: {e}") from None
