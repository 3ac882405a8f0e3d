"""``forgeone pack --extism-manifest``: an Extism manifest turned into a signed ForgeOne package.

An Extism manifest (https://extism.org, "manifest") names the module (a
local ``path``, a ``url`` or inline base64 ``data``, each with an optional
SHA-256 ``hash``) and what the plugin may do: ``allowed_hosts``,
``allowed_paths``, ``memory.max_pages``, ``timeout_ms`` and ``config``. The
package gets the matching ForgeOne permission requests (``http:<host>``,
``fs:<dir>[:ro]``, plus ``config`` and ``log`` when the module imports those
functions) and limits (``memory_mb``, ``timeout_ms``), with ``"abi":
"extism/1"``. ForgeOne keeps config per deployment, not per package, so the
manifest's ``config`` is printed as the ``forgeone deploy --config`` flags
to use.

Extism manifests do not name the plugin, its version or its functions:
``--name`` (default: the module's file name), ``--version`` (default 1.0.0)
and ``--export`` (default: every exported ``() -> i32`` or ``() -> ()``
function) supply them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import posixpath
import re
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.abi import (
    EXTISM_HANDLER_SIGS,
    EXTISM_IMPORT_PERMISSIONS,
    EXTISM_INIT_EXPORTS,
)
from schemas.codec import DecodeError, from_obj
from schemas.manifest import (
    ABI_EXTISM_V1,
    FUNCTION_PATTERN,
    MIB,
    NAME_PATTERN,
    RESERVED_EXPORTS,
    Manifest,
)
from schemas.package import MAX_WASM_BYTES
from schemas.wasm_shape import WasmShapeError, read_shape

WASM_PAGE = 65536
#: Exports that are toolchain plumbing, never handlers.
_NOT_HANDLERS = frozenset({*RESERVED_EXPORTS, *EXTISM_INIT_EXPORTS, "hs_init", "main"})


class ExtismManifestError(ValueError):
    """The Extism manifest cannot become a ForgeOne package; the message says why."""


@dataclass
class Conversion:
    """A ForgeOne manifest and module made from an Extism manifest."""

    manifest: Manifest
    wasm: bytes
    config: dict[str, str] = field(default_factory=dict)
    """The Extism manifest's config: give it to ``forgeone deploy --config``."""
    notes: list[str] = field(default_factory=list)
    """What could not be carried over exactly (printed by the CLI)."""


def _load_wasm(entry: dict[str, Any], base: Path, override: Path | None) -> bytes:
    if override is not None:
        data = override.read_bytes()
    elif "path" in entry:
        path = Path(str(entry["path"]))
        data = (path if path.is_absolute() else base / path).read_bytes()
    elif "data" in entry:
        try:
            data = base64.b64decode(str(entry["data"]), validate=True)
        except (binascii.Error, ValueError) as e:
            raise ExtismManifestError(f"wasm data is not base64: {e}") from None
    elif "url" in entry:
        url = str(entry["url"])
        if not url.startswith(("https://", "http://")):
            raise ExtismManifestError(f"wasm url {url!r} is not http(s)")
        with urllib.request.urlopen(url, timeout=60) as resp:  # the scheme is checked above
            data = resp.read(MAX_WASM_BYTES + 1)
    else:
        raise ExtismManifestError("wasm entry has none of path, url, data")
    if len(data) > MAX_WASM_BYTES:
        raise ExtismManifestError(f"module is larger than {MAX_WASM_BYTES} bytes")
    want = entry.get("hash")
    if want is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != str(want).lower():
            raise ExtismManifestError(
                f"module hash {got[:16]}… does not match the manifest's {str(want)[:16]}…"
            )
    return bytes(data)


def _host_permissions(hosts: Any) -> list[str]:
    if hosts is None:
        return []
    if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
        raise ExtismManifestError("allowed_hosts must be a list of host names")
    perms = []
    for h in hosts:
        if h == "*":
            perms.append("http:*")
        elif "*" in h:
            raise ExtismManifestError(
                f"allowed_hosts {h!r}: ForgeOne grants HTTP per host (or '*' for all), "
                "not by pattern; list the hosts"
            )
        else:
            perms.append(f"http:{h.lower()}")
    return perms


def _path_permissions(paths: Any, base: Path) -> list[str]:
    if paths is None:
        return []
    if not isinstance(paths, dict):
        raise ExtismManifestError("allowed_paths must map host directories to guest paths")
    perms = []
    for host_path, guest_path in paths.items():
        read_only = str(host_path).startswith("ro:")
        raw = str(host_path)[3:] if read_only else str(host_path)
        resolved = posixpath.normpath(str((base / raw).resolve()) if raw else raw)
        if str(guest_path) not in (raw, resolved):
            raise ExtismManifestError(
                f"allowed_paths {host_path!r} -> {guest_path!r}: ForgeOne mounts a granted "
                f"directory at its own path, so the guest must see it as {resolved!r}"
            )
        perms.append(f"fs:{resolved}" + (":ro" if read_only else ""))
    return perms


