"""The compiled-module cache survives worker restarts and refuses corrupt entries."""

from __future__ import annotations

import urllib.request

from tests.cluster import Cluster


async def test_second_worker_reuses_cache_and_corrupt_entry_is_rebuilt(cluster: Cluster) -> None:
    cache = cluster.root / "shared-cache"
    first = cluster.start_worker("w1", cache_dir=cache)
    client = await cluster.client()
    try:
        await client.deploy(cluster.example_package("textstats"))
        await cluster.wait_ready(client, "textstats", 1)
        assert first.metric("forge_compile_cache_total", result="miss") == 1
        assert first.metric("forge_compile_cache_total", result="hit") == 0
        assert first.stop() == 0, "SIGTERM stops a worker cleanly"

        second = cluster.start_worker("w2", cache_dir=cache)
        await cluster.wait_ready(client, "textstats", 1)
        assert second.metric("forge_compile_cache_total", result="hit") == 1
        assert second.metric("forge_compile_cache_total", result="miss") == 0
        out = await client.invoke("textstats", "stats", b"one two\nthree")
        assert out == b'{"bytes":13,"words":3,"lines":2,"vowels":5}'
        second.stop()

        (entry,) = cache.glob("*.cwasm")
        blob = bytearray(entry.read_bytes())
        blob[len(blob) // 2] ^= 0xFF  # flip a byte in the compiled code
        entry.write_bytes(bytes(blob))

        third = cluster.start_worker("w3", cache_dir=cache)
        await cluster.wait_ready(client, "textstats", 1)
        assert third.metric("forge_compile_cache_total", result="corrupt") == 1
        assert third.metric("forge_compile_cache_total", result="hit") == 0
        assert await client.invoke("textstats", "stats", b"a") == (
            b'{"bytes":1,"words":1,"lines":1,"vowels":1}'
        )
        assert "event=cache_corrupt" in third.log_text()
        with urllib.request.urlopen(f"http://127.0.0.1:{third.status_port}/readyz") as r:
            assert r.status == 200
    finally:
        await client.close()
