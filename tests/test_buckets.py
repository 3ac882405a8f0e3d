"""Listing a KV bucket's keys from the stream's state (no watch, so no race with its end)."""

from __future__ import annotations

from nats.js.errors import KeyNotFoundError

from coordinator.buckets import bucket_keys
from tests.cluster import Cluster


async def test_bucket_keys_lists_live_and_deleted_keys_at_once(cluster: Cluster) -> None:
    client = await cluster.client()
    try:
        kv = await client.nc.jetstream().create_key_value(bucket="listing")
        assert await bucket_keys(kv) == []
        for i in range(50):
            await kv.put(f"k{i:02d}", b"v")
            assert len(await bucket_keys(kv)) == i + 1  # every put is listed at once
        await kv.delete("k07")
        keys = await bucket_keys(kv)
        assert keys == [f"k{i:02d}" for i in range(50)]  # the delete marker is a subject too
        live = []
        for key in keys:
            try:
                await kv.get(key)
                live.append(key)
            except KeyNotFoundError:
                pass
        assert "k07" not in live and len(live) == 49
    finally:
        await client.close()