def _default_name(entry: dict[str, Any], override: Path | None) -> str:
    source = str(override or entry.get("name") or entry.get("path") or entry.get("url") or "")
    stem = Path(source.rsplit("/", 1)[-1]).stem.lower() if source else ""
    name = re.sub(r"[^a-z0-9_-]+", "-", stem).strip("-_")
    if not name or not name[0].isalpha():
        name = f"plugin-{name}" if name else "plugin"
    return name[:63]


def convert(
    manifest_path: Path,
    *,
    name: str | None = None,
    version: str = "1.0.0",
    exports: list[str] | None = None,
    permissions: list[str] | None = None,
    wasm_path: Path | None = None,
    description: str = "",
) -> Conversion:
    """Read the Extism manifest at ``manifest_path`` and make the ForgeOne equivalent."""
    try:
        doc = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as e:
        raise ExtismManifestError(f"cannot read {manifest_path}: {e}") from None
    if not isinstance(doc, dict):
        raise ExtismManifestError("an Extism manifest is a JSON object")
    modules = doc.get("wasm")
    if not isinstance(modules, list) or not modules or not isinstance(modules[0], dict):
        raise ExtismManifestError("'wasm' must list the plugin's module")
    if len(modules) > 1:
        raise ExtismManifestError(
            f"'wasm' lists {len(modules)} modules; ForgeOne runs single-module plugins "
            "(link them into one module first)"
        )
    base = manifest_path.resolve().parent
    entry: dict[str, Any] = modules[0]
    wasm = _load_wasm(entry, base, wasm_path)
    try:
        shape = read_shape(wasm)
    except WasmShapeError as e:
        raise ExtismManifestError(f"module is not valid WebAssembly: {e}") from None

    notes: list[str] = []
    perms: list[str] = []
    perms += _host_permissions(doc.get("allowed_hosts"))
    perms += _path_permissions(doc.get("allowed_paths"), base)
    for imp in shape.imports:  # the module's own needs (log, config; bus access is explicit)
        kind = EXTISM_IMPORT_PERMISSIONS.get((imp.module, imp.name))
        if kind in ("log", "config") and kind not in perms:
            perms.append(kind)
    for p in permissions or []:
        if p not in perms:
            perms.append(p)

    limits: dict[str, int] = {}
    memory = doc.get("memory") or {}
    if not isinstance(memory, dict):
        raise ExtismManifestError("'memory' must be an object")
    if memory.get("max_pages") is not None:
        pages = int(memory["max_pages"])
        if pages < 1:
            raise ExtismManifestError("memory.max_pages must be at least 1")
        limits["memory_mb"] = max(1, math.ceil(pages * WASM_PAGE / MIB))
        if pages * WASM_PAGE % MIB:
            notes.append(
                f"memory.max_pages {pages} rounded up to {limits['memory_mb']} MiB "
                "(ForgeOne limits memory in MiB)"
            )
    for key in ("max_http_response_bytes", "max_var_bytes"):
        if memory.get(key) is not None:
            notes.append(f"memory.{key} is not carried over (ForgeOne applies its own caps)")
    if doc.get("timeout_ms") is not None:
        limits["timeout_ms"] = int(doc["timeout_ms"])

    config = doc.get("config") or {}
    if not isinstance(config, dict):
        raise ExtismManifestError("'config' must map names to strings")

    if exports is None:
        fn_re = re.compile(FUNCTION_PATTERN)
        exports = sorted(
            e.name
            for e in shape.exports.values()
            if e.kind == "func"
            and e.sig in EXTISM_HANDLER_SIGS
            and e.name not in _NOT_HANDLERS
            and not e.name.startswith("_")
            and fn_re.fullmatch(e.name)
        )
        if not exports:
            raise ExtismManifestError("the module exports no () -> i32 or () -> () function")
    name = name or _default_name(entry, wasm_path)
    if not re.fullmatch(NAME_PATTERN, name):
        raise ExtismManifestError(f"plugin name {name!r} must match {NAME_PATTERN} (use --name)")
    obj = {
        "name": name,
        "version": version,
        "abi": ABI_EXTISM_V1,
        "exports": exports,
        "permissions": perms,
        "limits": limits,
        "description": description or f"Extism plugin from {manifest_path.name}",
        "wasm_sha256": hashlib.sha256(wasm).hexdigest(),
    }
    try:
        manifest = from_obj(Manifest, obj)
    except (DecodeError, ValueError) as e:
        raise ExtismManifestError(str(e)) from None
    return Conversion(manifest, wasm, {str(k): str(v) for k, v in config.items()}, notes)
