"""The ``.forgepkg`` format and its signatures (schemas/package.py, signing.py, wasm_shape.py).

verify_package is the gate every deployment passes: it must accept exactly
the packages a trusted key signed, and refuse everything else with a
:class:`PackageRejected` that says why -- never another exception.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import warnings
import zipfile
from typing import Any

import pytest
import wasmtime
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import to_obj
from schemas.errors import ErrorCode, PackageRejected
from schemas.manifest import Manifest, canonical_manifest
from schemas.package import (
    MAX_MANIFEST_BYTES,
    MAX_PACKAGE_BYTES,
    MAX_SIGNATURE_BYTES,
    MAX_WASM_BYTES,
    VerifiedPackage,
    build_package,
    package_digest,
    verify_package,
)
from schemas.signing import TrustStore, generate_key, key_id
from schemas.wasm_shape import MAGIC, ModuleShape, WasmShapeError, read_shape

FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

HANDLER = "(param i32 i32) (result i64)"


def wat_module(*, imports: str = "", handler: str = HANDLER, more: str = "") -> bytes:
    """A small forge/1 module: memory, alloc and the handler ``echo`` (never run here)."""
    return wasmtime.wat2wasm(
        f"""(module
          {imports}
          (memory (export "memory") 1)
          (func (export "alloc") (param i32) (result i32) i32.const 1024)
          (func (export "echo") {handler} unreachable)
          {more})"""
    )


LOG_IMPORT = '(import "forge" "log" (func (param i32 i32 i32)))'

WASM = wat_module()
WASM_WITH_LOG = wat_module(imports=LOG_IMPORT)


def manifest_for(wasm: bytes, **kw: Any) -> Manifest:
    fields: dict[str, Any] = {
        "name": "echo",
        "version": "1.0.0",
        "abi": "forge/1",
        "wasm_sha256": hashlib.sha256(wasm).hexdigest(),
        "exports": ["echo"],
        "description": "Returns its input.",
    }
    fields.update(kw)
    return Manifest(**fields)


KEY = generate_key()
KID = key_id(KEY.public_key())
TRUST = TrustStore().with_key(KEY.public_key(), "release team")
MANIFEST = manifest_for(WASM)
PACKAGE = build_package(MANIFEST, WASM, KEY)


def entries(pkg: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(pkg)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def rezip(items: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip holding exactly ``items`` in order (duplicates allowed)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names
        with zipfile.ZipFile(buf, "w", method) as zf:
            for name, data in items:
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = method
                zf.writestr(info, data)
    return buf.getvalue()


def signature_for(body: bytes, key: Any = KEY) -> bytes:
    return json.dumps(
        {
            "alg": "ed25519",
            "key_id": key_id(key.public_key()),
            "signature": base64.b64encode(key.sign(body)).decode(),
        },
        sort_keys=True,
    ).encode()


def signed(body: bytes, wasm: bytes, key: Any = KEY) -> bytes:
    """A package of arbitrary manifest bytes, validly signed by ``key``."""
    return rezip(
        [("plugin.json", body), ("plugin.wasm", wasm), ("plugin.sig", signature_for(body, key))]
    )


def canonical_json(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def rejected(pkg: bytes, *needles: str, trust: TrustStore = TRUST) -> PackageRejected:
    with pytest.raises(PackageRejected) as ei:
        verify_package(pkg, trust)
    err = ei.value
    assert err.code is ErrorCode.PACKAGE_REJECTED
    for needle in needles:
        assert needle in err.message, f"{needle!r} not in {err.message!r}"
    return err


# --- what is accepted ---------------------------------------------------------------------


def test_valid_package_verifies() -> None:
    v = verify_package(PACKAGE, TRUST)
    assert isinstance(v, VerifiedPackage)
    assert v.manifest == MANIFEST
    assert v.wasm == WASM
    assert v.key_id == KID
    assert v.digest == hashlib.sha256(PACKAGE).hexdigest() == package_digest(PACKAGE)
    assert set(entries(PACKAGE)) == {"plugin.json", "plugin.wasm", "plugin.sig"}
    assert entries(PACKAGE)["plugin.json"] == canonical_manifest(MANIFEST)


def test_build_package_is_deterministic() -> None:
    """Same manifest, module and key: same bytes, so the same object-store digest."""
    assert build_package(MANIFEST, WASM, KEY) == PACKAGE


def test_build_package_refuses_a_manifest_for_another_module() -> None:
    with pytest.raises(ValueError, match="wasm_sha256"):
        build_package(MANIFEST, WASM_WITH_LOG, KEY)


def test_stored_entries_are_accepted_too() -> None:
    e = entries(PACKAGE)
    pkg = rezip(list(e.items()), method=zipfile.ZIP_STORED)
    assert verify_package(pkg, TRUST).manifest == MANIFEST


def test_entry_order_does_not_matter() -> None:
    e = entries(PACKAGE)
    pkg = rezip([(n, e[n]) for n in ("plugin.sig", "plugin.wasm", "plugin.json")])
    assert verify_package(pkg, TRUST).wasm == WASM


def test_log_import_with_permission_verifies() -> None:
    m = manifest_for(WASM_WITH_LOG, permissions=["log"])
    v = verify_package(build_package(m, WASM_WITH_LOG, KEY), TRUST)
    assert v.manifest.permissions == ["log"]
    assert v.wasm == WASM_WITH_LOG


def test_log_import_without_permission_is_refused() -> None:
    pkg = build_package(manifest_for(WASM_WITH_LOG), WASM_WITH_LOG, KEY)
    rejected(pkg, "forge.log needs a 'log' permission")


def test_one_of_several_trusted_keys() -> None:
    other = generate_key()
    trust = TrustStore().with_key(other.public_key()).with_key(KEY.public_key())
    assert verify_package(PACKAGE, trust).key_id == KID
    assert verify_package(build_package(MANIFEST, WASM, other), trust).key_id == key_id(
        other.public_key()
    )


# --- signature and integrity refusals -------------------------------------------------------


def test_tampered_wasm() -> None:
    e = entries(PACKAGE)
    wasm = bytearray(e["plugin.wasm"])
    wasm[-1] ^= 0x01
    pkg = rezip(
        [
            ("plugin.json", e["plugin.json"]),
            ("plugin.wasm", bytes(wasm)),
            ("plugin.sig", e["plugin.sig"]),
        ]
    )
    rejected(pkg, "tampered module", "does not match")


def test_tampered_manifest() -> None:
    e = entries(PACKAGE)
    obj = json.loads(e["plugin.json"])
    obj["limits"]["memory_mb"] = 4096  # still canonical, but not what was signed
    pkg = rezip(
        [
            ("plugin.json", canonical_json(obj)),
            ("plugin.wasm", e["plugin.wasm"]),
            ("plugin.sig", e["plugin.sig"]),
        ]
    )
    rejected(pkg, "signature does not verify", KID)


def test_manifest_swapped_for_another_validly_signed_one() -> None:
    """A signature is for one manifest only."""
    e = entries(PACKAGE)
    other = build_package(manifest_for(WASM, version="9.9.9"), WASM, KEY)
    pkg = rezip(
        [
            ("plugin.json", entries(other)["plugin.json"]),
            ("plugin.wasm", WASM),
            ("plugin.sig", e["plugin.sig"]),
        ]
    )
    rejected(pkg, "signature does not verify")


def test_missing_signature() -> None:
    e = entries(PACKAGE)
    rejected(
        rezip([("plugin.json", e["plugin.json"]), ("plugin.wasm", e["plugin.wasm"])]),
        "package has no signature",
    )


def test_missing_manifest_or_module() -> None:
    e = entries(PACKAGE)
    rejected(
        rezip([("plugin.wasm", e["plugin.wasm"]), ("plugin.sig", e["plugin.sig"])]),
        "no entry 'plugin.json'",
    )
    rejected(
        rezip([("plugin.json", e["plugin.json"]), ("plugin.sig", e["plugin.sig"])]),
        "no entry 'plugin.wasm'",
    )


def test_signature_from_untrusted_key() -> None:
    stranger = generate_key()
    pkg = build_package(MANIFEST, WASM, stranger)
    rejected(pkg, "not in the trust store", key_id(stranger.public_key()))


def test_signature_by_untrusted_key_claiming_a_trusted_key_id() -> None:
    stranger = generate_key()
    body = canonical_manifest(MANIFEST)
    sig = json.dumps(
        {
            "alg": "ed25519",
            "key_id": KID,
            "signature": base64.b64encode(stranger.sign(body)).decode(),
        }
    ).encode()
    pkg = rezip([("plugin.json", body), ("plugin.wasm", WASM), ("plugin.sig", sig)])
    rejected(pkg, "signature does not verify")


def test_signature_from_revoked_key() -> None:
    revoked = TRUST.revoke(KID)
    rejected(PACKAGE, "has been revoked", KID, trust=revoked)
    # revoking does not touch the other keys
    other = generate_key()
    trust = TRUST.with_key(other.public_key()).revoke(KID)
    assert verify_package(build_package(MANIFEST, WASM, other), trust).manifest == MANIFEST


def test_empty_trust_store_trusts_nothing() -> None:
    rejected(PACKAGE, "not in the trust store", trust=TrustStore())


@pytest.mark.parametrize(
    "sig",
    [
        b"not json",
        b"[]",
        b'"ed25519"',
        b"{}",
        b'{"alg": "rsa", "key_id": "x", "signature": ""}',
        b'{"alg": "ed25519", "signature": "AAAA"}',
        b'{"alg": "ed25519", "key_id": 5, "signature": "AAAA"}',
        b'{"alg": "ed25519", "key_id": "abc", "signature": "!!not base64!!"}',
        b'{"alg": "ed25519", "key_id": "abc", "signature": "\xc3\xa9t\xc3\xa9"}',
        b"\xff\xfe\x00",
    ],
    ids=[
        "text",
        "list",
        "string",
        "empty",
        "rsa",
        "no-key-id",
        "int-key-id",
        "bad-b64",
        "non-ascii-b64",
        "not-utf8",
    ],
)
def test_malformed_signature(sig: bytes) -> None:
    e = entries(PACKAGE)
    pkg = rezip(
        [("plugin.json", e["plugin.json"]), ("plugin.wasm", e["plugin.wasm"]), ("plugin.sig", sig)]
    )
    rejected(pkg, "malformed signature")


def test_signature_of_the_wrong_length() -> None:
    e = entries(PACKAGE)
    for raw in (b"", b"\x00" * 63, b"\x00" * 65):
        sig = json.dumps(
            {"alg": "ed25519", "key_id": KID, "signature": base64.b64encode(raw).decode()}
        ).encode()
        pkg = rezip([("plugin.json", e["plugin.json"]), ("plugin.wasm", WASM), ("plugin.sig", sig)])
        rejected(pkg, "signature does not verify")


# --- archive refusals -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"plugin.json",
        b"PK\x03\x04" + b"\x00" * 60,
        WASM,
        PACKAGE[: len(PACKAGE) // 2],
        PACKAGE[:-1],
    ],
    ids=["empty", "text", "zip-magic-only", "bare-wasm", "first-half", "no-last-byte"],
)
def test_not_a_zip(data: bytes) -> None:
    rejected(data, "not a valid package archive")


@pytest.mark.parametrize(
    "name", ["../plugin.wasm", "/etc/passwd", "a/../../plugin.json", "\\evil.wasm", "C:plugin.wasm"]
)
def test_path_traversal_entry(name: str) -> None:
    e = entries(PACKAGE)
    pkg = rezip([*e.items(), (name, b"\x00asm")])
    err = rejected(pkg, "path traversal")
    assert repr(name) in err.message


def test_path_traversal_entry_replacing_a_real_one() -> None:
    e = entries(PACKAGE)
    pkg = rezip(
        [
            ("plugin.json", e["plugin.json"]),
            ("../plugin.wasm", e["plugin.wasm"]),
            ("plugin.sig", e["plugin.sig"]),
        ]
    )
    rejected(pkg, "'../plugin.wasm' is a path traversal attempt")


def test_duplicate_entry_names() -> None:
    """The classic zip confusion: two plugin.wasm, a reader might pick either."""
    e = entries(PACKAGE)
    evil = wat_module(imports='(import "env" "system" (func (param i32)))')
    for first, second in ((e["plugin.wasm"], evil), (evil, e["plugin.wasm"])):
        pkg = rezip(
            [
                ("plugin.json", e["plugin.json"]),
                ("plugin.wasm", first),
                ("plugin.wasm", second),
                ("plugin.sig", e["plugin.sig"]),
            ]
        )
        rejected(pkg, "'plugin.wasm' appears twice")
    pkg = rezip([*e.items(), ("plugin.sig", e["plugin.sig"])])
    rejected(pkg, "'plugin.sig' appears twice")


@pytest.mark.parametrize(
    "name", ["README.md", "plugin.wasm.bak", "Plugin.json", "lib/", "plugin.json/x"]
)
def test_unexpected_entry(name: str) -> None:
    pkg = rezip([*entries(PACKAGE).items(), (name, b"hello")])
    rejected(pkg, f"unexpected archive entry {name!r}")


def test_encrypted_entry_flag() -> None:
    e = entries(PACKAGE)
    pkg = bytearray(rezip(list(e.items())))
    cd = pkg.find(b"PK\x01\x02")
    pkg[cd + 8] |= 0x01  # general purpose flag bit 0 in the central directory
    rejected(bytes(pkg), "is encrypted")


def test_unsupported_compression_method() -> None:
    e = entries(PACKAGE)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in e.items():
            zf.writestr(name, data, compress_type=zipfile.ZIP_BZIP2)
    rejected(buf.getvalue(), "unsupported compression method")


def test_entry_declared_over_its_cap() -> None:
    e = entries(PACKAGE)
    big = b"{" + b" " * MAX_MANIFEST_BYTES + b"}"
    pkg = rezip(
        [("plugin.json", big), ("plugin.wasm", e["plugin.wasm"]), ("plugin.sig", e["plugin.sig"])]
    )
    rejected(pkg, "'plugin.json'", f"over {MAX_MANIFEST_BYTES}")
    pkg = rezip(
        [
            ("plugin.json", e["plugin.json"]),
            ("plugin.wasm", e["plugin.wasm"]),
            ("plugin.sig", b" " * (MAX_SIGNATURE_BYTES + 1)),
        ]
    )
    rejected(pkg, "'plugin.sig'", f"over {MAX_SIGNATURE_BYTES}")


def test_deflate_bomb() -> None:
    """25 MiB of zeros compress to a few KiB: refused from the declared size, unread."""
    e = entries(PACKAGE)
    bomb = MAGIC + bytes(MAX_WASM_BYTES)
    pkg = rezip(
        [("plugin.json", e["plugin.json"]), ("plugin.wasm", bomb), ("plugin.sig", e["plugin.sig"])]
    )
    assert len(pkg) < 100_000
    rejected(pkg, "'plugin.wasm'", f"over {MAX_WASM_BYTES}")


def test_deflate_bomb_that_lies_about_its_size() -> None:
    """Declared small, inflates huge: reading stops at the declared size and fails its CRC."""
    e = entries(PACKAGE)
    bomb = MAGIC + bytes(MAX_WASM_BYTES)
    pkg = bytearray(
        rezip(
            [
                ("plugin.json", e["plugin.json"]),
                ("plugin.wasm", bomb),
                ("plugin.sig", e["plugin.sig"]),
            ]
        )
    )
    with zipfile.ZipFile(io.BytesIO(bytes(pkg))) as zf:
        info = zf.getinfo("plugin.wasm")
    # patch the uncompressed size in the local header and the central directory
    struct.pack_into("<I", pkg, info.header_offset + 22, 1000)
    cd = pkg.find(b"PK\x01\x02")
    while cd != -1:
        name_len = struct.unpack_from("<H", pkg, cd + 28)[0]
        if pkg[cd + 46 : cd + 46 + name_len] == b"plugin.wasm":
            struct.pack_into("<I", pkg, cd + 24, 1000)
        cd = pkg.find(b"PK\x01\x02", cd + 4)
    rejected(bytes(pkg), "'plugin.wasm' is corrupt", "CRC")


def test_package_over_the_size_cap() -> None:
    rejected(PACKAGE + bytes(MAX_PACKAGE_BYTES), "over the", str(MAX_PACKAGE_BYTES))


# --- manifest refusals ----------------------------------------------------------------------


def test_manifest_not_canonical_json() -> None:
    """Same content, pretty-printed and validly signed: refused, signatures cover one form."""
    pretty = json.dumps(to_obj(MANIFEST), indent=2).encode()
    assert json.loads(pretty) == json.loads(canonical_manifest(MANIFEST))
    rejected(signed(pretty, WASM), "not in canonical form")


def test_manifest_with_omitted_defaults_is_not_canonical() -> None:
    obj = to_obj(MANIFEST)
    del obj["description"]
    rejected(signed(canonical_json(obj), WASM), "not in canonical form")


def test_manifest_with_duplicate_keys_is_not_canonical() -> None:
    body = canonical_manifest(MANIFEST)
    dup = b'{"abi":"extism/1",' + body[1:]
    rejected(signed(dup, WASM), "not in canonical form")


def test_manifest_not_json() -> None:
    rejected(signed(b"name = 'echo'", WASM), "invalid manifest", "not valid JSON")


def test_manifest_with_invalid_fields() -> None:
    obj = to_obj(MANIFEST)
    obj["name"] = "echo.all"
    rejected(signed(canonical_json(obj), WASM), "invalid manifest", "name")


def test_manifest_exports_reserved_name() -> None:
    """Manifest() refuses 'alloc', so the package is hand-made and validly signed."""
    obj = to_obj(MANIFEST)
    obj["exports"] = ["echo", "alloc"]
    rejected(signed(canonical_json(obj), WASM), "invalid manifest", "'alloc' is reserved")


def test_forge_module_under_the_extism_abi_is_refused() -> None:
    """A forge/1 module declared as extism/1 does not fit that ABI's handler shape."""
    m = manifest_for(WASM, abi="extism/1")
    rejected(build_package(m, WASM, KEY), "expected () -> (i32) or () -> ()")


