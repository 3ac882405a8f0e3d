"""NATS users for ForgeOne's four roles, each allowed only its subjects: ``forgeone auth``.

``forgeone auth init --out DIR`` writes ``DIR/nats-auth.conf`` (an
``authorization { users = [...] }`` block for nats-server, bcrypt-hashed
passwords) and ``DIR/<role>.creds.json`` for each role (mode 0600), which
every process takes as ``--creds`` (or ``FORGE_NATS_CREDS``).

The roles:

- ``coordinator``: everything under the prefix, the JetStream API, the
  control-plane buckets, ``$SRV.>`` for the nats.micro admin service;
- ``worker``: serve invokes (queue group only), jobs and triggers, publish
  results, dead letters, syscalls, heartbeats and what plugins and trigger
  outputs may emit (``--emit``); read the control-plane buckets and the
  packages; read and write plugin KV buckets; listen on the operator's trigger
  subjects (``--trigger-subject``) and consume their streams (``--trigger-stream``);
- ``client`` (an invoking service): invoke, submit jobs, read results, read
  the deployments bucket and job statistics;
- ``publisher``: the client's rights, plus admin requests (deploy, undeploy,
  list, workers, policy), uploads to the packages store, and plugin logs.

The JetStream API subjects below are the ones nats-py (2.16, against
nats-server 2.15) sends for the calls each role makes; ``tests/test_auth.py``
runs every role's real traffic on a server with these permissions.
Production should carry the same subject lists in NATS accounts and user
JWTs (``nsc``); see docs/operations.md.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from schemas.credentials import UserPassword
from schemas.subjects import INVOKE_QUEUE, PREFIX_RE, Subjects

from .settings import env_default

ROLES: tuple[str, ...] = ("coordinator", "worker", "client", "publisher")
#: Subjects plugins may emit to when ``--emit`` is not given.
DEFAULT_EMIT: tuple[str, ...] = ("events.>",)
CONFIG_NAME = "nats-auth.conf"
#: bcrypt work factor. The passwords are 192 random bits, so the cost adds no
#: protection against guessing; a low one keeps every (re)connect cheap for the
#: server and hashing fast here (pure Python: about 0.4 s per password, doubling
#: with each step up to MAX_BCRYPT_COST).
BCRYPT_COST = 6
MAX_BCRYPT_COST = 12


def creds_name(role: str) -> str:
    return f"{role}.creds.json"


# --- subjects ---------------------------------------------------------------------
JS_API = "$JS.API"
INBOXES = "_INBOX.>"


def _family(subject: str, keep: int) -> str:
    """The first ``keep`` tokens of a subject Subjects built, then ``>``."""
    return ".".join([*subject.split(".")[:keep], ">"])


def _kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def _obj_stream(bucket: str) -> str:
    return f"OBJ_{bucket}"


def _kv_keys(bucket: str) -> str:
    return f"$KV.{bucket}.>"


def _obj_all(bucket: str) -> str:
    return f"$O.{bucket}.>"


def _stream_info(stream: str) -> str:
    return f"{JS_API}.STREAM.INFO.{stream}"


def _msg_get(stream: str) -> list[str]:
    """Reading one message (last by subject, or by sequence): stored or direct get."""
    return [
        f"{JS_API}.STREAM.MSG.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}",
        f"{JS_API}.DIRECT.GET.{stream}.>",
    ]


def _ordered_consumer(stream: str) -> list[str]:
    """A KV watch or an object read: an ephemeral ordered consumer with flow control.

    nats-py creates it with ``CONSUMER.CREATE.<stream>`` and asks for its info;
    the named form (``CONSUMER.CREATE.<stream>.<name>[.<filter>]``, used by other
    clients and newer nats-py) is the same right on the same stream.
    """
    return [
        f"{JS_API}.CONSUMER.CREATE.{stream}",
        f"{JS_API}.CONSUMER.CREATE.{stream}.>",
        f"{JS_API}.CONSUMER.INFO.{stream}.*",
        f"$JS.FC.{stream}.>",
    ]


def control_buckets(subjects: Subjects) -> list[str]:
    """Every bucket Subjects names (deployments, policy, packages, and any added later).

    Only the coordinator writes these; found by name so that a new
    ``*_bucket`` property is denied to the other roles without a change here.
    """
    names = [
        n for n, v in vars(Subjects).items() if n.endswith("_bucket") and isinstance(v, property)
    ]
    return sorted({str(getattr(subjects, n)) for n in names})


@dataclass(frozen=True, slots=True)
class RolePermissions:
    """One NATS user's ``permissions`` block."""

    publish_allow: tuple[str, ...]
    subscribe_allow: tuple[str, ...]
    publish_deny: tuple[str, ...] = ()
    subscribe_deny: tuple[str, ...] = ()
    allow_responses: bool = False
    """May publish one reply to each request it receives (and nothing else on _INBOX)."""


