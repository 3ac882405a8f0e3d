"""WASI preview 1 for guests that import it, shared by the ABI adapters: output captured
as log lines, nothing granted but what the plugin's permissions allow."""

from __future__ import annotations

import contextlib
import os
import tempfile

import wasmtime

from .host import MAX_LOG_LINE, MAX_LOG_LINES, Grants


class WasiOutput:
    """A guest's WASI stdout and stderr, captured to private files and read back as log lines.

    (wasmtime writes WASI output from its own threads, so a callback could not tell which
    call the bytes belong to; files read after each call can.)
    """

    #: Past this many bytes of output, the instance is replaced rather than the file kept.
    MAX_BYTES = 16 * 1024 * 1024

    def __init__(self) -> None:
        fd_out, self.stdout_path = tempfile.mkstemp(prefix="forge-wasi-", suffix=".out")
        fd_err, self.stderr_path = tempfile.mkstemp(prefix="forge-wasi-", suffix=".err")
        os.close(fd_out)
        os.close(fd_err)
        self._offsets = {self.stdout_path: 0, self.stderr_path: 0}

    def drain(self, logs: list[tuple[int, str]]) -> bool:
        """Append output written since the last drain; False once the files grew too big."""
        for path, level in ((self.stdout_path, 1), (self.stderr_path, 2)):
            with open(path, "rb") as f:
                f.seek(self._offsets[path])
                data = f.read(MAX_LOG_LINES * MAX_LOG_LINE)
                self._offsets[path] = f.tell()
            for line in data.decode("utf-8", "replace").splitlines():
                if line and len(logs) < MAX_LOG_LINES:
                    logs.append((level, line[:MAX_LOG_LINE]))
        return max(self._offsets.values()) < self.MAX_BYTES

    def close(self) -> None:
        for path in self._offsets:
            with contextlib.suppress(OSError):
                os.unlink(path)


WASI_ENOSYS = 52


def _wasi_nosys(*_args: int) -> int:
    return WASI_ENOSYS


def restrict_wasi(linker: wasmtime.Linker, permissions: list[str]) -> None:
    """Replace WASI calls that would escape a grant or the deadline with ENOSYS stubs.

    ``poll_oneoff`` sleeps in the host, where epoch interruption cannot stop it; clocks
    and randomness need the same grants as forge.now and forge.random. Call it right
    after ``linker.define_wasi()``.
    """
    linker.allow_shadowing = True
    i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
    stubs = {"poll_oneoff": [i32, i32, i32, i32], "sched_yield": []}
    if not any(p.startswith("clock") for p in permissions):
        stubs.update(clock_time_get=[i32, i64, i32], clock_res_get=[i32, i32])
    if "random" not in permissions:
        stubs["random_get"] = [i32, i32]
    for name, params in stubs.items():
        linker.define_func(
            "wasi_snapshot_preview1", name, wasmtime.FuncType(params, [i32]), _wasi_nosys
        )
    linker.allow_shadowing = False


def wasi_config(grants: Grants, output: WasiOutput) -> wasmtime.WasiConfig:
    """WASI with nothing granted but output: no args, no env, no preopens unless granted."""
    cfg = wasmtime.WasiConfig()
    cfg.stdout_file = output.stdout_path
    cfg.stderr_file = output.stderr_path
    env = [(p.arg, os.environ[p.arg]) for p in grants.granted("env") if p.arg in os.environ]
    if env:
        cfg.env = env
    for p in grants.granted("fs"):
        if os.path.isdir(p.arg):
            cfg.preopen_dir(p.arg, p.arg, fs_mutable=not p.read_only)
    return cfg
