"""Ed25519 signing keys, key ids and the operator's trust store."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .codec import DecodeError, Struct, field_spec, from_obj, to_obj


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """A short stable name for a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_bytes(key)).hexdigest()[:16]


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def save_private_key(key: Ed25519PrivateKey, path: Path) -> None:
    """Write a PEM private key readable only by its owner."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


@dataclass(frozen=True, slots=True)
class TrustedKey(Struct):
    """One publisher key the operator trusts (or has revoked)."""

    id: str = field_spec(pattern=r"[0-9a-f]{16}", doc="Key id (see key_id).")
    public_key: str = field_spec(max_len=64, doc="Raw Ed25519 public key, base64.")
    name: str = field_spec(default="", max_len=256, doc="Who holds the key.")
    revoked: bool = field_spec(default=False, doc="Revoked keys verify nothing.")


@dataclass(frozen=True, slots=True)
class TrustStore(Struct):
    """The publisher keys packages may be signed with."""

    keys: list[TrustedKey] = field(default_factory=list)

    @staticmethod
    def load(path: Path) -> TrustStore:
        try:
            return from_obj(TrustStore, json.loads(path.read_bytes()))
        except FileNotFoundError:
            raise
        except (ValueError, DecodeError, RecursionError) as e:
            raise ValueError(f"trust store {path} is invalid: {type(e).__name__}: {e}") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(to_obj(self), indent=2) + "\n")
        tmp.replace(path)

    def with_key(self, key: Ed25519PublicKey, name: str = "") -> TrustStore:
        kid = key_id(key)
        entry = TrustedKey(kid, base64.b64encode(public_bytes(key)).decode(), name)
        return TrustStore([k for k in self.keys if k.id != kid] + [entry])

    def revoke(self, kid: str) -> TrustStore:
        if not any(k.id == kid for k in self.keys):
            raise KeyError(kid)
        return TrustStore(
            [TrustedKey(k.id, k.public_key, k.name, True) if k.id == kid else k for k in self.keys]
        )

    def verify(self, kid: str, signature: bytes, message: bytes) -> None:
        """Raise ValueError with the reason unless ``signature`` is valid under trusted ``kid``."""
        for k in self.keys:
            if k.id != kid:
                continue
            if k.revoked:
                raise ValueError(f"signing key {kid} has been revoked")
            pub = Ed25519PublicKey.from_public_bytes(base64.b64decode(k.public_key))
            try:
                pub.verify(signature, message)
            except InvalidSignature:
                raise ValueError(f"signature does not verify under key {kid}") from None
            return
        raise ValueError(f"signing key {kid} is not in the trust store")
