"""Triggers: typed definitions (the values of the triggers KV bucket), their admin
requests and replies, worker statistics, dead letters, and the pure helpers both
sides share (output subject templates, ordering keys, start positions).

A trigger binds an event source to a plugin function:

- ``source=subject``: a core NATS subject (wildcards allowed), at most once, in a
  queue group shared by the workers hosting the plugin; a request's reply subject
  gets the output.
- ``source=stream``: a JetStream stream the user owns, read through one durable
  pull consumer per trigger (created by the coordinator), at least once.

Modules: ``subject_rules`` (subject checks, output templates, ordering keys),
``headers``, ``spec`` (TriggerSpec, start positions), ``reports`` (TriggerStats,
TriggerDeadLetter) and ``admin`` (requests and replies); every name is importable
from ``schemas.triggers``.
"""

from __future__ import annotations

from .admin import (
    TRIGGER_REQUESTS,
    TriggerAddRequest,
    TriggerListReply,
    TriggerListRequest,
    TriggerPauseRequest,
    TriggerRemoved,
    TriggerRemoveRequest,
    TriggerReply,
    TriggerResumeRequest,
    TriggerShowRequest,
    TriggerStatus,
)
from .headers import (
    HEADER_ERROR,
    HEADER_ERROR_CODE,
    HEADER_PLUGIN,
    HEADER_PLUGIN_VERSION,
    HEADER_SOURCE_STREAM,
    HEADER_SOURCE_SUBJECT,
    HEADER_STREAM_SEQ,
    HEADER_TRIGGER,
)
from .reports import TriggerCounters, TriggerDeadLetter, TriggerStats
from .spec import (
    START_PATTERN,
    STREAM_NAME_PATTERN,
    TRIGGER_NAME_PATTERN,
    SourceKind,
    StartPosition,
    TriggerSpec,
    parse_start,
)
from .subject_rules import (
    MAX_SUBJECT,
    MAX_TOKEN_INDEX,
    OutputTemplate,
    check_subject,
    check_template,
    order_key,
    patterns_overlap,
    render_output,
    template_pattern,
)

__all__ = [
    "HEADER_ERROR",
    "HEADER_ERROR_CODE",
    "HEADER_PLUGIN",
    "HEADER_PLUGIN_VERSION",
    "HEADER_SOURCE_STREAM",
    "HEADER_SOURCE_SUBJECT",
    "HEADER_STREAM_SEQ",
    "HEADER_TRIGGER",
    "MAX_SUBJECT",
    "MAX_TOKEN_INDEX",
    "START_PATTERN",
    "STREAM_NAME_PATTERN",
    "TRIGGER_NAME_PATTERN",
    "TRIGGER_REQUESTS",
    "OutputTemplate",
    "SourceKind",
    "StartPosition",
    "TriggerAddRequest",
    "TriggerCounters",
    "TriggerDeadLetter",
    "TriggerListReply",
    "TriggerListRequest",
    "TriggerPauseRequest",
    "TriggerRemoveRequest",
    "TriggerRemoved",
    "TriggerReply",
    "TriggerResumeRequest",
    "TriggerShowRequest",
    "TriggerSpec",
    "TriggerStats",
    "TriggerStatus",
    "check_subject",
    "check_template",
    "order_key",
    "parse_start",
    "patterns_overlap",
    "render_output",
    "template_pattern",
]
