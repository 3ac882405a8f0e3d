"""Permissions: the vocabulary, how a grant covers a request, and the operator's policy records.

Deny by default. A manifest *requests* permissions; the operator's policy
(a KV bucket, one record per plugin ``plugin.<name>``, per publisher key
``key.<key_id>``, and ``default``) *grants* them. A deployment whose requests
are not all covered is refused, naming each missing grant.

Vocabulary::

    log  clock  random  config
    publish:<subject pattern>   kv:<bucket>   call:<plugin>
    fs:<dir>[:ro]               env:<NAME>    http:<host>

A grant covers a request of the same kind when: it is equal; for ``publish``,
every subject the requested pattern matches is matched by the granted one
(``publish:orders.>`` covers ``publish:orders.eu.*``); for ``kv``, ``call``
and ``http``, the grant is ``*``; for ``fs``, the granted directory contains
the requested one and a read-only grant covers only read-only requests.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass

from .codec import Message, field_spec

SIMPLE = frozenset({"log", "clock", "random", "config"})
SCOPED = frozenset({"publish", "kv", "call", "fs", "env", "http"})
_SUBJECT_TOKEN = re.compile(r"[^\s.*>]+|\*|>")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}|\*")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_HOST = re.compile(r"[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?|\*")

POLICY_DEFAULT_KEY = "default"


class InvalidPermission(ValueError):
    """A permission string outside the vocabulary."""


@dataclass(frozen=True, slots=True)
class Permission:
    kind: str
    arg: str = ""
    read_only: bool = False

    def __str__(self) -> str:
        if not self.arg:
            return self.kind
        return f"{self.kind}:{self.arg}" + (":ro" if self.read_only else "")


def parse_permission(text: str) -> Permission:
    """Parse and validate one permission; raise ValueError naming what is wrong."""
    kind, sep, arg = text.partition(":")
    if kind in SIMPLE:
        if sep:
            raise InvalidPermission(f"permission {text!r}: {kind!r} takes no argument")
        return Permission(kind)
    if kind not in SCOPED:
        raise InvalidPermission(
            f"unknown permission {text!r} (known: {', '.join(sorted(SIMPLE | SCOPED))})"
        )
    if not arg:
        raise InvalidPermission(f"permission {text!r}: {kind} needs an argument")
    if kind == "publish":
        tokens = arg.split(".")
        if not all(_SUBJECT_TOKEN.fullmatch(t) for t in tokens) or ">" in tokens[:-1]:
            raise InvalidPermission(f"permission {text!r}: not a subject pattern")
    elif kind in ("kv", "call"):
        if not _NAME.fullmatch(arg):
            raise InvalidPermission(f"permission {text!r}: not a valid name")
    elif kind == "env":
        if not _ENV.fullmatch(arg):
            raise InvalidPermission(f"permission {text!r}: not an environment variable name")
    elif kind == "http":
        if not _HOST.fullmatch(arg):
            raise InvalidPermission(f"permission {text!r}: not a host name")
    elif kind == "fs":
        read_only = arg.endswith(":ro")
        path = arg[:-3] if read_only else arg
        if not path.startswith("/") or "\x00" in path or posixpath.normpath(path) != path:
            raise InvalidPermission(f"permission {text!r}: fs needs a normalised absolute path")
        return Permission(kind, path, read_only)
    return Permission(kind, arg)


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching of a literal ``subject`` against ``pattern``."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def _pattern_covers(grant: str, request: str) -> bool:
    g, r = grant.split("."), request.split(".")
    for i, tok in enumerate(g):
        if tok == ">":
            return len(r) > i
        if i >= len(r) or r[i] == ">":
            return False
        if tok != "*" and (r[i] == "*" or tok != r[i]):
            return False
    return len(g) == len(r)


def covers(grant: Permission, request: Permission) -> bool:
    """Whether ``grant`` allows everything ``request`` asks for."""
    if grant.kind != request.kind:
        return False
    if grant.kind in SIMPLE:
        return True
    if grant.kind == "publish":
        return _pattern_covers(grant.arg, request.arg)
    if grant.kind == "fs":
        inside = request.arg == grant.arg or request.arg.startswith(grant.arg.rstrip("/") + "/")
        return inside and (request.read_only or not grant.read_only)
    return grant.arg == request.arg or (grant.arg == "*" and grant.kind != "env")


def missing(requested: list[str], granted: list[str]) -> list[str]:
    """The requested permissions no grant covers (empty when the plugin fits)."""
    grants = [parse_permission(g) for g in granted]
    return [r for r in requested if not any(covers(g, parse_permission(r)) for g in grants)]


@dataclass(frozen=True, slots=True)
class PolicyRecord(Message):
    """Grants and limit caps for a plugin, a publisher key, or everyone (``default``)."""

    KIND = "policy"
    grants: list[str] = field_spec(default_factory=list, doc="Permissions granted.")
    max_memory_mb: int | None = field_spec(
        default=None, ge=1, le=4096, doc="Cap on the manifest's memory_mb."
    )
    max_timeout_ms: int | None = field_spec(
        default=None, ge=1, le=15 * 60 * 1000, doc="Cap on the manifest's timeout_ms."
    )
    max_fuel: int | None = field_spec(
        default=None, ge=1, le=2**62, doc="Fuel cap; turns metering on when set."
    )
    max_pool_size: int | None = field_spec(
        default=None, ge=1, le=256, doc="Cap on the manifest's pool_size."
    )
    updated_at_ms: int = field_spec(default=0, ge=0)

    def __post_init__(self) -> None:
        for g in self.grants:
            parse_permission(g)


def policy_key_for_plugin(plugin: str) -> str:
    return f"plugin.{plugin}"


def policy_key_for_publisher(key_id: str) -> str:
    return f"key.{key_id}"


def applicable(records: dict[str, PolicyRecord], plugin: str, key_id: str) -> list[PolicyRecord]:
    """The records that apply to ``plugin`` signed by ``key_id``, most specific first."""
    keys = (policy_key_for_plugin(plugin), policy_key_for_publisher(key_id), POLICY_DEFAULT_KEY)
    return [records[k] for k in keys if k in records]


def effective_grants(records: dict[str, PolicyRecord], plugin: str, key_id: str) -> list[str]:
    """Union of the grants of every record that applies."""
    out: list[str] = []
    for rec in applicable(records, plugin, key_id):
        out.extend(g for g in rec.grants if g not in out)
    return out


def _min_cap(values: list[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return min(present) if present else None


@dataclass(frozen=True, slots=True)
class Caps:
    """The tightest caps the applicable records set (None: no cap)."""

    memory_mb: int | None = None
    timeout_ms: int | None = None
    fuel: int | None = None
    pool_size: int | None = None


def effective_caps(records: dict[str, PolicyRecord], plugin: str, key_id: str) -> Caps:
    recs = applicable(records, plugin, key_id)
    return Caps(
        memory_mb=_min_cap([r.max_memory_mb for r in recs]),
        timeout_ms=_min_cap([r.max_timeout_ms for r in recs]),
        fuel=_min_cap([r.max_fuel for r in recs]),
        pool_size=_min_cap([r.max_pool_size for r in recs]),
    )
