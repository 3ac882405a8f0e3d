"""Connecting to NATS from coordinator-side processes, with a clear error when nobody answers."""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client

from schemas.errors import Unavailable

log = logging.getLogger("forge.nats")


async def connect(
    url: str, name: str, credentials: str | None = None, persistent: bool = True
) -> Client:
    """Connect to ``url`` (comma-separated servers).

    ``persistent`` connections (services, long-lived clients) reconnect forever;
    one-shot ones (the command line) fail fast. Raises Unavailable naming the URL.
    """

    async def on_error(e: Exception) -> None:
        log.debug("event=nats_error error=%r", e)

    try:
        return await nats.connect(
            servers=url.split(","),
            name=name,
            user_credentials=credentials,
            connect_timeout=3,
            allow_reconnect=persistent,
            max_reconnect_attempts=-1 if persistent else 1,
            reconnect_time_wait=0.2,
            error_cb=on_error,
        )
    except (OSError, nats.errors.NoServersError, nats.errors.Error, TimeoutError) as e:
        raise Unavailable(
            f"cannot reach NATS at {url} ({type(e).__name__}: {e}); is the "
            "server running? Set --nats-url or FORGE_NATS_URL"
        ) from None
