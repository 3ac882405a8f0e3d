"""The interface every plugin ABI adapter implements, and the choice of adapter by ABI.

A *runtime* is one compiled plugin version; it makes *instances*, each with
its own Store, which the pool hands out to one thread at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from schemas.manifest import Manifest
from schemas.policy import Caps

from .engine import EngineSettings
from .host import CallMeta


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

    def call(self, fn: str, data: bytes, meta: CallMeta) -> Invocation:
        """Run ``fn`` on ``data`` by ``meta.deadline``; raise a ForgeError on failure.

        Not thread-safe: one thread at a time per instance.
        """
        ...

    def close(self, graceful: bool) -> None:
        """Free the instance; run the guest's shutdown hook first when ``graceful``."""
        ...


class PluginRuntime(Protocol):
    manifest: Manifest
    replayable: bool
    """True when a call has no effects outside its instance (no emit, kv_put, call or
    WASI), so an aborted attempt may safely be run again."""

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


@dataclass(frozen=True, slots=True)
class CallLimits:
    """The limits a plugin version actually runs with: its manifest's, capped by the
    worker and by the operator's policy."""

    timeout_ms: int
    memory_bytes: int
    fuel: int | None
    max_input_bytes: int
    max_output_bytes: int
    pool_size: int
    max_stack_kb: int
    table_elements: int


def _cap(value: int, *caps: int | None) -> int:
    return min([value, *[c for c in caps if c is not None]])


def effective_limits(manifest: Manifest, worker: WorkerCaps, policy: Caps) -> CallLimits:
    m = manifest.limits
    fuel = m.fuel
    if policy.fuel is not None:  # a fuel cap turns metering on
        fuel = min(fuel, policy.fuel) if fuel is not None else policy.fuel
    return CallLimits(
        timeout_ms=_cap(m.timeout_ms, worker.max_timeout_ms, policy.timeout_ms),
        memory_bytes=_cap(m.memory_mb, worker.max_memory_mb, policy.memory_mb) * 1024 * 1024,
        fuel=fuel,
        max_input_bytes=_cap(m.max_input_bytes, worker.max_io_bytes),
        max_output_bytes=_cap(m.max_output_bytes, worker.max_io_bytes),
        pool_size=_cap(m.pool_size, worker.max_pool_size, policy.pool_size),
        max_stack_kb=m.max_stack_kb,
        table_elements=m.max_table_elements,
    )


def engine_settings_for(limits: CallLimits) -> EngineSettings:
    return EngineSettings(max_stack_kb=limits.max_stack_kb, fuel=limits.fuel is not None)
