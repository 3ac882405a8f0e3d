"""Triggers: typed definitions (the values of the triggers KV bucket), their admin
requests and replies, worker statistics, dead letters, and the pure helpers both
sides share (output subject templates, ordering keys, start positions).

A trigger binds an event source to a plugin function:

- ``source=subject``: a core NATS subject (wildcards allowed), at most once, in a
  queue group shared by the workers hosting the plugin; a request's reply subject
  gets the output.
- ``source=stream``: a JetStream stream the user owns, read through one durable
  pull consumer per trigger (created by the coordinator), at least once.
"""

from __future__ import annotations

import datetime
import enum
import re
from dataclasses import dataclass

from .codec import Message, Struct, field_spec
from .errors import BadRequest
from .manifest import FUNCTION_PATTERN, NAME_PATTERN
from .messages import ErrorInfo

#: A trigger's name: one subject token (it names the KV key, consumer and queue group).
TRIGGER_NAME_PATTERN = r"[A-Za-z0-9_-]{1,64}"
#: A JetStream stream name as the server accepts it (no dots, wildcards or spaces).
STREAM_NAME_PATTERN = r"[A-Za-z0-9_-]{1,255}"
_ISO = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})"
#: Where a stream trigger starts: new events only, all, a sequence, or a time.
START_PATTERN = rf"new|all|seq:[1-9][0-9]{{0,18}}|time:{_ISO}"
MAX_SUBJECT = 256
#: Most output-subject or ordering token index (1-based).
MAX_TOKEN_INDEX = 32

# --- headers on outputs, replies and dead letters ------------------------------------
HEADER_TRIGGER = "Forge-Trigger"
HEADER_SOURCE_SUBJECT = "Forge-Source-Subject"
HEADER_SOURCE_STREAM = "Forge-Source-Stream"
HEADER_STREAM_SEQ = "Forge-Stream-Seq"
HEADER_PLUGIN = "Forge-Plugin"
HEADER_PLUGIN_VERSION = "Forge-Version"
HEADER_ERROR_CODE = "Forge-Error-Code"
HEADER_ERROR = "Forge-Error"

_TOKEN = re.compile(r"[^\s.*>{}]+")
_TEMPLATE_TOKEN = re.compile(r"(?:[^\s.*>{}]|\{[1-9][0-9]?\})+")
_PLACEHOLDER = re.compile(r"\{([1-9][0-9]?)\}")


class SourceKind(enum.StrEnum):
    SUBJECT = "subject"
    STREAM = "stream"


def check_subject(subject: str, what: str, wildcards: bool = True) -> str:
    """``subject`` if it is a valid NATS subject (a pattern when ``wildcards``), else ValueError."""
    tokens = subject.split(".")
    ok = 0 < len(subject) <= MAX_SUBJECT
    for i, tok in enumerate(tokens):
        if tok == "*" and wildcards:
            continue
        if tok == ">" and wildcards and i == len(tokens) - 1:
            continue
        if not _TOKEN.fullmatch(tok):
            ok = False
    if not ok:
        kind = "subject pattern" if wildcards else "literal subject"
        raise ValueError(f"{what} {subject[:64]!r} is not a valid NATS {kind}")
    return subject


def check_template(template: str, what: str = "output") -> str:
    """An output subject template: literal tokens and ``{N}`` (token N of the source)."""
    tokens = template.split(".")
    if not 0 < len(template) <= MAX_SUBJECT or not all(
        _TEMPLATE_TOKEN.fullmatch(t) for t in tokens
    ):
        raise ValueError(
            f"{what} {template[:64]!r} is not a subject template (literal tokens and "
            "{N} for token N of the source subject; no wildcards)"
        )
    for m in _PLACEHOLDER.finditer(template):
        if int(m.group(1)) > MAX_TOKEN_INDEX:
            raise ValueError(f"{what}: token index {m.group(1)} is above {MAX_TOKEN_INDEX}")
    return template


def render_output(template: str, subject: str) -> str:
    """The output subject of an event on ``subject``; BadRequest if a token is missing."""
    tokens = subject.split(".")

    def sub(m: re.Match[str]) -> str:
        i = int(m.group(1))
        if i > len(tokens):
            raise BadRequest(
                f"output {template!r} uses token {{{i}}} but {subject!r} has {len(tokens)}"
            )
        return tokens[i - 1]

    out = _PLACEHOLDER.sub(sub, template)
    try:
        return check_subject(out, "output subject", wildcards=False)
    except ValueError as e:
        raise BadRequest(str(e)) from None


