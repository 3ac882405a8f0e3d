"""Following a JetStream KV bucket for good: every key's latest value first, then each change.

The deployments, assignments, policy and triggers buckets are all watched this
way; a watch that breaks (a reconnect, a server restart) is started again with
backoff and redelivers the current values.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.js.kv import KeyValue

log = logging.getLogger("forge.worker.kv_watch")

OnEntry = Callable[[str, bytes | None, str | None], None]
"""Called with (key, value, operation); operation is None for a put, DEL or PURGE."""


async def watch_bucket(
    kv: KeyValue, what: str, on_entry: OnEntry, on_synced: Callable[[set[str]], None] | None = None
) -> None:
    """Watch ``kv`` forever. ``on_synced`` gets the keys delivered since the watch
    (re)started, once every current value has been delivered."""
    backoff = 0.2
    while True:
        try:
            watcher = await kv.watchall()
            backoff = 0.2
            seen: set[str] = set()
            async for entry in watcher:
                if entry is None:
                    if on_synced is not None:
                        on_synced(seen)
                    continue
                seen.add(entry.key)
                on_entry(entry.key, entry.value, entry.operation)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("event=watch_failed bucket=%s error=%r retry_in=%.1fs", what, e, backoff)
            await asyncio.sleep(backoff)  # backoff between reconnect attempts
            backoff = min(backoff * 2, 5.0)
