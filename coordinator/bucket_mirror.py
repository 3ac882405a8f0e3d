"""A KV bucket's latest values, mirrored in memory by a watch (the control plane's view)."""

from __future__ import annotations

import asyncio
import logging
import time

from nats.js.kv import KeyValue

log = logging.getLogger("forge.coordinator.bucket_mirror")

#: How long a bucket watch may stay short of the last sequence after its end marker.
SYNC_GRACE_S = 5.0


class BucketMirror:
    """The latest value of every key of a KV bucket, kept current by a watch.

    Listing keys on every tick (``kv.keys()``) can come back empty while the bucket is
    not: the listing's "no more values" marker may arrive before values already in
    flight. Placement would then delete every assignment, or place from scratch. A
    watch applies values whenever they arrive, and :attr:`synced` is only set once the
    view reaches the stream's last sequence as of the watch's start (or, should that
    message be gone, :data:`SYNC_GRACE_S` after the marker).
    """

    def __init__(self, kv: KeyValue, what: str) -> None:
        self.kv = kv
        self.what = what
        self.values: dict[str, bytes] = {}
        self.synced = False
        self._target = 0
        self._revision = 0
        self._marker_at: float | None = None

    def is_synced(self) -> bool:
        if not self.synced and self._marker_at is not None:
            late = time.monotonic() - self._marker_at > SYNC_GRACE_S
            if self._revision >= self._target or late:
                self.synced = True
        return self.synced

    async def run(self) -> None:
        """Watch for good; a broken watch starts again (with backoff) and re-syncs."""
        backoff = 0.2
        while True:
            try:
                self.synced, self._marker_at = False, None
                self._target = (await self.kv.status()).stream_info.state.last_seq
                watcher = await self.kv.watchall()
                backoff = 0.2
                async for entry in watcher:
                    if entry is None:
                        self._marker_at = time.monotonic()
                        continue
                    self._revision = max(self._revision, entry.revision or 0)
                    if entry.operation in ("DEL", "PURGE"):
                        self.values.pop(entry.key, None)
                    else:
                        self.values[entry.key] = bytes(entry.value or b"")
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("event=watch_failed bucket=%s error=%r", self.what, e)
                await asyncio.sleep(backoff)  # backoff between watch attempts
                backoff = min(backoff * 2, 5.0)
