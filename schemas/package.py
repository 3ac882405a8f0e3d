"""The ``.forgepkg`` format: a zip of manifest, module and detached signature.

Layout (exactly these three entries, stored or deflated, nothing else)::

    plugin.json   canonical manifest JSON (see manifest.canonical_manifest)
    plugin.wasm   the WebAssembly module
    plugin.sig    JSON {"alg": "ed25519", "key_id": "...", "signature": "<base64>"}

The signature covers the manifest bytes; the manifest carries the module's
SHA-256, so it covers the module too. :func:`verify_package` refuses, with
the reason, anything else before a single byte is compiled.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
import zlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .abi import check_abi
from .codec import DecodeError
from .errors import PackageRejected
from .manifest import Manifest, canonical_manifest, manifest_from_json
from .signing import TrustStore, key_id
from .wasm_shape import WasmShapeError, read_shape

MANIFEST_ENTRY = "plugin.json"
WASM_ENTRY = "plugin.wasm"
SIGNATURE_ENTRY = "plugin.sig"
ENTRIES = (MANIFEST_ENTRY, WASM_ENTRY, SIGNATURE_ENTRY)

MAX_PACKAGE_BYTES = 32 * 1024 * 1024
MAX_WASM_BYTES = 24 * 1024 * 1024
MAX_MANIFEST_BYTES = 64 * 1024
MAX_SIGNATURE_BYTES = 4 * 1024
_CAPS = {
    MANIFEST_ENTRY: MAX_MANIFEST_BYTES,
    WASM_ENTRY: MAX_WASM_BYTES,
    SIGNATURE_ENTRY: MAX_SIGNATURE_BYTES,
}


@dataclass(frozen=True, slots=True)
class VerifiedPackage:
    """A package whose archive, signature, digest and ABI shape all checked out."""

    manifest: Manifest
    wasm: bytes
    key_id: str
    digest: str
    """SHA-256 of the whole package file: its name in the object store."""


def package_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_package(manifest: Manifest, wasm: bytes, key: Ed25519PrivateKey) -> bytes:
    """Sign ``manifest`` (whose wasm_sha256 must match ``wasm``) and zip the package."""
    if hashlib.sha256(wasm).hexdigest() != manifest.wasm_sha256:
        raise ValueError("manifest wasm_sha256 does not match the module")
    body = canonical_manifest(manifest)
    sig = {
        "alg": "ed25519",
        "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(body)).decode(),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in (
            (MANIFEST_ENTRY, body),
            (WASM_ENTRY, wasm),
            (SIGNATURE_ENTRY, json.dumps(sig, sort_keys=True).encode()),
        ):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def _reject(reason: str) -> PackageRejected:
    return PackageRejected(reason)


def _read_entries(data: bytes) -> dict[str, bytes]:
    if len(data) > MAX_PACKAGE_BYTES:
        raise _reject(f"package is {len(data)} bytes, over the {MAX_PACKAGE_BYTES} byte cap")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as e:
        raise _reject(f"not a valid package archive: {e}") from None
    seen: set[str] = set()
    for info in infos:
        name = info.filename
        if (
            name.startswith(("/", "\\"))
            or ".." in name.replace("\\", "/").split("/")
            or (":" in name)
        ):
            raise _reject(f"archive entry {name!r} is a path traversal attempt")
        if name in seen:
            raise _reject(f"archive entry {name!r} appears twice")
        seen.add(name)
        if name not in _CAPS:
            raise _reject(f"unexpected archive entry {name!r}")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _reject(f"archive entry {name!r} uses an unsupported compression method")
        if info.flag_bits & 0x61:  # encrypted, compressed patched data, strong encryption
            raise _reject(f"archive entry {name!r} is encrypted or uses unsupported zip features")
        if info.file_size > _CAPS[name]:
            raise _reject(f"archive entry {name!r} is {info.file_size} bytes, over {_CAPS[name]}")
    out: dict[str, bytes] = {}
    for info in infos:
        try:
            with zf.open(info) as f:
                body = f.read(_CAPS[info.filename] + 1)
        except (
            zipfile.BadZipFile,
            ValueError,
            OSError,
            EOFError,
            zlib.error,
            NotImplementedError,
        ) as e:
            raise _reject(f"archive entry {info.filename!r} is corrupt: {e}") from None
        if len(body) > _CAPS[info.filename]:
            raise _reject(f"archive entry {info.filename!r} expands past {_CAPS[info.filename]}")
        out[info.filename] = body
    for name in ENTRIES:
        if name not in out:
            what = "signature" if name == SIGNATURE_ENTRY else f"entry {name!r}"
            raise _reject(f"package has no {what}")
    return out


def _signature(raw: bytes) -> tuple[str, bytes]:
    try:
        sig = json.loads(raw)
        if not isinstance(sig, dict) or sig.get("alg") != "ed25519":
            raise ValueError("alg must be ed25519")
        kid, b64 = sig["key_id"], sig["signature"]
        if not isinstance(kid, str) or not isinstance(b64, str):
            raise ValueError("key_id and signature must be strings")
        return kid, base64.b64decode(b64, validate=True)
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise _reject(f"malformed signature: {type(e).__name__}: {e}") from None


def verify_package(data: bytes, trust: TrustStore) -> VerifiedPackage:
    """Check a package completely without compiling it; raise PackageRejected with the reason."""
    entries = _read_entries(data)
    body = entries[MANIFEST_ENTRY]
    kid, signature = _signature(entries[SIGNATURE_ENTRY])
    try:
        trust.verify(kid, signature, body)
    except ValueError as e:
        raise _reject(str(e)) from None
    try:
        manifest = manifest_from_json(body)
    except DecodeError as e:
        raise _reject(f"invalid manifest: {e}") from None
    if canonical_manifest(manifest) != body:
        raise _reject("manifest is not in canonical form")
    wasm = entries[WASM_ENTRY]
    actual = hashlib.sha256(wasm).hexdigest()
    if actual != manifest.wasm_sha256:
        raise _reject(
            f"module digest {actual[:16]}… does not match the manifest's "
            f"{manifest.wasm_sha256[:16]}… (tampered module)"
        )
    try:
        shape = read_shape(wasm)
    except WasmShapeError as e:
        raise _reject(f"module is not valid WebAssembly: {e}") from None
    problems = check_abi(manifest, shape)
    if problems:
        raise _reject("module does not fit its ABI: " + "; ".join(problems))
    return VerifiedPackage(manifest, wasm, kid, package_digest(data))