# --- module refusals ------------------------------------------------------------------------


def test_wasm_without_magic_header() -> None:
    wasm = b"\x7fELF" + WASM[4:]
    rejected(build_package(manifest_for(wasm), wasm, KEY), "not valid WebAssembly", "magic number")


def test_wasm_version_2_is_refused() -> None:
    wasm = WASM[:4] + b"\x02\x00\x00\x00" + WASM[8:]
    rejected(build_package(manifest_for(wasm), wasm, KEY), "magic number")


def test_wasm_truncated() -> None:
    wasm = WASM[:-3]
    rejected(
        build_package(manifest_for(wasm), wasm, KEY), "not valid WebAssembly", "runs past the end"
    )


def test_wasm_garbled_type_section() -> None:
    # section 1 (types) starts right after the header; its first type is 0x60 <params> ...
    assert WASM[8] == 1
    body = bytearray(WASM)
    form = body.index(0x60, 8)
    body[form + 2] = 0x40  # first param's value type -> not a value type
    wasm = bytes(body)
    rejected(
        build_package(manifest_for(wasm), wasm, KEY),
        "not valid WebAssembly",
        "unsupported value type 0x40",
    )


def test_wasm_unknown_section() -> None:
    wasm = WASM + b"\x0e\x01\x00"
    rejected(build_package(manifest_for(wasm), wasm, KEY), "unknown section id 14")


