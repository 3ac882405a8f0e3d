"""Trigger administration: ``trigger_add|list|show|pause|resume|rm`` on the admin service,
and the client-side helper ``ForgeClient`` delegates to.

The control plane owns each stream trigger's durable consumer: ``add`` creates
it on the user's stream (deliver policy from ``start``; for ``ordered_by``, in a
pinned-client priority group so one worker at a time consumes it), ``pause``
pauses it (and marks the definition paused, so workers stop pulling), ``resume``
resumes both, and ``rm`` deletes the definition and the consumer.

Where the figures in ``trigger list`` come from:

- lag (stream triggers): the consumer's info (events not yet delivered, delivered
  but not acked, redelivered) and the timestamp of the first unacked event (the
  one after the ack floor), read when asked;
- rate, errors, dead-lettered: every worker publishes its per-trigger counters
  on ``<prefix>.triggers.stats.<worker>`` each heartbeat period (core NATS, like
  heartbeats). The coordinator sums the last counters of every worker
  incarnation it has seen since it started (so a worker that stopped still
  counts), and the rate of the live ones;
- "no workers": no live worker reports the plugin ready in its heartbeat.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from schemas.codec import DecodeError, Message, decode, encode
from schemas.errors import BadRequest, NotFound, Unavailable
from schemas.subjects import TRIGGER_PIN_GROUP, Subjects, js_consumer_create
from schemas.triggers import (
    SourceKind,
    TriggerAddRequest,
    TriggerListReply,
    TriggerListRequest,
    TriggerPauseRequest,
    TriggerRemoved,
    TriggerRemoveRequest,
    TriggerReply,
    TriggerResumeRequest,
    TriggerShowRequest,
    TriggerSpec,
    TriggerStatus,
    parse_start,
    patterns_overlap,
    template_pattern,
)

from .buckets import bucket_keys
from .registry import WorkerRegistry
from .trigger_stats import TriggerStatsView

log = logging.getLogger("forge.coordinator.triggers")

#: Unacked deliveries a trigger's consumer allows across all workers.
MAX_ACK_PENDING = 20_000
#: Far enough in the future to mean "until resumed".
PAUSED_UNTIL = "2999-12-31T23:59:59Z"
NS = 1_000_000_000

Handler = Callable[[Message], Awaitable[Message]]


class TriggerAdmin:
    """The trigger operations of the admin service."""

    def __init__(
        self,
        nc: Client,
        subjects: Subjects,
        kv: KeyValue,
        deployments: KeyValue,
        registry: WorkerRegistry,
    ) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=5)
        self.subjects = subjects
        self.kv = kv
        self.deployments = deployments
        self.registry = registry
        self.stats = TriggerStatsView()

    async def start(self) -> None:
        await self.stats.start(self.nc, self.subjects)

    def handlers(self) -> dict[str, Handler]:
        return {
            "trigger_add": self._add,
            "trigger_list": self._list,
            "trigger_show": self._show,
            "trigger_pause": self._pause,
            "trigger_resume": self._resume,
            "trigger_rm": self._remove,
        }

    # --- reading ------------------------------------------------------------------------
    async def _get(self, name: str) -> tuple[TriggerSpec, int]:
        try:
            entry = await self.kv.get(name)
        except NotFoundError:
            raise NotFound(f"no trigger {name!r}") from None
        try:
            return decode(TriggerSpec, entry.value or b""), int(entry.revision or 0)
        except DecodeError as e:
            raise BadRequest(f"stored trigger {name!r} is malformed: {e}") from None

    async def _specs(self) -> list[TriggerSpec]:
        out = []
        for key in await bucket_keys(self.kv):
            try:
                out.append((await self._get(key))[0])
            except (NotFound, BadRequest) as e:
                log.warning("event=skip_trigger key=%s error=%s", key, e)
        return sorted(out, key=lambda s: s.name)

    async def status(self, spec: TriggerSpec) -> TriggerStatus:
        hosts = sorted(
            w.worker_id
            for w in self.registry.alive()
            if any(p.plugin == spec.plugin and p.state == "ready" for p in w.plugins)
        )
        counters, bound = self.stats.aggregate(spec.name)
        pending = in_flight = redelivered = oldest = None
        if spec.source is SourceKind.STREAM:
            pending, in_flight, redelivered, oldest = await self._lag(spec)
        state = "paused" if spec.paused else ("active" if hosts else "no workers")
        return TriggerStatus(
            spec=spec,
            state=state,
            hosted_by=hosts,
            bound_on=bound,
            pending=pending,
            in_flight=in_flight,
            redelivered=redelivered,
            oldest_age_ms=oldest,
            rate_per_s=round(counters.rate_per_s, 3),
            events=counters.events,
            ok=counters.ok,
            errors=counters.errors,
            dead_lettered=counters.dead_lettered,
            last_error=counters.last_error,
        )

    async def _lag(
        self, spec: TriggerSpec
    ) -> tuple[int | None, int | None, int | None, int | None]:
        durable = self.subjects.trigger_consumer(spec.name)
        try:
            info = await self.js.consumer_info(spec.stream, durable)
        except Exception as e:
            log.warning("event=trigger_lag_failed trigger=%s error=%r", spec.name, e)
            return None, None, None, None
        pending = int(info.num_pending or 0)
        in_flight = int(info.num_ack_pending or 0)
        oldest: int | None = None
        if pending + in_flight > 0:
            floor = info.ack_floor.stream_seq if info.ack_floor else 0
            try:
                raw = await self.js.get_msg(
                    spec.stream, seq=floor + 1, subject=spec.filter or ">", next=True
                )
                if raw.time is not None:
                    age = datetime.now(UTC) - raw.time
                    oldest = max(0, int(age.total_seconds() * 1000))
            except Exception as e:  # purged meanwhile, or the stream is busy
                log.debug("event=oldest_event_unknown trigger=%s error=%r", spec.name, e)
        return pending, in_flight, int(info.num_redelivered or 0), oldest

    async def _list(self, msg: Message) -> Message:
        assert isinstance(msg, TriggerListRequest)
        return TriggerListReply([await self.status(s) for s in await self._specs()])

    async def _show(self, msg: Message) -> Message:
        assert isinstance(msg, TriggerShowRequest)
        spec, _ = await self._get(msg.name)
        return TriggerReply(await self.status(spec))

    # --- adding -------------------------------------------------------------------------
    def _check_subjects(self, spec: TriggerSpec) -> None:
        """Refuse subjects that are ForgeOne's or NATS's own, and outputs that feed back."""
        own = f"{self.subjects.prefix}."
        for what, value in (
            ("subject", spec.subject),
            ("filter", spec.filter),
            ("output", spec.output),
            ("dead_letter", spec.dead_letter),
        ):
            first = value.split(".")[0]
            if value and (
                value.startswith((own, "$", "_INBOX")) or first in ("*", ">", self.subjects.prefix)
            ):
                raise BadRequest(
                    f"{what} {value!r} overlaps NATS's or ForgeOne's own subjects "
                    f"($..., _INBOX..., {own}...)"
                )

    async def _add(self, msg: Message) -> Message:
        assert isinstance(msg, TriggerAddRequest)
        spec = dataclasses.replace(msg.spec, created_at_ms=int(time.time() * 1000), paused=False)
        self._check_subjects(spec)
        try:
            await self.kv.get(spec.name)
            raise BadRequest(f"trigger {spec.name!r} exists (remove it first)")
        except NotFoundError:
            pass
        warnings: list[str] = []
        sources = [spec.subject]
        if spec.source is SourceKind.STREAM:
            parse_start(spec.start)
            try:
                info = await self.js.stream_info(spec.stream)
            except NotFoundError:
                raise NotFound(f"stream {spec.stream!r} does not exist") from None
            sources = [spec.filter] if spec.filter else list(info.config.subjects or [])
        for target, what in ((spec.output, "output"), (spec.dead_letter, "dead_letter")):
            pattern = template_pattern(target) if target else ""
            if pattern and any(patterns_overlap(s, pattern) for s in sources):
                raise BadRequest(
                    f"{what} {target!r} overlaps the trigger's source: every event it "
                    "publishes would trigger it again"
                )
        warnings += await self._output_warnings(spec)
        try:
            await self.deployments.get(spec.plugin)
        except NotFoundError:
            warnings.append(f"plugin {spec.plugin!r} is not deployed: nothing runs until it is")
        if spec.source is SourceKind.STREAM:
            await self._create_consumer(spec)
        try:
            await self.kv.create(spec.name, encode(spec))
        except KeyWrongLastSequenceError:
            raise BadRequest(f"trigger {spec.name!r} exists (remove it first)") from None
        log.info("event=trigger_added trigger=%s plugin=%s fn=%s", spec.name, spec.plugin, spec.fn)
        return TriggerReply(await self.status(spec), warnings)

    async def _output_warnings(self, spec: TriggerSpec) -> list[str]:
        if spec.source is not SourceKind.STREAM or not spec.output:
            return []
        pattern = template_pattern(spec.output)
        try:
            infos = await self.js.streams_info()
        except Exception:
            return []
        stored = [
            i for i in infos if any(patterns_overlap(s, pattern) for s in i.config.subjects or [])
        ]
        if not stored:
            return [
                f"output {spec.output!r} is not stored in any stream: it is published plainly, "
                "so a redelivered event can publish its output twice"
            ]
        # a delivery whose output was stored but whose ack was lost is redelivered after the
        # ack wait; later attempts may fail and back off before one publishes again
        worst = (spec.max_deliver - 1) * (spec.ack_wait_ms + max(spec.backoff_ms)) / 1000
        return [
            f"stream {i.config.name} keeps message ids for {i.config.duplicate_window or 0:.0f}s, "
            f"less than this trigger's redelivery span (up to {worst:.0f}s): a late redelivery "
            "could store a second output"
            for i in stored
            if (i.config.duplicate_window or 0) < worst
        ]

    async def _create_consumer(self, spec: TriggerSpec) -> None:
        durable = self.subjects.trigger_consumer(spec.name)
        start = parse_start(spec.start)
        config: dict[str, object] = {
            "durable_name": durable,
            "name": durable,
            "description": f"ForgeOne trigger {spec.name} -> {spec.plugin}.{spec.fn}",
            "ack_policy": "explicit",
            "ack_wait": spec.ack_wait_ms * 1_000_000,
            # one delivery beyond the trigger's: a worker that died during the last
            # attempt still gets the event redelivered (and dead-lettered) by another
            "max_deliver": spec.max_deliver + 1,
            "max_ack_pending": MAX_ACK_PENDING,
            "max_waiting": 512,
            "replay_policy": "instant",
        }
        if spec.filter:
            config["filter_subject"] = spec.filter
        if start.policy == "seq":
            config.update(deliver_policy="by_start_sequence", opt_start_seq=start.seq)
        elif start.policy == "time":
            assert start.time is not None
            config.update(
                deliver_policy="by_start_time",
                opt_start_time=start.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            )
        else:
            config["deliver_policy"] = start.policy
        if spec.ordered_by:
            # One worker at a time holds the pin; it moves only after the holder stopped
            # pulling for as long as the ack wait, so its unacked events are due for
            # redelivery (first, in order) when another worker takes over.
            config.update(
                priority_policy="pinned_client",
                priority_groups=[TRIGGER_PIN_GROUP],
                priority_timeout=max(spec.ack_wait_ms, 1000) * 1_000_000,
            )
        # a leftover consumer of that name (no trigger owns it) starts afresh
        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(spec.stream, durable)
        request = {"stream_name": spec.stream, "config": config, "action": "create"}
        try:
            reply = await self.nc.request(
                js_consumer_create(spec.stream, durable), json.dumps(request).encode(), timeout=5
            )
        except Exception as e:
            raise Unavailable(f"creating the consumer: {type(e).__name__}: {e}") from None
        body = json.loads(reply.data or b"{}")
        if "error" in body:
            err = body["error"]
            raise BadRequest(
                f"JetStream refused the trigger's consumer: {err.get('description', err)}"
            )

    # --- pause, resume, remove ------------------------------------------------------------
    async def _set_paused(self, name: str, paused: bool) -> TriggerSpec:
        for _ in range(5):  # compare-and-set against concurrent admin changes
            spec, revision = await self._get(name)
            new = dataclasses.replace(spec, paused=paused)
            try:
                await self.kv.update(name, encode(new), last=revision)
                return new
            except KeyWrongLastSequenceError:
                continue
        raise Unavailable(f"trigger {name!r} kept changing; try again")

    async def _pause(self, msg: Message) -> Message:
        assert isinstance(msg, TriggerPauseRequest)
        spec = await self._set_paused(msg.name, True)  # workers stop pulling
        if spec.source is SourceKind.STREAM:  # and the consumer delivers nothing meanwhile
            await self.js.pause_consumer(
                spec.stream, self.subjects.trigger_consumer(spec.name), PAUSED_UNTIL
            )
        log.info("event=trigger_paused trigger=%s", spec.name)
        return TriggerReply(await self.status(spec))

    async def _resume(self, msg: Message) -> Message:
        assert isinstance(msg, TriggerResumeRequest)
        spec, _ = await self._get(msg.name)
        if spec.source is SourceKind.STREAM:
            await self.js.resume_consumer(spec.stream, self.subjects.trigger_consumer(spec.name))
        spec = await self._set_paused(msg.name, False)
        log.info("event=trigger_resumed trigger=%s", spec.name)
        return TriggerReply(await self.status(spec))

    async def _remove(self, msg: Message) -> Message:
        assert isinstance(msg, TriggerRemoveRequest)
        spec, _ = await self._get(msg.name)
        await self.kv.delete(spec.name)  # workers unbind
        if spec.source is SourceKind.STREAM:
            with contextlib.suppress(NotFoundError):
                await self.js.delete_consumer(
                    spec.stream, self.subjects.trigger_consumer(spec.name)
                )
        log.info("event=trigger_removed trigger=%s", spec.name)
        return TriggerRemoved(spec.name)
