"""The batched Sunbird decryption against the one-value reference, over good and bad input."""

from __future__ import annotations

from Cryptodome.Cipher import AES
from Cryptodome.Util.Padding import pad
from hypothesis import given, settings
from hypothesis import strategies as st

from dataflow.exhaust import crypto

SALT = "deployment-salt"


def reference(value: str, salt: str) -> str | None:
    try:
        return crypto.decrypt(value, salt)
    except crypto.DecryptError:
        return None


def rounds(payload: bytes, n: int, padded: bool = False) -> str:
    """``payload`` under n Sunbird rounds, the first one over raw bytes (e.g. invalid UTF-8),
    padded by us unless ``padded`` says the payload carries its own (possibly bad) padding."""
    cipher = AES.new(crypto.SUNBIRD_KEY, AES.MODE_ECB)
    out = crypto._mime(cipher.encrypt(payload if padded else pad(payload, AES.block_size)))
    for _ in range(n - 1):
        out = crypto._mime(cipher.encrypt(pad((SALT + out).encode(), AES.block_size)))
    return out


@st.composite
def bad_padding(draw) -> str:
    """Salt, value, then padding whose last byte is right but whose run is broken."""
    n = draw(st.integers(2, 16))
    body = SALT.encode() + draw(st.binary(max_size=40))
    body += b"a" * (-(len(body) + n) % AES.block_size)
    tail = bytearray([n] * n)
    tail[draw(st.integers(0, n - 2))] = draw(st.integers(0, 255).filter(lambda b: b != n))
    return rounds(body + bytes(tail), 3, padded=True)


texts = st.text(max_size=120)
ciphertexts = st.one_of(
    texts.map(lambda t: crypto.encrypt(t, SALT)),
    st.tuples(texts, st.sampled_from(["other-salt", "", SALT[:-1]])).map(
        lambda a: crypto.encrypt(a[0], a[1])
    ),
    # Wrong number of rounds, and plaintext that is not UTF-8 or lacks the salt.
    st.tuples(st.binary(max_size=64), st.integers(1, 4)).map(lambda a: rounds(a[0], a[1])),
    st.binary(max_size=64).map(lambda b: rounds(SALT.encode() + b, 3)),
    # Random blocks decrypt to random padding: mostly invalid, now and then valid.
    st.binary(min_size=1, max_size=80).map(lambda b: crypto._mime(b)),
    bad_padding(),
    texts,
)


@st.composite
def damaged(draw) -> str:
    value = draw(st.sampled_from([crypto.encrypt("x@example.org", SALT), rounds(b"a", 3)]))
    at = draw(st.integers(0, len(value)))
    return draw(
        st.sampled_from(
            [
                value[:at],
                value[:at] + draw(st.characters()) + value[at + 1 :],
                f"  {value}\n",
            ]
        )
    )


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(ciphertexts, damaged()), max_size=12), st.sampled_from([SALT, "s"]))
def test_decrypt_many_equals_one_by_one(values, salt):
    assert crypto.decrypt_many(values, salt) == [reference(v, salt) for v in values]


def test_decrypt_many_recovers_every_good_value_among_bad_ones():
    good = [f"user{i}@example.org" for i in range(50)]
    mixed = []
    for i, text in enumerate(good):
        mixed.append(crypto.encrypt(text, SALT))
        mixed.append(crypto.encrypt(text, "wrong") if i % 2 else "not base64 !")
    out = crypto.decrypt_many(mixed, SALT)
    assert out[0::2] == good
    assert out[1::2] == [None] * len(good)