def test_module_importing_unknown_host_function() -> None:
    wasm = wat_module(imports='(import "env" "system" (func (param i32 i32) (result i32)))')
    rejected(build_package(manifest_for(wasm), wasm, KEY), "unknown imports", "env.system")


def test_module_importing_forge_function_that_does_not_exist() -> None:
    wasm = wat_module(imports='(import "forge" "exec" (func (param i32)))')
    rejected(build_package(manifest_for(wasm), wasm, KEY), "unknown imports", "forge.exec")


def test_module_importing_host_function_with_wrong_type() -> None:
    wasm = wat_module(imports='(import "forge" "log" (func (param i64)))')
    m = manifest_for(wasm, permissions=["log"])
    rejected(
        build_package(m, wasm, KEY),
        "import forge.log has type (i64) -> ()",
        "expected (i32, i32, i32) -> ()",
    )


def test_module_importing_memory_is_refused() -> None:
    wasm = wasmtime.wat2wasm("""(module (import "forge" "memory" (memory 1))
      (export "memory" (memory 0))
      (func (export "alloc") (param i32) (result i32) i32.const 0)
      (func (export "echo") (param i32 i32) (result i64) i64.const 0))""")
    rejected(build_package(manifest_for(wasm), wasm, KEY), "unknown imports", "forge.memory")


