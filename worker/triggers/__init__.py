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

Modules, each importing only the ones listed before it:

- ``counters``: the Prometheus series and the per-trigger counters (TriggerStats);
- ``binding``: one bound trigger, what it holds, and unbinding it;
- ``output``: output headers and publishing (JetStream with a message id when a
  stream stores the subject);
- ``dead_letter``: the TriggerDeadLetter message and its publication;
- ``handler``: one attempt at an event (the guest call, then its output);
- ``core_subject``: core-subject triggers (queue subscription, at most once);
- ``ordered``: ordered-by key scheduling on stream triggers;
- ``stream_consumer``: stream triggers (pull loop, ack / retry / dead letter);
- ``runner``: the trigger set (the triggers bucket), binding and stats.
"""

from __future__ import annotations

from .runner import TriggerRunner

__all__ = ["TriggerRunner"]
