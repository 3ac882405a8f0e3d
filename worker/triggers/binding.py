"""One bound trigger on this worker: its subscription or pull loop, the events it
holds, how many at once, and unbinding it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from schemas.triggers import OutputTemplate, SourceKind, TriggerSpec

from .counters import Counters, TriggerMetrics

log = logging.getLogger("forge.worker.triggers")

#: Events an ordered trigger may hold on one worker, per allowed in-flight event: the
#: queues behind busy keys live here, so other keys keep flowing while one key waits.
ORDERED_BUFFER_FACTOR = 8
MAX_ORDERED_BUFFER = 10_000
#: How long unbinding waits for in-flight events before giving them back (nak).
UNBIND_GRACE_S = 10.0


@dataclass(eq=False)
class Binding:
    """One bound trigger: its subscription or pull loop and the events it holds."""

    spec: TriggerSpec
    counters: Counters
    metrics: TriggerMetrics
    limit: int
    """Events this worker holds at once (running, waiting behind a key, or backing off)."""
    running: asyncio.Semaphore
    """Guest calls at once (max_in_flight)."""
    template: OutputTemplate | None = None
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

    @classmethod
    def of(cls, spec: TriggerSpec, counters: Counters, metrics: TriggerMetrics) -> Binding:
        """A binding of ``spec``, sized for its source (not receiving yet)."""
        if spec.source is SourceKind.SUBJECT:
            limit = spec.max_in_flight
        elif spec.ordered_by:
            limit = min(spec.max_in_flight * ORDERED_BUFFER_FACTOR, MAX_ORDERED_BUFFER)
        else:
            limit = spec.max_in_flight
        return cls(
            spec,
            counters,
            metrics,
            limit,
            asyncio.Semaphore(spec.max_in_flight),
            template=OutputTemplate(spec.output) if spec.output else None,
            refill_at=max(1, limit // 4),
        )

    def spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def hold(self, msg: Msg) -> None:
        """A stream delivery fetched for this binding: held (kept alive) until released."""
        self.held[id(msg)] = msg
        self.counters.in_flight += 1

    def release(self, msg: Msg) -> None:
        """The delivery is settled (or left to the ack wait): room for another."""
        self.counters.in_flight = max(0, self.counters.in_flight - 1)
        if self.held.pop(id(msg), None) is not None:
            self.freed.set()

    def finished(self, outcome: str) -> None:
        """Count one finished delivery (ok, retried, dead_lettered, failed)."""
        if outcome == "ok":
            self.counters.ok += 1
        self.metrics.outcome(outcome).inc()
        self.metrics.in_flight.set(max(0, len(self.held) - 1))

    async def unbind(self) -> None:
        """Stop receiving; let in-flight events finish (bounded); give the rest back."""
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
        if self.loop_task is not None:
            self.loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.loop_task
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=UNBIND_GRACE_S)
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=1.0)
        for msg in list(self.held.values()):  # not finished: redeliver to whoever binds next
            with contextlib.suppress(Exception):
                await msg.nak()
        self.held.clear()
        if self.ticker is not None:
            self.ticker.cancel()
        self.counters.in_flight = 0
        self.metrics.in_flight.set(0)
        log.info("event=trigger_unbound trigger=%s", self.spec.name)
