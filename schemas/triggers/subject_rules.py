"""Subject rules both sides of a trigger share: subject and pattern checks, output
subject templates (``{N}``: token N of the source subject), ordering keys and
pattern overlaps."""

from __future__ import annotations

import re

from ..errors import BadRequest

MAX_SUBJECT = 256
#: Most output-subject or ordering token index (1-based).
MAX_TOKEN_INDEX = 32

_TOKEN = re.compile(r"[^\s.*>{}]+")
_TEMPLATE_TOKEN = re.compile(r"(?:[^\s.*>{}]|\{[1-9][0-9]?\})+")
_PLACEHOLDER = re.compile(r"\{([1-9][0-9]?)\}")


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
