"""The HTTP gateway over real HTTP on 127.0.0.1, in front of a real cluster."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from nats.aio.msg import Msg
from nats.js.api import StreamConfig

from coordinator.client import ForgeClient
from coordinator.gateway import Gateway, GatewayConfig, load_config
from schemas.codec import from_obj
from schemas.errors import BadRequest
from tests.cluster import Cluster, eventually
from tests.test_triggers import deploy_tplug

#: A plugin whose init fails: deployed, but no worker serves it.
BROKEN_WAT = """(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) i32.const 1024)
  (func (export "init") (result i32) i32.const 1)
  (func (export "run") (param i32 i32) (result i64) i64.const 0))"""

CONFIG: dict[str, Any] = {
    "max_body_bytes": 4096,
    "invoke": [
        {"plugin": "tplug", "tokens": ["s3cret", "other"], "max_body_bytes": 1024},
        {"plugin": "*", "timeout_s": 2.0},
    ],
    "hooks": [
        {"name": "orders", "subject": "gw.orders", "tokens": ["hook-token"]},
        {"name": "stored", "subject": "gws.in", "jetstream": True},
        {"name": "nostream", "subject": "gwx.none", "jetstream": True},
    ],
}
AUTH = {"Authorization": "Bearer s3cret"}


async def start(client: ForgeClient, config: dict[str, Any]) -> tuple[web.AppRunner, str]:
    runner, port = await Gateway(client, from_obj(GatewayConfig, config)).start("127.0.0.1", 0)
    return runner, f"http://127.0.0.1:{port}"


async def raw_http(port_url: str, head: str, body_parts: list[bytes]) -> tuple[int, bytes, float]:
    """Send a request by hand; returns the status, the rest of the response and the time."""
    host, port = port_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    writer.write(head.encode())
    for part in body_parts:
        writer.write(part)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(65536), 10)
    elapsed = time.monotonic() - started
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data, elapsed


@pytest.fixture
async def gateway(cluster: Cluster) -> AsyncIterator[tuple[ForgeClient, str]]:
    cluster.start_worker("w1")
    client = await cluster.client()
    await deploy_tplug(cluster, client)
    runner, url = await start(client, CONFIG)
    try:
        yield client, url
    finally:
        await runner.cleanup()
        await client.close()


async def error_of(resp: aiohttp.ClientResponse) -> str:
    body = await resp.json()
    return str(body["error"]["code"])


async def test_invoke_and_webhook_round_trips(gateway: tuple[ForgeClient, str]) -> None:
    client, url = gateway
    got: list[Msg] = []

    async def on_msg(msg: Msg) -> None:
        got.append(msg)

    await client.nc.subscribe("gw.orders", cb=on_msg)
    js = client.nc.jetstream()
    await js.add_stream(StreamConfig(name="GWS", subjects=["gws.>"]))
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/invoke/tplug/work", data=b"hello", headers=AUTH) as r:
            assert r.status == 200 and await r.read() == b"hello"
            assert r.headers["X-Forge-Worker"] == "w1" and r.headers["X-Forge-Version"] == "1.0.0"
        async with http.post(f"{url}/invoke/tplug/work", data=b"Fx", headers=AUTH) as r:
            assert r.status == 422 and await error_of(r) == "PLUGIN_ERROR"

        hook_auth = {"Authorization": "Bearer hook-token", "Content-Type": "application/json"}
        async with http.post(f"{url}/hooks/orders", data=b'{"id":1}', headers=hook_auth) as r:
            assert r.status == 202 and (await r.json())["accepted"] is True

        async def delivered() -> bool:
            return len(got) == 1

        await eventually(delivered, 10, "the webhook event")
        assert got[0].data == b'{"id":1}' and (got[0].headers or {})["Forge-Hook"] == "orders"
        assert (got[0].headers or {})["Content-Type"] == "application/json"

        key = {"Idempotency-Key": "evt-1"}
        async with http.post(f"{url}/hooks/stored", data=b"s1", headers=key) as r:
            first = await r.json()
            assert r.status == 202 and first["stream"] == "GWS" and not first["duplicate"]
        async with http.post(f"{url}/hooks/stored", data=b"s1", headers=key) as r:
            again = await r.json()
            assert again["duplicate"] and again["seq"] == first["seq"]
        async with http.get(f"{url}/healthz") as r:
            assert r.status == 200


async def test_each_error_status(cluster: Cluster, gateway: tuple[ForgeClient, str]) -> None:
    client, url = gateway
    await client.deploy(cluster.wat_package("broken", BROKEN_WAT))
    async with aiohttp.ClientSession() as http:

        async def post(path: str, data: bytes = b"x", **headers: str) -> tuple[int, str]:
            async with http.post(f"{url}{path}", data=data, headers=headers) as r:
                return r.status, await error_of(r)

        assert await post("/hooks/nope") == (404, "NOT_FOUND")
        assert await post("/invoke/ghost/run") == (404, "PLUGIN_NOT_FOUND")
        assert await post("/invoke/tplug/nope", **AUTH) == (404, "FUNCTION_NOT_FOUND")
        assert await post("/invoke/tplug/work") == (401, "DENIED")
        assert await post("/invoke/tplug/work", Authorization="Bearer wrong") == (403, "DENIED")
        assert await post("/hooks/orders", Authorization="Basic abc") == (401, "DENIED")
        assert await post("/invoke/tplug/work", b"y" * 1025, **AUTH) == (413, "INPUT_TOO_LARGE")
        assert await post("/hooks/nostream") == (503, "UNAVAILABLE")

        async def no_workers() -> bool:
            return await post("/invoke/broken/run") == (502, "NO_WORKERS")

        await eventually(no_workers, 20, "NO_WORKERS for a plugin no worker could load")

    # 504: a route whose calls get 5 ms against a ~20 ms guest call
    runner, slow_url = await start(
        client, {"invoke": [{"plugin": "tplug", "timeout_s": 0.005}], "max_in_flight": 1}
    )
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{slow_url}/invoke/tplug/work", data=b"Sspin") as r:
                assert r.status == 504 and await error_of(r) == "TIMEOUT"
            # 429: the one slot is held by a request whose body is still arriving
            host_port = slow_url.removeprefix("http://")
            reader, writer = await asyncio.open_connection(*host_port.split(":"))
            writer.write(
                b"POST /invoke/tplug/work HTTP/1.1\r\nHost: x\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n"
            )
            await writer.drain()

            async def saturated() -> bool:
                async with http.post(f"{slow_url}/invoke/tplug/work", data=b"z") as r:
                    return r.status == 429 and await error_of(r) == "OVERLOADED"

            await eventually(saturated, 10, "429 while the slot is held")
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 504") or head.startswith(b"HTTP/1.1 200"), head
            writer.close()
    finally:
        await runner.cleanup()


async def test_oversized_body_refused_without_reading_it(gateway: tuple[ForgeClient, str]) -> None:
    _, url = gateway
    # declared 50 MB, nothing of it sent: the refusal cannot have waited for the body
    head = (
        "POST /invoke/tplug/work HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
        "Content-Length: 50000000\r\n\r\n"
    )
    status, data, elapsed = await raw_http(url, head, [b"only a little"])
    assert status == 413 and b"INPUT_TOO_LARGE" in data and elapsed < 5
    # no length declared: refused once the streamed body passes the limit (4 KiB here)
    head = "POST /hooks/stored HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"1000\r\n" + b"z" * 4096 + b"\r\n"
    status, data, _ = await raw_http(url, head, [chunk, chunk])
    assert status == 413 and b"INPUT_TOO_LARGE" in data


def test_config_file_is_typed(tmp_path: Any) -> None:
    path = tmp_path / "gw.json"
    path.write_text(json.dumps(CONFIG))
    config = load_config(path)
    assert config.hooks[0].subject == "gw.orders" and config.invoke[0].tokens == ["s3cret", "other"]
    path.write_text(json.dumps({"hooks": [{"name": "x", "subject": "bad subject"}]}))
    with pytest.raises(BadRequest, match="gateway config"):
        load_config(path)
