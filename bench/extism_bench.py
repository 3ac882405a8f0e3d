"""Extism plugins on ForgeOne's extism/1 adapter vs Extism's own Python host SDK.

    python bench/extism_bench.py [--quick] [--json OUT.json]

Per call: the same .wasm run in-process (no NATS) through ForgeOne's runtime,
built as a worker builds it (``make_runtime`` -> ``ExtismInstance.call``), and
through the Extism Python SDK (``extism.Plugin.call``, from PyPI), for

    echo          the input copied to the output (through guest memory)
    count_vowels  reads every input byte

at 100 B and 10 KB inputs, for two builds of those plugins: one written in
WAT against the Extism ABI (tests/extism/kitchen.wat) and one built with the
Extism AssemblyScript PDK (tests/extism/as/, needs npm; skipped without).
Each point is the median over repetitions of a timed loop.

Cold start of a ~2 MB Extism plugin (generated WAT, thousands of functions),
from the bytes to the first result: ForgeOne compiling it through
worker.compile_cache.CompileCache on a miss and loading it on a hit, then
instantiating and calling once, vs ``extism.Plugin(wasm)`` + first call with
Extism's own compiled-code cache (wasmtime's, in a fresh folder) missing and
hitting, and ``extism.Plugin(CompiledPlugin)`` + first call (compiled in
memory beforehand, which a new worker process cannot have).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import wasmtime  # noqa: E402

from bench.perf import chained_wat, grow_wasm  # noqa: E402
from schemas.policy import Caps  # noqa: E402
from schemas.wasm_shape import read_shape  # noqa: E402
from tests.cluster import manifest_for  # noqa: E402
from worker.adapters import make_runtime  # noqa: E402
from worker.compile_cache import CompileCache  # noqa: E402
from worker.engine import Engines  # noqa: E402
from worker.host import CallMeta, Grants, HostEnv  # noqa: E402
from worker.runtime import (  # noqa: E402
    PluginRuntime,
    WorkerCaps,
    effective_limits,
    engine_settings_for,
)

KITCHEN = REPO / "tests" / "extism" / "kitchen.wat"
AS_DIR = REPO / "tests" / "extism" / "as"
FNS = ("echo", "count_vowels")
SIZES = (100, 10_000)


def _extism() -> Any:
    try:
        import extism  # type: ignore[import-untyped]
    except ImportError:
        sys.exit("extism is not installed: pip install -e '.[dev]' (it is in the dev extra)")
    return extism


def as_plugin() -> bytes | None:
    """The AssemblyScript PDK build of the test plugin, or None without npm."""
    spec = importlib.util.spec_from_file_location("forge_build", REPO / "plugins" / "build.py")
    assert spec is not None and spec.loader is not None
    b = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(b)
    out = AS_DIR / "build" / "plugin.wasm"
    deps = [AS_DIR / "plugin.ts", AS_DIR / "package.json", AS_DIR / "asconfig.json"]
    if not b._up_to_date(out, deps):
        out.parent.mkdir(exist_ok=True)
        try:
            b.build_assemblyscript(AS_DIR, "plugin.ts", out)
        except b.BuildSkipped as e:
            print(f"skipping the AssemblyScript plugin: {e}", file=sys.stderr)
            return None
    return out.read_bytes()


def runtime(engines: Engines, wasm: bytes, module: wasmtime.Module | None = None) -> PluginRuntime:
    """A runtime exactly as worker/loader.py builds one (no bus bridge)."""
    exports = [name for name in read_shape(wasm).exports if name in (*FNS, "run")]
    manifest = manifest_for("bench", wasm, abi="extism/1", exports=exports)
    limits = effective_limits(manifest, WorkerCaps(), Caps())
    if module is None:
        module = wasmtime.Module(engines.get(engine_settings_for(limits)), wasm)
    env = HostEnv("bench", "1.0.0", Grants([]))
    return make_runtime(engines, manifest, module, limits, env)


def per_call_us(fn: Callable[[], object], calls: int, reps: int) -> float:
    """Median over ``reps`` timed loops of ``calls`` calls, in microseconds per call."""
    for _ in range(max(50, calls // 10)):
        fn()
    samples = []
    for _ in range(reps):
        t = time.perf_counter_ns()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter_ns() - t) / calls / 1000)
    return statistics.median(samples)


def bench_calls(label: str, wasm: bytes, calls: int, reps: int, rows: list[dict[str, Any]]) -> None:
    extism = _extism()
    engines = Engines()
    try:
        inst = runtime(engines, wasm).new_instance()
        plugin = extism.Plugin(wasm, wasi=False)
        meta = CallMeta(deadline=time.monotonic() + 3600)
        for fn in FNS:
            for size in SIZES:
                data = (b"The quick brown fox jumps over the lazy dog. " * 250)[:size]
                ours = inst.call(fn, data, meta).output
                theirs = bytes(plugin.call(fn, data))
                assert ours == theirs, (label, fn, size, ours[:40], theirs[:40])
                n = calls if size <= 100 else max(200, calls // 5)
                # interleave the two hosts so machine noise hits both alike
                f_samples, e_samples = [], []
                for _ in range(reps):
                    f_samples.append(per_call_us(partial(inst.call, fn, data, meta), n, 1))
                    e_samples.append(per_call_us(partial(plugin.call, fn, data), n, 1))
                forge_us = statistics.median(f_samples)
                extism_us = statistics.median(e_samples)
                rows.append(
                    {
                        "plugin": label,
                        "fn": fn,
                        "input": size,
                        "forgeone_us": round(forge_us, 2),
                        "extism_us": round(extism_us, 2),
                        "ratio": round(forge_us / extism_us, 2),
                    }
                )
                print(f"  {label} {fn} {size} B done", file=sys.stderr)
    finally:
        engines.close()


def big_extism_wat(functions: int, ops: int) -> str:
    """An Extism-ABI module with ``functions`` chained arithmetic functions and an echo."""
    return chained_wat(
        [
            '(import "extism:host/env" "input_length" (func $input_length (result i64)))',
            '(import "extism:host/env" "input_offset" (func $input_offset (result i64)))',
            '(import "extism:host/env" "output_set" (func $output_set (param i64 i64)))',
            '(memory (export "memory") 1)',
        ],
        '(func (export "run") (result i32)'
        " (drop (call $f0 (i32.wrap_i64 (call $input_length))))"
        " (call $output_set (call $input_offset) (call $input_length)) (i32.const 0))",
        functions,
        ops,
    )


def big_wasm(min_bytes: int) -> bytes:
    """An Extism-ABI module of at least ``min_bytes``."""
    return grow_wasm(big_extism_wat, min_bytes)


def bench_cold(reps: int, rows: list[dict[str, Any]]) -> int:
    """Deploy-side cold start, in-process: from the .wasm bytes to the first result.

    Both sides keep compiled code on disk: ForgeOne in its CompileCache, Extism in
    wasmtime's cache (pointed at a fresh folder per repetition through
    EXTISM_CACHE_CONFIG, so its first plugin is a miss and its second a hit).
    """
    extism = _extism()
    wasm = big_wasm(2 * 1024 * 1024)
    digest = hashlib.sha256(wasm).hexdigest()
    kinds = ("miss", "hit", "extism_miss", "extism_hit", "extism_compiled")
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    saved = os.environ.get("EXTISM_CACHE_CONFIG")
    try:
        for _ in range(reps):
            with tempfile.TemporaryDirectory(prefix="extism-bench-cache-") as tmp:
                for kind in ("miss", "hit"):
                    engines = Engines()  # a fresh engine, as in a new worker process
                    try:
                        t = time.perf_counter()
                        m = manifest_for("bench", wasm, abi="extism/1", exports=["run"])
                        settings = engine_settings_for(effective_limits(m, WorkerCaps(), Caps()))
                        compiled = CompileCache(Path(tmp)).load(
                            engines.get(settings), settings, wasm, digest
                        )
                        assert compiled.cache_result == kind, compiled.cache_result
                        inst = runtime(engines, wasm, compiled.module).new_instance()
                        out = inst.call("run", b"ping", CallMeta(time.monotonic() + 60)).output
                        samples[kind].append(time.perf_counter() - t)
                        assert out == b"ping"
                    finally:
                        engines.close()
                config = Path(tmp) / "extism-cache.toml"
                config.write_text(f'[cache]\ndirectory = "{tmp}/extism"\n')
                os.environ["EXTISM_CACHE_CONFIG"] = str(config)
                for kind in ("extism_miss", "extism_hit"):
                    t = time.perf_counter()
                    plugin = extism.Plugin(wasm, wasi=False)
                    assert bytes(plugin.call("run", b"ping")) == b"ping"
                    samples[kind].append(time.perf_counter() - t)
                    del plugin
                compiled_plugin = extism.extism.CompiledPlugin(wasm, wasi=False)
                t = time.perf_counter()
                plugin = extism.Plugin(compiled_plugin)
                assert bytes(plugin.call("run", b"ping")) == b"ping"
                samples["extism_compiled"].append(time.perf_counter() - t)
            print("  cold start repetition done", file=sys.stderr)
    finally:
        if saved is None:
            os.environ.pop("EXTISM_CACHE_CONFIG", None)
        else:
            os.environ["EXTISM_CACHE_CONFIG"] = saved
    med = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    for case, ours, theirs in (
        ("compile cache miss vs extism.Plugin(wasm), cache miss", "miss", "extism_miss"),
        ("compile cache hit vs extism.Plugin(wasm), cache hit", "hit", "extism_hit"),
        ("compile cache hit vs extism.Plugin(CompiledPlugin)", "hit", "extism_compiled"),
    ):
        rows.append(
            {
                "case": case,
                "forgeone_ms": round(med[ours], 1),
                "extism_ms": round(med[theirs], 1),
                "ratio": round(med[ours] / med[theirs], 2),
            }
        )
    return len(wasm)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small counts (a smoke run)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args(argv)
    calls, reps = (300, 3) if a.quick else (3000, 7)
    extism = _extism()
    plugins = [("wat", bytes(wasmtime.wat2wasm(KITCHEN.read_text())))]
    as_wasm = as_plugin()
    if as_wasm is not None:
        plugins.append(("as-pdk", as_wasm))
    calls_rows: list[dict[str, Any]] = []
    for label, wasm in plugins:
        bench_calls(label, wasm, calls, reps, calls_rows)
    cold_rows: list[dict[str, Any]] = []
    size = bench_cold(1 if a.quick else 3, cold_rows)

    print(f"\nPer call, in-process (extism SDK {extism.extism_version()}), median of {reps} runs")
    head = f"{'plugin':<8} {'function':<13} {'input':>7} {'ForgeOne':>10} {'Extism':>10}"
    print(f"{head} {'ratio':>6}")
    for r in calls_rows:
        print(
            f"{r['plugin']:<8} {r['fn']:<13} {r['input']:>5} B {r['forgeone_us']:>7.1f} us "
            f"{r['extism_us']:>7.1f} us {r['ratio']:>5.2f}x"
        )
    print(f"\nCold start of a {size / 1e6:.1f} MB Extism plugin, to the first result")
    print(f"{'case':<56} {'ForgeOne':>10} {'Extism':>10} {'ratio':>6}")
    for r in cold_rows:
        print(
            f"{r['case']:<56} {r['forgeone_ms']:>7.1f} ms {r['extism_ms']:>7.1f} ms "
            f"{r['ratio']:>5.2f}x"
        )
    if a.json:
        a.json.write_text(json.dumps({"calls": calls_rows, "cold": cold_rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
