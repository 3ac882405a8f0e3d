"""The ``forgeone`` command line against a real cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from coordinator.embedded_nats import free_port
from tests.cluster import PLUGINS, Cluster


def forgeone(
    *args: str, url: str | None = None, stdin: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "coordinator", *args]
    if url is not None:
        cmd += ["--nats-url", url]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=60, cwd=cwd)


async def test_cli_keygen_pack_verify_deploy_invoke_list_workers_undeploy(
    cluster: Cluster, plugins: dict[str, Path], tmp_path: Path
) -> None:
    cluster.start_worker("w1")
    trust = tmp_path / "trust.json"
    r = forgeone(
        "keygen", "--out", str(tmp_path / "k.key"), "--trust", str(trust), "--name", "tests"
    )
    assert r.returncode == 0, r.stderr
    assert (
        forgeone("keygen", "--out", str(tmp_path / "k.key"), "--trust", str(trust)).returncode == 1
    ), "refuses to overwrite a key"

    pkg = tmp_path / "echo.forgepkg"
    r = forgeone(
        "pack",
        "--manifest",
        str(PLUGINS / "echo" / "forge.json"),
        "--wasm",
        str(plugins["echo"]),
        "--key",
        str(tmp_path / "k.key"),
        "-o",
        str(pkg),
    )
    assert r.returncode == 0, r.stderr
    r = forgeone("verify", str(pkg), "--trust", str(trust))
    assert r.returncode == 0 and b"OK echo@1.0.0" in r.stdout, r.stderr
    r = forgeone("verify", str(pkg), "--trust", str(cluster.trust_path))
    assert r.returncode == 1 and b"not in the trust store" in r.stderr

    # the cluster trusts its own key only: a package signed by another key is refused
    r = forgeone("deploy", str(pkg), url=cluster.url)
    assert r.returncode == 1 and b"PACKAGE_REJECTED" in r.stderr, r.stderr
    r = forgeone(
        "pack",
        "--manifest",
        str(PLUGINS / "echo" / "forge.json"),
        "--wasm",
        str(plugins["echo"]),
        "--key",
        str(cluster.key_path),
        "-o",
        str(pkg),
    )
    assert r.returncode == 0, r.stderr
    r = forgeone("deploy", str(pkg), url=cluster.url)
    assert r.returncode == 0 and b"deployed echo@1.0.0" in r.stdout, r.stderr

    client = await cluster.client()
    await cluster.wait_ready(client, "echo", 1)
    await client.close()

    assert (
        forgeone("invoke", "echo", "upper", "from an argument", url=cluster.url).stdout
        == b"FROM AN ARGUMENT"
    )
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"from a file")
    assert (
        forgeone("invoke", "echo", "upper", "--file", str(payload), url=cluster.url).stdout
        == b"FROM A FILE"
    )
    assert (
        forgeone("invoke", "echo", "upper", "-", url=cluster.url, stdin=b"from stdin").stdout
        == b"FROM STDIN"
    )
    r = forgeone("invoke", "echo", "upper", "x", "--json", url=cluster.url)
    result = json.loads(r.stdout)
    assert result["ok"] and result["worker"] == "w1" and result["version"] == "1.0.0"
    r = forgeone("invoke", "echo", "nope", "x", url=cluster.url)
    assert r.returncode == 1 and b"FUNCTION_NOT_FOUND" in r.stderr

    r = forgeone("list", url=cluster.url)
    assert b"echo" in r.stdout and b"ready 1/1" in r.stdout, r.stdout
    r = forgeone("workers", "--json", url=cluster.url)
    (worker,) = json.loads(r.stdout)
    assert worker["worker_id"] == "w1"
    assert [p["plugin"] for p in worker["plugins"]] == ["echo"]

    assert forgeone("undeploy", "echo", url=cluster.url).returncode == 0
    r = forgeone("undeploy", "echo", url=cluster.url)
    assert r.returncode == 1 and b"NOT_FOUND" in r.stderr


def test_cli_says_clearly_when_no_server_is_reachable() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    for args in (("list",), ("invoke", "echo", "echo", "x"), ("workers",)):
        r = forgeone(*args, url=url)
        assert r.returncode == 1
        assert f"cannot reach NATS at {url}".encode() in r.stderr, r.stderr
        assert b"Traceback" not in r.stderr
