"""A trigger's definition: the value of its key in the triggers bucket, and where a
stream trigger starts."""

from __future__ import annotations

import datetime
import enum
import re
from dataclasses import dataclass

from ..codec import Message, field_spec
from ..errors import BadRequest
from ..manifest import FUNCTION_PATTERN, NAME_PATTERN
from .subject_rules import MAX_SUBJECT, MAX_TOKEN_INDEX, check_subject, check_template

#: A trigger's name: one subject token (it names the KV key, consumer and queue group).
TRIGGER_NAME_PATTERN = r"[A-Za-z0-9_-]{1,64}"
#: A JetStream stream name as the server accepts it (no dots, wildcards or spaces).
STREAM_NAME_PATTERN = r"[A-Za-z0-9_-]{1,255}"
_ISO = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})"
#: Where a stream trigger starts: new events only, all, a sequence, or a time.
START_PATTERN = rf"new|all|seq:[1-9][0-9]{{0,18}}|time:{_ISO}"


class SourceKind(enum.StrEnum):
    SUBJECT = "subject"
    STREAM = "stream"


@dataclass(frozen=True, slots=True)
class StartPosition:
    """A parsed ``start``: policy new, all, seq (with ``seq``) or time (with ``time``)."""

    policy: str
    seq: int = 0
    time: datetime.datetime | None = None


def parse_start(start: str) -> StartPosition:
    if not re.fullmatch(START_PATTERN, start):
        raise BadRequest(f"start {start!r}: expected new, all, seq:N or time:ISO-8601")
    kind, _, arg = start.partition(":")
    if kind == "seq":
        return StartPosition("seq", seq=int(arg))
    if kind == "time":
        try:
            t = datetime.datetime.fromisoformat(arg.replace("Z", "+00:00"))
        except ValueError as e:
            raise BadRequest(f"start {start!r}: {e}") from None
        return StartPosition("time", time=t)
    return StartPosition(kind)


@dataclass(frozen=True, slots=True)
class TriggerSpec(Message):
    """One trigger: the value of its key (its name) in the triggers bucket."""

    KIND = "trigger"
    name: str = field_spec(pattern=TRIGGER_NAME_PATTERN, doc="Trigger name (the KV key).")
    source: SourceKind = field_spec(doc="subject (core NATS) or stream (JetStream).")
    plugin: str = field_spec(pattern=NAME_PATTERN, doc="Plugin whose function runs.")
    fn: str = field_spec(pattern=FUNCTION_PATTERN, doc="Function run for each event.")
    subject: str = field_spec(
        default="", max_len=MAX_SUBJECT, doc="source=subject: the subject (wildcards allowed)."
    )
    stream: str = field_spec(
        default="", max_len=255, doc="source=stream: the user's stream (its name)."
    )
    filter: str = field_spec(
        default="", max_len=MAX_SUBJECT, doc="source=stream: only events on this subject pattern."
    )
    start: str = field_spec(
        default="new", max_len=64, pattern=START_PATTERN, doc="new, all, seq:N or time:ISO."
    )
    output: str = field_spec(
        default="", max_len=MAX_SUBJECT, doc="Output subject template ({N}: source token N)."
    )
    max_in_flight: int = field_spec(
        default=32, ge=1, le=10_000, doc="Events in flight per worker for this trigger."
    )
    max_deliver: int = field_spec(
        default=5, ge=1, le=1000, doc="Attempts before an event goes to the dead letter."
    )
    backoff_ms: list[int] = field_spec(
        default_factory=lambda: [500, 2000, 5000],
        doc="Delay before each retry, ms (the last repeats).",
    )
    ack_wait_ms: int = field_spec(
        default=30_000, ge=100, le=3_600_000, doc="Redelivery after a worker stops answering."
    )
    timeout_ms: int = field_spec(
        default=0, ge=0, le=3_600_000, doc="Deadline per attempt, ms; 0: the plugin's."
    )
    dead_letter: str = field_spec(
        default="", max_len=MAX_SUBJECT, doc="Dead-letter subject; '' the trigger's default."
    )
    ordered_by: int = field_spec(
        default=0, ge=0, le=MAX_TOKEN_INDEX, doc="Ordering key: source token N; 0 none."
    )
    paused: bool = field_spec(default=False, doc="Nothing is pulled while paused.")
    created_at_ms: int = field_spec(default=0, ge=0)

    def __post_init__(self) -> None:
        if self.source is SourceKind.SUBJECT:
            check_subject(self.subject, "subject")
            if self.stream or self.filter:
                raise ValueError("a subject trigger takes no stream or filter")
            if self.ordered_by:
                raise ValueError(
                    "ordered_by needs a stream source (core subjects are at most once, "
                    "with no order across the workers of a queue group)"
                )
        else:
            if not re.fullmatch(STREAM_NAME_PATTERN, self.stream):
                raise ValueError(f"stream {self.stream[:64]!r} is not a valid stream name")
            if self.subject:
                raise ValueError("a stream trigger takes --filter, not --subject")
            if self.filter:
                check_subject(self.filter, "filter")
        if self.output:
            check_template(self.output)
        if self.dead_letter:
            check_subject(self.dead_letter, "dead_letter", wildcards=False)
        if not 1 <= len(self.backoff_ms) <= 16 or any(
            not 0 <= b <= 3_600_000 for b in self.backoff_ms
        ):
            raise ValueError("backoff_ms: 1 to 16 delays, each 0 to 3600000 ms")

    @property
    def source_pattern(self) -> str:
        """The subjects this trigger consumes (stream triggers without a filter: '>')."""
        return self.subject if self.source is SourceKind.SUBJECT else (self.filter or ">")

    def retry_delay_s(self, attempt: int) -> float:
        """Delay before retrying after failed attempt number ``attempt`` (1-based)."""
        return self.backoff_ms[min(max(attempt, 1), len(self.backoff_ms)) - 1] / 1000