def _uniq(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def role_permissions(
    subjects: Subjects,
    emit: Sequence[str] = DEFAULT_EMIT,
    trigger_subjects: Sequence[str] = (),
    trigger_streams: Sequence[str] = (),
) -> dict[str, RolePermissions]:
    """The permissions of each role's user, by role name.

    ``emit``: subjects plugins (``forge.emit``) and trigger outputs may be published
    to. ``trigger_subjects``: subjects subject-triggers may listen on (in a queue
    group). ``trigger_streams``: the users' streams stream-triggers may consume.
    """
    s = subjects
    everything = _family(s.admin("x"), 1)  # <prefix>.>
    invoke_all = _family(s.invoke("x", "y"), 2)  # <prefix>.invoke.>
    admin_all = _family(s.admin("x"), 2)  # <prefix>.admin.>
    deployments, packages = s.deployments_bucket, s.packages_bucket
    control_kv_buckets = [b for b in control_buckets(s) if b != packages]
    jobs, results, dlq = s.jobs_stream, s.results_stream, s.dead_letter_stream

    # What only the coordinator may do, denied explicitly to the others (deny beats
    # allow), so that a broadened allow list cannot silently reopen it.
    control_kv = tuple(_kv_keys(b) for b in control_buckets(s))
    stream_admin = (
        *(f"{JS_API}.STREAM.{op}.>" for op in ("CREATE", "UPDATE", "DELETE")),
        f"{JS_API}.STREAM.MSG.DELETE.>",
    )
    purge_any = f"{JS_API}.STREAM.PURGE.>"

    coordinator = RolePermissions(
        publish_allow=(
            everything,
            f"{JS_API}.>",
            "$JS.ACK.>",
            "$JS.FC.>",
            *(_kv_keys(b) for b in control_kv_buckets),
            _obj_all(packages),
            "$SRV.>",
        ),
        subscribe_allow=(everything, "$SRV.>", INBOXES),
        allow_responses=True,
    )

    worker = RolePermissions(
        publish_allow=(
            # nested calls (``call:<plugin>`` host calls)
            invoke_all,
            # jobs: pull from the shared consumers, ack, store results and dead letters
            f"{JS_API}.CONSUMER.INFO.{jobs}.*",
            f"{JS_API}.CONSUMER.MSG.NEXT.{jobs}.*",
            f"$JS.ACK.{jobs}.>",
            s.results_all(),
            s.dead_letter_all(),
            # the cluster view, syscalls, and what plugins and trigger outputs may emit
            s.heartbeat_all(),
            s.syscall_all(),
            *emit,
            # triggers: statistics, dead letters, and the consumers on the users' streams
            # (an output goes through JetStream when a stream stores its subject, which
            # the worker finds in the list of streams)
            s.trigger_stats_all(),
            s.trigger_dead_letter_all(),
            f"{JS_API}.STREAM.LIST",
            *(
                subject
                for stream in trigger_streams
                for subject in (
                    f"{JS_API}.CONSUMER.INFO.{stream}.*",
                    f"{JS_API}.CONSUMER.MSG.NEXT.{stream}.*",
                    f"$JS.ACK.{stream}.>",
                )
            ),
            # watch the control-plane buckets (deployments, policy, and any added
            # later), read packages (the object store's get finds its stream by subject)
            *(c for b in control_kv_buckets for c in _ordered_consumer(_kv_stream(b))),
            *_ordered_consumer(_obj_stream(packages)),
            f"{JS_API}.STREAM.NAMES",
            # plugin KV buckets (<prefix>_kv_<name>) and reading any stream's info and
            # messages (buckets, packages, results): a subject wildcard cannot match part
            # of a token, so every bucket is allowed and the control-plane ones denied
            "$KV.>",
            f"{JS_API}.STREAM.INFO.*",
            f"{JS_API}.STREAM.MSG.GET.*",
            f"{JS_API}.DIRECT.GET.*",
            f"{JS_API}.DIRECT.GET.*.>",
        ),
        publish_deny=(admin_all, *control_kv, *stream_admin, purge_any, "$O.>"),
        subscribe_allow=(
            f"{invoke_all} {INVOKE_QUEUE}",
            # subject triggers: always in the trigger's queue group (any group name)
            *(f"{subject} *" for subject in trigger_subjects),
            INBOXES,
        ),
        allow_responses=True,
    )

    client_allow = [
        invoke_all,
        s.jobs_all(),
        # PLUGIN_NOT_FOUND vs NO_WORKERS: one key of the deployments bucket
        _stream_info(_kv_stream(deployments)),
        *_msg_get(_kv_stream(deployments)),
        # job results
        *_msg_get(results),
        # job statistics
        f"{JS_API}.CONSUMER.LIST.{jobs}",
        _stream_info(dlq),
    ]
    client = RolePermissions(
        publish_allow=_uniq(client_allow),
        publish_deny=(admin_all, *control_kv, *stream_admin, purge_any, "$O.>"),
        subscribe_allow=(s.results_all(), INBOXES),
    )

    publisher = RolePermissions(
        publish_allow=_uniq(
            [
                *client_allow,
                admin_all,
                # uploads: ObjectStore.put (chunks, then the meta message; a re-upload
                # purges the chunks it replaces)
                _stream_info(_obj_stream(packages)),
                *_msg_get(_obj_stream(packages)),
                _obj_all(packages),
                f"{JS_API}.STREAM.PURGE.{_obj_stream(packages)}",
                # plugin logs (``forgeone logs``): an ordered consumer on the logs stream,
                # and the stream's info (how many lines it holds)
                *_ordered_consumer(s.logs_stream),
                _stream_info(s.logs_stream),
            ]
        ),
        publish_deny=(*control_kv, *stream_admin),
        subscribe_allow=(s.results_all(), INBOXES),
    )
    return {"coordinator": coordinator, "worker": worker, "client": client, "publisher": publisher}


# --- validation of the operator's subjects and streams ---------------------------------
_TOKEN = re.compile(r"[^\s.*>]+|\*|>")
_STREAM = re.compile(r"[A-Za-z0-9_-]{1,255}")


def check_user_subject(pattern: str, subjects: Subjects, flag: str = "--emit") -> str:
    """A subject pattern of the operator's, or ValueError: valid, and outside NATS's
    and ForgeOne's own subjects."""
    tokens = pattern.split(".")
    if not pattern or any(not _TOKEN.fullmatch(t) for t in tokens) or ">" in tokens[:-1]:
        raise ValueError(f"{flag} {pattern!r} is not a valid NATS subject pattern")
    first = tokens[0]
    if first in ("*", ">") or first.startswith(("$", "_INBOX")) or first == subjects.prefix:
        raise ValueError(
            f"{flag} {pattern!r} must start with a literal token outside NATS's ($..., "
            f"_INBOX) and ForgeOne's ({subjects.prefix}.) subjects"
        )
    return pattern


def check_user_stream(name: str, subjects: Subjects) -> str:
    """A stream of the operator's, or ValueError: a valid name, not one of ForgeOne's."""
    if not _STREAM.fullmatch(name):
        raise ValueError(f"--trigger-stream {name!r} is not a valid stream name")
    if name.upper().startswith(f"{subjects.prefix.upper()}_") or name.startswith(("KV_", "OBJ_")):
        raise ValueError(f"--trigger-stream {name!r} names one of ForgeOne's streams or a bucket's")
    return name


# --- bcrypt (for the server's config; nats-server checks it) ----------------------------
_M32 = 0xFFFFFFFF
_STD_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_BCRYPT_B64 = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_TO_BCRYPT = str.maketrans(_STD_B64, _BCRYPT_B64)
_FROM_BCRYPT = str.maketrans(_BCRYPT_B64, _STD_B64)


@cache
def _blowfish_init() -> tuple[int, ...]:
    """Blowfish's initial P-array and S-boxes: the fractional hex digits of pi (1042 words)."""
    words = 18 + 4 * 256
    bits = 32 * words + 64  # guard bits
    one = 1 << bits

    def arctan_inv(x: int) -> int:  # arctan(1/x) in fixed point, by its Taylor series
        total, term, k, sign = 0, one // x, 1, 1
        while term:
            total += sign * (term // k)
            term //= x * x
            k += 2
            sign = -sign
        return total

    pi = 16 * arctan_inv(5) - 4 * arctan_inv(239)  # Machin's formula
    frac = (pi - 3 * one) >> 64
    return tuple((frac >> (32 * (words - 1 - i))) & _M32 for i in range(words))


def _words(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 4], "big") for i in range(0, len(data), 4)]


