#!/usr/bin/env python3
"""Build the ForgeOne example plugins (ABI "forge/1", see docs/abi.md).

Usage: python plugins/build.py [--out DIR] [NAME ...]

Every directory under plugins/ holding a forge.json is a plugin. It contains
either exactly one ``*.wat`` file (assembled with ``wasmtime.wat2wasm``), one
or more ``*.c`` files (compiled with ``python -m ziglang cc`` for
wasm32-freestanding, no libc, against plugins/include/forge.h), or an
AssemblyScript project (``package.json`` plus ``index.ts``, built with the
project's own ``asc`` after ``npm install`` into its ``node_modules``; such a
plugin is skipped with a message where ``npm`` is missing). The outputs are
``DIR/<name>.wasm`` and ``DIR/<name>.forge.json`` (default DIR: plugins/build/).
A plugin is rebuilt only when an input is newer than its output. Each built
module is checked against the manifest and its ABI, forge/1 or extism/1
(imports, exports, signatures, enabled wasm features), with the same checks a
deploy runs (schemas/abi.py), before it is written.

Importing this file has no side effects; tests call :func:`build_all`.
Besides the project's own schemas/ (beside plugins/), only the standard library,
plus wasmtime, ziglang and npm when building, is used.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

ABI = "forge/1"
ABIS = ("forge/1", "extism/1")
PLUGINS_DIR = Path(__file__).resolve().parent
INCLUDE_DIR = PLUGINS_DIR / "include"
DEFAULT_OUT = PLUGINS_DIR / "build"

NAME_RE = re.compile(r"[a-z][a-z0-9_-]*\Z")
VERSION_RE = re.compile(r"\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.+-]+)?\Z")
LIMIT_KEYS = {
    "timeout_ms",
    "memory_mb",
    "fuel",
    "max_input_bytes",
    "max_output_bytes",
    "pool_size",
    "max_stack_kb",
    "max_table_elements",
}
# Permission vocabulary (schemas/policy.py): kinds without and with an argument.
SIMPLE_PERMISSIONS = {"log", "clock", "random", "config"}
SCOPED_PERMISSIONS = {"publish", "kv", "call", "fs", "env", "http"}
RESERVED_EXPORTS = {"memory", "alloc", "dealloc", "init", "shutdown", "_start", "_initialize"}


# wasm features the forge/1 host enables (docs/abi.md). The C compiler is
# pinned to a subset so that a newer toolchain default (e.g. extended-const)
# cannot slip in.
ZIG_CPU = "mvp+bulk_memory+bulk_memory_opt+sign_ext+nontrapping_fptoint+mutable_globals+multivalue"
C_FLAGS = [
    "-target",
    "wasm32-freestanding",
    f"-mcpu={ZIG_CPU}",
    "-O2",
    "-g0",  # no DWARF; the name section stays for readable trap backtraces
    "-std=c11",
    "-Wall",
    "-Wextra",
    "-nostdlib",
    "-Wl,--no-entry",
    "-Wl,-z,stack-size=65536",
]


class BuildSkipped(Exception):
    """A plugin cannot be built on this machine (a missing toolchain); not a failure."""


class BuildError(Exception):
    """A plugin could not be built; the message says which and why."""


class Plugin(NamedTuple):
    name: str
    directory: Path
    kind: str  # "wat", "c" or "as" (AssemblyScript)
    sources: tuple[Path, ...]  # files fed to the compiler
    deps: tuple[Path, ...]  # everything the .wasm depends on

    @property
    def manifest_path(self) -> Path:
        return self.directory / "forge.json"


# ---------------------------------------------------------------------------
# discovery and manifests


def discover(plugins_dir: Path = PLUGINS_DIR) -> dict[str, Plugin]:
    """Return every plugin under ``plugins_dir`` keyed by name."""
    plugins: dict[str, Plugin] = {}
    for d in sorted(p for p in plugins_dir.iterdir() if p.is_dir()):
        if not (d / "forge.json").is_file():
            continue
        name = d.name
        wat = sorted(d.glob("*.wat"))
        c_files = sorted(d.glob("*.c"))
        if wat and c_files:
            raise BuildError(f"{name}: has both .wat and .c sources; use one language")
        common = [d / "forge.json", Path(__file__).resolve()]
        if len(wat) == 1:
            plugins[name] = Plugin(name, d, "wat", (wat[0],), tuple([wat[0], *common]))
        elif len(wat) > 1:
            raise BuildError(f"{name}: more than one .wat file: {', '.join(p.name for p in wat)}")
        elif c_files:
            headers = sorted(d.glob("*.h")) + sorted(INCLUDE_DIR.glob("*.h"))
            plugins[name] = Plugin(
                name, d, "c", tuple(c_files), tuple([*c_files, *headers, *common])
            )
        elif (d / "package.json").is_file() and (d / "index.ts").is_file():
            ts = sorted(d.glob("*.ts"))
            extra = [f for f in (d / "asconfig.json", d / "package-lock.json") if f.is_file()]
            deps = tuple([*ts, d / "package.json", *extra, *common])
            plugins[name] = Plugin(name, d, "as", (d / "index.ts",), deps)
        else:
            raise BuildError(f"{name}: no .wat, .c or AssemblyScript source next to forge.json")
    return plugins


def _permission_ok(perm: str) -> bool:
    """Shallow check against the vocabulary; the deploy path validates fully."""
    kind, sep, arg = perm.partition(":")
    if kind in SIMPLE_PERMISSIONS:
        return not sep
    return kind in SCOPED_PERMISSIONS and bool(arg) and not any(c.isspace() for c in arg)


def load_manifest(plugin: Plugin) -> dict[str, Any]:
    """Read and check a plugin's forge.json (source form: no digest)."""
    where = f"{plugin.name}: {plugin.manifest_path}"
    try:
        m = json.loads(plugin.manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BuildError(f"{where}: cannot read manifest: {e}") from e
    if not isinstance(m, dict):
        raise BuildError(f"{where}: manifest must be a JSON object")
    problems: list[str] = []
    required = {"name", "version", "abi", "exports", "permissions", "limits", "description"}
    missing = sorted(required - m.keys())
    if missing:
        problems.append(f"missing field(s) {', '.join(missing)}")
    extra = sorted(m.keys() - required)
    if extra:
        problems.append(f"unknown field(s) {', '.join(extra)}")
    name = m.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        problems.append(f"name {name!r} must match [a-z][a-z0-9_-]*")
    elif name != plugin.name:
        problems.append(f"name {name!r} differs from its directory {plugin.name!r}")
    if "version" in m and not (isinstance(m["version"], str) and VERSION_RE.match(m["version"])):
        problems.append(f"version {m['version']!r} is not like 1.0.0")
    if "abi" in m and m["abi"] not in ABIS:
        problems.append(f"abi {m['abi']!r} is not one of {', '.join(ABIS)}")
    exports = m.get("exports")
    if "exports" in m:
        if not (
            isinstance(exports, list) and exports and all(isinstance(e, str) and e for e in exports)
        ):
            problems.append("exports must be a non-empty list of names")
        else:
            if len(set(exports)) != len(exports):
                problems.append("exports has duplicates")
            bad = sorted(set(exports) & RESERVED_EXPORTS)
            if bad:
                problems.append(f"reserved name(s) cannot be handlers: {', '.join(bad)}")
    perms = m.get("permissions")
    if "permissions" in m:
        if not (isinstance(perms, list) and all(isinstance(p, str) for p in perms)):
            problems.append("permissions must be a list of strings")
        else:
            unknown = sorted(p for p in perms if not _permission_ok(p))
            if unknown:
                problems.append(f"unknown or malformed permission(s) {', '.join(unknown)}")
    limits = m.get("limits")
    if "limits" in m:
        if not isinstance(limits, dict):
            problems.append("limits must be an object")
        else:
            for k, v in limits.items():
                if k not in LIMIT_KEYS:
                    problems.append(f"unknown limit {k!r}")
                elif not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                    problems.append(f"limit {k} must be a positive integer")
    if "description" in m and not (
        isinstance(m["description"], str) and "\n" not in m["description"]
    ):
        problems.append("description must be a one-line string")
    if problems:
        raise BuildError(f"{where}: " + "; ".join(problems))
    return m


# ---------------------------------------------------------------------------
# compiling


def _wasmtime() -> Any:
    try:
        import wasmtime
    except ImportError as e:
        raise BuildError("wasmtime is not installed (pip install wasmtime)") from e
    return wasmtime


def forge_engine() -> Any:
    """A wasmtime Engine with exactly the wasm features the workers enable."""
    wasmtime = _wasmtime()
    features = _schemas().abi.WASM_FEATURES
    cfg = wasmtime.Config()
    for attr, value in features.items():
        if hasattr(cfg, attr):
            setattr(cfg, attr, value)
    return wasmtime.Engine(cfg)


def compile_wat(plugin: Plugin) -> bytes:
    wasmtime = _wasmtime()
    src = plugin.sources[0]
    try:
        return bytes(wasmtime.wat2wasm(src.read_text(encoding="utf-8")))
    except Exception as e:  # WasmtimeError carries the line:column
        raise BuildError(f"{plugin.name}: {src}: {e}") from e


def compile_c(plugin: Plugin, tmp_dir: Path) -> bytes:
    if importlib.util.find_spec("ziglang") is None:
        raise BuildError(f"{plugin.name}: ziglang is not installed (pip install ziglang)")
    out = tmp_dir / f"{plugin.name}.wasm"
    cmd = [
        sys.executable,
        "-m",
        "ziglang",
        "cc",
        *C_FLAGS,
        "-I",
        str(INCLUDE_DIR),
        "-I",
        str(plugin.directory),
        "-o",
        str(out),
        *(str(s) for s in plugin.sources),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BuildError(f"{plugin.name}: cannot run zig cc: {e}") from e
    if proc.returncode != 0:
        diag = (proc.stderr or proc.stdout).strip()
        raise BuildError(f"{plugin.name}: zig cc failed (exit {proc.returncode}):\n{diag}")
    return out.read_bytes()


@contextlib.contextmanager
def _locked(path: Path) -> Any:
    """An exclusive lock on ``path`` (parallel test runs build the same project)."""
    import fcntl

    with open(path, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_assemblyscript(project: Path, entry: str, out: Path) -> bytes:
    """Compile AssemblyScript project ``project`` (its ``entry`` file) to ``out``.

    Dependencies come from the npm registry into ``project/node_modules`` the first
    time (and again when package.json changes); later builds reuse them. Options
    beyond ``--optimize`` (e.g. ``use`` for a custom abort) belong in the project's
    asconfig.json. Raises BuildSkipped without npm, BuildError when a step fails.
    """
    npm = shutil.which("npm")
    if npm is None:
        raise BuildSkipped(f"{project.name}: npm not found; AssemblyScript plugins need Node.js")
    with _locked(project / ".build.lock"):
        stamp = project / "node_modules" / ".package-lock.json"
        if _mtime(stamp) < _mtime(project / "package.json"):
            cmd = [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"]
            _run(cmd, project, f"{project.name}: npm install", 600)
        tmp_out = out.with_name(f".{out.name}.tmp")
        asc = [npm, "exec", "--offline", "--", "asc", entry, "--outFile", str(tmp_out)]
        _run([*asc, "--optimize"], project, f"{project.name}: asc", 300)
        wasm = tmp_out.read_bytes()
        os.replace(tmp_out, out)
        return wasm


def _run(cmd: list[str], cwd: Path, what: str, timeout: int) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BuildError(f"{what}: {e}") from e
    if proc.returncode != 0:
        diag = (proc.stderr or proc.stdout).strip()
        raise BuildError(f"{what} failed (exit {proc.returncode}):\n{diag}")


def compile_as(plugin: Plugin, tmp_dir: Path) -> bytes:
    return build_assemblyscript(plugin.directory, "index.ts", tmp_dir / f"{plugin.name}.wasm")


def _schemas() -> Any:
    """The project's contracts (schemas/, beside plugins/ in the checkout), imported on
    first use so that importing this file stays free of side effects."""
    root = str(PLUGINS_DIR.parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    import schemas.abi
    import schemas.manifest
    import schemas.wasm_shape

    return schemas


def check_module(wasm: bytes, manifest: dict[str, Any], engine: Any = None) -> None:
    """Check a compiled module against its manifest and ABI (forge/1 or extism/1) with
    the checks a deploy runs (schemas/abi.py), after wasmtime's own validation with the
    workers' wasm features. Raises BuildError listing every problem found."""
    wasmtime = _wasmtime()
    sch = _schemas()
    try:
        wasmtime.Module.validate(engine or forge_engine(), wasm)
    except Exception as e:
        raise BuildError(
            f"not a valid {manifest.get('abi', ABI)} module (wasm features or validation): {e}"
        ) from e
    try:
        m = sch.manifest.manifest_from_source(manifest, wasm)
        shape = sch.wasm_shape.read_shape(wasm)
    except (ValueError, sch.wasm_shape.WasmShapeError) as e:  # DecodeError is a ValueError
        raise BuildError(str(e)) from e
    problems = sch.abi.check_abi(m, shape)
    if problems:
        raise BuildError("; ".join(problems))


# ---------------------------------------------------------------------------
# building


def _mtime(p: Path) -> int:
    try:
        return p.stat().st_mtime_ns
    except FileNotFoundError:
        return -1


def _up_to_date(out: Path, deps: tuple[Path, ...] | list[Path]) -> bool:
    t = _mtime(out)
    return t >= 0 and all(_mtime(d) < t for d in deps)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def build_plugin(plugin: Plugin, out_dir: Path) -> tuple[Path, str]:
    """Build one plugin into out_dir. Returns (wasm path, one-line status)."""
    manifest = load_manifest(plugin)
    wasm_out = out_dir / f"{plugin.name}.wasm"
    manifest_out = out_dir / f"{plugin.name}.forge.json"
    if _up_to_date(wasm_out, plugin.deps):
        status = f"up to date  {wasm_out}"
    else:
        if plugin.kind == "wat":
            wasm = compile_wat(plugin)
        else:
            with tempfile.TemporaryDirectory(prefix=f"forge-build-{plugin.name}-") as tmp:
                compile_fn = compile_as if plugin.kind == "as" else compile_c
                wasm = compile_fn(plugin, Path(tmp))
        try:
            check_module(wasm, manifest)
        except BuildError as e:
            raise BuildError(f"{plugin.name}: {e}") from e
        _write_atomic(wasm_out, wasm)
        status = f"built {plugin.kind:<4} {wasm_out} ({len(wasm)} bytes)"
    if not _up_to_date(manifest_out, [plugin.manifest_path]):
        _write_atomic(manifest_out, plugin.manifest_path.read_bytes())
    return wasm_out, status


def build_all(
    out_dir: Path,
    names: list[str] | None = None,
    *,
    report: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Build the named plugins (default: all) into out_dir.

    Returns {name: path of NAME.wasm}. Plugins are built independently; if any
    fails, the others are still built and then BuildError is raised naming
    every failure. ``report`` receives one status line per plugin.
    """
    out_dir = Path(out_dir)
    plugins = discover()
    if names:
        unknown = [n for n in names if n not in plugins]
        if unknown:
            raise BuildError(
                f"unknown plugin(s): {', '.join(unknown)} (known: {', '.join(sorted(plugins))})"
            )
        selected = [plugins[n] for n in dict.fromkeys(names)]
    else:
        selected = list(plugins.values())
    out_dir.mkdir(parents=True, exist_ok=True)
    built: dict[str, Path] = {}
    failures: list[str] = []
    for plugin in selected:
        try:
            path, status = build_plugin(plugin, out_dir)
        except BuildSkipped as e:
            if report:
                report(f"{plugin.name:<10} skipped: {e}")
            continue
        except BuildError as e:
            failures.append(str(e))
            if report:
                report(f"{plugin.name:<10} FAILED (see error below)")
            continue
        built[plugin.name] = path
        if report:
            report(f"{plugin.name:<10} {status}")
    if failures:
        raise BuildError("\n".join(failures))
    return built


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Build ForgeOne forge/1 plugins.")
    ap.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})"
    )
    ap.add_argument("names", nargs="*", metavar="NAME", help="plugins to build (default: all)")
    args = ap.parse_args(argv)
    try:
        build_all(args.out, args.names or None, report=lambda line: print(line, flush=True))
    except BuildError as e:
        print(f"build.py: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
