"""Phone numbers: normalisation, keyed hashes, hint buckets."""

from __future__ import annotations

import pytest

from service.engine.phone import PhoneHasher, normalise_phone
from service.errors import InvalidArgument

SECRET = b"k" * 32


@pytest.mark.parametrize(
    ("raw", "digits"),
    [
        ("+49 (30) 1234-5678", "493012345678"),
        ("555.123.4567", "5551234567"),
        ("1234567", "1234567"),
        ("123456789012345", "123456789012345"),
        (" 020 7946 0958 ", "02079460958"),
    ],
)
def test_normalise_keeps_digits(raw: str, digits: str) -> None:
    assert normalise_phone(raw) == digits


@pytest.mark.parametrize(
    "raw", ["", "123456", "1234567890123456", "555-CALL-NOW", "12345678x", "١٢٣٤٥٦٧٨"]
)
def test_normalise_rejects(raw: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        normalise_phone(raw)
    assert err.value.metadata["field"] == "phone_number"


def test_number_hash_is_keyed_and_format_independent() -> None:
    h = PhoneHasher(SECRET)
    a = h.number_hash("+1 555 123 4567")
    assert a == h.number_hash("15551234567")
    assert a != h.number_hash("15551234568")
    assert a != PhoneHasher(b"j" * 32).number_hash("15551234567")
    assert "5551234567" not in a and len(a) == 64


def test_bucket_depends_on_last_four_digits_only_and_matches_the_hint() -> None:
    h = PhoneHasher(SECRET)
    b = h.bucket("+1 555 123 4567")
    assert b == h.bucket("0049 30 99 4567") == h.bucket_for_hint("4567")
    assert b != h.bucket_for_hint("4568")
    assert "4567" not in b
    # the bucket is not the hash of the full number, nor the same label's hash
    assert b != h.number_hash("+1 555 123 4567")[: len(b)]
    assert b != PhoneHasher(b"j" * 32).bucket_for_hint("4567")


@pytest.mark.parametrize("hint", ["", "123", "12345", "12a4", " 123", "١٢٣٤"])
def test_hint_must_be_four_ascii_digits(hint: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        PhoneHasher(SECRET).bucket_for_hint(hint)
    assert err.value.metadata["field"] == "hint"


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        PhoneHasher(b"short")
