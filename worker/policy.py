"""The operator's policy as this worker sees it: a live copy of the policy bucket."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nats.js.kv import KeyValue

from schemas.codec import DecodeError, decode
from schemas.policy import Caps, PolicyRecord, effective_caps, effective_grants, missing

from . import metrics
from .kv_watch import watch_bucket

log = logging.getLogger("forge.worker.policy")


class PolicyView:
    """Policy records by key, kept current by watching the bucket."""

    def __init__(self, kv: KeyValue | None) -> None:
        self.kv = kv
        self.records: dict[str, PolicyRecord] = {}
        self.synced = asyncio.Event()
        self._listeners: list[Callable[[], None]] = []

    def on_change(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def grants(self, plugin: str, key_id: str) -> list[str]:
        return effective_grants(self.records, plugin, key_id)

    def caps(self, plugin: str, key_id: str) -> Caps:
        return effective_caps(self.records, plugin, key_id)

    def missing(self, plugin: str, key_id: str, requested: list[str]) -> list[str]:
        """Requested permissions the policy does not grant (deny by default)."""
        return missing(requested, self.grants(plugin, key_id))

    async def run(self) -> None:
        """Watch the bucket forever, restarting the watch if it breaks."""
        if self.kv is None:
            self.synced.set()
            return
        await watch_bucket(self.kv, "policy", self._apply, lambda _keys: self.synced.set())

    def _apply(self, key: str, value: bytes | None, op: str | None) -> None:
        if op in ("DEL", "PURGE"):
            self.records.pop(key, None)
        else:
            try:
                self.records[key] = decode(PolicyRecord, value or b"")
            except (DecodeError, ValueError) as e:
                # an unreadable record grants nothing: drop whatever it granted before
                self.records.pop(key, None)
                metrics.BAD_MESSAGES.labels("policy").inc()
                log.error("event=bad_policy_record key=%s error=%s", key, e)
        log.info("event=policy_changed key=%s", key)
        if self.synced.is_set():
            for listener in self._listeners:
                listener()
