"""The extism/1 ABI: plugins built for Extism run unmodified on ForgeOne.

Two plugins run through a real worker on a real nats-server: one written by
hand in WAT against the Extism ABI (tests/extism/kitchen.wat), and one built
with the Extism AssemblyScript PDK from npm (tests/extism/as/, installed into
its own node_modules on first use and cached). The kernel's edge cases and the
Extism-manifest conversion are checked in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import wasmtime
from nats.aio.msg import Msg

from coordinator.cli_packages import add_extism_pack_arguments, cmd_pack_extism
from coordinator.client import ForgeClient
from coordinator.extism_manifest import ExtismManifestError, convert
from coordinator.logs import read_logs
from schemas.errors import (
    Denied,
    ForgeError,
    OutOfMemory,
    OutputTooLarge,
    PackageRejected,
    PluginError,
    Timeout,
    Trap,
)
from schemas.package import verify_package
from schemas.policy import Caps
from schemas.signing import TrustStore, generate_key, save_private_key
from tests.cluster import PLUGINS, Cluster, eventually, manifest_for
from worker.adapters import make_runtime
from worker.engine import Engines
from worker.host import CallMeta, Grants, HostEnv
from worker.runtime import (
    GuestInstance,
    PluginRuntime,
    WorkerCaps,
    effective_limits,
    engine_settings_for,
)

HERE = Path(__file__).parent / "extism"
KITCHEN_WAT = (HERE / "kitchen.wat").read_text()
KITCHEN_FNS = [
    "echo",
    "count_vowels",
    "config",
    "count",
    "fetch",
    "fail",
    "log",
    "trap",
    "spin",
    "hello",
]
AS_DIR = HERE / "as"
AS_FNS = ["echo", "count_vowels", "greet", "count", "fetch", "fail", "log", "boom", "spin"]


def kitchen_wasm() -> bytes:
    return bytes(wasmtime.wat2wasm(KITCHEN_WAT))


def _builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("forge_plugin_build", PLUGINS / "build.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def as_wasm() -> bytes:
    """The AssemblyScript test plugin, built with the PDK from npm (cached)."""
    b = _builder()
    out = AS_DIR / "build" / "plugin.wasm"
    deps = [AS_DIR / "plugin.ts", AS_DIR / "package.json", AS_DIR / "asconfig.json"]
    if not b._up_to_date(out, deps):
        out.parent.mkdir(exist_ok=True)
        try:
            b.build_assemblyscript(AS_DIR, "plugin.ts", out)
        except b.BuildSkipped as e:  # only when npm itself is missing
            pytest.skip(str(e))
    return out.read_bytes()


async def _http_server(body: bytes) -> tuple[Any, int]:
    """A one-route aiohttp server on 127.0.0.1 (the only host the plugin gets to reach)."""
    from aiohttp import web

    async def hello(_request: web.Request) -> web.Response:
        return web.Response(body=body, headers={"X-Test": "yes"})

    app = web.Application()
    app.router.add_get("/hello", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, int(port)


async def _error(client: ForgeClient, plugin: str, fn: str, data: bytes = b"") -> ForgeError:
    with pytest.raises(ForgeError) as info:
        await client.invoke(plugin, fn, data, timeout=10)
    return info.value


# --- through a real worker ------------------------------------------------------------
async def test_wat_extism_plugin_runs_on_a_worker(cluster: Cluster) -> None:
    cluster.start_worker("w1")
    client = await cluster.client()
    perms = ["config", "log", "http:api.example.com"]
    try:
        await cluster.allow("kitchen", *perms)
        wasm = kitchen_wasm()
        pkg = cluster.package(
            manifest_for(
                "kitchen",
                wasm,
                abi="extism/1",
                exports=KITCHEN_FNS,
                permissions=perms,
                limits={"timeout_ms": 1000, "pool_size": 1},
            ),
            wasm,
        )
        await client.deploy(pkg, config={"greeting": "hi there"})
        await cluster.wait_ready(client, "kitchen", 1)

        big = bytes(range(256)) * 40 + b"tail!"  # 10 KiB and an odd length
        assert await client.invoke("kitchen", "echo", big) == big
        assert await client.invoke("kitchen", "echo", b"") == b""
        assert await client.invoke("kitchen", "count_vowels", b"The quick brown fox") == b"5"
        assert await client.invoke("kitchen", "config", b"greeting") == b"hi there"
        assert await client.invoke("kitchen", "config", b"missing") == b""
        assert await client.invoke("kitchen", "hello") == b"hello from a () -> () handler"
        # vars live on the instance (pool_size 1: every call gets the same one)
        assert [await client.invoke("kitchen", "count") for _ in range(3)] == [b"1", b"2", b"3"]

        err = await _error(client, "kitchen", "fail", b"xyz")
        assert isinstance(err, PluginError) and err.message == "bad input: xyz"
        assert await client.invoke("kitchen", "count") == b"4", "a guest error keeps the instance"

        err = await _error(client, "kitchen", "fetch", b"http://denied.example.org/x")
        assert isinstance(err, Denied) and "'http:denied.example.org'" in err.message

        err = await _error(client, "kitchen", "trap")
        assert isinstance(err, Trap) and "unreachable" in err.message
        assert await client.invoke("kitchen", "count") == b"1", "the trapped instance was replaced"

        started = time.monotonic()
        err = await _error(client, "kitchen", "spin")
        assert isinstance(err, Timeout)
        assert time.monotonic() - started < 5, "the 1 s deadline stopped it"

        assert await client.invoke("kitchen", "log", b"a line from an extism guest") == b""

        async def logged() -> bool:
            lines = [e.message async for e in read_logs(client.nc, client.subjects, "kitchen", 20)]
            return "a line from an extism guest" in lines

        await eventually(logged, 10, "the guest's log line")

        # ForgeOne's own host functions, offered to Extism guests in extism:host/user
        user_perms = ["kv:state", "publish:events.>"]
        await cluster.allow("userfns", *user_perms)
        await client.deploy(
            cluster.wat_package(
                "userfns",
                (HERE / "user.wat").read_text(),
                abi="extism/1",
                exports=["remember", "announce"],
                permissions=user_perms,
            )
        )
        await cluster.wait_ready(client, "userfns", 1)
        assert await client.invoke("userfns", "remember", b"kept in KV") == b"kept in KV"
        events: asyncio.Queue[Msg] = asyncio.Queue()
        await client.nc.subscribe("events.extism", cb=events.put)
        await client.nc.flush()
        assert await client.invoke("userfns", "announce", b"news") == b""
        msg = await asyncio.wait_for(events.get(), 5)
        assert msg.data == b"news" and msg.headers and msg.headers["Forge-Plugin"] == "userfns"
    finally:
        await client.close()


async def test_assemblyscript_pdk_plugin_runs_on_a_worker(cluster: Cluster) -> None:
    wasm = as_wasm()
    runner, port = await _http_server(b"hello from the test server")
    cluster.start_worker("w1")
    client = await cluster.client()
    perms = ["config", "log", f"http:127.0.0.1:{port}"]
    try:
        await cluster.allow("asplug", *perms)
        manifest = manifest_for(
            "asplug",
            wasm,
            abi="extism/1",
            exports=AS_FNS,
            permissions=perms,
            limits={"timeout_ms": 1000, "pool_size": 1},
        )
        await client.deploy(cluster.package(manifest, wasm), config={"greeting": "Bonjour"})
        await cluster.wait_ready(client, "asplug", 1)

        text = "Extism plugins, unmodified: ÀÉÎ ok".encode()
        assert await client.invoke("asplug", "echo", text) == text
        assert await client.invoke("asplug", "count_vowels", b"The quick brown fox") == b"5"
        assert await client.invoke("asplug", "greet", b"operator") == b"Bonjour, operator!"
        assert [await client.invoke("asplug", "count") for _ in range(3)] == [b"1", b"2", b"3"]

        url = f"http://127.0.0.1:{port}/hello"
        assert await client.invoke("asplug", "fetch", url.encode()) == (
            b"200 hello from the test server"
        )
        err = await _error(client, "asplug", "fetch", b"http://other.example.com/")
        assert isinstance(err, Denied) and "'http:other.example.com'" in err.message

        err = await _error(client, "asplug", "fail", b"xyz")
        assert isinstance(err, PluginError) and err.message == "bad input: xyz"

        err = await _error(client, "asplug", "boom")  # AssemblyScript abort -> error + trap
        assert isinstance(err, Trap) and "boom: an assertion failed" in err.message

        started = time.monotonic()
        err = await _error(client, "asplug", "spin")
        assert isinstance(err, Timeout) and time.monotonic() - started < 5
        assert await client.invoke("asplug", "count") == b"1", "a fresh instance after faults"
    finally:
        await client.close()
        await runner.cleanup()


async def test_unknown_imports_are_refused_at_deploy_by_name(cluster: Cluster) -> None:
    wat = """(module
      (import "extism:host/env" "output_set" (func (param i64 i64)))
      (import "extism:host/env" "bogus_fn" (func (param i64)))
      (import "env" "abort" (func (param i32 i32 i32 i32)))
      (import "extism:host/env" "log_info" (func (param i64)))
      (func (export "run") (result i32) i32.const 0))"""
    client = await cluster.client()
    try:
        with pytest.raises(PackageRejected) as info:
            await client.deploy(cluster.wat_package("bad", wat, abi="extism/1"))
        msg = info.value.message
        assert "unknown imports: env.abort, extism:host/env.bogus_fn" in msg
        assert "extism:host/env.log_info needs a 'log' permission" in msg
    finally:
        await client.close()


# --- in-process: the kernel and the adapter ---------------------------------------------
EDGES_WAT = (HERE / "edges.wat").read_text()
EDGES_FNS = [
    "alloc_zero",
    "len_bad",
    "input_block",
    "reuse",
    "merge",
    "below_heap",
    "past_top",
    "input_oob",
    "bad_output",
    "huge_output",
    "error_rc0",
    "rc7",
    "oom",
    "big_vars",
    "log_level",
    "log_it",
]


@pytest.fixture
def engines() -> Iterator[Engines]:
    e = Engines()
    yield e
    e.close()


def local_runtime(
    engines: Engines, wasm: bytes, exports: list[str], perms: list[str], **limits: int
) -> PluginRuntime:
    """A runtime built the way worker/loader.py builds one (no bus)."""
    m = manifest_for(
        "edges", wasm, abi="extism/1", exports=exports, permissions=perms, limits=limits
    )
    lim = effective_limits(m, WorkerCaps(), Caps())
    module = wasmtime.Module(engines.get(engine_settings_for(lim)), wasm)
    return make_runtime(engines, m, module, lim, HostEnv("edges", "1.0.0", Grants(perms)))


def _u64(inst: GuestInstance, fn: str, data: bytes = b"") -> int:
    out = inst.call(fn, data, CallMeta(time.monotonic() + 5)).output
    return int.from_bytes(out, "little")


def test_kernel_blocks_bounds_and_faults(engines: Engines) -> None:
    wasm = bytes(wasmtime.wat2wasm(EDGES_WAT))
    rt = local_runtime(engines, wasm, EDGES_FNS, ["log"], memory_mb=4)
    assert rt.replayable
    inst = rt.new_instance()
    meta = CallMeta(time.monotonic() + 5)
    assert _u64(inst, "alloc_zero") == 0
    assert _u64(inst, "len_bad") == 0
    assert inst.call("input_block", b"abc", meta).output == b"abc"
    assert _u64(inst, "reuse") == 1, "a freed block is reused (and split)"
    assert _u64(inst, "merge") == 1, "neighbouring free blocks merge"
    assert _u64(inst, "log_level") == 1  # debug: everything ForgeOne keeps
    r = inst.call("log_it", b"", meta)
    assert r.logs == [(1, "hh")]
    with pytest.raises(PluginError) as info:
        inst.call("error_rc0", b"", meta)
    assert info.value.message == "!!!", "error_set fails the call even when it returns 0"
    with pytest.raises(PluginError, match="rc7 returned error code 7"):
        inst.call("rc7", b"", meta)
    with pytest.raises(OutputTooLarge):
        inst.call("huge_output", b"", meta)
    assert not inst.broken, "guest errors and oversized output keep the instance"
    for fn, data in [
        ("below_heap", b""),
        ("past_top", b""),
        ("input_oob", b"xyz"),
        ("bad_output", b""),
    ]:
        inst = rt.new_instance()
        with pytest.raises(Trap):
            inst.call(fn, data, meta)
        assert inst.broken, fn
    inst = rt.new_instance()
    with pytest.raises(OutOfMemory, match="4 MiB"):
        inst.call("oom", b"", meta)
    inst = rt.new_instance()
    with pytest.raises(Trap, match="byte cap"):
        inst.call("big_vars", b"", meta)


def test_log_needs_its_grant_at_call_time(engines: Engines) -> None:
    wasm = bytes(wasmtime.wat2wasm(EDGES_WAT))
    rt = local_runtime(engines, wasm, EDGES_FNS, [])  # deploy checks the manifest; this is
    inst = rt.new_instance()  # the call-time check a revoked grant meets
    assert _u64(inst, "log_level") == 2**31 - 1  # "off": PDKs skip logging
    with pytest.raises(Denied, match="'log'"):
        inst.call("log_it", b"", CallMeta(time.monotonic() + 5))


def test_same_results_as_extisms_own_host(engines: Engines) -> None:
    extism = pytest.importorskip("extism")
    wasm = kitchen_wasm()
    rt = local_runtime(engines, wasm, KITCHEN_FNS, ["config", "log"])
    ours = rt.new_instance()
    theirs = extism.Plugin(wasm, wasi=False)
    inputs = [b"", b"a", b"hello, world", bytes(range(256)) * 3]
    for fn in ("echo", "count_vowels", "hello", "count", "count"):
        for data in inputs[:2] if fn == "count" else inputs:
            mine = ours.call(fn, data, CallMeta(time.monotonic() + 5)).output
            assert mine == bytes(theirs.call(fn, data)), (fn, data[:16])
    with pytest.raises(PluginError) as mine_err:
        ours.call("fail", b"q", CallMeta(time.monotonic() + 5))
    with pytest.raises(extism.Error) as their_err:
        theirs.call("fail", b"q")
    assert mine_err.value.message == str(their_err.value) == "bad input: q"


def test_wasi_output_becomes_log_lines_and_initialize_runs(engines: Engines) -> None:
    wat = """(module
      (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
      (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
      (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
      (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
      (memory (export "memory") 1)
      (data (i32.const 100) "printed by an extism guest\\n")
      (global $ready (mut i32) (i32.const 0))
      (func (export "_initialize") (global.set $ready (i32.const 42)))
      (func (export "run") (result i32) (local $b i64)
        (i32.store (i32.const 0) (i32.const 100)) (i32.store (i32.const 4) (i32.const 27))
        (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
        (local.set $b (call $alloc (i64.const 1)))
        (call $store_u8 (local.get $b) (global.get $ready))
        (call $output_set (local.get $b) (i64.const 1))
        (i32.const 0)))"""
    wasm = bytes(wasmtime.wat2wasm(wat))
    rt = local_runtime(engines, wasm, ["run"], ["log"])
    assert not rt.replayable, "WASI plugins never run inline"
    r = rt.new_instance().call("run", b"", CallMeta(time.monotonic() + 5))
    assert r.output == b"*" and r.logs == [(1, "printed by an extism guest")]
    quiet = local_runtime(engines, wasm, ["run"], []).new_instance()
    assert quiet.call("run", b"", CallMeta(time.monotonic() + 5)).logs == [], "needs 'log'"


# --- forgeone pack --extism-manifest -----------------------------------------------------
def test_extism_manifest_becomes_a_matching_signed_package(tmp_path: Path) -> None:
    wasm = kitchen_wasm()
    (tmp_path / "kitchen.wasm").write_bytes(wasm)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    doc = {
        "wasm": [{"path": "kitchen.wasm", "hash": hashlib.sha256(wasm).hexdigest()}],
        "allowed_hosts": ["api.example.com"],
        "allowed_paths": {f"ro:{data_dir}": str(data_dir)},
        "memory": {"max_pages": 64},
        "timeout_ms": 1500,
        "config": {"greeting": "hi"},
    }
    mpath = tmp_path / "manifest.json"
    mpath.write_text(json.dumps(doc))
    conv = convert(mpath)
    m = conv.manifest
    assert (m.name, m.version, m.abi) == ("kitchen", "1.0.0", "extism/1")
    assert sorted(m.exports) == sorted(KITCHEN_FNS)
    assert m.permissions == ["http:api.example.com", f"fs:{data_dir}:ro", "config", "log"]
    assert (m.limits.memory_mb, m.limits.timeout_ms) == (4, 1500)
    assert conv.config == {"greeting": "hi"}

    key_path = tmp_path / "k.key"
    key = generate_key()
    save_private_key(key, key_path)
    parser = argparse.ArgumentParser()
    parser.add_argument("--key", required=True)
    parser.add_argument("--wasm")
    parser.add_argument("-o", "--out")
    add_extism_pack_arguments(parser)
    out = tmp_path / "k.forgepkg"
    args = parser.parse_args(
        [
            *("--extism-manifest", str(mpath), "--key", str(key_path), "-o", str(out)),
            *("--name", "kitchen2", "--export", "echo", "--permission", "kv:state"),
        ]
    )
    assert cmd_pack_extism(args) == 0
    pkg = verify_package(out.read_bytes(), TrustStore().with_key(key.public_key()))
    assert pkg.manifest.name == "kitchen2" and pkg.manifest.exports == ["echo"]
    assert "kv:state" in pkg.manifest.permissions and pkg.wasm == wasm

    doc["wasm"] = [{"path": "kitchen.wasm", "hash": "0" * 64}]
    mpath.write_text(json.dumps(doc))
    with pytest.raises(ExtismManifestError, match="does not match"):
        convert(mpath)
    doc["wasm"] = [{"path": "kitchen.wasm"}]
    doc["allowed_hosts"] = ["*.example.com"]
    mpath.write_text(json.dumps(doc))
    with pytest.raises(ExtismManifestError, match="per host"):
        convert(mpath)