def _expand_key(p: list[int], s: list[list[int]], salt: list[int] | None, key: list[int]) -> None:
    """Blowfish's key schedule, with bcrypt's salt (EksBlowfish); ``key`` is 18 words."""
    for i in range(18):
        p[i] ^= key[i]
    s0, s1, s2, s3 = s
    left = right = 0
    j = 0
    for target in (p, s0, s1, s2, s3):
        for k in range(0, len(target), 2):
            if salt is not None:
                left ^= salt[j]
                right ^= salt[j + 1]
                j = (j + 2) % len(salt)
            left ^= p[0]
            for r in range(1, 17, 2):
                f = ((s0[left >> 24] + s1[(left >> 16) & 255]) & _M32) ^ s2[(left >> 8) & 255]
                right ^= ((f + s3[left & 255]) & _M32) ^ p[r]
                f = ((s0[right >> 24] + s1[(right >> 16) & 255]) & _M32) ^ s2[(right >> 8) & 255]
                left ^= ((f + s3[right & 255]) & _M32) ^ p[r + 1]
            left, right = right ^ p[17], left
            target[k], target[k + 1] = left, right


def _encrypt(p: list[int], s: list[list[int]], left: int, right: int) -> tuple[int, int]:
    s0, s1, s2, s3 = s
    left ^= p[0]
    for r in range(1, 17, 2):
        f = ((s0[left >> 24] + s1[(left >> 16) & 255]) & _M32) ^ s2[(left >> 8) & 255]
        right ^= ((f + s3[left & 255]) & _M32) ^ p[r]
        f = ((s0[right >> 24] + s1[(right >> 16) & 255]) & _M32) ^ s2[(right >> 8) & 255]
        left ^= ((f + s3[right & 255]) & _M32) ^ p[r + 1]
    return right ^ p[17], left


