"""Run one plugin call locally, with no cluster and no NATS, through the worker's own runtime.

    python -m worker.run_local PACKAGE FN [--input FILE | --data TEXT] [--grant PERM ...]

(``forgeone run`` calls this.) The package is verified against a trust store
exactly as a worker does, the requested permissions must be covered by the
``--grant`` list, and the call runs in a pooled instance with the manifest's
limits. Host functions that need the bus (emit, kv, call) report
HOST_FAILED to the guest: there is no bus here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import wasmtime

from schemas.errors import Denied, ForgeError, PackageRejected
from schemas.policy import Caps, missing
from schemas.signing import TrustStore

from .adapters import make_runtime
from .compile_cache import CompileCache
from .engine import Engines
from .host import CallMeta, Grants, HostEnv
from .pool import InstancePool
from .runtime import WorkerCaps, effective_limits, engine_settings_for

LEVELS = {0: "DEBUG", 1: "INFO", 2: "WARN", 3: "ERROR"}


@dataclass(frozen=True, slots=True)
class LocalResult:
    """What one local call did."""

    plugin: str
    version: str
    fn: str
    ok: bool
    output: bytes
    logs: list[tuple[str, str]]
    duration_us: int | None
    fuel_used: int | None
    error: str | None
    wall_us: int
    compile_cache: str


def run(
    package: bytes,
    fn: str,
    data: bytes,
    trust: TrustStore,
    grants: list[str],
    config: dict[str, str],
    cache_dir: Path,
) -> LocalResult:
    """Verify, load and call; return what happened (raises ForgeError on refusal)."""
    from schemas.package import verify_package

    pkg = verify_package(package, trust)
    m = pkg.manifest
    absent = missing(m.permissions, grants)
    if absent:
        raise Denied(
            f"{m.name} requests permissions not granted here: {', '.join(absent)} "
            "(pass --grant for each)"
        )
    engines = Engines()
    try:
        limits = effective_limits(m, WorkerCaps(), Caps())
        settings = engine_settings_for(limits)
        engine = engines.get(settings)
        try:
            wasmtime.Module.validate(engine, pkg.wasm)
        except wasmtime.WasmtimeError as e:
            raise PackageRejected(f"module does not validate: {e}") from None
        compiled = CompileCache(cache_dir).load(engine, settings, pkg.wasm, m.wasm_sha256)
        env = HostEnv(m.name, m.version, Grants(m.permissions), config, None)
        runtime = make_runtime(engines, m, compiled.module, limits, env)
        pool = InstancePool(runtime, 1)
        if fn not in m.exports:
            raise ForgeError(f"{m.name} does not export {fn!r} (it exports {', '.join(m.exports)})")
        started = time.perf_counter()
        out = pool.run(fn, data, CallMeta(time.monotonic() + limits.timeout_ms / 1000))
        wall_us = int((time.perf_counter() - started) * 1e6)
        pool.close()
    finally:
        engines.close()
    inv = out.invocation
    return LocalResult(
        plugin=m.name,
        version=m.version,
        fn=fn,
        ok=out.error is None,
        output=inv.output if inv else b"",
        logs=[(LEVELS.get(level, "?"), text) for level, text in out.logs],
        duration_us=inv.duration_us if inv else None,
        fuel_used=inv.fuel_used if inv else None,
        error=f"{out.error.code.value}: {out.error.message}" if out.error else None,
        wall_us=wall_us,
        compile_cache=compiled.cache_result,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="forgeone run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("package")
    p.add_argument("fn")
    p.add_argument("--input", help="read the input from this file ('-' for stdin)")
    p.add_argument("--data", help="the input as text")
    p.add_argument("--grant", action="append", default=[], help="a permission to grant")
    p.add_argument("--config", action="append", default=[], help="deployment config k=v")
    p.add_argument("--trust", default=os.environ.get("FORGE_TRUST", "trust.json"))
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "forge-run-cache"))
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    a = p.parse_args(argv)
    if a.input == "-":
        data = sys.stdin.buffer.read()
    elif a.input:
        data = Path(a.input).read_bytes()
    else:
        data = (a.data or "").encode()
    config = {}
    for item in a.config:
        k, sep, v = item.partition("=")
        if not sep:
            p.error(f"--config {item!r}: expected key=value")
        config[k] = v
    try:
        trust = TrustStore.load(Path(a.trust))
        result = run(
            Path(a.package).read_bytes(), a.fn, data, trust, a.grant, config, Path(a.cache_dir)
        )
    except (OSError, ValueError) as e:
        sys.exit(f"forgeone run: {e}")
    except ForgeError as e:
        sys.exit(f"forgeone run: {e}")
    if a.json:
        print(
            json.dumps(
                {**asdict(result), "output": result.output.decode("utf-8", "replace")}, indent=2
            )
        )
    else:
        for level, text in result.logs:
            print(f"[{level}] {text}", file=sys.stderr)
        if result.ok:
            sys.stdout.buffer.write(result.output)
            sys.stdout.flush()
        print(
            f"\n-- {result.plugin}@{result.version} {result.fn}: {result.error or 'ok'}, "
            f"guest {result.duration_us if result.duration_us is not None else '-'} us, "
            f"fuel {result.fuel_used if result.fuel_used is not None else '-'}, "
            f"compile cache {result.compile_cache}",
            file=sys.stderr,
        )
    sys.exit(0 if result.ok else 1)


if __name__ == "__main__":
    main()
