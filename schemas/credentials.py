"""NATS credentials files and the ``nats.connect`` keyword arguments they stand for.

Two formats are accepted wherever a process takes ``--creds`` (or
``FORGE_NATS_CREDS``):

- a NATS JWT credentials file (``*.creds``, as written by ``nsc``): handed to
  nats-py unchanged, as ``user_credentials``;
- ForgeOne's own JSON file, ``{"user": ..., "password": ...}``, as written by
  ``forgeone auth init`` for a server configured with plain users.

Pure: reads the named file, nothing else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Markers of a NATS decorated JWT credentials file.
_JWT_MARKER = "-----BEGIN NATS USER JWT-----"
_SEED_MARKER = "-----BEGIN USER NKEY SEED-----"
#: Larger than any sane credentials file; guards against pointing at a data file.
_MAX_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class UserPassword:
    """One NATS user's name and password, as kept in ``<role>.creds.json``."""

    user: str
    password: str

    def to_json(self) -> str:
        return json.dumps({"user": self.user, "password": self.password}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = "credentials") -> UserPassword:
        """Parse the JSON form; raises ValueError naming ``source`` if it is not one."""
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{source}: not valid JSON ({e})") from None
        if not isinstance(obj, dict):
            raise ValueError(f'{source}: expected an object {{"user": ..., "password": ...}}')
        user, password = obj.get("user"), obj.get("password")
        for field, value in (("user", user), ("password", password)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{source}: {field!r} must be a non-empty string")
        assert isinstance(user, str) and isinstance(password, str)
        return cls(user, password)


def connect_options(path: str | None) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect`` that authenticate with the file at ``path``.

    ``None`` means no credentials (``{}``). A NATS JWT ``.creds`` file gives
    ``{"user_credentials": path}``; ForgeOne's JSON file gives ``{"user": ...,
    "password": ...}``. A missing, unreadable or malformed file raises
    ValueError naming the file.
    """
    if path is None:
        return {}
    file = Path(path)
    try:
        with file.open("rb") as f:
            raw = f.read(_MAX_BYTES + 1)
    except OSError as e:
        raise ValueError(f"credentials file {path}: {e.strerror or e}") from None
    if len(raw) > _MAX_BYTES:
        raise ValueError(f"credentials file {path}: larger than {_MAX_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"credentials file {path}: not UTF-8 text") from None
    if _JWT_MARKER in text:
        if _SEED_MARKER not in text:
            raise ValueError(f"credentials file {path}: has a user JWT but no nkey seed")
        return {"user_credentials": str(file)}
    if file.suffix == ".creds" and not text.lstrip().startswith("{"):
        raise ValueError(f"credentials file {path}: no NATS user JWT in it")
    creds = UserPassword.from_json(text, f"credentials file {path}")
    return {"user": creds.user, "password": creds.password}
