"""Guest logs travel as syscalls, are kept in a bounded stream, and `forgeone logs` shows them."""

from __future__ import annotations

import os
import subprocess
import sys

from nats.aio.msg import Msg

from schemas.codec import decode
from schemas.messages import LogEvent
from tests.cluster import Cluster, eventually


def _logs_cmd(cluster: Cluster, *args: str) -> list[str]:
    return [sys.executable, "-m", "coordinator", "logs", *args, "--nats-url", cluster.url]


async def test_forgeone_logs_shows_and_follows_plugin_logs(cluster: Cluster) -> None:
    cluster.start_worker("w1")
    client = await cluster.client()
    try:
        await cluster.allow("hello", "log")
        await client.deploy(cluster.example_package("hello"))
        await cluster.wait_ready(client, "hello", 1)
        trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        assert await client.invoke("hello", "greet", b"first", traceparent=trace) == (
            b"Hello, first!"
        )

        async def shown() -> bool:
            r = subprocess.run(
                _logs_cmd(cluster, "hello", "-n", "5"), capture_output=True, timeout=30
            )
            return (
                r.returncode == 0
                and b"first" in r.stdout
                and b"hello@1.0.0 greet" in r.stdout
                and f"trace={trace}".encode() in r.stdout
            )

        await eventually(shown, 15, "the log line in `forgeone logs`")

        follow = subprocess.Popen(
            _logs_cmd(cluster, "hello", "-n", "0", "-f"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            # a line logged after the follower started shows up on its stdout
            for _ in range(50):
                await client.invoke("hello", "greet", b"second")
                assert follow.stdout is not None
                import select

                ready, _, _ = select.select([follow.stdout], [], [], 0.2)
                if ready:
                    line = follow.stdout.readline()
                    assert b"second" in line and b"INFO" in line, line
                    break
            else:
                raise AssertionError("`forgeone logs -f` printed nothing")
        finally:
            follow.terminate()
            follow.wait(timeout=10)
    finally:
        await client.close()


async def test_forgeone_top_shows_workers_plugins_rates_and_latency(cluster: Cluster) -> None:
    cluster.start_worker("w1")
    client = await cluster.client()
    try:
        await client.deploy(cluster.example_package("echo"))
        await cluster.wait_ready(client, "echo", 1)
        for _ in range(50):
            await client.invoke("echo", "upper", b"x")

        async def shown() -> bool:
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "coordinator",
                    "top",
                    "--once",
                    "--interval",
                    "0.5",
                    "--nats-url",
                    cluster.url,
                ],
                capture_output=True,
                timeout=60,
                env={**os.environ, "COLUMNS": "200"},
            )
            out = r.stdout.decode()
            return r.returncode == 0 and "echo@1.0.0" in out and "w1" in out and "p99" in out

        await eventually(shown, 20, "echo@1.0.0 on w1 in `forgeone top --once`")
    finally:
        await client.close()


#: Logs "ready" from init and "bye" from shutdown.
LIFECYCLE_WAT = """(module
  (import "forge" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "ready")
  (data (i32.const 32) "bye")
  (func (export "alloc") (param i32) (result i32) i32.const 1024)
  (func (export "init") (result i32)
    (call $log (i32.const 1) (i32.const 16) (i32.const 5))
    i32.const 0)
  (func (export "shutdown")
    (call $log (i32.const 1) (i32.const 32) (i32.const 3)))
  (func (export "run") (param i32 i32) (result i64) i64.const 0))"""


async def test_init_and_shutdown_log_lines_are_published(cluster: Cluster) -> None:
    """What a guest logs in its lifecycle hooks reaches the log subject like a call's lines,
    with ``init`` / ``shutdown`` as the function."""
    client = await cluster.client()
    seen: list[LogEvent] = []

    async def on_log(msg: Msg) -> None:
        seen.append(decode(LogEvent, msg.data))

    sub = await client.nc.subscribe(client.subjects.syscall_logs("lifecycle"), cb=on_log)
    try:
        await cluster.allow("lifecycle", "log")
        cluster.start_worker("w1")
        await client.deploy(cluster.wat_package("lifecycle", LIFECYCLE_WAT, permissions=["log"]))

        async def logged(fn: str, text: str) -> bool:
            return any(e.fn == fn and e.message == text for e in seen)

        await eventually(lambda: logged("init", "ready"), 20, "the init log line")
        await client.undeploy("lifecycle")
        await eventually(lambda: logged("shutdown", "bye"), 20, "the shutdown log line")
        assert all(e.plugin == "lifecycle" and e.version == "1.0.0" for e in seen)
        await sub.unsubscribe()
    finally:
        await client.close()
