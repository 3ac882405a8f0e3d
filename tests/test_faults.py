"""Hostile guests and hostile requests: each call fails typed and the worker serves the next."""

from __future__ import annotations

import time

import msgpack
import pytest

from schemas.codec import decode, encode
from schemas.errors import ErrorCode, ForgeError, InputTooLarge, OutOfMemory, Timeout, Trap
from schemas.messages import HEADER_TIMEOUT_MS, CallResult, InvokeRequest
from tests.cluster import Cluster

# chaos: timeout_ms 1000, memory_mb 16 (plugins/chaos/forge.json)
FAULTS = [
    ("trap", Trap, "unreachable"),
    ("spin", Timeout, "deadline"),
    ("grow", OutOfMemory, "ceiling"),
    ("recurse", Trap, "stack overflow"),
    ("bad_output", Trap, "outside memory"),
    ("bad_log", Trap, "forge.log"),
]


@pytest.fixture
async def chaos(cluster: Cluster):  # type: ignore[no-untyped-def]
    worker = cluster.start_worker("w1")
    client = await cluster.client()
    await cluster.allow("chaos", "log")
    await client.deploy(cluster.example_package("chaos"))
    await cluster.wait_ready(client, "chaos", 1)
    yield client, worker
    await client.close()


async def test_each_fault_is_typed_bounded_and_the_worker_serves_on(chaos) -> None:  # type: ignore[no-untyped-def]
    client, worker = chaos
    for fn, error, text in FAULTS:
        started = time.monotonic()
        with pytest.raises(error) as info:
            await client.invoke("chaos", fn, b"", timeout=3)
        elapsed = time.monotonic() - started
        assert text in info.value.message, (fn, info.value)
        assert elapsed < 2.5, f"{fn} took {elapsed:.2f}s, past its 1s deadline"
        r = await client.invoke_result("chaos", "ok", b"")
        assert r.ok and r.output == b"ok" and r.worker == "w1", fn
    assert worker.metric("forge_instances_discarded_total", plugin="chaos") >= len(FAULTS)
    assert worker.metric("forge_calls_total", plugin="chaos", outcome="TRAP") >= 4


async def test_plugin_error_and_output_cap(chaos) -> None:  # type: ignore[no-untyped-def]
    client, _ = chaos
    r = await client.invoke_result("chaos", "fail", b"xyz")
    assert not r.ok and r.error is not None
    assert r.error.code == ErrorCode.PLUGIN_ERROR and r.error.message == "bad input: xyz"
    with pytest.raises(ForgeError) as info:
        await client.invoke("chaos", "huge_output", b"")
    assert info.value.code == ErrorCode.OUTPUT_TOO_LARGE


async def test_instances_are_reused_until_they_break(chaos) -> None:  # type: ignore[no-untyped-def]
    client, _ = chaos
    counts = [int(await client.invoke("chaos", "count", b"")) for _ in range(3)]
    assert counts == sorted(counts) and counts[-1] >= 3 - 1, counts
    with pytest.raises(Trap):
        await client.invoke("chaos", "trap", b"")
    # the trapped instance was discarded; the pool still serves
    assert int(await client.invoke("chaos", "count", b"")) >= 1


async def test_malformed_and_oversized_requests(chaos) -> None:  # type: ignore[no-untyped-def]
    client, _ = chaos
    nc = client.nc
    subject = client.subjects.invoke("chaos", "ok")
    for body in (
        b"\xc1garbage",
        msgpack.packb([1, 2, 3]),
        msgpack.packb({"kind": "nope"}),
        msgpack.packb({"kind": "invoke", "input": 5}),
        b"",
    ):
        msg = await nc.request(subject, body, timeout=5)
        r = decode(CallResult, msg.data)
        assert not r.ok and r.error is not None and r.error.code == ErrorCode.BAD_REQUEST, body
    msg = await nc.request(
        subject, encode(InvokeRequest(b"")), timeout=5, headers={HEADER_TIMEOUT_MS: "soon"}
    )
    r = decode(CallResult, msg.data)
    assert r.error is not None and r.error.code == ErrorCode.BAD_REQUEST
    assert HEADER_TIMEOUT_MS in r.error.message
    with pytest.raises(InputTooLarge):
        await client.invoke("chaos", "ok", b"x" * (1024 * 1024 + 1))
    assert await client.invoke("chaos", "ok", b"") == b"ok"
