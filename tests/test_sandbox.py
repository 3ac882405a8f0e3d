"""The sandbox: deny-by-default grants, every host function, WASI, live policy, lifecycle."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from coordinator.client import ForgeClient
from coordinator.logs import read_logs
from schemas.errors import (
    Denied,
    ErrorCode,
    ForgeError,
    NoWorkers,
    PluginNotFound,
    Timeout,
)
from tests.cluster import Cluster, eventually

HOSTILE_WAT = (Path(__file__).parent / "hostile.wat").read_text()
HOSTILE_FNS = [
    "emit_ok",
    "emit_denied",
    "emit_bad_ptr",
    "kv_roundtrip",
    "kv_denied",
    "config",
    "clock",
    "rand",
    "rand_bad_ptr",
    "self_call",
    "call_echo",
    "reject_it",
    "wasi_open",
    "wasi_print",
    "wasi_sleep",
]
HOSTILE_PERMS = [
    "log",
    "publish:events.>",
    "kv:state",
    "call:hostile",
    "call:echo",
    "config",
    "clock",
    "random",
]


def hostile_package(cluster: Cluster) -> bytes:
    return cluster.wat_package(
        "hostile",
        HOSTILE_WAT,
        exports=HOSTILE_FNS,
        permissions=HOSTILE_PERMS,
        limits={"timeout_ms": 3000},
    )


async def _code(client: ForgeClient, fn: str, data: bytes = b"") -> ErrorCode:
    r = await client.invoke_result("hostile", fn, data, timeout=5)
    assert not r.ok and r.error is not None, (fn, r)
    return r.error.code


async def test_deploy_needs_every_grant_then_host_functions_work(cluster: Cluster) -> None:
    cluster.start_worker("w1")
    client = await cluster.client()
    try:
        with pytest.raises(Denied) as info:
            await client.deploy(hostile_package(cluster))
        for perm in HOSTILE_PERMS:
            assert perm in info.value.message, perm
        await client.grant("plugin.hostile", *HOSTILE_PERMS[:-1])
        with pytest.raises(Denied, match="random"):  # one grant short is still refused
            await client.deploy(hostile_package(cluster))
        await client.grant("plugin.hostile", "random")
        await client.grant("plugin.echo")
        await client.deploy(hostile_package(cluster), config={"greeting": "hi"})
        await client.deploy(cluster.example_package("echo"))
        await cluster.wait_ready(client, "hostile", 1)
        await cluster.wait_ready(client, "echo", 1)

        events: asyncio.Queue = asyncio.Queue()  # type: ignore[type-arg]
        await client.nc.subscribe("events.ok", cb=events.put)
        await client.nc.flush()
        assert await client.invoke("hostile", "emit_ok", b"payload") == b""
        msg = await asyncio.wait_for(events.get(), 5)
        assert msg.data == b"payload" and msg.headers["Forge-Plugin"] == "hostile"

        assert await client.invoke("hostile", "kv_roundtrip", b"state!") == b"state!"
        assert await client.invoke("hostile", "config") == b"hi"
        stamp = int.from_bytes(await client.invoke("hostile", "clock"), "little")
        assert abs(stamp / 1e9 - time.time()) < 60
        a = await client.invoke("hostile", "rand")
        b = await client.invoke("hostile", "rand")
        assert len(a) == len(b) == 16 and a != b
        assert await client.invoke("hostile", "call_echo", b"nested") == b"NESTED"

        r = await client.invoke_result("hostile", "emit_denied", b"x", timeout=5)
        assert r.error is not None and r.error.code == ErrorCode.DENIED
        assert "publish:" in r.error.message
        r = await client.invoke_result("hostile", "kv_denied", b"", timeout=5)
        assert r.error is not None and r.error.code == ErrorCode.DENIED
        assert "kv:other" in r.error.message
        assert await _code(client, "emit_bad_ptr") == ErrorCode.TRAP
        assert await _code(client, "rand_bad_ptr") == ErrorCode.TRAP
        assert await _code(client, "reject_it") == ErrorCode.REJECTED

        started = time.monotonic()  # a plugin calling itself forever is cut at the depth bound
        assert await _code(client, "self_call", b"x") in (ErrorCode.PLUGIN_ERROR, ErrorCode.DENIED)
        assert time.monotonic() - started < 3

        errno = int.from_bytes(await client.invoke("hostile", "wasi_open"), "little")
        assert errno != 0, "opening a file with no fs grant must fail"
        assert await client.invoke("hostile", "wasi_print") == b""
        started = time.monotonic()  # host-side sleeps would escape the deadline: not offered
        assert int.from_bytes(await client.invoke("hostile", "wasi_sleep"), "little") == 52
        assert time.monotonic() - started < 1

        async def printed() -> bool:
            lines = [
                ev.message async for ev in read_logs(client.nc, client.subjects, "hostile", 50)
            ]
            return "printed to stdout" in lines

        await eventually(printed, 10, "WASI stdout in the plugin's logs")
        assert await client.invoke("hostile", "config") == b"hi"  # still serving
    finally:
        await client.close()


async def test_policy_changes_apply_to_running_workers(cluster: Cluster) -> None:
    cluster.start_worker("w1")
    client = await cluster.client()
    try:
        await client.grant("plugin.hostile", *HOSTILE_PERMS)
        await client.deploy(hostile_package(cluster))
        await cluster.wait_ready(client, "hostile", 1)
        assert await client.invoke("hostile", "emit_ok", b"1") == b""

        await client.revoke("plugin.hostile", "publish:events.>")

        async def refused() -> bool:
            try:
                await client.invoke("hostile", "emit_ok", b"2", timeout=2)
            except (Denied, NoWorkers, PluginNotFound):
                return True
            return False

        await eventually(refused, 10, "the revoked grant to take effect")

        async def unloaded() -> bool:
            (p,) = await client.plugins()
            why = " ".join(p.failed_workers.values())
            return not p.ready_workers and "grant" in why and "publish:events.>" in why

        await eventually(unloaded, 10, "the plugin to be unloaded for lack of a grant")

        await client.grant("plugin.hostile", "publish:events.>")

        async def back() -> bool:
            return await client.invoke("hostile", "emit_ok", b"3", timeout=2) == b""

        await eventually(back, 15, "the plugin to come back once granted again")
    finally:
        await client.close()


#: (imports, module body, the reason the worker must report)
LIFECYCLE = {
    "start-trap": ("", "(func $s unreachable) (start $s)", "unreachable"),
    "init-trap": ("", '(func (export "init") (result i32) unreachable)', "unreachable"),
    "init-fails": (
        '(import "forge" "set_error" (func $e (param i32 i32)))',
        '(data (i32.const 0) "bad config")'
        '(func (export "init") (result i32) (call $e (i32.const 0) (i32.const 10)) i32.const 1)',
        "init failed: bad config",
    ),
}


@pytest.mark.parametrize("case", sorted(LIFECYCLE))
async def test_failing_lifecycle_marks_the_deployment_failed(cluster: Cluster, case: str) -> None:
    imports, body, reason = LIFECYCLE[case]
    wat = f"""(module {imports}
      (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) i32.const 1024)
      (func (export "run") (param i32 i32) (result i64) i64.const 0)
      {body})"""
    cluster.start_worker("w1")
    client = await cluster.client()
    try:
        await client.deploy(cluster.wat_package("life", wat))

        async def failed() -> str | None:
            (p,) = await client.plugins()
            return " ".join(p.failed_workers.values()) or None

        why = await eventually(failed, 15, "the worker to report the failure")
        assert reason in why
        with pytest.raises((NoWorkers, ForgeError)):
            await client.invoke("life", "run", b"", timeout=1)
    finally:
        await client.close()


async def test_fuel_is_metered_and_reported(cluster: Cluster) -> None:
    cluster.start_worker("w1")
    client = await cluster.client()
    try:
        await cluster.allow("chaos", "log")
        await client.deploy(
            cluster.example_package(
                "chaos", limits={"timeout_ms": 5000, "memory_mb": 16, "fuel": 5_000_000}
            )
        )
        await cluster.wait_ready(client, "chaos", 1)
        r = await client.invoke_result("chaos", "ok", b"")
        assert r.ok and r.fuel_used is not None and 0 < r.fuel_used < 5_000_000
        started = time.monotonic()
        with pytest.raises(Timeout, match="fuel"):
            await client.invoke("chaos", "spin", b"", timeout=10)
        assert time.monotonic() - started < 5, "fuel, not the wall clock, stopped it"
        assert (await client.invoke_result("chaos", "ok", b"")).ok
    finally:
        await client.close()


async def test_policy_caps_limits(cluster: Cluster) -> None:
    cluster.start_worker("w1")
    client = await cluster.client()
    try:
        await client.grant("plugin.chaos", "log")
        records = await client.policies()
        import dataclasses

        await client.set_policy(
            "plugin.chaos", dataclasses.replace(records["plugin.chaos"], max_timeout_ms=300)
        )
        await client.deploy(cluster.example_package("chaos"))  # manifest asks for 1000 ms
        await cluster.wait_ready(client, "chaos", 1)
        started = time.monotonic()
        with pytest.raises(Timeout):
            await client.invoke("chaos", "spin", b"", timeout=5)
        assert time.monotonic() - started < 0.9, "the policy's 300 ms cap applied"
    finally:
        await client.close()
