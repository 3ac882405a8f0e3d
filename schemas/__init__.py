"""ForgeOne's contracts: subjects, wire messages, manifest, package format, errors.

Pure: no sockets, threads or asyncio. Worker and coordinator both import from
here and never from each other.
"""

from .codec import DecodeError, Message, Struct, decode, decode_any, encode, from_obj, to_obj
from .errors import ErrorCode, ForgeError, error_for
from .manifest import ABI_EXTISM_V1, ABI_FORGE_V1, Limits, Manifest, canonical_manifest
from .package import VerifiedPackage, build_package, package_digest, verify_package
from .signing import TrustStore, generate_key, key_id, load_private_key, save_private_key
from .subjects import Subjects

__all__ = [
    "ABI_EXTISM_V1",
    "ABI_FORGE_V1",
    "DecodeError",
    "ErrorCode",
    "ForgeError",
    "Limits",
    "Manifest",
    "Message",
    "Struct",
    "Subjects",
    "TrustStore",
    "VerifiedPackage",
    "build_package",
    "canonical_manifest",
    "decode",
    "decode_any",
    "encode",
    "error_for",
    "from_obj",
    "generate_key",
    "key_id",
    "load_private_key",
    "package_digest",
    "save_private_key",
    "to_obj",
    "verify_package",
]