def test_module_missing_declared_handler() -> None:
    m = manifest_for(WASM, exports=["echo", "reverse"])
    rejected(build_package(m, WASM, KEY), "missing export 'reverse'")


def test_module_missing_alloc_and_memory() -> None:
    wasm = wasmtime.wat2wasm(
        '(module (func (export "echo") (param i32 i32) (result i64) i64.const 0))'
    )
    err = rejected(build_package(manifest_for(wasm), wasm, KEY), "missing export 'alloc'")
    assert "does not export its memory" in err.message


def test_handler_with_wrong_type() -> None:
    wasm = wat_module(handler="(param i32) (result i64)")
    rejected(
        build_package(manifest_for(wasm), wasm, KEY),
        "export 'echo' has type (i32) -> (i64)",
        "expected (i32, i32) -> (i64)",
    )


def test_handler_that_is_not_a_function() -> None:
    wasm = wasmtime.wat2wasm("""(module (memory (export "memory") 1)
      (func (export "alloc") (param i32) (result i32) i32.const 0)
      (global (export "echo") i32 (i32.const 0)))""")
    rejected(build_package(manifest_for(wasm), wasm, KEY), "export 'echo' has type global")


def test_optional_lifecycle_export_with_wrong_type() -> None:
    wasm = wat_module(more='(func (export "init") (param i32))')
    rejected(build_package(manifest_for(wasm), wasm, KEY), "export 'init'", "expected () -> (i32)")


