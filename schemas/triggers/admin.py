"""Trigger admin requests and replies (served beside the other admin operations)."""

from __future__ import annotations

from dataclasses import dataclass

from ..codec import Message, Struct, field_spec
from .spec import TRIGGER_NAME_PATTERN, TriggerSpec


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
