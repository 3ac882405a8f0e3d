"""Every NATS subject, bucket and stream name ForgeOne uses, built only here."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import BadRequest

#: A single subject token that is safe to embed: no dots, wildcards or spaces.
TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
PREFIX_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
#: The queue group every worker joins for a plugin's fast calls.
INVOKE_QUEUE = "forge-workers"
#: The JetStream priority group of ordered triggers' consumers (one pinned worker at a time).
TRIGGER_PIN_GROUP = "forge"
#: JetStream API prefix (the server's default domain).
JS_API_PREFIX = "$JS.API"


def check_token(value: str, what: str) -> str:
    """Return ``value`` if it is one safe subject token, else raise BadRequest."""
    if not TOKEN_RE.fullmatch(value):
        raise BadRequest(f"{what} {value!r} is not a valid name (letters, digits, '_' and '-')")
    return value


@dataclass(frozen=True)
class Subjects:
    """Subject and bucket names under one prefix (default ``forge``)."""

    prefix: str = "forge"

    def __post_init__(self) -> None:
        if not PREFIX_RE.fullmatch(self.prefix):
            raise ValueError(f"subject prefix {self.prefix!r} must match {PREFIX_RE.pattern}")

    # --- fast calls -------------------------------------------------------
    def invoke(self, plugin: str, fn: str) -> str:
        return f"{self.prefix}.invoke.{check_token(plugin, 'plugin')}.{check_token(fn, 'function')}"

    def invoke_plugin(self, plugin: str) -> str:
        """Wildcard over every function of one plugin."""
        return f"{self.prefix}.invoke.{check_token(plugin, 'plugin')}.*"

    def parse_invoke(self, subject: str) -> tuple[str, str]:
        """(plugin, fn) of an invoke subject; raises BadRequest if it is not one."""
        return self._parse(subject, "invoke")

    def _parse(self, subject: str, kind: str) -> tuple[str, str]:
        parts = subject.split(".")
        if len(parts) != 4 or parts[0] != self.prefix or parts[1] != kind:
            article = "an" if kind[0] in "aeiou" else "a"
            raise BadRequest(f"not {article} {kind} subject: {subject!r}")
        return check_token(parts[2], "plugin"), check_token(parts[3], "function")

    # --- admin ------------------------------------------------------------
    def admin(self, op: str) -> str:
        return f"{self.prefix}.admin.{check_token(op, 'admin operation')}"

    def admin_all(self) -> str:
        return f"{self.prefix}.admin.*"

    # --- cluster view -----------------------------------------------------
    def heartbeat(self, worker_id: str) -> str:
        return f"{self.prefix}.heartbeat.{check_token(worker_id, 'worker id')}"

    def heartbeat_all(self) -> str:
        return f"{self.prefix}.heartbeat.*"

    # --- syscalls -----------------------------------------------------------
    def syscall(self, plugin: str, kind: str) -> str:
        return f"{self.prefix}.syscall.{check_token(plugin, 'plugin')}.{check_token(kind, 'kind')}"

    def syscall_all(self) -> str:
        return f"{self.prefix}.syscall.>"

    # --- durable jobs -------------------------------------------------------
    def jobs(self, plugin: str, fn: str) -> str:
        return f"{self.prefix}.jobs.{check_token(plugin, 'plugin')}.{check_token(fn, 'function')}"

    def jobs_plugin(self, plugin: str) -> str:
        return f"{self.prefix}.jobs.{check_token(plugin, 'plugin')}.*"

    def jobs_all(self) -> str:
        return f"{self.prefix}.jobs.>"

    def parse_jobs(self, subject: str) -> tuple[str, str]:
        """(plugin, fn) of a jobs subject; raises BadRequest if it is not one."""
        return self._parse(subject, "jobs")

    def result(self, job_id: str) -> str:
        return f"{self.prefix}.results.{check_token(job_id, 'job id')}"

    def results_all(self) -> str:
        return f"{self.prefix}.results.*"

    def dead_letter(self, plugin: str, fn: str) -> str:
        return f"{self.prefix}.dlq.{check_token(plugin, 'plugin')}.{check_token(fn, 'function')}"

    def dead_letter_all(self) -> str:
        return f"{self.prefix}.dlq.>"

    @property
    def jobs_stream(self) -> str:
        return f"{self.prefix.upper()}_JOBS"

    @property
    def results_stream(self) -> str:
        return f"{self.prefix.upper()}_RESULTS"

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.prefix.upper()}_DLQ"

    def jobs_consumer(self, plugin: str) -> str:
        """The durable pull consumer every worker hosting ``plugin`` shares."""
        return f"{self.prefix}-jobs-{check_token(plugin, 'plugin')}"

    # --- triggers -------------------------------------------------------------
    @property
    def triggers_bucket(self) -> str:
        """One key per trigger (its definition); workers hosting the target watch it."""
        return f"{self.prefix}_triggers"

    def trigger_consumer(self, name: str) -> str:
        """The durable pull consumer of a stream trigger (on the user's stream)."""
        return f"{self.prefix}-trigger-{check_token(name, 'trigger')}"

    def trigger_queue(self, name: str) -> str:
        """The queue group the workers hosting a subject trigger's plugin share."""
        return f"{self.prefix}-trigger-{check_token(name, 'trigger')}"

    def trigger_stats(self, worker_id: str) -> str:
        return f"{self.prefix}.triggers.stats.{check_token(worker_id, 'worker id')}"

    def trigger_stats_all(self) -> str:
        return f"{self.prefix}.triggers.stats.*"

    def trigger_dead_letter(self, name: str) -> str:
        """A trigger's dead-letter subject when it names none."""
        return f"{self.prefix}.triggers.dlq.{check_token(name, 'trigger')}"

    def trigger_dead_letter_all(self) -> str:
        return f"{self.prefix}.triggers.dlq.>"

    @property
    def trigger_dead_letter_stream(self) -> str:
        return f"{self.prefix.upper()}_TRIGGERS_DLQ"

    # --- JetStream names ------------------------------------------------------
    @property
    def deployments_bucket(self) -> str:
        return f"{self.prefix}_deployments"

    @property
    def assignments_bucket(self) -> str:
        """One key per plugin deployed with replicas > 0: the workers that host it."""
        return f"{self.prefix}_assignments"

    def kv_bucket(self, name: str) -> str:
        """The JetStream KV bucket behind a plugin's ``kv:<name>`` grant."""
        return f"{self.prefix}_kv_{check_token(name, 'kv bucket')}"

    @property
    def logs_stream(self) -> str:
        """Bounded stream of plugin log syscalls (``forgeone logs``)."""
        return f"{self.prefix.upper()}_LOGS"

    def syscall_logs(self, plugin: str = "*") -> str:
        token = plugin if plugin == "*" else check_token(plugin, "plugin")
        return f"{self.prefix}.syscall.{token}.log"

    @property
    def policy_bucket(self) -> str:
        return f"{self.prefix}_policy"

    @property
    def packages_bucket(self) -> str:
        return f"{self.prefix}_packages"


def js_consumer_create(stream: str, consumer: str) -> str:
    """JetStream API subject that creates (or updates) a named consumer on ``stream``."""
    names = f"{check_token(stream, 'stream')}.{check_token(consumer, 'consumer')}"
    return f"{JS_API_PREFIX}.CONSUMER.CREATE.{names}"


def js_pull_next(stream: str, consumer: str) -> str:
    """JetStream API subject a pull request for ``consumer`` is published on."""
    names = f"{check_token(stream, 'stream')}.{check_token(consumer, 'consumer')}"
    return f"{JS_API_PREFIX}.CONSUMER.MSG.NEXT.{names}"
