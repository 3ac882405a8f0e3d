"""The ABI adapters, one per plugin ABI, behind the PluginRuntime interface (worker/runtime.py)."""

from __future__ import annotations

import wasmtime

from schemas.manifest import ABI_EXTISM_V1, ABI_FORGE_V1, Manifest

from .abi_extism import ExtismRuntime
from .abi_forge import ForgeV1Runtime
from .engine import Engines
from .host import HostEnv
from .runtime import CallLimits, PluginRuntime


def make_runtime(
    engines: Engines, manifest: Manifest, module: wasmtime.Module, limits: CallLimits, env: HostEnv
) -> PluginRuntime:
    """The adapter for the manifest's ABI."""
    if manifest.abi == ABI_FORGE_V1:
        return ForgeV1Runtime(engines, manifest, module, limits, env)
    if manifest.abi == ABI_EXTISM_V1:
        return ExtismRuntime(engines, manifest, module, limits, env)
    raise ValueError(f"ABI {manifest.abi!r} is not supported by this worker")
