"""Durable jobs: pull from the plugin's shared JetStream consumer, run, store the result, ack.

At least once, on JetStream alone: a job is acked only after its result is
stored (first stored result wins, keyed by job id), so a worker that dies
mid-job leaves it to be redelivered after the ack wait. The worker pulls only
as many jobs as the plugin has free instances (pull-based backpressure) and
marks long jobs in progress so they are not redelivered while it is alive.
A job that fails every delivery, or fails in a way no retry can fix, goes to
the dead-letter stream and its caller gets the error as its result.

Free instances bound the jobs that are waiting for or running in a guest
(``PREFETCH_PER_INSTANCE`` per instance, so that short jobs are pulled in batches
rather than a few per round trip; a held job is marked in progress, and at most
the pool's size of them run at once, so a worker that dies re-runs nothing it did
not start). A job whose call is done no longer counts there while its result is
stored and acked (a JetStream round trip), so the next jobs are pulled meanwhile. ``MAX_STORING``
bounds those finished-but-unacked jobs. A worker that dies holding some of them
loses nothing: they are redelivered, and one whose result was stored is acked
without running again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from schemas.codec import DecodeError, decode, encode
from schemas.errors import (
    BadRequest,
    DeadlineExceeded,
    ForgeError,
    InternalError,
    PluginNotFound,
)
from schemas.messages import (
    HEADER_MSG_ID,
    HEADER_TRACEPARENT,
    CallResult,
    DeadLetter,
    ErrorInfo,
    JobRequest,
    JobResult,
)
from schemas.subjects import TOKEN_RE, Subjects

from . import metrics
from .executor import Executor
from .hosted import HostedPlugin
from .pulling import PERMANENT, bind_pull, fetch_some, keep_held_alive, retry_delay
from .runtime import WorkerCaps
from .syscalls import SyscallBus
from .tracing import Tracing

log = logging.getLogger("forge.worker.jobs")

#: How long one fetch waits for jobs before checking capacity again.
FETCH_WAIT_S = 2.0
MAX_BATCH = 64
#: Jobs fetched ahead per instance of the plugin's pool.
PREFETCH_PER_INSTANCE = 4
#: Most jobs of one plugin whose results are being stored and acked at once.
MAX_STORING = 256
#: JetStream's error code for "maximum messages per subject exceeded" (result already stored).
ERR_SUBJECT_FULL = 10077


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _when_released(
    held: dict[int, Msg], freed: asyncio.Event, keepalive: asyncio.Task[None]
) -> None:
    """Cancel ``keepalive`` once no delivery is held any more."""
    try:
        while held:
            freed.clear()
            await freed.wait()
    finally:
        keepalive.cancel()


class _JobSlot:
    """What one fetched job counts against: the plugin's instances until its call is
    over, then the storing bound until its result is stored and it is acked."""

    __slots__ = ("_freed", "_inflight", "_plugin", "_stored", "_storing")

    def __init__(
        self,
        inflight: dict[str, int],
        storing: dict[str, int],
        freed: asyncio.Event,
        plugin: str,
    ) -> None:
        self._inflight, self._storing, self._freed, self._plugin = inflight, storing, freed, plugin
        self._stored = False

    def called(self) -> None:
        if not self._stored:
            self._stored = True
            self._inflight[self._plugin] -= 1
            self._storing[self._plugin] += 1
            self._freed.set()

    def release(self) -> None:
        if self._stored:
            self._storing[self._plugin] -= 1
        else:
            self._inflight[self._plugin] -= 1
        self._freed.set()


class JobRunner:
    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        hosted: dict[str, HostedPlugin],
        executor: Executor,
        syscalls: SyscallBus,
        worker_id: str,
        caps: WorkerCaps,
        backoff_s: tuple[float, ...] = (0.5, 2.0, 5.0),
        tracing: Tracing | None = None,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=5)
        self.subjects = subjects
        self.hosted = hosted
        self.executor = executor
        self.syscalls = syscalls
        self.worker_id = worker_id
        self.caps = caps
        self.backoff_s = backoff_s
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._inflight: dict[str, int] = {}
        """Jobs per plugin fetched and not yet through their guest call."""
        self._storing: dict[str, int] = {}
        """Jobs per plugin whose call is done and whose result or ack is on its way."""
        self._freed: dict[str, asyncio.Event] = {}
        self._jobs: set[asyncio.Task[None]] = set()
        if tracing is not None:  # a span per job attempt (off by default)
            self._execute = tracing.job(self._execute)  # type: ignore[method-assign,assignment]

    async def start(self, plugin: str) -> None:
        """Start pulling the plugin's jobs (idempotent)."""
        task = self._loops.get(plugin)
        if task is None or task.done():
            self._inflight.setdefault(plugin, 0)
            self._storing.setdefault(plugin, 0)
            self._freed.setdefault(plugin, asyncio.Event())
            self._loops[plugin] = asyncio.create_task(self._loop(plugin))

    async def stop(self, plugin: str) -> None:
        """Stop pulling; jobs already running finish (their acks still go out)."""
        task = self._loops.pop(plugin, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop_all(self, timeout_s: float) -> None:
        for plugin in list(self._loops):
            await self.stop(plugin)
        if self._jobs:
            await asyncio.wait(list(self._jobs), timeout=timeout_s)

    # --- pulling -----------------------------------------------------------------
    def _free(self, plugin: str) -> int:
        """Jobs to fetch now: 0 until a quarter of the prefetch is free (fetch in batches)."""
        hp = self.hosted.get(plugin)
        if hp is None or self._storing[plugin] >= MAX_STORING:
            return 0
        limit = hp.capacity() * PREFETCH_PER_INSTANCE
        free = limit - self._inflight[plugin]
        return free if free >= max(1, limit // 4) else 0

    async def _loop(self, plugin: str) -> None:
        psub, max_deliver, ack_wait = await bind_pull(
            self.js,
            self.subjects.jobs_stream,
            self.subjects.jobs_consumer(plugin),
            f"jobs:{plugin}",
        )
        freed = self._freed[plugin]
        held: dict[int, Msg] = {}
        keepalive = asyncio.create_task(keep_held_alive(held, ack_wait))
        try:
            while True:
                free = self._free(plugin)
                if free <= 0:
                    freed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(freed.wait(), FETCH_WAIT_S)
                    continue
                msgs = await fetch_some(psub, min(free, MAX_BATCH), FETCH_WAIT_S, f"jobs:{plugin}")
                metrics.JOBS_FETCHED.labels(plugin).inc(len(msgs))
                for msg in msgs:
                    self._inflight[plugin] += 1
                    held[id(msg)] = msg
                    task = asyncio.create_task(self._run(plugin, msg, max_deliver, held))
                    self._jobs.add(task)
                    task.add_done_callback(self._jobs.discard)
        finally:
            # Jobs already fetched run on after a stop: keep them marked in progress until
            # the last one is released, then stop the keep-alive loop.
            closer = asyncio.create_task(_when_released(held, freed, keepalive))
            self._jobs.add(closer)
            closer.add_done_callback(self._jobs.discard)
            with contextlib.suppress(Exception):
                await psub.unsubscribe()

    # --- one job -------------------------------------------------------------------
    async def _run(self, plugin: str, msg: Msg, max_deliver: int, held: dict[int, Msg]) -> None:
        slot = _JobSlot(self._inflight, self._storing, self._freed[plugin], plugin)
        try:
            await self._handle(plugin, msg, max_deliver, slot.called)
        except Exception:
            # Could not store the outcome (the bus is down?): leave the job unacked so it
            # is redelivered once the ack wait passes.
            log.exception("event=job_failed plugin=%s", plugin)
        finally:
            held.pop(id(msg), None)
            slot.release()

    async def _handle(
        self, plugin: str, msg: Msg, max_deliver: int, called: Callable[[], None]
    ) -> None:
        attempt = msg.metadata.num_delivered
        fn = msg.subject.rsplit(".", 1)[-1]
        try:
            job = decode(JobRequest, msg.data)
        except DecodeError as e:
            await self._refuse_undecodable(plugin, fn, msg, e)
            return
        if attempt > 1:
            metrics.JOBS_REDELIVERED.labels(plugin).inc()
            if await self._result_exists(job.job_id):  # a previous run stored it, then died
                await msg.ack()
                metrics.JOBS_DONE.labels(plugin, "already_stored").inc()
                return
        result = await self._execute(plugin, fn, job, (msg.headers or {}).get(HEADER_TRACEPARENT))
        called()
        code = result.error.code if result.error else None
        if result.ok:
            await self._store(job, result, attempt)
            await msg.ack()
        elif code in PERMANENT or attempt >= max_deliver:
            await self._dead_letter(plugin, fn, job, result, attempt)
            await self._store(job, result, attempt)
            await msg.ack()
        else:
            await msg.nak(delay=retry_delay(self.backoff_s, attempt))
        metrics.JOBS_DONE.labels(plugin, "ok" if result.ok else (code or "error")).inc()

    async def _execute(
        self, plugin: str, fn: str, job: JobRequest, traceparent: str | None
    ) -> CallResult:
        version = ""
        try:
            now_ms = _now_ms()
            if job.deadline_ms and now_ms >= job.deadline_ms:
                raise DeadlineExceeded(
                    f"deadline passed {now_ms - job.deadline_ms} ms before the job could start"
                )
            hp = self.hosted.get(plugin)
            if hp is None:
                raise PluginNotFound(f"plugin {plugin!r} is no longer hosted here")
            hv = hp.pick(job.version or None)
            version = hv.version
            hv.check(fn, len(job.input))
            not_after = None
            if job.deadline_ms:
                not_after = time.monotonic() + (job.deadline_ms - now_ms) / 1000
            meta = hv.meta(traceparent=traceparent, not_after=not_after)
            out = await hv.call(self.executor, fn, job.input, meta)
            if out.logs:
                await self.syscalls.logs(plugin, version, fn, out.logs, traceparent)
        except ForgeError as e:
            return CallResult.failure(
                e, plugin=plugin, fn=fn, version=version, worker=self.worker_id
            )
        if out.error is not None:
            err = out.error
            if job.deadline_ms and _now_ms() >= job.deadline_ms:
                err = DeadlineExceeded(f"deadline reached while running: {err.message}")
            return CallResult.failure(
                err, plugin=plugin, fn=fn, version=version, worker=self.worker_id
            )
        assert out.invocation is not None
        inv = out.invocation
        return CallResult(
            ok=True,
            output=inv.output,
            duration_us=inv.duration_us,
            fuel_used=inv.fuel_used,
            plugin=plugin,
            fn=fn,
            version=version,
            worker=self.worker_id,
        )

    # --- outcomes ---------------------------------------------------------------------
    async def _result_exists(self, job_id: str) -> bool:
        try:
            await self.js.get_last_msg(self.subjects.results_stream, self.subjects.result(job_id))
            return True
        except NotFoundError:
            return False

    async def _store(self, job: JobRequest, result: CallResult, attempt: int) -> None:
        """Store the job's one result (a duplicate of an earlier run's result is dropped)."""
        body = encode(JobResult(job.job_id, result, attempt, _now_ms()))
        try:
            ack = await self.js.publish(
                self.subjects.result(job.job_id),
                body,
                stream=self.subjects.results_stream,
                headers={HEADER_MSG_ID: job.job_id},
            )
            if ack.duplicate:
                metrics.JOBS_RESULT_DUPLICATES.labels(result.plugin).inc()
        except APIError as e:
            if e.err_code != ERR_SUBJECT_FULL:
                raise
            metrics.JOBS_RESULT_DUPLICATES.labels(result.plugin).inc()

    async def _dead_letter(
        self, plugin: str, fn: str, job: JobRequest, result: CallResult, attempt: int
    ) -> None:
        error = result.error or ErrorInfo.of(InternalError("failed without an error"))
        letter = DeadLetter(job, plugin, fn, error, attempt, self.worker_id, _now_ms())
        await self.js.publish(
            self.subjects.dead_letter(plugin, fn),
            encode(letter),
            stream=self.subjects.dead_letter_stream,
            headers={HEADER_MSG_ID: job.job_id},
        )
        metrics.JOBS_DEAD_LETTERED.labels(plugin).inc()
        log.warning(
            "event=job_dead_lettered plugin=%s fn=%s job=%s attempts=%d error=%s",
            plugin,
            fn,
            job.job_id,
            attempt,
            error.code.value,
        )

    async def _refuse_undecodable(self, plugin: str, fn: str, msg: Msg, e: DecodeError) -> None:
        """A job body that is not a JobRequest: dead-letter it, store an error if it has an id."""
        metrics.BAD_MESSAGES.labels("jobs").inc()
        job_id = (msg.headers or {}).get(HEADER_MSG_ID, "")
        if not TOKEN_RE.fullmatch(job_id):
            job_id = f"seq-{msg.metadata.sequence.stream}"
        job = JobRequest(job_id)
        result = CallResult.failure(
            BadRequest(f"job request: {e}"), plugin=plugin, fn=fn, worker=self.worker_id
        )
        await self._dead_letter(plugin, fn, job, result, msg.metadata.num_delivered)
        await self._store(job, result, msg.metadata.num_delivered)
        await msg.ack()
