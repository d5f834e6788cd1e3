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
    """One value, round by round: the reference that ``decrypt_many`` is tested against."""
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


def _unpad(block: bytes) -> bytes | None:
    """PKCS#5/7 padding removed, or None when it is not valid padding."""
    if not block:
        return None
    n = block[-1]
    if not 1 <= n <= AES.block_size or block[-n:] != bytes((n,)) * n:
        return None
    return block[:-n]


def decrypt_many(values: list[str], salt: str) -> list[str | None]:
    """``decrypt`` for many values at once; None where a value does not decrypt.

    ECB has no chaining, so one AES call over every value's blocks, joined, gives each
    value's plaintext: the rounds run in lockstep with three AES calls in all, instead of
    three per value (the per-call cost dominates for values of a few blocks).
    """
    cipher = AES.new(SUNBIRD_KEY, AES.MODE_ECB)
    out: list[str | None] = [v.strip() for v in values]
    for _ in range(ROUNDS):
        live: list[int] = []
        raws: list[bytes] = []
        for i, text in enumerate(out):
            if text is None:
                continue
            try:
                # What b64decode(validate=True) does, without its per-call Python layer.
                raw = binascii.a2b_base64("".join(text.split()), strict_mode=True)
            except (binascii.Error, ValueError):
                out[i] = None
                continue
            if not raw or len(raw) % AES.block_size:
                out[i] = None
                continue
            live.append(i)
            raws.append(raw)
        plain = cipher.decrypt(b"".join(raws)) if raws else b""
        at = 0
        for i, raw in zip(live, raws, strict=True):
            block = _unpad(plain[at : at + len(raw)])
            at += len(raw)
            try:
                text = block.decode("utf-8") if block is not None else None
            except UnicodeDecodeError:
                text = None
            out[i] = text[len(salt) :] if text is not None and text.startswith(salt) else None
    return out
