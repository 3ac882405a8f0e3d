"""Triggers on the worker: bind event sources to plugin functions this worker hosts.

The runner watches the triggers bucket (a worker started later catches up with
every definition first) and, for each trigger whose plugin is hosted here and
which is not paused, binds its source:

- a core subject: a queue subscription in the trigger's queue group, shared by
  every worker hosting the plugin; at most once; a request's reply subject gets
  the function's output (or the error in ``Forge-Error-Code``/``Forge-Error``
  headers); a failed event without a reply goes to the dead letter;
- a stream: the trigger's durable pull consumer (the coordinator creates it),
  shared by every worker hosting the plugin; at least once. Each delivery runs
  the function; the output is published (JetStream publish with a message id
  derived from trigger, stream and sequence when the output subject is stored
  in a stream, so a redelivery never stores a second output) and only then is
  the event acked. A failed attempt is retried after the trigger's backoff; an
  event that failed ``max_deliver`` times, or was rejected for good, goes to the
  dead-letter subject with its error, and is acked.

``ordered_by``: the consumer sits in a JetStream priority group with the
pinned-client policy, so one worker at a time receives the trigger's events
(others stand by and take over when it stops pulling). On that worker, events
with the same key (a token of the subject) run one at a time in stream order,
other keys in parallel; a failing event is retried in place and the events
behind it wait until it succeeds or is dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge, Histogram

from schemas.codec import DecodeError, decode, encode
from schemas.errors import ForgeError, PluginNotFound, Unavailable
from schemas.messages import HEADER_MSG_ID, HEADER_TRACEPARENT, ErrorInfo
from schemas.policy import subject_matches
from schemas.subjects import TRIGGER_PIN_GROUP, Subjects
from schemas.triggers import (
    HEADER_ERROR,
    HEADER_ERROR_CODE,
    HEADER_PLUGIN,
    HEADER_PLUGIN_VERSION,
    HEADER_SOURCE_STREAM,
    HEADER_SOURCE_SUBJECT,
    HEADER_STREAM_SEQ,
    HEADER_TRIGGER,
    OutputTemplate,
    SourceKind,
    TriggerCounters,
    TriggerDeadLetter,
    TriggerSpec,
    TriggerStats,
    order_key,
)

from . import metrics
from .executor import Executor
from .hosted import HostedPlugin
from .kv_watch import watch_bucket
from .pulling import PERMANENT, PinnedPull, bind_pull, fetch_some
from .syscalls import SyscallBus

log = logging.getLogger("forge.worker.triggers")

#: How long one pull waits for events before checking capacity (and pause) again.
FETCH_WAIT_S = 2.0
MAX_BATCH = 256
#: Events an ordered trigger may hold on one worker, per allowed in-flight event: the
#: queues behind busy keys live here, so other keys keep flowing while one key waits.
ORDERED_BUFFER_FACTOR = 8
MAX_ORDERED_BUFFER = 10_000
#: How long unbinding waits for in-flight events before giving them back (nak).
UNBIND_GRACE_S = 10.0
#: Stream subjects are re-read this often to tell stored output subjects from plain ones.
STREAM_INDEX_TTL_S = 5.0
RATE_WINDOW_S = 10.0
MAX_HEADER_VALUE = 512

TRIGGER_EVENTS = Counter(
    "forge_trigger_events",
    "Trigger event deliveries finished, by trigger and outcome "
    "(ok, retried, dead_lettered, failed).",
    ["trigger", "outcome"],
    registry=metrics.REGISTRY,
)
TRIGGER_ERRORS = Counter(
    "forge_trigger_errors",
    "Failed attempts of trigger events, by trigger and error code.",
    ["trigger", "code"],
    registry=metrics.REGISTRY,
)
TRIGGER_DEAD_LETTERED = Counter(
    "forge_trigger_dead_lettered",
    "Trigger events sent to their dead-letter subject.",
    ["trigger"],
    registry=metrics.REGISTRY,
)
TRIGGER_IN_FLIGHT = Gauge(
    "forge_trigger_in_flight",
    "Trigger events received by this worker and not yet finished.",
    ["trigger"],
    registry=metrics.REGISTRY,
)
TRIGGER_PENDING = Gauge(
    "forge_trigger_pending",
    "Stream events not yet delivered to any worker (the consumer's lag), as of this "
    "worker's last pull.",
    ["trigger"],
    registry=metrics.REGISTRY,
)
TRIGGER_SECONDS = Histogram(
    "forge_trigger_event_seconds",
    "Time from receiving a trigger event to finishing it (one attempt).",
    ["trigger"],
    registry=metrics.REGISTRY,
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _header_value(text: str) -> str:
    """A header-safe rendering of free text (no CR/LF, bounded)."""
    return " ".join(text.split())[:MAX_HEADER_VALUE]


class _Counters:
    """One trigger's counters on this worker (reported in TriggerStats)."""

    def __init__(self) -> None:
        self.events = 0
        self.ok = 0
        self.errors = 0
        self.dead_lettered = 0
        self.in_flight = 0
        self.last_error = ""
        self._samples: deque[tuple[float, int]] = deque()

    def rate(self) -> float:
        now = time.monotonic()
        handled = self.ok + self.dead_lettered
        self._samples.append((now, handled))
        while len(self._samples) > 1 and now - self._samples[0][0] > RATE_WINDOW_S:
            self._samples.popleft()
        t0, h0 = self._samples[0]
        return (handled - h0) / (now - t0) if now - t0 > 0.2 else 0.0

    def snapshot(self, name: str, bound: bool) -> TriggerCounters:
        return TriggerCounters(
            name=name,
            bound=bound,
            events=self.events,
            ok=self.ok,
            errors=self.errors,
            dead_lettered=self.dead_lettered,
            in_flight=self.in_flight,
            rate_per_s=round(self.rate(), 3),
            last_error=self.last_error[:1024],
        )


