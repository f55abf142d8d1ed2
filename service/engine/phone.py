"""Phone numbers, never stored in clear: a keyed hash of the number and a keyed hint bucket.

The terminal's hint is the last 4 digits of the customer's phone number. Only 10 000 such
suffixes exist, so a plain hash of them would be reversed by enumeration; both the full
number and the suffix are therefore hashed with HMAC-SHA256 under the service secret, each
under its own label so the two hashes can never be confused or compared.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from service.errors import InvalidArgument

MIN_DIGITS = 7
MAX_DIGITS = 15  # E.164's maximum
HINT_DIGITS = 4

# Formatting people type around the digits; anything else is a mistake worth reporting.
_SEPARATORS = re.compile(r"[\s\-().+/]")
_HINT = re.compile(r"[0-9]{4}")


def normalise_phone(number: str) -> str:
    """Digits only: '+49 (30) 1234-5678' -> '4930123456789'. Raises InvalidArgument."""
    if not isinstance(number, str):
        raise InvalidArgument("phone_number must be a string")
    digits = _SEPARATORS.sub("", number)
    if not digits.isascii() or not digits.isdigit():
        raise InvalidArgument(
            "phone_number may contain only digits, spaces and + - ( ) . /",
            metadata={"field": "phone_number"},
        )
    if not MIN_DIGITS <= len(digits) <= MAX_DIGITS:
        raise InvalidArgument(
            f"phone_number must have {MIN_DIGITS}-{MAX_DIGITS} digits, got {len(digits)}",
            metadata={"field": "phone_number", "digits": str(len(digits))},
        )
    return digits


class PhoneHasher:
    """Keyed hashes of phone numbers and of their 4-digit hint suffix."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the service secret must be at least 16 bytes")
        self._secret = bytes(secret)

    def _mac(self, label: bytes, value: str) -> str:
        return hmac.new(self._secret, label + b"\x00" + value.encode(), hashlib.sha256).hexdigest()

    def number_hash(self, number: str) -> str:
        """Keyed hash of the full, normalised number (64 hex chars)."""
        return self._mac(b"facegate/phone", normalise_phone(number))

    def bucket(self, number: str) -> str:
        """The hint partition of a full number: keyed hash of its last 4 digits."""
        return self._bucket_of_suffix(normalise_phone(number)[-HINT_DIGITS:])

    def bucket_for_hint(self, hint: str) -> str:
        """The partition a terminal's hint selects; the hint must be exactly 4 digits."""
        if not isinstance(hint, str) or not _HINT.fullmatch(hint):
            raise InvalidArgument(
                "hint must be exactly 4 digits (the last 4 digits of the phone number)",
                metadata={"field": "hint"},
            )
        return self._bucket_of_suffix(hint)

    def _bucket_of_suffix(self, suffix: str) -> str:
        # 16 bytes are plenty to keep 10 000 buckets apart and keep the index's keys short.
        return self._mac(b"facegate/phone-suffix", suffix)[:32]
