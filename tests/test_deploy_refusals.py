"""Packages the coordinator refuses, with the reason, before anything is compiled."""

from __future__ import annotations

import io
import zipfile

import pytest

from schemas.errors import PackageRejected
from schemas.package import build_package
from schemas.signing import generate_key
from tests.cluster import Cluster, manifest_for

GOOD_WAT = """(module
  (memory (export "memory") 1)
  (func (export "alloc") (param i32) (result i32) i32.const 1024)
  (func (export "run") (param i32 i32) (result i64) i64.const 0))"""


def _rezip(pkg: bytes, replace: dict[str, bytes | None]) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(pkg))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        for info in src.infolist():
            if info.filename in replace:
                data = replace[info.filename]
                if data is not None:
                    out.writestr(info.filename, data)
            else:
                out.writestr(info.filename, src.read(info.filename))
    return buf.getvalue()


async def test_refused_packages_name_the_reason(cluster: Cluster) -> None:
    import wasmtime

    wasm = bytes(wasmtime.wat2wasm(GOOD_WAT))
    good = cluster.package(manifest_for("good", wasm), wasm)
    stranger = build_package(manifest_for("good", wasm), wasm, generate_key())
    tampered_wasm = bytearray(wasm)
    tampered_wasm[-1] ^= 0x01
    cases = {
        "tampered module": (_rezip(good, {"plugin.wasm": bytes(tampered_wasm)}), "tampered"),
        "tampered manifest": (
            _rezip(
                good,
                {
                    "plugin.json": zipfile.ZipFile(io.BytesIO(good))
                    .read("plugin.json")
                    .replace(b'"1.0.0"', b'"6.6.6"')
                },
            ),
            "signature does not verify",
        ),
        "unsigned": (_rezip(good, {"plugin.sig": None}), "no signature"),
        "untrusted key": (stranger, "not in the trust store"),
        "not an archive": (b"MZ\x90\x00 definitely not a zip", "not a valid package archive"),
        "unknown import": (
            cluster.wat_package(
                "bad",
                """(module
            (import "env" "system" (func (param i32) (result i32)))
            (memory (export "memory") 1)
            (func (export "alloc") (param i32) (result i32) i32.const 0)
            (func (export "run") (param i32 i32) (result i64) i64.const 0))""",
            ),
            "env.system",
        ),
    }
    client = await cluster.client()
    try:
        for name, (data, reason) in cases.items():
            with pytest.raises(PackageRejected) as info:
                await client.deploy(data)
            assert reason in info.value.message, (name, info.value.message)
        assert await client.plugins() == []
        # the coordinator keeps serving after all of that
        reply = await client.deploy(good)
        assert reply.record.plugin == "good"
    finally:
        await client.close()