# --- known bugs: other exceptions escape verify_package -------------------------------------


def _corrupt_deflate(pkg: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(pkg)) as zf:
        info = zf.getinfo("plugin.wasm")
    name_len, extra_len = struct.unpack_from("<HH", pkg, info.header_offset + 26)
    data_at = info.header_offset + 30 + name_len + extra_len
    out = bytearray(pkg)
    out[data_at] = 0xFF  # BFINAL=1, BTYPE=11: a reserved (invalid) deflate block type
    return bytes(out)


def test_corrupt_deflate_stream_is_rejected() -> None:
    rejected(_corrupt_deflate(PACKAGE), "corrupt")


def _set_central_flag(pkg: bytes, bit: int) -> bytes:
    out = bytearray(pkg)
    cd = out.find(b"PK\x01\x02")
    out[cd + 8] |= bit
    return bytes(out)


@pytest.mark.parametrize("bit", [0x20, 0x40], ids=["patched-data", "strong-encryption"])
def test_unsupported_zip_flag_bits_are_rejected(bit: int) -> None:
    rejected(_set_central_flag(PACKAGE, bit))


def test_deeply_nested_signature_json_is_rejected() -> None:
    e = entries(PACKAGE)
    pkg = rezip(
        [
            ("plugin.json", e["plugin.json"]),
            ("plugin.wasm", e["plugin.wasm"]),
            ("plugin.sig", b"[" * 4000),
        ]
    )
    rejected(pkg, "malformed signature")


