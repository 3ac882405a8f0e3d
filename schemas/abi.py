"""The plugin ABIs as data: which imports a guest may use and which exports it must have.

The worker links exactly these host functions; deployment checks a module's
shape against them before compiling (see docs/abi.md).
"""

from __future__ import annotations

from .manifest import ABI_EXTISM_V1, ABI_FORGE_V1, Manifest
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
    "event_subject": FuncSig((), (_I64,)),
    "event_header": FuncSig((_I32, _I32), (_I64,)),
}

#: Results host functions return to the guest when they cannot do what was asked.
#: (Functions returning i64 use them as negative values; i32 ones likewise.)
HOST_NOT_FOUND = -1
HOST_DENIED = -2
HOST_FAILED = -3
HOST_TIMEOUT = -4
HOST_TOO_LARGE = -5

#: Host functions with effects outside the call or that wait on the bus; a plugin
#: importing none of them (nor WASI) can run on the event loop thread and be re-run
#: safely after an aborted attempt.
BUS_IMPORTS = frozenset({"emit", "kv_get", "kv_put", "call"})

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
    if manifest.abi == ABI_EXTISM_V1:
        return check_extism_abi(manifest, shape)
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


# --- extism/1 (docs/abi.md, "extism/1") ------------------------------------------------
EXTISM_ENV_MODULE = "extism:host/env"
EXTISM_USER_MODULE = "extism:host/user"

#: ``extism:host/env`` functions served by the kernel (worker/extism_kernel.wat), a wasm
#: module instantiated beside each guest: guest loads and stores never reach Python.
EXTISM_KERNEL_IMPORTS: dict[str, FuncSig] = {
    "alloc": FuncSig((_I64,), (_I64,)),
    "free": FuncSig((_I64,), ()),
    "length": FuncSig((_I64,), (_I64,)),
    "length_unsafe": FuncSig((_I64,), (_I64,)),
    "load_u8": FuncSig((_I64,), (_I32,)),
    "load_u64": FuncSig((_I64,), (_I64,)),
    "store_u8": FuncSig((_I64, _I32), ()),
    "store_u64": FuncSig((_I64, _I64), ()),
    "input_length": FuncSig((), (_I64,)),
    "input_offset": FuncSig((), (_I64,)),
    "input_load_u8": FuncSig((_I64,), (_I32,)),
    "input_load_u64": FuncSig((_I64,), (_I64,)),
    "output_set": FuncSig((_I64, _I64), ()),
    "error_set": FuncSig((_I64,), ()),
}

#: ``extism:host/env`` functions the worker serves itself (worker/abi_extism.py).
EXTISM_HOST_IMPORTS: dict[str, FuncSig] = {
    "config_get": FuncSig((_I64,), (_I64,)),
    "var_get": FuncSig((_I64,), (_I64,)),
    "var_set": FuncSig((_I64, _I64), ()),
    "http_request": FuncSig((_I64, _I64), (_I64,)),
    "http_status_code": FuncSig((), (_I32,)),
    "http_headers": FuncSig((), (_I64,)),
    "log_trace": FuncSig((_I64,), ()),
    "log_debug": FuncSig((_I64,), ()),
    "log_info": FuncSig((_I64,), ()),
    "log_warn": FuncSig((_I64,), ()),
    "log_error": FuncSig((_I64,), ()),
    "get_log_level": FuncSig((), (_I32,)),
}

#: ForgeOne's own host functions for Extism guests (module ``extism:host/user``): every
#: argument is the offset of a kernel block; results are a block offset (0: empty) or,
#: when negative, one of the HOST_* codes above.
EXTISM_USER_IMPORTS: dict[str, FuncSig] = {
    "emit": FuncSig((_I64, _I64), (_I64,)),
    "kv_get": FuncSig((_I64, _I64), (_I64,)),
    "kv_put": FuncSig((_I64, _I64, _I64), (_I64,)),
    "call": FuncSig((_I64, _I64, _I64), (_I64,)),
}

#: (module, name) of extism/1 imports usable only when the manifest requests that kind.
EXTISM_IMPORT_PERMISSIONS: dict[tuple[str, str], str] = {
    **{(EXTISM_ENV_MODULE, f"log_{lvl}"): "log" for lvl in ("trace", "debug", "info", "warn")},
    (EXTISM_ENV_MODULE, "log_error"): "log",
    (EXTISM_ENV_MODULE, "config_get"): "config",
    (EXTISM_ENV_MODULE, "http_request"): "http",
    (EXTISM_USER_MODULE, "emit"): "publish",
    (EXTISM_USER_MODULE, "kv_get"): "kv",
    (EXTISM_USER_MODULE, "kv_put"): "kv",
    (EXTISM_USER_MODULE, "call"): "call",
}

#: Handler types: the result, when there is one, is 0 for success.
EXTISM_HANDLER_SIGS = (FuncSig((), (_I32,)), FuncSig((), ()))
#: Run once per instance when exported (``_initialize`` first; ctors only without it).
EXTISM_INIT_EXPORTS = ("_initialize", "__wasm_call_ctors")


def extism_import_table(module: str) -> dict[str, FuncSig] | None:
    if module == EXTISM_ENV_MODULE:
        return {**EXTISM_KERNEL_IMPORTS, **EXTISM_HOST_IMPORTS}
    if module == EXTISM_USER_MODULE:
        return EXTISM_USER_IMPORTS
    return None


def check_extism_abi(manifest: Manifest, shape: ModuleShape) -> list[str]:
    """Problems of an ``extism/1`` module: imports, permissions and handler types."""
    problems: list[str] = []
    unknown = []
    kinds = {p.partition(":")[0] for p in manifest.permissions}
    for imp in shape.imports:
        if imp.module == WASI_MODULE and imp.kind == "func":
            continue  # WASI preview 1: linked with nothing granted unless the policy says so
        table = extism_import_table(imp.module)
        want = table.get(imp.name) if table is not None else None
        if want is None or imp.kind != "func":
            unknown.append(f"{imp.module}.{imp.name}")
            continue
        if imp.sig != want:
            problems.append(f"import {imp.module}.{imp.name} has type {imp.sig}, expected {want}")
        needs = EXTISM_IMPORT_PERMISSIONS.get((imp.module, imp.name))
        if needs and needs not in kinds:
            what = needs if needs in ("log", "config") else f"{needs}:..."
            problems.append(
                f"import {imp.module}.{imp.name} needs a {what!r} permission in the manifest"
            )
    if unknown:
        problems.append("unknown imports: " + ", ".join(sorted(unknown)))
    for fn in manifest.exports:
        exp = shape.exports.get(fn)
        if exp is None:
            problems.append(f"missing export {fn!r} () -> (i32) or () -> ()")
        elif exp.kind != "func" or exp.sig not in EXTISM_HANDLER_SIGS:
            problems.append(
                f"export {fn!r} has type {exp.sig or exp.kind}, expected () -> (i32) or () -> ()"
            )
    for name in EXTISM_INIT_EXPORTS:
        exp = shape.exports.get(name)
        if exp is not None and (exp.kind != "func" or exp.sig != SHUTDOWN_SIG):
            problems.append(f"export {name!r} has type {exp.sig or exp.kind}, expected () -> ()")
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
