"""The interface every plugin ABI adapter implements, and the choice of adapter by ABI.

A *runtime* is one compiled plugin version; it makes *instances*, each with
its own Store, which the pool hands out to one thread at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import wasmtime

from schemas.manifest import ABI_FORGE_V1, Manifest

from .engine import Engines, EngineSettings

#: Most log lines one call may buffer, and most bytes per line; the rest is dropped.
MAX_LOG_LINES = 256
MAX_LOG_LINE = 16 * 1024


@dataclass(slots=True)
class Invocation:
    """What one successful guest call produced."""

    output: bytes
    logs: list[tuple[int, str]] = field(default_factory=list)
    fuel_used: int | None = None
    duration_us: int = 0


class GuestInstance(Protocol):
    broken: bool
    """True once the instance trapped or broke a limit: it must be discarded, never reused."""
    logs: list[tuple[int, str]]
    """Log lines of the last call, or of instantiation and init."""

    def call(self, fn: str, data: bytes, timeout_s: float) -> Invocation:
        """Run ``fn`` on ``data``; raise a ForgeError on any failure. Not thread-safe."""
        ...

    def close(self, graceful: bool) -> None:
        """Free the instance; run the guest's shutdown hook first when ``graceful``."""
        ...


class PluginRuntime(Protocol):
    manifest: Manifest

    def new_instance(self) -> GuestInstance:
        """Instantiate and initialise a fresh instance; raise a ForgeError if that fails."""
        ...


@dataclass(frozen=True, slots=True)
class WorkerCaps:
    """Ceilings a worker puts on what any manifest may request."""

    max_memory_mb: int = 512
    max_timeout_ms: int = 60_000
    max_pool_size: int = 16
    max_io_bytes: int = 8 * 1024 * 1024


def engine_settings_for(manifest: Manifest) -> EngineSettings:
    return EngineSettings(
        max_stack_kb=manifest.limits.max_stack_kb, fuel=manifest.limits.fuel is not None
    )


def make_runtime(
    engines: Engines, manifest: Manifest, module: wasmtime.Module, caps: WorkerCaps
) -> PluginRuntime:
    """The adapter for the manifest's ABI."""
    if manifest.abi == ABI_FORGE_V1:
        from .abi_forge import ForgeV1Runtime

        return ForgeV1Runtime(engines, manifest, module, caps)
    raise ValueError(f"ABI {manifest.abi!r} is not supported by this worker")
