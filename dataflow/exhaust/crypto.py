"""Sunbird's PII encryption (spec exhaust.md §2), so reports can show what the user cache holds.

Sunbird encrypts ``email`` and ``phone`` with AES-128/ECB/PKCS5 under a fixed key, three
rounds, each round encrypting ``salt + value`` and Base64-encoding the result the way
``sun.misc.BASE64Encoder`` does (lines of 76 characters joined by ``\\n``).
"""

from __future__ import annotations

import base64
import binascii

from Cryptodome.Cipher import AES
from Cryptodome.Util.Padding import pad, unpad

SUNBIRD_KEY = b"ThisAsISerceKtey"
ROUNDS = 3
_LINE = 76


class DecryptError(ValueError):
    """The value is not a Sunbird ciphertext under this salt."""


def _mime(raw: bytes) -> str:
    text = base64.b64encode(raw).decode("ascii")
    return "\n".join(text[i : i + _LINE] for i in range(0, len(text), _LINE))


def encrypt(value: str, salt: str) -> str:
    """The ciphertext Sunbird stores for ``value`` (used by tests and data generators)."""
    cipher = AES.new(SUNBIRD_KEY, AES.MODE_ECB)
    out = value
    for _ in range(ROUNDS):
        out = _mime(cipher.encrypt(pad((salt + out).encode("utf-8"), AES.block_size)))
    return out


def decrypt(value: str, salt: str) -> str:
    cipher = AES.new(SUNBIRD_KEY, AES.MODE_ECB)
    out = value.strip()
    for _ in range(ROUNDS):
        try:
            raw = base64.b64decode("".join(out.split()), validate=True)
            plain = unpad(cipher.decrypt(raw), AES.block_size).decode("utf-8")
        except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
            raise DecryptError(str(exc)) from None
        if not plain.startswith(salt):
            raise DecryptError("the decrypted value does not start with the salt")
        out = plain[len(salt) :]
    return out
