"""What workers publish about triggers: their counters (TriggerStats) and the events
that failed for good (TriggerDeadLetter)."""

from __future__ import annotations

from dataclasses import dataclass

from ..codec import Message, Struct, field_spec
from ..messages import ErrorInfo
from .spec import TRIGGER_NAME_PATTERN
from .subject_rules import MAX_SUBJECT


@dataclass(frozen=True, slots=True)
class TriggerCounters(Struct):
    """One trigger on one worker: counters since the worker started."""

    name: str = field_spec(pattern=TRIGGER_NAME_PATTERN)
    bound: bool = field_spec(default=False, doc="Subscribed or pulling right now.")
    events: int = field_spec(default=0, ge=0, doc="Deliveries received (retries included).")
    ok: int = field_spec(default=0, ge=0, doc="Events handled: output published, acked.")
    errors: int = field_spec(default=0, ge=0, doc="Failed attempts.")
    dead_lettered: int = field_spec(default=0, ge=0)
    in_flight: int = field_spec(default=0, ge=0)
    rate_per_s: float = field_spec(default=0.0, doc="Events handled per second, recently.")
    last_error: str = field_spec(default="", max_len=1024)


@dataclass(frozen=True, slots=True)
class TriggerStats(Message):
    """A worker's trigger counters, on ``<prefix>.triggers.stats.<worker_id>`` periodically."""

    KIND = "trigger_stats"
    worker_id: str = field_spec(pattern=r"[A-Za-z0-9_-]{1,128}")
    started_at_ms: int = field_spec(default=0, ge=0)
    sent_at_ms: int = field_spec(default=0, ge=0)
    interval_ms: int = field_spec(default=2000, ge=1)
    triggers: list[TriggerCounters] = field_spec(default_factory=list)
    stopping: bool = field_spec(default=False)


@dataclass(frozen=True, slots=True)
class TriggerDeadLetter(Message):
    """An event that failed every attempt (or was rejected), with its last error."""

    KIND = "trigger_dead_letter"
    trigger: str = field_spec(pattern=TRIGGER_NAME_PATTERN)
    plugin: str = field_spec(max_len=64)
    fn: str = field_spec(max_len=64)
    subject: str = field_spec(max_len=MAX_SUBJECT, doc="The event's subject.")
    error: ErrorInfo = field_spec(doc="The last attempt's error.")
    data: bytes = field_spec(default=b"", doc="The event's payload.")
    headers: dict[str, str] = field_spec(default_factory=dict, doc="The event's headers.")
    stream: str = field_spec(default="", max_len=255)
    stream_seq: int = field_spec(default=0, ge=0)
    attempts: int = field_spec(default=0, ge=0)
    worker: str = field_spec(default="", max_len=128)
    at_ms: int = field_spec(default=0, ge=0)
