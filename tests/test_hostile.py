"""Hostile publishers and callers: revoked keys, replayed records, huge modules, floods."""

from __future__ import annotations

import asyncio
import time

import pytest

from schemas.codec import decode, encode
from schemas.errors import ErrorCode, PackageRejected
from schemas.messages import DeploymentRecord
from schemas.package import MAX_WASM_BYTES
from schemas.signing import TrustStore, key_id
from tests.cluster import Cluster, eventually, manifest_for

SLOW_WAT = """(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) i32.const 1024)
  (func (export "slow") (param i32 i32) (result i64)
    (local $i i32)
    (local.set $i (i32.const 30000000))
    (block $done (loop $spin
      (br_if $done (i32.eqz (local.get $i)))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br $spin)))
    (i64.const 0)))"""


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def test_revoked_key_is_refused(cluster: Cluster) -> None:
    client = await cluster.client()
    try:
        pkg = cluster.example_package("echo")
        trust = TrustStore.load(cluster.trust_path)
        trust.revoke(key_id(cluster.key.public_key())).save(cluster.trust_path)
        with pytest.raises(PackageRejected, match="revoked"):
            await client.deploy(pkg)
    finally:
        await client.close()


async def test_replayed_old_deployment_record_is_ignored(cluster: Cluster) -> None:
    cluster.start_worker("w1")
    client = await cluster.client()
    try:
        await client.deploy(cluster.example_package("echo"))
        await cluster.wait_ready(client, "echo", 1)
        kv = await client.nc.jetstream().key_value(client.subjects.deployments_bucket)
        old = (await kv.get("echo")).value
        await client.deploy(cluster.example_package("echo", version="2.0.0"))

        async def on_v2() -> bool:
            return (await client.invoke_result("echo", "echo", b"x")).version == "2.0.0"

        await eventually(on_v2, 15, "version 2 to serve")
        assert old is not None and decode(DeploymentRecord, old).active().version == "1.0.0"
        await kv.put("echo", old)  # an attacker with bus access replays the old record
        await kv.put("echo", encode(decode(DeploymentRecord, old)))  # and once more
        worker = cluster.procs[-1]
        await eventually(
            lambda: _async_true("replayed_deployment_record" in worker.log_text()),
            10,
            "the worker to notice the replay",
        )
        for _ in range(20):
            assert (await client.invoke_result("echo", "echo", b"x")).version == "2.0.0"
    finally:
        await client.close()


async def _async_true(value: bool) -> bool:
    return value


async def test_module_at_the_size_cap(cluster: Cluster) -> None:
    """A module just under the cap deploys and runs; one over it is refused unread."""
    cluster.start_worker("w1")
    client = await cluster.client()
    try:
        import wasmtime

        size = MAX_WASM_BYTES - 4096
        wat = """(module
          (memory (export "memory") 1)
          (func (export "alloc") (param i32) (result i32) i32.const 1024)
          (func (export "run") (param i32 i32) (result i64) i64.const 0))"""
        small = bytes(wasmtime.wat2wasm(wat))
        big = _pad_with_custom_section(small, size)
        assert MAX_WASM_BYTES - 8192 < len(big) <= MAX_WASM_BYTES

        await client.deploy(cluster.package(manifest_for("huge", big), big))
        await cluster.wait_ready(client, "huge", 1, timeout=60)
        assert await client.invoke("huge", "run", b"") == b""

        over = _pad_with_custom_section(small, MAX_WASM_BYTES + 1)
        with pytest.raises(PackageRejected, match="over"):
            await client.deploy(cluster.package(manifest_for("huger", over), over))
    finally:
        await client.close()


def _pad_with_custom_section(wasm: bytes, total: int) -> bytes:
    """Append a custom section so the module is exactly ``total`` bytes."""
    name = b"pad"
    for header in range(3, 8):
        body_len = total - len(wasm) - 1 - header
        body = bytes([len(name)]) + name + bytes(body_len - 1 - len(name))
        leb = _leb(len(body))
        if len(leb) == header:
            return wasm + b"\x00" + leb + body
    raise AssertionError("no padding fits")


def _leb(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


async def test_a_flood_of_calls_to_a_slow_plugin_is_bounded(cluster: Cluster) -> None:
    worker = cluster.start_worker("w1", extra=["--max-queue", "200"])
    client = await cluster.client()
    try:
        await client.deploy(
            cluster.wat_package(
                "slow", SLOW_WAT, exports=["slow"], limits={"pool_size": 1, "timeout_ms": 1000}
            )
        )
        await cluster.wait_ready(client, "slow", 1)
        await client.invoke("slow", "slow", b"")
        rss_before = _rss_mb(worker.popen.pid)
        started = time.monotonic()
        results = await asyncio.gather(
            *(client.invoke_result("slow", "slow", b"x" * 1000, timeout=4) for _ in range(3000)),
            return_exceptions=True,
        )
        elapsed = time.monotonic() - started
        codes: dict[str, int] = {}
        for r in results:
            key = (
                (r.error.code.value if r.error else "ok")
                if not isinstance(r, Exception)
                else type(r).__name__
            )
            codes[key] = codes.get(key, 0) + 1
        # every call got a typed answer: run, refused at once, or timed out in the queue
        assert set(codes) <= {"ok", "OVERLOADED", "TIMEOUT"}, codes
        assert codes.get("OVERLOADED", 0) > 1000, codes  # refused at once, not queued
        assert codes.get("ok", 0) > 0, codes
        assert elapsed < 30, elapsed
        assert _rss_mb(worker.popen.pid) - rss_before < 200, "memory stayed bounded"
        r = await client.invoke_result("slow", "slow", b"", timeout=5)
        assert r.ok, "the worker serves the next call"
        assert (
            worker.metric("forge_calls_total", plugin="slow", outcome=ErrorCode.OVERLOADED.value)
            > 1000
        )
    finally:
        await client.close()
