"""What ``make run`` does, end to end, once: build, sign, deploy and call the examples."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from coordinator.embedded_nats import free_port
from tests.cluster import REPO


def test_dev_cluster_deploys_and_calls_the_examples(tmp_path: Path) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "coordinator",
            "dev",
            "--once",
            "--dir",
            str(tmp_path / "dev"),
            "--port",
            str(free_port()),
            "--plugins",
            str(REPO / "plugins"),
        ],
        capture_output=True,
        timeout=180,
        cwd=tmp_path,
    )
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert "created development signing key" in out
    assert "echo.upper(b'hello, forgeone') -> HELLO, FORGEONE" in out
    assert "hello.greet(b'operator') -> Hello, operator!" in out
    assert '"words":9' in out
    assert "chaos.spin(b'') -> TIMEOUT" in out
    assert 'counter.incr(b\'visits\') -> {"key":"visits","count":1' in out
    if shutil.which("npm"):  # the AssemblyScript example builds only where npm is
        assert "vowels-as.count_vowels(" in out and '"count":' in out
    assert "stopped nats-server, coordinator and workers" in out
    assert (tmp_path / "dev" / "trust.json").exists()
