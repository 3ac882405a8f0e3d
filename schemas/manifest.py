"""The plugin manifest (``plugin.json``) and its canonical bytes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .codec import DecodeError, Struct, field_spec, from_obj, to_obj
from .policy import parse_permission

NAME_PATTERN = r"[a-z][a-z0-9_-]{0,62}"
VERSION_PATTERN = r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}"
FUNCTION_PATTERN = r"[A-Za-z_][A-Za-z0-9_]{0,63}"
SHA256_PATTERN = r"[0-9a-f]{64}"
PERMISSION_PATTERN = r"[a-z]+(:[^\s]{1,256})?"

ABI_FORGE_V1 = "forge/1"
ABI_EXTISM_V1 = "extism/1"
ABIS = (ABI_FORGE_V1, ABI_EXTISM_V1)

#: Exports the ABI reserves; they can never be called as handlers.
RESERVED_EXPORTS = frozenset(
    {"memory", "alloc", "dealloc", "init", "shutdown", "_start", "_initialize"}
)

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits(Struct):
    """Per-call and per-plugin limits requested by the manifest (a worker may cap them)."""

    timeout_ms: int = field_spec(default=5000, ge=1, le=15 * 60 * 1000, doc="Call deadline.")
    memory_mb: int = field_spec(default=64, ge=1, le=4096, doc="Linear memory ceiling.")
    fuel: int | None = field_spec(
        default=None, ge=1, le=2**62, doc="Instruction budget per call; off if unset."
    )
    max_input_bytes: int = field_spec(default=MIB, ge=0, le=64 * MIB, doc="Input size cap.")
    max_output_bytes: int = field_spec(default=MIB, ge=0, le=64 * MIB, doc="Output size cap.")
    pool_size: int = field_spec(default=4, ge=1, le=256, doc="Most warm instances kept.")
    max_stack_kb: int = field_spec(default=512, ge=16, le=2048, doc="Wasm stack size.")
    max_table_elements: int = field_spec(default=10_000, ge=0, le=1_000_000, doc="Table cap.")


@dataclass(frozen=True, slots=True)
class Manifest(Struct):
    """What a package says about itself; signed as canonical JSON."""

    name: str = field_spec(pattern=NAME_PATTERN, doc="Plugin name, one subject token.")
    version: str = field_spec(pattern=VERSION_PATTERN, doc="Plugin version.")
    abi: str = field_spec(pattern=r"forge/1|extism/1", doc="Plugin ABI: forge/1 or extism/1.")
    wasm_sha256: str = field_spec(pattern=SHA256_PATTERN, doc="Hex SHA-256 of plugin.wasm.")
    exports: list[str] = field_spec(
        default_factory=list,
        item_pattern=FUNCTION_PATTERN,
        min_items=1,
        unique=True,
        exclude=RESERVED_EXPORTS,
        doc="Callable handler functions (not alloc, dealloc, init, shutdown, memory).",
    )
    permissions: list[str] = field_spec(
        default_factory=list, item_pattern=PERMISSION_PATTERN, doc="Requested grants."
    )
    limits: Limits = field_spec(default_factory=Limits, doc="Requested limits.")
    description: str = field_spec(default="", max_len=1024, doc="One line about the plugin.")

    def __post_init__(self) -> None:
        import re

        fn_re = re.compile(FUNCTION_PATTERN)
        perm_re = re.compile(PERMISSION_PATTERN)
        if not self.exports:
            raise ValueError("exports: a plugin must export at least one function")
        if len(set(self.exports)) != len(self.exports):
            raise ValueError("exports: duplicate function names")
        for fn in self.exports:
            if not fn_re.fullmatch(fn):
                raise ValueError(f"exports: {fn!r} is not a valid function name")
            if fn in RESERVED_EXPORTS:
                raise ValueError(f"exports: {fn!r} is reserved by the ABI")
        for p in self.permissions:
            if not perm_re.fullmatch(p):
                raise ValueError(f"permissions: {p!r} is not a valid permission")
            parse_permission(p)  # raises ValueError naming what is wrong


def manifest_from_json(data: bytes) -> Manifest:
    """Parse and validate manifest JSON (raises DecodeError naming the problem)."""
    try:
        obj: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise DecodeError(f"plugin.json is not valid JSON: {type(e).__name__}") from None
    return from_obj(Manifest, obj)


def canonical_manifest(manifest: Manifest) -> bytes:
    """The exact bytes that are signed: sorted keys, no whitespace, UTF-8."""
    return json.dumps(
        to_obj(manifest), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def manifest_from_source(source: dict[str, Any], wasm: bytes) -> Manifest:
    """The manifest of a plugin's source ``forge.json`` plus its module's digest."""
    import hashlib

    obj = {**source, "wasm_sha256": hashlib.sha256(wasm).hexdigest()}
    obj.pop("$schema", None)
    return from_obj(Manifest, obj)
