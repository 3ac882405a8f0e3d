"""The whole path on real processes: deploy through the coordinator, call through the client."""

from __future__ import annotations

import pytest

from schemas.errors import FunctionNotFound, NoWorkers, PluginNotFound
from tests.cluster import Cluster, eventually


async def test_deploy_call_two_workers_late_worker_and_undeploy(cluster: Cluster) -> None:
    cluster.start_worker("w1")
    cluster.start_worker("w2")
    client = await cluster.client()
    try:
        reply = await client.deploy(cluster.example_package("echo"))
        assert reply.record.plugin == "echo" and reply.record.active().version == "1.0.0"
        await cluster.wait_ready(client, "echo", 2)

        assert await client.invoke("echo", "upper", b"hello", timeout=5) == b"HELLO"
        assert await client.invoke("echo", "echo", b"\x00\xffbytes") == b"\x00\xffbytes"

        served = set()
        for i in range(200):
            r = await client.invoke_result("echo", "echo", str(i).encode())
            assert r.ok and r.output == str(i).encode() and r.version == "1.0.0"
            served.add(r.worker)
            if served == {"w1", "w2"}:
                break
        assert served == {"w1", "w2"}, "both workers in the queue group serve calls"

        cluster.start_worker("w3")  # started after the deployment: catches up from the bucket
        await cluster.wait_ready(client, "echo", 3)
        for _ in range(300):
            r = await client.invoke_result("echo", "upper", b"late")
            assert r.ok and r.output == b"LATE"
            if r.worker == "w3":
                break
        assert r.worker == "w3"

        await client.undeploy("echo")

        async def gone() -> bool:
            try:
                await client.invoke("echo", "echo", b"x", timeout=1)
            except PluginNotFound:
                return True
            return False

        await eventually(gone, 15, "undeployed plugin to stop answering")
    finally:
        await client.close()


async def test_missing_plugin_function_and_no_workers(cluster: Cluster) -> None:
    client = await cluster.client()
    try:
        with pytest.raises(PluginNotFound):
            await client.invoke("nosuch", "fn", b"")
        await client.deploy(cluster.example_package("echo"))
        with pytest.raises(NoWorkers):  # deployed, but no worker is running yet
            await client.invoke("echo", "echo", b"")
        cluster.start_worker("w1")
        await cluster.wait_ready(client, "echo", 1)
        with pytest.raises(FunctionNotFound, match="does not export 'nope'"):
            await client.invoke("echo", "nope", b"")
        with pytest.raises(FunctionNotFound):  # reserved ABI exports are not callable
            await client.invoke("echo", "alloc", b"")
    finally:
        await client.close()
