"""NATS subject names are built only from valid tokens (schemas/subjects.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.errors import BadRequest, ErrorCode
from schemas.subjects import PREFIX_RE, TOKEN_RE, Subjects, check_token

FUZZ = settings(max_examples=300, deadline=None, database=None)

S = Subjects()

BAD_TOKENS = [
    "",
    "a.b",
    ".",
    "echo.",
    ".echo",
    "*",
    "ec*ho",
    ">",
    "echo.>",
    " ",
    "ec ho",
    "echo ",
    "\techo",
    "echo\n",
    "echo\r\nPUB x 1",
    "écho",
    "a/b",
    "a" * 129,
]

#: Every builder that embeds caller-supplied names, with how to call it with one bad token.
BUILDERS: dict[str, Callable[[Subjects, str], str]] = {
    "invoke-plugin": lambda s, t: s.invoke(t, "run"),
    "invoke-fn": lambda s, t: s.invoke("echo", t),
    "invoke_plugin": lambda s, t: s.invoke_plugin(t),
    "syscall-plugin": lambda s, t: s.syscall(t, "log"),
    "syscall-kind": lambda s, t: s.syscall("echo", t),
    "heartbeat": lambda s, t: s.heartbeat(t),
    "admin": lambda s, t: s.admin(t),
}


@pytest.mark.parametrize("token", BAD_TOKENS, ids=repr)
@pytest.mark.parametrize("builder", list(BUILDERS), ids=str)
def test_builders_refuse_bad_tokens(builder: str, token: str) -> None:
    with pytest.raises(BadRequest) as ei:
        BUILDERS[builder](S, token)
    assert ei.value.code is ErrorCode.BAD_REQUEST
    assert repr(token) in ei.value.message


#: Builders for durable jobs, being added alongside this test: checked when present.
JOB_BUILDERS: dict[str, tuple[str, Callable[[Subjects, str], str]]] = {
    "jobs-plugin": ("jobs", lambda s, t: s.jobs(t, "run")),
    "jobs-fn": ("jobs", lambda s, t: s.jobs("echo", t)),
    "jobs_plugin": ("jobs_plugin", lambda s, t: s.jobs_plugin(t)),
    "result": ("result", lambda s, t: s.result(t)),
    "dead_letter-plugin": ("dead_letter", lambda s, t: s.dead_letter(t, "run")),
    "dead_letter-fn": ("dead_letter", lambda s, t: s.dead_letter("echo", t)),
    "jobs_consumer": ("jobs_consumer", lambda s, t: s.jobs_consumer(t)),
}


@pytest.mark.parametrize("token", BAD_TOKENS, ids=repr)
@pytest.mark.parametrize("builder", list(JOB_BUILDERS), ids=str)
def test_job_builders_refuse_bad_tokens(builder: str, token: str) -> None:
    method, build = JOB_BUILDERS[builder]
    if not hasattr(Subjects, method):
        pytest.skip(f"Subjects.{method} does not exist (yet)")
    with pytest.raises(BadRequest):
        build(S, token)


def test_refusal_names_what_was_wrong() -> None:
    with pytest.raises(BadRequest, match=r"plugin 'a\.b' is not a valid name"):
        S.invoke("a.b", "run")
    with pytest.raises(BadRequest, match=r"function '\*' is not a valid name"):
        S.invoke("echo", "*")
    with pytest.raises(BadRequest, match="worker id"):
        S.heartbeat("w.1")
    with pytest.raises(BadRequest, match="admin operation"):
        S.admin("deploy.all")
    with pytest.raises(BadRequest, match="kind"):
        S.syscall("echo", "log.>")


def test_builders_accept_good_tokens() -> None:
    assert S.invoke("text-stats", "count_words") == "forge.invoke.text-stats.count_words"
    assert S.invoke_plugin("echo") == "forge.invoke.echo.*"
    assert S.syscall("echo", "log") == "forge.syscall.echo.log"
    assert S.heartbeat("w-3f9a_2C") == "forge.heartbeat.w-3f9a_2C"
    assert S.admin("deploy") == "forge.admin.deploy"
    assert S.invoke("a" * 128, "B" * 128).count(".") == 3


def test_wildcard_subjects() -> None:
    assert S.admin_all() == "forge.admin.*"
    assert S.heartbeat_all() == "forge.heartbeat.*"
    assert S.syscall_all() == "forge.syscall.>"


def test_check_token() -> None:
    assert check_token("echo_1-x", "plugin") == "echo_1-x"
    with pytest.raises(BadRequest):
        check_token("echo.1", "plugin")


@FUZZ
@given(st.text(max_size=140))
def test_check_token_of_any_string(value: str) -> None:
    """Whatever passes is exactly one safe subject token."""
    try:
        got = check_token(value, "plugin")
    except BadRequest:
        return
    assert got == value
    assert 1 <= len(value) <= 128
    assert not any(c in value for c in ".*> \t\r\n")
    assert value.isascii()


# --- parse_invoke ------------------------------------------------------------------------

tokens = st.from_regex(TOKEN_RE, fullmatch=True)


@FUZZ
@given(tokens, tokens)
def test_parse_invoke_round_trips(plugin: str, fn: str) -> None:
    assert S.parse_invoke(S.invoke(plugin, fn)) == (plugin, fn)


def test_parse_invoke_examples() -> None:
    assert S.parse_invoke("forge.invoke.echo.run") == ("echo", "run")
    acme = Subjects("acme")
    assert acme.parse_invoke(acme.invoke("echo", "run")) == ("echo", "run")


@pytest.mark.parametrize(
    "subject",
    [
        "",
        "forge",
        "forge.invoke",
        "forge.invoke.echo",
        "forge.invoke.echo.run.extra",
        "forge.syscall.echo.log",
        "forge.admin.deploy",
        "forge.heartbeat.w-1",
        "other.invoke.echo.run",
        "FORGE.invoke.echo.run",
        "forge.INVOKE.echo.run",
        "acme.invoke.echo.run",
        "forge.invoke.echo.run.",
    ],
)
def test_parse_invoke_refuses_foreign_subjects(subject: str) -> None:
    with pytest.raises(BadRequest, match="not an invoke subject"):
        S.parse_invoke(subject)


def test_parse_invoke_with_custom_prefix_refuses_the_default_prefix() -> None:
    with pytest.raises(BadRequest):
        Subjects("acme").parse_invoke("forge.invoke.echo.run")


@pytest.mark.parametrize(
    "subject",
    ["forge.invoke..run", "forge.invoke.echo.", "forge.invoke.*.run", "forge.invoke.echo.>"],
)
def test_parse_invoke_refuses_invalid_tokens(subject: str) -> None:
    try:
        got = S.parse_invoke(subject)
    except BadRequest:
        return
    raise AssertionError(f"parse_invoke({subject!r}) returned {got!r}")


# --- prefixes ------------------------------------------------------------------------------


def test_custom_prefix() -> None:
    s = Subjects("acme_prod")
    assert s.invoke("echo", "run") == "acme_prod.invoke.echo.run"
    assert s.invoke_plugin("echo") == "acme_prod.invoke.echo.*"
    assert s.syscall("echo", "log") == "acme_prod.syscall.echo.log"
    assert s.heartbeat("w-1") == "acme_prod.heartbeat.w-1"
    assert s.admin("list") == "acme_prod.admin.list"
    assert s.admin_all() == "acme_prod.admin.*"
    assert s.syscall_all() == "acme_prod.syscall.>"
    assert s.deployments_bucket == "acme_prod_deployments"
    assert s.packages_bucket == "acme_prod_packages"


def test_default_prefix() -> None:
    assert Subjects().prefix == "forge"
    assert S.deployments_bucket == "forge_deployments"
    assert S.packages_bucket == "forge_packages"


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "Forge",
        "forge.prod",
        "forge*",
        ">",
        "forge.>",
        "1forge",
        "_forge",
        "for ge",
        "forge-x",
        "a" * 33,
        "forgé",
    ],
)
def test_bad_prefix(prefix: str) -> None:
    with pytest.raises(ValueError, match="subject prefix"):
        Subjects(prefix)


@FUZZ
@given(st.from_regex(PREFIX_RE, fullmatch=True), tokens, tokens)
def test_any_valid_prefix_builds_four_token_subjects(prefix: str, plugin: str, fn: str) -> None:
    s = Subjects(prefix)
    subject = s.invoke(plugin, fn)
    assert subject.split(".") == [prefix, "invoke", plugin, fn]
    assert s.parse_invoke(subject) == (plugin, fn)
