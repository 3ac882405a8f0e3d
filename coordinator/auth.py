"""NATS users for ForgeOne's roles, each allowed only its subjects: ``forgeone auth``.

``forgeone auth init --out DIR`` writes ``DIR/nats-auth.conf`` (an
``authorization { users = [...] }`` block for nats-server, bcrypt-hashed
passwords) and ``DIR/<role>.creds.json`` for each role (mode 0600), which
every process takes as ``--creds`` (or ``FORGE_NATS_CREDS``).

The roles and their subjects are in ``auth_roles`` (coordinator, worker,
client, publisher, gateway); the hashes in ``auth_bcrypt``. Production should
carry the same subject lists in NATS accounts and user JWTs (``nsc``); see
docs/operations.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import secrets
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from schemas.credentials import UserPassword
from schemas.errors import ForgeError
from schemas.manifest import FUNCTION_PATTERN, NAME_PATTERN
from schemas.subjects import PREFIX_RE, Subjects

from .auth_bcrypt import bcrypt_hash, bcrypt_salt
from .auth_roles import (
    DEFAULT_EMIT,
    DEFAULT_GATEWAY,
    ROLES,
    GatewayScope,
    RolePermissions,
    control_buckets,
    role_permissions,
    uniq,
)
from .cli_common import fail
from .settings import env_default

__all__ = [
    "BCRYPT_COST",
    "CONFIG_NAME",
    "DEFAULT_EMIT",
    "MAX_BCRYPT_COST",
    "ROLES",
    "GatewayScope",
    "RolePermissions",
    "add_auth_commands",
    "bcrypt_hash",
    "bcrypt_salt",
    "check_user_stream",
    "check_user_subject",
    "control_buckets",
    "creds_name",
    "gateway_scope",
    "init_auth",
    "render_config",
    "role_permissions",
]

CONFIG_NAME = "nats-auth.conf"
#: bcrypt work factor. The passwords are 192 random bits, so the cost adds no
#: protection against guessing; a low one keeps every (re)connect cheap for the
#: server and hashing fast here (pure Python: about 0.4 s per password, doubling
#: with each step up to MAX_BCRYPT_COST).
BCRYPT_COST = 6
MAX_BCRYPT_COST = 12


def creds_name(role: str) -> str:
    return f"{role}.creds.json"


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


def _invoke_target(text: str) -> tuple[str, str]:
    """``PLUGIN`` or ``PLUGIN/FN`` (``*`` for any) as a (plugin, function) pair."""
    plugin, sep, fn = text.partition("/")
    fn = fn if sep else "*"
    if not (plugin == "*" or re.fullmatch(NAME_PATTERN, plugin)) or not (
        fn == "*" or re.fullmatch(FUNCTION_PATTERN, fn)
    ):
        raise ValueError(f"--gateway-invoke {text!r}: expected PLUGIN or PLUGIN/FN ('*': any)")
    return plugin, fn


def gateway_scope(
    subjects: Subjects,
    invoke: Sequence[str] = (),
    hooks: Sequence[str] = (),
    config: Path | None = None,
) -> GatewayScope:
    """What the gateway's user may reach, or ValueError.

    ``invoke``: ``PLUGIN`` or ``PLUGIN/FN`` targets (``--gateway-invoke``); ``hooks``:
    subjects (``--gateway-hook``); ``config``: the gateway's own configuration file,
    whose invoke routes and hooks are added. With neither ``invoke`` nor ``config``
    the gateway may invoke every plugin (as a client may).
    """
    targets = [_invoke_target(t) for t in invoke]
    subjects_out = [check_user_subject(h, subjects, "--gateway-hook") for h in hooks]
    if config is not None:
        from .gateway import load_config  # aiohttp is imported only when it is needed

        try:
            routes = load_config(config)
        except ForgeError as e:
            raise ValueError(f"--gateway-config: {e.message}") from None
        for route in routes.invoke:
            targets += [(route.plugin, fn) for fn in route.functions] or [(route.plugin, "*")]
        subjects_out += [
            check_user_subject(h.subject, subjects, f"--gateway-config hook {h.name!r}:")
            for h in routes.hooks
        ]
    elif not targets:
        targets = [("*", "*")]
    if ("*", "*") in targets:
        targets = [("*", "*")]
    return GatewayScope(tuple(dict.fromkeys(targets)), tuple(dict.fromkeys(subjects_out)))


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
    gateway: GatewayScope = DEFAULT_GATEWAY,
) -> str:
    """The ``authorization`` block for ``(user, password hash, permissions)`` entries."""
    invokes = ", ".join(f"{p}/{f}" for p, f in gateway.invoke)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        f"# ForgeOne NATS users, one per role; written by `forgeone auth init` on {now}",
        f"# for subject prefix {prefix!r}; plugins and trigger outputs may publish to: "
        f"{', '.join(emit) or '-'};",
        f"# subject triggers may listen on: {', '.join(trigger_subjects) or '-'}; "
        f"stream triggers may read: {', '.join(trigger_streams) or '-'}.",
        f"# The gateway may invoke: {invokes or '-'}; its hooks publish on: "
        f"{', '.join(gateway.hooks) or '-'}.",
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
    gateway_invoke: Sequence[str] = (),
    gateway_hooks: Sequence[str] = (),
    gateway_config: Path | None = None,
) -> list[Path]:
    """Write the server config fragment and one credentials file per role; return the paths.

    Raises FileExistsError naming the files already there unless ``force``, and
    ValueError for a bad prefix, pattern, stream or gateway target. Nothing is
    written on error.
    """
    if not PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"prefix {prefix!r} must match {PREFIX_RE.pattern}")
    if not 4 <= cost <= MAX_BCRYPT_COST:
        raise ValueError(f"--bcrypt-cost must be between 4 and {MAX_BCRYPT_COST}")
    subjects = Subjects(prefix)
    emit = uniq(check_user_subject(e, subjects) for e in emit)
    trigger_subjects = uniq(
        check_user_subject(t, subjects, "--trigger-subject") for t in trigger_subjects
    )
    trigger_streams = uniq(check_user_stream(t, subjects) for t in trigger_streams)
    gateway = gateway_scope(subjects, gateway_invoke, gateway_hooks, gateway_config)
    config_path = out / CONFIG_NAME
    paths = [config_path] + [out / creds_name(r) for r in ROLES]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} already exist (use --force to replace)")
    out.mkdir(parents=True, exist_ok=True)
    perms = role_permissions(subjects, emit, trigger_subjects, trigger_streams, gateway)
    creds = {r: UserPassword(f"{prefix}-{r}", secrets.token_urlsafe(24)) for r in ROLES}
    users = [(creds[r].user, bcrypt_hash(creds[r].password, cost), perms[r]) for r in ROLES]
    for role in ROLES:
        _write(out / creds_name(role), creds[role].to_json(), 0o600)
    config = render_config(users, prefix, emit, trigger_subjects, trigger_streams, gateway)
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
            gateway_invoke=a.gateway_invoke,
            gateway_hooks=a.gateway_hook,
            gateway_config=Path(a.gateway_config) if a.gateway_config else None,
        )
    except (FileExistsError, ValueError, OSError) as e:
        return fail(f"auth init: {e}")
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
        f"  forgeone invoke PLUGIN FN DATA --creds {out / creds_name('client')}\n"
        f"  forgeone gateway --config gateway.json --creds {out / creds_name('gateway')}"
    )
    return 0


def add_auth_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    bus: Callable[[argparse.ArgumentParser], argparse.ArgumentParser],
) -> None:
    """Register ``forgeone auth init`` (offline; ``bus`` is for commands that connect)."""
    del bus  # nothing here talks to the cluster
    auth = sub.add_parser("auth", help="NATS users and permissions for ForgeOne's roles")
    actions = auth.add_subparsers(dest="auth_command", required=True, metavar="ACTION")
    s = actions.add_parser(
        "init",
        help="write a nats-server users block and one credentials file per role",
        description=(
            "Write DIR/nats-auth.conf (users coordinator, worker, client, publisher, gateway, "
            "each allowed only its subjects; bcrypt-hashed passwords) and "
            "DIR/<role>.creds.json (mode 0600) for --creds / FORGE_NATS_CREDS."
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
        "--gateway-config",
        metavar="FILE",
        help="the gateway's routes file: its user may invoke exactly what the invoke routes "
        "call and publish on the hooks' subjects",
    )
    s.add_argument(
        "--gateway-invoke",
        action="append",
        default=[],
        metavar="PLUGIN[/FN]",
        help="a function (or every function of a plugin; '*': any) the gateway may invoke "
        "(repeatable; default without it or --gateway-config: any)",
    )
    s.add_argument(
        "--gateway-hook",
        action="append",
        default=[],
        metavar="SUBJECT",
        help="a subject the gateway's hooks may publish on (repeatable)",
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
