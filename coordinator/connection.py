"""Connecting to NATS from coordinator-side processes, with a clear error when nobody answers."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import nats
from nats.aio.client import Client

from schemas.credentials import connect_options
from schemas.errors import BadRequest, Denied, Unavailable

log = logging.getLogger("forge.nats")


def is_auth_error(e: BaseException) -> bool:
    """Whether ``e`` is the server refusing this client's credentials."""
    return isinstance(e, nats.errors.AuthorizationError) or (
        isinstance(e, nats.errors.Error) and "authorization violation" in str(e).lower()
    )


async def connect(
    url: str, name: str, credentials: str | None = None, persistent: bool = True
) -> Client:
    """Connect to ``url`` (comma-separated servers), authenticating with ``credentials``.

    ``persistent`` connections (services, long-lived clients) reconnect forever;
    one-shot ones (the command line) fail fast. Raises Unavailable naming the URL,
    Denied if the server refuses the credentials (at once: retrying cannot help),
    and BadRequest if the credentials file is missing or malformed.
    """
    try:
        auth = connect_options(credentials)
    except ValueError as e:
        raise BadRequest(str(e)) from None
    nc = Client()
    connecting = True
    refusal_logged = False

    def refused_later(e: BaseException) -> None:
        # Rotated or revoked credentials: said once (not at every reconnect attempt).
        nonlocal refusal_logged
        if not refusal_logged:
            refusal_logged = True
            log.error("event=nats_auth_refused name=%s error=%r: credentials refused", name, e)

    async def on_error(e: Exception) -> None:
        if connecting and is_auth_error(e):
            # Stop nats-py's connect loop: with reconnects on it would retry forever.
            nc.options["allow_reconnect"] = False
        elif is_auth_error(e):
            refused_later(e)
        log.debug("event=nats_error error=%r", e)

    async def on_reconnected() -> None:
        nonlocal refusal_logged
        refusal_logged = False

    async def on_closed() -> None:
        # nats-py closes for good, without reconnecting, when the server ends a session
        # with an authorization error: every later call fails.
        if not connecting and nc.last_error is not None and is_auth_error(nc.last_error):
            refused_later(nc.last_error)

    options: dict[str, Any] = {
        "servers": url.split(","),
        "name": name,
        "connect_timeout": 3,
        "allow_reconnect": persistent,
        "max_reconnect_attempts": -1 if persistent else 1,
        "reconnect_time_wait": 0.2,  # seconds; nats-py's annotation says int, it takes floats
        "error_cb": on_error,
        "closed_cb": on_closed,
        "reconnected_cb": on_reconnected,
        **auth,
    }
    try:
        await nc.connect(**options)
    except (OSError, nats.errors.NoServersError, nats.errors.Error, TimeoutError) as e:
        with contextlib.suppress(Exception):
            await nc.close()
        if is_auth_error(e):
            given = (
                f"in {credentials}"
                if credentials
                else "(none given: set --creds or FORGE_NATS_CREDS)"
            )
            raise Denied(f"NATS at {url} refused the credentials {given}") from None
        raise Unavailable(
            f"cannot reach NATS at {url} ({type(e).__name__}: {e}); is the "
            "server running? Set --nats-url or FORGE_NATS_URL"
        ) from None
    connecting = False
    return nc
