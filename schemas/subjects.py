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
        parts = subject.split(".")
        if len(parts) != 4 or parts[0] != self.prefix or parts[1] != "invoke":
            raise BadRequest(f"not an invoke subject: {subject!r}")
        return parts[2], parts[3]

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

    # --- JetStream names ------------------------------------------------------
    @property
    def deployments_bucket(self) -> str:
        return f"{self.prefix}_deployments"

    @property
    def packages_bucket(self) -> str:
        return f"{self.prefix}_packages"