class OutputTemplate:
    """An output template split once, rendered per event without regular expressions."""

    def __init__(self, template: str) -> None:
        check_template(template)
        self.template = template
        self._parts: list[str | int] = []
        pos = 0
        for m in _PLACEHOLDER.finditer(template):
            if m.start() > pos:
                self._parts.append(template[pos : m.start()])
            self._parts.append(int(m.group(1)))
            pos = m.end()
        if pos < len(template):
            self._parts.append(template[pos:])
        self._highest = max((p for p in self._parts if isinstance(p, int)), default=0)

    def render(self, subject: str) -> str:
        """As :func:`render_output` (BadRequest if the subject lacks a token)."""
        if not self._highest:
            return self.template
        tokens = subject.split(".")
        if self._highest > len(tokens):
            return render_output(self.template, subject)  # raises, naming the token
        out = "".join(p if isinstance(p, str) else tokens[p - 1] for p in self._parts)
        if "*" in out or ">" in out or ".." in out or out.startswith(".") or out.endswith("."):
            return render_output(self.template, subject)  # raises with the reason
        return out


def order_key(subject: str, index: int) -> str:
    """The ordering key of an event: token ``index`` (1-based) of its subject, or ''."""
    tokens = subject.split(".")
    return tokens[index - 1] if 0 < index <= len(tokens) else ""


def template_pattern(template: str) -> str:
    """The template as a subject pattern (each ``{N}`` token a ``*``), for overlap checks."""
    return ".".join("*" if _PLACEHOLDER.search(t) else t for t in template.split("."))


def patterns_overlap(a: str, b: str) -> bool:
    """Whether some literal subject matches both NATS patterns ``a`` and ``b``."""
    ta, tb = a.split("."), b.split(".")
    for i in range(max(len(ta), len(tb))):
        x = ta[i] if i < len(ta) else None
        y = tb[i] if i < len(tb) else None
        if x == ">" or y == ">":
            return (x is not None) and (y is not None)
        if x is None or y is None:
            return False
        if x != "*" and y != "*" and x != y:
            return False
    return True


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


# --- the definition ------------------------------------------------------------------
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


# --- what workers report ------------------------------------------------------------------
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


# --- admin requests and replies --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TriggerStatus(Struct):
    """A trigger with its state, lag and counters, as ``trigger list`` shows it."""

    spec: TriggerSpec = field_spec()
    state: str = field_spec(default="active", max_len=32, doc="active, paused or no workers.")
    hosted_by: list[str] = field_spec(default_factory=list, doc="Workers with the plugin ready.")
    bound_on: list[str] = field_spec(default_factory=list, doc="Workers consuming it now.")
    pending: int | None = field_spec(default=None, ge=0, doc="Stream events not yet delivered.")
    in_flight: int | None = field_spec(default=None, ge=0, doc="Delivered, not yet acked.")
    redelivered: int | None = field_spec(default=None, ge=0)
    oldest_age_ms: int | None = field_spec(
        default=None, ge=0, doc="Age of the oldest event not yet acked."
    )
    rate_per_s: float = field_spec(default=0.0)
    events: int = field_spec(default=0, ge=0)
    ok: int = field_spec(default=0, ge=0)
    errors: int = field_spec(default=0, ge=0)
    dead_lettered: int = field_spec(default=0, ge=0)
    last_error: str = field_spec(default="", max_len=1024)


@dataclass(frozen=True, slots=True)
class TriggerAddRequest(Message):
    KIND = "trigger_add"
    spec: TriggerSpec = field_spec()


@dataclass(frozen=True, slots=True)
class TriggerListRequest(Message):
    KIND = "trigger_list"


@dataclass(frozen=True, slots=True)
class TriggerShowRequest(Message):
    KIND = "trigger_show"
    name: str = field_spec(pattern=TRIGGER_NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class TriggerPauseRequest(Message):
    KIND = "trigger_pause"
    name: str = field_spec(pattern=TRIGGER_NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class TriggerResumeRequest(Message):
    KIND = "trigger_resume"
    name: str = field_spec(pattern=TRIGGER_NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class TriggerRemoveRequest(Message):
    KIND = "trigger_rm"
    name: str = field_spec(pattern=TRIGGER_NAME_PATTERN)


@dataclass(frozen=True, slots=True)
class TriggerReply(Message):
    KIND = "trigger_status"
    status: TriggerStatus = field_spec()
    warnings: list[str] = field_spec(default_factory=list)


@dataclass(frozen=True, slots=True)
class TriggerListReply(Message):
    KIND = "triggers"
    triggers: list[TriggerStatus] = field_spec(default_factory=list)


@dataclass(frozen=True, slots=True)
class TriggerRemoved(Message):
    KIND = "trigger_removed"
    name: str = field_spec(pattern=TRIGGER_NAME_PATTERN)


#: Admin operations for triggers (op -> request type), served beside ADMIN_REQUESTS.
TRIGGER_REQUESTS: dict[str, type[Message]] = {
    "trigger_add": TriggerAddRequest,
    "trigger_list": TriggerListRequest,
    "trigger_show": TriggerShowRequest,
    "trigger_pause": TriggerPauseRequest,
    "trigger_resume": TriggerResumeRequest,
    "trigger_rm": TriggerRemoveRequest,
}
