"""The plugin ABIs as data: which imports a guest may use and which exports it must have.

The worker links exactly these host functions; deployment checks a module's
shape against them before compiling (see docs/abi.md).
"""

from __future__ import annotations

from .manifest import ABI_FORGE_V1, Manifest
from .wasm_shape import FuncSig, ModuleShape

HOST_MODULE = "forge"

WASI_MODULE = "wasi_snapshot_preview1"

_I32, _I64 = "i32", "i64"

#: Host functions of ABI forge/1, module ``forge`` (docs/abi.md has their contracts).
FORGE_V1_IMPORTS: dict[str, FuncSig] = {
    "log": FuncSig((_I32, _I32, _I32), ()),
    "set_error": FuncSig((_I32, _I32), ()),
    "reject": FuncSig((_I32, _I32), ()),
    "now": FuncSig((), (_I64,)),
    "random": FuncSig((_I32, _I32), (_I32,)),
    "config_get": FuncSig((_I32, _I32), (_I64,)),
    "emit": FuncSig((_I32, _I32, _I32, _I32), (_I32,)),
    "kv_get": FuncSig((_I32, _I32, _I32, _I32), (_I64,)),
    "kv_put": FuncSig((_I32, _I32, _I32, _I32, _I32, _I32), (_I32,)),
    "call": FuncSig((_I32, _I32, _I32, _I32, _I32, _I32), (_I64,)),
}

#: Results host functions return to the guest when they cannot do what was asked.
#: (Functions returning i64 use them as negative values; i32 ones likewise.)
HOST_NOT_FOUND = -1
HOST_DENIED = -2
HOST_FAILED = -3
HOST_TIMEOUT = -4
HOST_TOO_LARGE = -5

#: Host functions usable only when the manifest requests a permission of this kind.
IMPORT_PERMISSIONS: dict[str, str] = {
    "log": "log",
    "now": "clock",
    "random": "random",
    "config_get": "config",
    "emit": "publish",
    "kv_get": "kv",
    "kv_put": "kv",
    "call": "call",
}

HANDLER_SIG = FuncSig(("i32", "i32"), ("i64",))
ALLOC_SIG = FuncSig(("i32",), ("i32",))
DEALLOC_SIG = FuncSig(("i32", "i32"), ())
INIT_SIG = FuncSig((), ("i32",))
SHUTDOWN_SIG = FuncSig((), ())


def check_abi(manifest: Manifest, shape: ModuleShape) -> list[str]:
    """Every way the module's shape breaks its manifest's ABI (empty when it fits)."""
    if manifest.abi != ABI_FORGE_V1:
        return [f"ABI {manifest.abi!r} is not supported by this version"]
    problems: list[str] = []
    unknown = []
    for imp in shape.imports:
        if imp.module == WASI_MODULE and imp.kind == "func":
            continue  # WASI preview 1: linked with nothing granted unless the policy says so
        want = FORGE_V1_IMPORTS.get(imp.name) if imp.module == HOST_MODULE else None
        if want is None or imp.kind != "func":
            unknown.append(f"{imp.module}.{imp.name}")
        elif imp.sig != want:
            problems.append(f"import {imp.module}.{imp.name} has type {imp.sig}, expected {want}")
    if unknown:
        problems.append("unknown imports: " + ", ".join(sorted(unknown)))
    for imp in shape.imports:
        needs = IMPORT_PERMISSIONS.get(imp.name) if imp.module == HOST_MODULE else None
        kinds = {p.partition(":")[0] for p in manifest.permissions}
        if needs and needs not in kinds:
            what = needs if needs in ("log", "clock", "random", "config") else f"{needs}:..."
            problems.append(
                f"import {imp.module}.{imp.name} needs a {what!r} permission in the manifest"
            )
    mem = shape.exports.get("memory")
    if mem is None or mem.kind != "memory":
        problems.append("module does not export its memory as 'memory'")
    required = {"alloc": ALLOC_SIG, **{fn: HANDLER_SIG for fn in manifest.exports}}
    optional = {
        "dealloc": DEALLOC_SIG,
        "init": INIT_SIG,
        "shutdown": SHUTDOWN_SIG,
        "_initialize": SHUTDOWN_SIG,
    }
    for name, sig in {**required, **optional}.items():
        exp = shape.exports.get(name)
        if exp is None:
            if name in required:
                problems.append(f"missing export {name!r} {sig}")
        elif exp.kind != "func" or exp.sig != sig:
            problems.append(f"export {name!r} has type {exp.sig or exp.kind}, expected {sig}")
    return problems


#: wasmtime ``Config`` switches every engine that runs or validates plugins uses.
#: Only what the ABIs need is on; threads (and shared memory), memory64,
#: multi-memory, GC, exceptions, tail calls, stack switching and the component
#: model stay off so that neither their attack surface nor their pitfalls
#: (e.g. ``memory.atomic.wait`` ignoring epoch interruption) reach a plugin.
WASM_FEATURES: dict[str, bool] = {
    "wasm_bulk_memory": True,
    "wasm_multi_value": True,
    "wasm_reference_types": True,
    "wasm_simd": True,
    "wasm_relaxed_simd": False,
    "wasm_threads": False,
    "shared_memory": False,
    "wasm_memory64": False,
    "wasm_multi_memory": False,
    "wasm_gc": False,
    "wasm_function_references": False,
    "wasm_exceptions": False,
    "wasm_tail_call": False,
    "wasm_stack_switching": False,
    "wasm_wide_arithmetic": False,
    "wasm_custom_page_sizes": False,
    "wasm_component_model": False,
}
