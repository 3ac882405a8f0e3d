"""Compiled modules cached on disk, keyed by module digest, wasmtime version and engine settings.

Entries are written atomically with a SHA-256 of their body in front; an
entry whose checksum does not match is counted as corrupt, deleted and
rebuilt. ``Module.deserialize`` trusts its input, so nothing unchecked is
ever handed to it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import wasmtime

from .engine import EngineSettings

log = logging.getLogger("forge.worker.cache")

MAGIC = b"FORGEMOD1\n"


@dataclass(frozen=True, slots=True)
class CompiledModule:
    module: wasmtime.Module
    cache_result: str
    """"hit", "miss" or "corrupt" (a corrupt entry was found and rebuilt)."""


class CompileCache:
    def __init__(self, directory: Path, on_result: Callable[[str], None] | None = None) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._on_result = on_result or (lambda _r: None)

    def path_for(self, wasm_sha256: str, settings: EngineSettings) -> Path:
        return self.directory / f"{wasm_sha256}-{settings.cache_key()}.cwasm"

    def load(
        self, engine: wasmtime.Engine, settings: EngineSettings, wasm: bytes, wasm_sha256: str
    ) -> CompiledModule:
        """The compiled module for ``wasm``, from disk when a sound entry exists.

        Blocking (compiling can take seconds): call it off the event loop.
        """
        path = self.path_for(wasm_sha256, settings)
        result = "miss"
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            blob = None
        if blob is not None:
            body = blob[len(MAGIC) + 32 :]
            if (
                blob.startswith(MAGIC)
                and hashlib.sha256(body).digest() == blob[len(MAGIC) : len(MAGIC) + 32]
            ):
                try:
                    module = wasmtime.Module.deserialize(engine, body)
                    self._on_result("hit")
                    return CompiledModule(module, "hit")
                except wasmtime.WasmtimeError as e:  # e.g. incompatible build
                    log.warning("event=cache_incompatible path=%s error=%s", path, e)
            else:
                log.warning("event=cache_corrupt path=%s", path)
            result = "corrupt"
            path.unlink(missing_ok=True)
        module = wasmtime.Module(engine, wasm)
        self._store(path, bytes(module.serialize()))
        self._on_result(result)
        return CompiledModule(module, result)

    def _store(self, path: Path, body: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC + hashlib.sha256(body).digest() + body)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