def _bcrypt_b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=").translate(_TO_BCRYPT)


def bcrypt_salt(encoded: str) -> bytes:
    """The 16 salt bytes of a 22-character bcrypt salt string."""
    text = encoded.translate(_FROM_BCRYPT)
    return base64.b64decode(text + "=" * (-len(text) % 4))[:16]


def bcrypt_hash(password: str, cost: int = BCRYPT_COST, salt: bytes | None = None) -> str:
    """``$2b$`` bcrypt of ``password`` (what nats-server accepts in place of a password).

    Python's standard library has no bcrypt and cryptography has no EksBlowfish,
    so this is the algorithm itself; the tests check it against published
    vectors and against nats-server.
    """
    if not 4 <= cost <= 31:
        raise ValueError("bcrypt cost must be between 4 and 31")
    salt = secrets.token_bytes(16) if salt is None else salt
    if len(salt) != 16:
        raise ValueError("bcrypt salt must be 16 bytes")
    key = (password.encode() + b"\0")[:72]
    key_words = _words((key * (72 // len(key) + 1))[:72])
    salt_words = _words(salt)
    init = _blowfish_init()
    p = list(init[:18])
    s = [list(init[18 + 256 * i : 18 + 256 * (i + 1)]) for i in range(4)]
    _expand_key(p, s, salt_words, key_words)
    salt_key = salt_words * 5  # 16 bytes cycled to 18 words (and beyond)
    for _ in range(1 << cost):
        _expand_key(p, s, None, key_words)
        _expand_key(p, s, None, salt_key)
    block = _words(b"OrpheanBeholderScryDoubt")
    for _ in range(64):
        for i in range(0, 6, 2):
            block[i], block[i + 1] = _encrypt(p, s, block[i], block[i + 1])
    digest = b"".join(w.to_bytes(4, "big") for w in block)[:23]
    return f"$2b${cost:02d}${_bcrypt_b64(salt)}{_bcrypt_b64(digest)}"


# --- the files ------------------------------------------------------------------------
def _q(value: str) -> str:
    """A quoted string for nats-server's config (JSON escaping; no variable expansion)."""
    return json.dumps(value)


def _list(items: Sequence[str]) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"


def render_config(
    users: Sequence[tuple[str, str, RolePermissions]],
    prefix: str,
    emit: Sequence[str],
    trigger_subjects: Sequence[str] = (),
    trigger_streams: Sequence[str] = (),
) -> str:
    """The ``authorization`` block for ``(user, password hash, permissions)`` entries."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        f"# ForgeOne NATS users, one per role; written by `forgeone auth init` on {now}",
        f"# for subject prefix {prefix!r}; plugins and trigger outputs may publish to: "
        f"{', '.join(emit) or '-'};",
        f"# subject triggers may listen on: {', '.join(trigger_subjects) or '-'}; "
        f"stream triggers may read: {', '.join(trigger_streams) or '-'}.",
        "# Passwords are bcrypt hashes; each role's password is in <role>.creds.json.",
        f'# Use it from the server\'s configuration with:  include "{CONFIG_NAME}"',
        "authorization {",
        "  users = [",
    ]
    for user, password_hash, perms in users:
        out += ["    {", f"      user: {_q(user)}", f"      password: {_q(password_hash)}"]
        out.append("      permissions: {")
        for kind, allow, deny in (
            ("publish", perms.publish_allow, perms.publish_deny),
            ("subscribe", perms.subscribe_allow, perms.subscribe_deny),
        ):
            out.append(f"        {kind}: {{")
            out.append(f"          allow: {_list(allow)}")
            if deny:
                out.append(f"          deny: {_list(deny)}")
            out.append("        }")
        if perms.allow_responses:
            out.append("        allow_responses: true")
        out += ["      }", "    }"]
    out += ["  ]", "}", ""]
    return "\n".join(out)


def _write(path: Path, text: str, mode: int) -> None:
    """Write ``text`` to ``path`` atomically, with file mode ``mode`` from the start."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def init_auth(
    out: Path,
    prefix: str = "forge",
    emit: Sequence[str] = DEFAULT_EMIT,
    force: bool = False,
    cost: int = BCRYPT_COST,
    trigger_subjects: Sequence[str] = (),
    trigger_streams: Sequence[str] = (),
) -> list[Path]:
    """Write the server config fragment and one credentials file per role; return the paths.

    Raises FileExistsError naming the files already there unless ``force``, and
    ValueError for a bad prefix or emit pattern. Nothing is written on error.
    """
    if not PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"prefix {prefix!r} must match {PREFIX_RE.pattern}")
    if not 4 <= cost <= MAX_BCRYPT_COST:
        raise ValueError(f"--bcrypt-cost must be between 4 and {MAX_BCRYPT_COST}")
    subjects = Subjects(prefix)
    emit = _uniq(check_user_subject(e, subjects) for e in emit)
    trigger_subjects = _uniq(
        check_user_subject(t, subjects, "--trigger-subject") for t in trigger_subjects
    )
    trigger_streams = _uniq(check_user_stream(t, subjects) for t in trigger_streams)
    config_path = out / CONFIG_NAME
    paths = [config_path] + [out / creds_name(r) for r in ROLES]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already exist (use --force to replace)")
    out.mkdir(parents=True, exist_ok=True)
    perms = role_permissions(subjects, emit, trigger_subjects, trigger_streams)
    creds = {r: UserPassword(f"{prefix}-{r}", secrets.token_urlsafe(24)) for r in ROLES}
    users = [(creds[r].user, bcrypt_hash(creds[r].password, cost), perms[r]) for r in ROLES]
    for role in ROLES:
        _write(out / creds_name(role), creds[role].to_json(), 0o600)
    config = render_config(users, prefix, emit, trigger_subjects, trigger_streams)
    _write(config_path, config, 0o644)
    return paths


# --- the command line ---------------------------------------------------------------------
def cmd_auth_init(a: argparse.Namespace) -> int:
    out = Path(a.out)
    try:
        paths = init_auth(
            out,
            a.prefix,
            a.emit or DEFAULT_EMIT,
            a.force,
            a.bcrypt_cost,
            trigger_subjects=a.trigger_subject,
            trigger_streams=a.trigger_stream,
        )
    except (FileExistsError, ValueError, OSError) as e:
        print(f"forgeone: auth init: {e}", file=sys.stderr)
        return 1
    print(f"wrote {paths[0]} (nats-server users for: {', '.join(ROLES)})")
    for p in paths[1:]:
        print(f"wrote {p} (mode 0600)")
    print(
        f"\nin the nats-server configuration, with a path relative to that file's folder "
        f'(nats-server\ndoes not take absolute include paths):  include "{CONFIG_NAME}"\n'
        "then run each process with its role's file, for example:\n"
        f"  forgeone coordinator --creds {out / creds_name('coordinator')}\n"
        f"  forgeone-worker --creds {out / creds_name('worker')}\n"
        f"  forgeone deploy PKG --creds {out / creds_name('publisher')}\n"
        f"  forgeone invoke PLUGIN FN DATA --creds {out / creds_name('client')}"
    )
    return 0


def add_auth_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    bus: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
) -> None:
    """Register ``forgeone auth init`` (offline; ``bus`` is for commands that connect)."""
    del bus  # nothing here talks to the cluster
    auth = sub.add_parser("auth", help="NATS users and permissions for the four roles")
    actions = auth.add_subparsers(dest="auth_command", required=True, metavar="ACTION")
    s = actions.add_parser(
        "init",
        help="write a nats-server users block and one credentials file per role",
        description=(
            "Write DIR/nats-auth.conf (users coordinator, worker, client, publisher, each "
            "allowed only its subjects; bcrypt-hashed passwords) and DIR/<role>.creds.json "
            "(mode 0600) for --creds / FORGE_NATS_CREDS."
        ),
    )
    s.add_argument("--out", required=True, metavar="DIR", help="folder to write the files to")
    s.add_argument("--prefix", default=env_default("FORGE_PREFIX", "forge"))
    s.add_argument(
        "--emit",
        action="append",
        default=[],
        metavar="PATTERN",
        help="subjects plugins and trigger outputs may publish to (repeatable; default "
        f"{' '.join(DEFAULT_EMIT)})",
    )
    s.add_argument(
        "--trigger-subject",
        action="append",
        default=[],
        metavar="PATTERN",
        help="subjects that subject triggers may listen on (repeatable)",
    )
    s.add_argument(
        "--trigger-stream",
        action="append",
        default=[],
        metavar="STREAM",
        help="your streams that stream triggers may consume (repeatable)",
    )
    s.add_argument(
        "--bcrypt-cost",
        type=int,
        default=BCRYPT_COST,
        metavar="N",
        help=f"bcrypt work factor, 4-{MAX_BCRYPT_COST} (default {BCRYPT_COST}: the "
        "passwords are random, so a higher one adds little)",
    )
    s.add_argument("--force", action="store_true", help="replace existing files")
    s.set_defaults(func=cmd_auth_init)