def test_manifest_with_fuel_beyond_u64_is_rejected() -> None:
    obj = to_obj(MANIFEST)
    obj["limits"]["fuel"] = 2**64
    rejected(signed(canonical_json(obj), WASM), "invalid manifest", "fuel")


# --- property tests -------------------------------------------------------------------------

_mutation = st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete"]),
    st.integers(min_value=0, max_value=len(PACKAGE) - 1),
    st.integers(min_value=0, max_value=255),
)


def _mutate(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    out = bytearray(data)
    for op, pos, value in ops:
        pos %= max(len(out), 1)
        if op == "flip" and out:
            out[pos] ^= 1 << (value % 8)
        elif op == "set" and out:
            out[pos] = value
        elif op == "insert":
            out.insert(pos, value)
        elif op == "delete" and out:
            del out[pos]
    return bytes(out)


def _verify_or_reject(data: bytes) -> None:
    try:
        v = verify_package(data, TRUST)
    except PackageRejected:
        return
    # whatever still verifies carries exactly the signed content; only the digest
    # (a name for these particular bytes) may differ
    assert v.manifest == MANIFEST
    assert v.wasm == WASM
    assert v.key_id == KID
    assert v.digest == package_digest(data)


@FUZZ
@given(st.lists(_mutation, min_size=1, max_size=4))
def test_mutated_package_verifies_identically_or_is_rejected(
    ops: list[tuple[str, int, int]],
) -> None:
    _verify_or_reject(_mutate(PACKAGE, ops))


@FUZZ
@given(st.binary(max_size=600))
def test_read_shape_of_arbitrary_bytes_after_magic(body: bytes) -> None:
    try:
        shape = read_shape(MAGIC + body)
    except WasmShapeError:
        return
    assert isinstance(shape, ModuleShape)


@FUZZ
@given(st.lists(_mutation, min_size=1, max_size=3))
def test_read_shape_of_mutated_modules(ops: list[tuple[str, int, int]]) -> None:
    """Mutations of a real module reach deep into the section parsers."""
    data = _mutate(WASM_WITH_LOG, ops)
    try:
        shape = read_shape(data)
    except WasmShapeError:
        return
    assert isinstance(shape, ModuleShape)
    for exp in shape.exports.values():
        assert exp.kind in {"func", "table", "memory", "global", "tag"}
        assert (exp.sig is not None) == (exp.kind == "func")


def test_read_shape_of_the_test_module() -> None:
    shape = read_shape(WASM_WITH_LOG)
    assert [(i.module, i.name, i.kind) for i in shape.imports] == [("forge", "log", "func")]
    assert str(shape.imports[0].sig) == "(i32, i32, i32) -> ()"
    assert set(shape.exports) == {"memory", "alloc", "echo"}
    assert str(shape.exports["echo"].sig) == "(i32, i32) -> (i64)"
    assert shape.exports["memory"].kind == "memory"
    assert not shape.has_start
