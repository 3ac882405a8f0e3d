"""``forgeone`` commands that need no cluster: signing keys, packing and verifying
packages, scaffolding a plugin project and running a plugin locally."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from schemas.codec import DecodeError
from schemas.errors import PackageRejected
from schemas.manifest import Manifest, manifest_from_source
from schemas.package import build_package, verify_package
from schemas.signing import TrustStore, generate_key, key_id, load_private_key, save_private_key

from .cli_common import fail
from .extism_manifest import ExtismManifestError, convert


def cmd_keygen(a: argparse.Namespace) -> int:
    out = Path(a.out)
    if out.exists() and not a.force:
        return fail(f"{out} exists (use --force to overwrite)")
    key = generate_key()
    save_private_key(key, out)
    trust_path = Path(a.trust)
    trust = TrustStore.load(trust_path) if trust_path.exists() else TrustStore()
    trust.with_key(key.public_key(), a.name).save(trust_path)
    print(f"key {key_id(key.public_key())} written to {out}; trusted in {trust_path}")
    return 0


def cmd_pack(a: argparse.Namespace) -> int:
    if a.extism_manifest:
        return cmd_pack_extism(a)
    if not a.manifest or not a.wasm:
        return fail("pack needs --manifest and --wasm (or --extism-manifest)")
    try:
        source = json.loads(Path(a.manifest).read_text())
        wasm = Path(a.wasm).read_bytes()
        manifest = manifest_from_source(source, wasm)
    except (OSError, ValueError, DecodeError) as e:
        return fail(f"cannot pack: {e}")
    return 0 if write_package(manifest, wasm, a) is not None else 1


def write_package(manifest: Manifest, wasm: bytes, a: argparse.Namespace) -> Path | None:
    """Sign with ``--key``, check that a worker trusting that key would load the package,
    write it to ``-o`` (or NAME-VERSION.forgepkg) and say so; None after saying why not."""
    key = load_private_key(Path(a.key))
    data = build_package(manifest, wasm, key)
    try:  # refuse to write a package no worker would load
        verify_package(data, TrustStore().with_key(key.public_key()))
    except PackageRejected as e:
        fail(f"package would be rejected: {e.message}")
        return None
    out = Path(a.out or f"{manifest.name}-{manifest.version}.forgepkg")
    out.write_bytes(data)
    abi = "" if manifest.abi == "forge/1" else f" (abi {manifest.abi})"
    print(
        f"packed {manifest.name}@{manifest.version}{abi} -> {out} ({len(data)} bytes, "
        f"signed by {key_id(key.public_key())})"
    )
    return out


def cmd_verify(a: argparse.Namespace) -> int:
    try:
        data = Path(a.package).read_bytes()
        trust = TrustStore.load(Path(a.trust))
        pkg = verify_package(data, trust)
    except (OSError, ValueError) as e:
        return fail(str(e))
    except PackageRejected as e:
        return fail(f"REJECTED: {e.message}")
    m = pkg.manifest
    print(f"OK {m.name}@{m.version} abi={m.abi} signed-by={pkg.key_id} digest={pkg.digest}")
    print(f"   exports: {', '.join(m.exports)}; permissions: {', '.join(m.permissions) or '-'}")
    return 0


def cmd_new(a: argparse.Namespace) -> int:
    from .scaffold import scaffold

    try:
        root = scaffold(a.name, a.lang, Path(a.dir))
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        return fail(str(e))
    print(
        f"created {root}: `python {root / 'build.py'}` builds it, "
        f"`python -m pytest {root}` tests it"
    )
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    """Hand over to the worker's local runner in its own process (the worker package is
    not imported here: coordinator and worker stay apart)."""
    import subprocess

    return subprocess.call([sys.executable, "-m", "worker.run_local", *a.rest])


# --- packing from an Extism manifest ------------------------------------------------
def add_extism_pack_arguments(pack: argparse.ArgumentParser) -> None:
    """The ``forgeone pack`` options for an Extism manifest."""
    g = pack.add_argument_group("from an Extism manifest (instead of --manifest)")
    g.add_argument("--extism-manifest", metavar="JSON", help="an Extism manifest to convert")
    g.add_argument("--name", help="plugin name (default: the module's file name)")
    g.add_argument("--version", default="1.0.0", help="plugin version (default 1.0.0)")
    g.add_argument(
        "--export",
        action="append",
        dest="exports",
        metavar="FN",
        help="a handler to expose (repeatable; default: every () -> i32 / () -> () export)",
    )
    g.add_argument(
        "--permission",
        action="append",
        dest="permissions",
        default=[],
        metavar="P",
        help="an extra permission to request, e.g. kv:state for extism:host/user kv_get",
    )


def cmd_pack_extism(a: argparse.Namespace) -> int:
    """``forgeone pack --extism-manifest M --key K [--wasm W] [-o OUT]``."""
    try:
        conv = convert(
            Path(a.extism_manifest),
            name=a.name,
            version=a.version,
            exports=a.exports,
            permissions=a.permissions,
            wasm_path=Path(a.wasm) if a.wasm else None,
        )
    except (OSError, ExtismManifestError) as e:
        return fail(f"cannot pack: {e}")
    out = write_package(conv.manifest, conv.wasm, a)
    if out is None:
        return 1
    m = conv.manifest
    print(f"   exports: {', '.join(m.exports)}; permissions: {', '.join(m.permissions) or '-'}")
    if m.limits.timeout_ms != 5000 or m.limits.memory_mb != 64:
        print(f"   limits: timeout_ms={m.limits.timeout_ms} memory_mb={m.limits.memory_mb}")
    if conv.config:
        flags = " ".join(f"--config {k}={v}" for k, v in sorted(conv.config.items()))
        print(f"   config belongs to the deployment: forgeone deploy {out} {flags}")
    for note in conv.notes:
        print(f"   note: {note}")
    return 0


def add_package_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], trust_default: str
) -> None:
    """keygen, pack, verify, new and run: commands that need no cluster."""
    s = sub.add_parser("keygen", help="create a signing key and trust it")
    s.add_argument("--out", default="signing.key", help="private key file to write")
    s.add_argument("--trust", default=trust_default, help="trust store to add the key to")
    s.add_argument("--name", default="", help="who holds the key")
    s.add_argument("--force", action="store_true")
    s.set_defaults(func=cmd_keygen)

    s = sub.add_parser("pack", help="build and sign a .forgepkg")
    s.add_argument("--manifest", help="the plugin's forge.json")
    s.add_argument("--wasm", help="the compiled module (with --extism-manifest: a local copy)")
    s.add_argument("--key", required=True, help="Ed25519 private key (PEM)")
    s.add_argument("-o", "--out", help="output file (default NAME-VERSION.forgepkg)")
    add_extism_pack_arguments(s)
    s.set_defaults(func=cmd_pack)

    s = sub.add_parser("verify", help="check a package against a trust store")
    s.add_argument("package")
    s.add_argument("--trust", default=trust_default)
    s.set_defaults(func=cmd_verify)

    s = sub.add_parser("new", help="scaffold a plugin project with a build script and a test")
    s.add_argument("name")
    s.add_argument("--lang", choices=["wat", "c", "assemblyscript"], default="wat")
    s.add_argument("--dir", default=".", help="parent folder of the new project")
    s.set_defaults(func=cmd_new)

    s = sub.add_parser(
        "run", add_help=False, help="run a plugin locally through the worker's runtime (no cluster)"
    )
    s.add_argument("rest", nargs=argparse.REMAINDER)
    s.set_defaults(func=cmd_run)
