"""The policy bucket from the control plane's side: read all records, set and delete them."""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from schemas.codec import DecodeError, decode, encode
from schemas.errors import NotFound
from schemas.policy import PolicyRecord

from .buckets import bucket_keys

log = logging.getLogger("forge.coordinator.policy")


class PolicyStore:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def records(self) -> dict[str, PolicyRecord]:
        out: dict[str, PolicyRecord] = {}
        for key in await bucket_keys(self.kv):
            try:
                entry = await self.kv.get(key)
                out[key] = decode(PolicyRecord, entry.value or b"")
            except (NotFoundError, DecodeError, ValueError) as e:
                log.warning("event=skip_policy_record key=%s error=%r", key, e)
        return out

    async def set(self, key: str, record: PolicyRecord) -> None:
        stamped = replace(record, updated_at_ms=int(time.time() * 1000))
        await self.kv.put(key, encode(stamped))
        log.info("event=policy_set key=%s grants=%s", key, ",".join(record.grants))

    async def delete(self, key: str) -> None:
        try:
            await self.kv.get(key)
        except NotFoundError:
            raise NotFound(f"no policy record {key!r}") from None
        await self.kv.delete(key)
        log.info("event=policy_deleted key=%s", key)