class _StreamIndex:
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


class _Metrics:
    """One trigger's metric series, with the label lookups done once."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seconds = TRIGGER_SECONDS.labels(name)
        self.in_flight = TRIGGER_IN_FLIGHT.labels(name)
        self.pending = TRIGGER_PENDING.labels(name)
        self.dead = TRIGGER_DEAD_LETTERED.labels(name)
        self._outcomes: dict[str, Counter] = {}

    def outcome(self, outcome: str) -> Counter:
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = TRIGGER_EVENTS.labels(self.name, outcome)
        return child


@dataclass(eq=False)
class _Binding:
    """One bound trigger: its subscription or pull loop and the events it holds."""

    spec: TriggerSpec
    counters: _Counters
    limit: int
    """Events this worker holds at once (running, waiting behind a key, or backing off)."""
    running: asyncio.Semaphore
    """Guest calls at once (max_in_flight)."""
    sub: Subscription | None = None
    loop_task: asyncio.Task[None] | None = None
    ticker: asyncio.Task[None] | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    held: dict[int, Msg] = field(default_factory=dict)
    """Unacked stream deliveries on this worker, by id(msg)."""
    queues: dict[str, deque[Msg]] = field(default_factory=dict)
    """Ordered triggers: events waiting behind a busy key."""
    freed: asyncio.Event = field(default_factory=asyncio.Event)
    refill_at: int = 1
    """Pull again once this many events can be taken (a quarter of the limit)."""
    template: OutputTemplate | None = None
    metrics: _Metrics | None = None

    def spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def release(self, msg: Msg) -> None:
        if self.held.pop(id(msg), None) is not None:
            self.freed.set()


class TriggerRunner:
    """A PluginServer: binds the triggers of the plugins this worker hosts."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        hosted: dict[str, HostedPlugin],
        executor: Executor,
        syscalls: SyscallBus,
        worker_id: str,
        stats_interval_s: float = 2.0,
    ) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=5)
        self.subjects = subjects
        self.hosted = hosted
        self.executor = executor
        self.syscalls = syscalls
        self.worker_id = worker_id
        self.stats_interval_s = stats_interval_s
        self.started_at_ms = _now_ms()
        self.synced = asyncio.Event()
        """Set once every trigger present at start has been seen."""
        self._specs: dict[str, TriggerSpec] = {}
        self._hosting: set[str] = set()
        self._bound: dict[str, _Binding] = {}
        self._counters: dict[str, _Counters] = {}
        self._metrics: dict[str, _Metrics] = {}
        self._dirty: set[str] = set()
        self._reconciling: dict[str, asyncio.Task[None]] = {}
        self._streams = _StreamIndex(self.js)
        self._stopping = False

    # --- PluginServer ---------------------------------------------------------------
    async def start(self, plugin: str) -> None:
        """The plugin is hosted here: bind its triggers (idempotent)."""
        if plugin not in self._hosting:
            self._hosting.add(plugin)
            for name, spec in self._specs.items():
                if spec.plugin == plugin:
                    self._kick(name)

    async def stop(self, plugin: str) -> None:
        """The plugin left this worker: unbind its triggers, letting in-flight events end."""
        self._hosting.discard(plugin)
        names = [n for n, b in self._bound.items() if b.spec.plugin == plugin]
        for name in names:
            self._kick(name)
        await self._settle(names)

    async def stop_all(self, timeout_s: float) -> None:
        """Unbind everything (in-flight events get ``timeout_s`` to finish) and say so."""
        self._stopping = True
        names = list(self._bound)
        for name in names:
            self._kick(name)
        await self._settle(names, timeout_s)
        await self._send_stats(stopping=True)

    async def _settle(self, names: list[str], timeout_s: float = UNBIND_GRACE_S + 5) -> None:
        tasks = [t for n in names if (t := self._reconciling.get(n)) is not None and not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)

    # --- the triggers bucket ------------------------------------------------------------
    def _on_synced(self, seen: set[str]) -> None:
        """Every current definition has been delivered: drop the ones deleted meanwhile."""
        for gone in set(self._specs) - seen:
            self._on_entry(gone, None, "DEL")
        self.synced.set()

    async def run(self) -> None:
        """Watch the triggers bucket forever (and publish stats); restart the watch if it
        breaks, for example across a reconnect."""
        stats = asyncio.create_task(self._stats_loop())
        try:
            kv = await self._bucket()
            await watch_bucket(kv, "triggers", self._on_entry, self._on_synced)
        finally:
            stats.cancel()

    async def _bucket(self) -> KeyValue:
        delay = 0.2
        while True:
            try:
                return await self.js.key_value(self.subjects.triggers_bucket)
            except (
                BucketNotFoundError,
                NotFoundError,
                ServiceUnavailableError,
                nats.errors.TimeoutError,
            ) as e:
                log.info("event=waiting_for_triggers_bucket error=%r", e)
                await asyncio.sleep(delay)  # the coordinator has not created it yet
                delay = min(delay * 2, 2.0)

    def _on_entry(self, key: str, value: bytes | None, op: str | None) -> None:
        if op in ("DEL", "PURGE"):
            self._specs.pop(key, None)
        else:
            try:
                spec = decode(TriggerSpec, value or b"")
                if spec.name != key:
                    raise DecodeError(f"trigger {spec.name!r} stored under key {key!r}")
            except DecodeError as e:
                metrics.BAD_MESSAGES.labels("triggers").inc()
                log.error("event=bad_trigger key=%s error=%s", key, e)
                return
            self._specs[key] = spec
        self._kick(key)

    # --- binding ----------------------------------------------------------------------
    def _kick(self, name: str) -> None:
        self._dirty.add(name)
        task = self._reconciling.get(name)
        if task is None or task.done():
            self._reconciling[name] = asyncio.create_task(self._reconcile_loop(name))

    async def _reconcile_loop(self, name: str) -> None:
        while name in self._dirty:
            self._dirty.discard(name)
            try:
                await self._reconcile(name)
            except Exception:
                log.exception("event=trigger_reconcile_failed trigger=%s", name)

    async def _reconcile(self, name: str) -> None:
        spec = self._specs.get(name)
        want = (
            spec
            if spec is not None
            and not spec.paused
            and spec.plugin in self._hosting
            and not self._stopping
            else None
        )
        current = self._bound.get(name)
        if current is not None and current.spec != want:
            del self._bound[name]
            await self._unbind(current)
            current = None
        if want is not None and current is None:
            self._bound[name] = await self._bind(want)

    async def _bind(self, spec: TriggerSpec) -> _Binding:
        counters = self._counters.setdefault(spec.name, _Counters())
        if spec.source is SourceKind.SUBJECT:
            limit = spec.max_in_flight
        elif spec.ordered_by:
            limit = min(spec.max_in_flight * ORDERED_BUFFER_FACTOR, MAX_ORDERED_BUFFER)
        else:
            limit = spec.max_in_flight
        b = _Binding(spec, counters, limit, asyncio.Semaphore(spec.max_in_flight))
        b.refill_at = max(1, limit // 4)
        b.template = OutputTemplate(spec.output) if spec.output else None
        b.metrics = self._metrics.setdefault(spec.name, _Metrics(spec.name))
        if spec.source is SourceKind.SUBJECT:

            async def on_msg(msg: Msg) -> None:
                await b.running.acquire()  # backpressure: later events wait in the subscription
                b.spawn(self._core_event(b, msg))

            b.sub = await self.nc.subscribe(
                spec.subject,
                queue=self.subjects.trigger_queue(spec.name),
                cb=on_msg,
                pending_msgs_limit=65536,
                pending_bytes_limit=256 * 1024 * 1024,
            )
        else:
            b.loop_task = asyncio.create_task(self._pull_loop(b))
            b.ticker = asyncio.create_task(self._keep_held_alive(b))
        log.info(
            "event=trigger_bound trigger=%s plugin=%s fn=%s source=%s",
            spec.name,
            spec.plugin,
            spec.fn,
            spec.subject or f"{spec.stream}:{spec.filter or '>'}",
        )
        return b

    async def _unbind(self, b: _Binding) -> None:
        """Stop receiving; let in-flight events finish (bounded); give the rest back."""
        if b.sub is not None:
            with contextlib.suppress(Exception):
                await b.sub.unsubscribe()
        if b.loop_task is not None:
            b.loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await b.loop_task
        if b.tasks:
            await asyncio.wait(list(b.tasks), timeout=UNBIND_GRACE_S)
        for task in list(b.tasks):
            task.cancel()
        if b.tasks:
            await asyncio.wait(list(b.tasks), timeout=1.0)
        for msg in list(b.held.values()):  # not finished: redeliver to whoever binds next
            with contextlib.suppress(Exception):
                await msg.nak()
        b.held.clear()
        if b.ticker is not None:
            b.ticker.cancel()
        b.counters.in_flight = 0
        if b.metrics is not None:
            b.metrics.in_flight.set(0)
        log.info("event=trigger_unbound trigger=%s", b.spec.name)

    # --- stream sources ---------------------------------------------------------------------
    async def _pull_loop(self, b: _Binding) -> None:
        spec = b.spec
        durable = self.subjects.trigger_consumer(spec.name)
        what = f"trigger:{spec.name}"
        fetcher: PinnedPull | JetStreamContext.PullSubscription
        if spec.ordered_by:
            fetcher = PinnedPull(self.nc, spec.stream, durable, TRIGGER_PIN_GROUP)
            await fetcher.start()
        else:
            fetcher, _, _ = await bind_pull(self.js, spec.stream, durable, what)
        assert b.metrics is not None
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
                    b.held[id(msg)] = msg
                    b.counters.in_flight += 1
                    if spec.ordered_by:
                        self._enqueue_ordered(b, msg)
                    else:
                        b.spawn(self._stream_event(b, msg))
                in_flight.set(len(b.held))
        finally:
            with contextlib.suppress(Exception):
                await fetcher.unsubscribe()

    async def _keep_held_alive(self, b: _Binding) -> None:
        """Mark every held delivery in progress well inside the ack wait, so a long call,
        a backoff or a wait behind a busy key is not mistaken for a dead worker."""
        period = max(0.2, b.spec.ack_wait_ms / 1000 / 3)
        while True:
            await asyncio.sleep(period)  # the keep-alive period itself
            for msg in list(b.held.values()):
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    async def _stream_event(self, b: _Binding, msg: Msg) -> None:
        """One delivery of an unordered stream trigger: ack, retry later (nak) or dead-letter."""
        spec = b.spec
        try:
            md = msg.metadata
            attempt = md.num_delivered
            err = await self._attempt(b, msg, md.sequence.stream)  # b.limit bounds these
            if err is None:
                await msg.ack()
                self._finished(b, "ok")
            elif err.code in PERMANENT or attempt >= spec.max_deliver:
                await self._dead_letter(b, msg, err, attempt)
                await msg.ack()
                self._finished(b, "dead_lettered")
            else:
                await msg.nak(delay=spec.retry_delay_s(attempt))
                self._finished(b, "retried")
        except asyncio.CancelledError:
            raise
        except Exception:  # the bus failed under us: leave it to the ack wait (redelivery)
            log.exception("event=trigger_event_failed trigger=%s", spec.name)
        finally:
            b.release(msg)
            b.counters.in_flight = max(0, b.counters.in_flight - 1)

    def _enqueue_ordered(self, b: _Binding, msg: Msg) -> None:
        key = order_key(msg.subject, b.spec.ordered_by)
        queue = b.queues.get(key)
        if queue is not None:  # the key is busy: wait behind it, in stream order
            queue.append(msg)
            return
        b.queues[key] = deque()
        b.spawn(self._key_chain(b, key, msg))

    async def _key_chain(self, b: _Binding, key: str, first: Msg) -> None:
        """Handle one key's events one after another until its queue is empty."""
        msg: Msg | None = first
        try:
            while msg is not None:
                await self._ordered_event(b, msg)
                queue = b.queues.get(key)
                msg = queue.popleft() if queue else None
        finally:
            b.queues.pop(key, None)

    async def _ordered_event(self, b: _Binding, msg: Msg) -> None:
        """One event of an ordered trigger: retried in place (its key waits) until it is
        handled or dead-lettered; acked either way."""
        spec = b.spec
        try:
            md = msg.metadata
            attempt = md.num_delivered
            while True:
                async with b.running:
                    err = await self._attempt(b, msg, md.sequence.stream)
                if err is None:
                    await msg.ack()
                    self._finished(b, "ok")
                    return
                if err.code in PERMANENT or attempt >= spec.max_deliver:
                    await self._dead_letter(b, msg, err, attempt)
                    await msg.ack()
                    self._finished(b, "dead_lettered")
                    return
                self._finished(b, "retried")
                await asyncio.sleep(spec.retry_delay_s(attempt))  # the retry backoff
                attempt += 1
        except asyncio.CancelledError:
            raise
        except Exception:  # the bus failed under us: leave it to the ack wait (redelivery)
            log.exception("event=trigger_event_failed trigger=%s", spec.name)
        finally:
            b.release(msg)
            b.counters.in_flight = max(0, b.counters.in_flight - 1)

    # --- core subjects --------------------------------------------------------------------------
    async def _core_event(self, b: _Binding, msg: Msg) -> None:
        """One core event: at most once. The reply (if asked for) gets the output or error;
        a failure without a reply goes to the dead letter."""
        try:
            b.counters.in_flight += 1
            err = await self._attempt(b, msg, 0)
            if err is None:
                self._finished(b, "ok")
            elif msg.reply:
                headers = {
                    HEADER_TRIGGER: b.spec.name,
                    HEADER_ERROR_CODE: err.code.value,
                    HEADER_ERROR: _header_value(err.message),
                }
                await self.nc.publish(msg.reply, b"", headers=headers)
                self._finished(b, "failed")
            else:
                await self._dead_letter(b, msg, err, 1)
                self._finished(b, "dead_lettered")
        except Exception:
            log.exception("event=trigger_event_failed trigger=%s", b.spec.name)
        finally:
            b.counters.in_flight = max(0, b.counters.in_flight - 1)
            b.running.release()

    # --- one attempt -----------------------------------------------------------------------------
    async def _attempt(self, b: _Binding, msg: Msg, stream_seq: int) -> ForgeError | None:
        """Run the function on the event and publish its output; the error, or None."""
        spec = b.spec
        b.counters.events += 1
        started = time.perf_counter()
        try:
            output, version = await self._run_guest(spec, msg)
            if b.template is not None or (spec.source is SourceKind.SUBJECT and msg.reply):
                headers = self._output_headers(spec, msg, version, stream_seq)
                if b.template is not None:
                    msg_id = (
                        f"trigger:{spec.name}:{spec.stream}:{stream_seq}" if stream_seq else None
                    )
                    subject = b.template.render(msg.subject)
                    await self._publish(subject, output, headers, msg_id)
                if spec.source is SourceKind.SUBJECT and msg.reply:
                    await self.nc.publish(msg.reply, output, headers=headers)
            return None
        except ForgeError as e:
            err: ForgeError = e
        except asyncio.CancelledError:
            raise
        except Exception as e:  # publishing failed: the bus, or an output stream refusing it
            err = Unavailable(f"publishing the output failed: {type(e).__name__}: {e}")
        finally:
            if b.metrics is not None:
                b.metrics.seconds.observe(time.perf_counter() - started)
        b.counters.errors += 1
        b.counters.last_error = f"{err.code.value}: {err.message}"[:1024]
        TRIGGER_ERRORS.labels(spec.name, err.code.value).inc()
        return err

    async def _run_guest(self, spec: TriggerSpec, msg: Msg) -> tuple[bytes, str]:
        hp = self.hosted.get(spec.plugin)
        if hp is None:
            raise PluginNotFound(f"plugin {spec.plugin!r} is not hosted on this worker")
        hv = hp.pick(None)
        data = bytes(msg.data)
        hv.check(spec.fn, len(data))
        headers = dict(msg.headers or {})
        meta = hv.meta(spec.timeout_ms or None, 0, headers.get(HEADER_TRACEPARENT))
        meta.event_subject = msg.subject
        meta.event_headers = headers
        out = await hv.call(self.executor, spec.fn, data, meta)
        if out.created_instance:
            metrics.INSTANCES_CREATED.labels(spec.plugin, hv.version).inc()
        if out.discarded:
            metrics.INSTANCES_DISCARDED.labels(spec.plugin, hv.version).inc()
        if out.logs:
            await self.syscalls.logs(spec.plugin, hv.version, spec.fn, out.logs, meta.traceparent)
        if out.error is not None:
            raise out.error
        assert out.invocation is not None
        return out.invocation.output, hv.version

    def _output_headers(
        self, spec: TriggerSpec, msg: Msg, version: str, stream_seq: int
    ) -> dict[str, str]:
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

    async def _publish(
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

    async def _dead_letter(self, b: _Binding, msg: Msg, err: ForgeError, attempts: int) -> None:
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
            at_ms=_now_ms(),
        )
        headers = {
            HEADER_TRIGGER: spec.name,
            HEADER_SOURCE_SUBJECT: msg.subject,
            HEADER_ERROR_CODE: err.code.value,
            HEADER_ERROR: _header_value(err.message),
        }
        msg_id = None
        if stream_seq:
            headers[HEADER_SOURCE_STREAM] = spec.stream
            headers[HEADER_STREAM_SEQ] = str(stream_seq)
            msg_id = f"trigger-dlq:{spec.name}:{spec.stream}:{stream_seq}"
        await self._publish(subject, encode(letter), headers, msg_id)
        b.counters.dead_lettered += 1
        if b.metrics is not None:
            b.metrics.dead.inc()
        log.warning(
            "event=trigger_dead_lettered trigger=%s subject=%s seq=%d attempts=%d error=%s",
            spec.name,
            msg.subject,
            stream_seq,
            attempts,
            err.code.value,
        )

    def _finished(self, b: _Binding, outcome: str) -> None:
        if outcome == "ok":
            b.counters.ok += 1
        if b.metrics is not None:
            b.metrics.outcome(outcome).inc()
            b.metrics.in_flight.set(max(0, len(b.held) - 1))

    # --- statistics ------------------------------------------------------------------------------
    def stats(self, stopping: bool = False) -> TriggerStats:
        names = sorted(set(self._counters) | set(self._bound))
        return TriggerStats(
            worker_id=self.worker_id,
            started_at_ms=self.started_at_ms,
            sent_at_ms=_now_ms(),
            interval_ms=max(1, int(self.stats_interval_s * 1000)),
            triggers=[
                self._counters.setdefault(n, _Counters()).snapshot(
                    n, n in self._bound and not stopping
                )
                for n in names
            ],
            stopping=stopping,
        )

    async def _send_stats(self, stopping: bool = False) -> None:
        try:
            await self.nc.publish(
                self.subjects.trigger_stats(self.worker_id), encode(self.stats(stopping))
            )
        except Exception as e:
            log.warning("event=trigger_stats_failed error=%r", e)

    async def _stats_loop(self) -> None:
        while True:
            await self._send_stats()
            await asyncio.sleep(self.stats_interval_s)  # the reporting period itself
