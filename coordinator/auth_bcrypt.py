"""bcrypt (``$2b$``), for the password hashes in nats-server's configuration.

Python's standard library has no bcrypt and cryptography has no EksBlowfish, so
this is the algorithm itself; the tests check it against published vectors and
against nats-server.
"""

from __future__ import annotations

import base64
import secrets
from functools import cache

_M32 = 0xFFFFFFFF
_STD_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_BCRYPT_B64 = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_TO_BCRYPT = str.maketrans(_STD_B64, _BCRYPT_B64)
_FROM_BCRYPT = str.maketrans(_BCRYPT_B64, _STD_B64)


@cache
def _blowfish_init() -> tuple[int, ...]:
    """Blowfish's initial P-array and S-boxes: the fractional hex digits of pi (1042 words)."""
    words = 18 + 4 * 256
    bits = 32 * words + 64  # guard bits
    one = 1 << bits

    def arctan_inv(x: int) -> int:  # arctan(1/x) in fixed point, by its Taylor series
        total, term, k, sign = 0, one // x, 1, 1
        while term:
            total += sign * (term // k)
            term //= x * x
            k += 2
            sign = -sign
        return total

    pi = 16 * arctan_inv(5) - 4 * arctan_inv(239)  # Machin's formula
    frac = (pi - 3 * one) >> 64
    return tuple((frac >> (32 * (words - 1 - i))) & _M32 for i in range(words))


def _words(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 4], "big") for i in range(0, len(data), 4)]


def _expand_key(p: list[int], s: list[list[int]], salt: list[int] | None, key: list[int]) -> None:
    """Blowfish's key schedule, with bcrypt's salt (EksBlowfish); ``key`` is 18 words."""
    for i in range(18):
        p[i] ^= key[i]
    s0, s1, s2, s3 = s
    left = right = 0
    j = 0
    for target in (p, s0, s1, s2, s3):
        for k in range(0, len(target), 2):
            if salt is not None:
                left ^= salt[j]
                right ^= salt[j + 1]
                j = (j + 2) % len(salt)
            left ^= p[0]
            for r in range(1, 17, 2):
                f = ((s0[left >> 24] + s1[(left >> 16) & 255]) & _M32) ^ s2[(left >> 8) & 255]
                right ^= ((f + s3[left & 255]) & _M32) ^ p[r]
                f = ((s0[right >> 24] + s1[(right >> 16) & 255]) & _M32) ^ s2[(right >> 8) & 255]
                left ^= ((f + s3[right & 255]) & _M32) ^ p[r + 1]
            left, right = right ^ p[17], left
            target[k], target[k + 1] = left, right


def _encrypt(p: list[int], s: list[list[int]], left: int, right: int) -> tuple[int, int]:
    s0, s1, s2, s3 = s
    left ^= p[0]
    for r in range(1, 17, 2):
        f = ((s0[left >> 24] + s1[(left >> 16) & 255]) & _M32) ^ s2[(left >> 8) & 255]
        right ^= ((f + s3[left & 255]) & _M32) ^ p[r]
        f = ((s0[right >> 24] + s1[(right >> 16) & 255]) & _M32) ^ s2[(right >> 8) & 255]
        left ^= ((f + s3[right & 255]) & _M32) ^ p[r + 1]
    return right ^ p[17], left


def _bcrypt_b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=").translate(_TO_BCRYPT)


def bcrypt_salt(encoded: str) -> bytes:
    """The 16 salt bytes of a 22-character bcrypt salt string."""
    text = encoded.translate(_FROM_BCRYPT)
    return base64.b64decode(text + "=" * (-len(text) % 4))[:16]


def bcrypt_hash(password: str, cost: int, salt: bytes | None = None) -> str:
    """``$2b$`` bcrypt of ``password`` (what nats-server accepts in place of a password)."""
    if not 4 <= cost <= 31:
        raise ValueError("bcrypt cost must be between 4 and 31")
    salt = secrets.token_bytes(16) if salt is None else salt
    if len(salt) != 16:
        raise ValueError("bcrypt salt must be 16 bytes")
    key = (password.encode() + b"\0")[:72]
    key_words = _words((key * (72 // len(key) + 1))[:72])
    salt_words = _words(salt)
    init = _blowfish_init()
    p = list(init[:18])
    s = [list(init[18 + 256 * i : 18 + 256 * (i + 1)]) for i in range(4)]
    _expand_key(p, s, salt_words, key_words)
    salt_key = salt_words * 5  # 16 bytes cycled to 18 words (and beyond)
    for _ in range(1 << cost):
        _expand_key(p, s, None, key_words)
        _expand_key(p, s, None, salt_key)
    block = _words(b"OrpheanBeholderScryDoubt")
    for _ in range(64):
        for i in range(0, 6, 2):
            block[i], block[i + 1] = _encrypt(p, s, block[i], block[i + 1])
    digest = b"".join(w.to_bytes(4, "big") for w in block)[:23]
    return f"$2b${cost:02d}${_bcrypt_b64(salt)}{_bcrypt_b64(digest)}"
