"""dlib's primitive binary encodings, byte by byte (dlib-models.md section 1)."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service.errors import ModelPackError
from service.models.dlib_serialize import DlibFormatError, DlibReader


def enc_int(v: int) -> bytes:
    """dlib's integer encoding, written independently of the reader under test."""
    mag = abs(v)
    body = mag.to_bytes(max(1, (mag.bit_length() + 7) // 8), "little")
    return bytes([len(body) | (0x80 if v < 0 else 0)]) + body


def enc_float(x: float) -> bytes:
    """dlib's float_details: a 53-bit mantissa (floats go through double), trailing zero
    bytes dropped while the exponent grows by 8 — which is how 1.0 becomes 16·2⁻⁴."""
    if math.isnan(x):
        return enc_int(0) + enc_int(32002)
    if math.isinf(x):
        return enc_int(0) + enc_int(32000 if x > 0 else 32001)
    m, e = math.frexp(x)
    mant = int(m * (1 << 53))
    exp = e - 53
    while mant and mant % 256 == 0:
        mant //= 256
        exp += 8
    return enc_int(mant) + enc_int(exp)


def reader(data: bytes) -> DlibReader:
    return DlibReader(data, "test.dat")


# ---------------------------------------------------------------- integers


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b"\x01\x00", 0),
        (b"\x81\x04", -4),
        (b"\x02\x2c\x01", 300),
        (b"\x01\xff", 255),
        (b"\x88" + (2**63 - 1).to_bytes(8, "little"), -(2**63 - 1)),
        (b"\x08" + (2**64 - 1).to_bytes(8, "little"), 2**64 - 1),
    ],
)
def test_int_known_encodings(raw: bytes, value: int) -> None:
    r = reader(raw)
    assert r.int() == value
    assert r.offset == len(raw)
    r.expect_end()


@given(st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1))
def test_int_roundtrip_and_bulk(v: int) -> None:
    data = enc_int(v) * 3
    r = reader(data)
    assert [r.int(), r.int(), r.int()] == [v, v, v]
    bulk = reader(data).ints(3)
    assert bulk.dtype == np.int64
    assert bulk.tolist() == [v, v, v]


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\x00", "control byte 0x00"),  # n == 0
        (b"\x09" + bytes(9), "control byte 0x09"),  # n > 8
        (b"\x11\x00", "control byte 0x11"),  # a 0x70 bit
        (b"\x70\x00", "control byte 0x70"),
    ],
)
def test_int_rejects_malformed_control_bytes(raw: bytes, why: str) -> None:
    with pytest.raises(DlibFormatError, match=why) as info:
        reader(raw).int()
    assert "test.dat" in str(info.value)
    assert "at byte 0" in str(info.value)
    assert isinstance(info.value, ModelPackError)


@pytest.mark.parametrize("raw", [b"", b"\x02\x2c", b"\x84\x01\x02"])
def test_int_truncated(raw: bytes) -> None:
    with pytest.raises(DlibFormatError, match="truncated"):
        reader(raw).int()


def test_error_reports_offset_of_bad_item() -> None:
    r = reader(b"\x01\x05\x02\x2c\x01\x33\x00")
    assert r.int() == 5
    assert r.int() == 300
    with pytest.raises(DlibFormatError, match="at byte 5"):
        r.int()
    assert r.offset == 5  # unchanged after the failed read


# ---------------------------------------------------------------- floats


def test_float_one_is_dlibs_encoding() -> None:
    assert enc_float(1.0) == b"\x01\x10\x81\x04"
    r = reader(b"\x01\x10\x81\x04")
    assert r.float() == 1.0
    r.expect_end()


@pytest.mark.parametrize("value", [0.0, 1.0, -1.0, 0.5, 122.782, -3.25e-7, 1e30, 6e-39, 0.04, 0.6])
def test_float_values_exact_in_float32(value: float) -> None:
    f32 = float(np.float32(value))
    assert reader(enc_float(f32)).float() == f32


def test_float_specials() -> None:
    data = enc_float(math.inf) + enc_float(-math.inf) + enc_float(math.nan)
    r = reader(data)
    assert r.float() == math.inf
    assert r.float() == -math.inf
    assert math.isnan(r.float())
    bulk = reader(data).floats(3, np.float64)
    assert bulk[0] == math.inf and bulk[1] == -math.inf and math.isnan(bulk[2])


def test_float_rejects_old_ascii_format() -> None:
    with pytest.raises(DlibFormatError, match="old ASCII"):
        reader(b"1.5 ").float()
    with pytest.raises(DlibFormatError, match="old ASCII"):
        reader(b"1.5 " * 300).floats(300)


def test_float_truncated_between_mantissa_and_exponent() -> None:
    with pytest.raises(DlibFormatError, match="truncated"):
        reader(b"\x01\x10").float()


@given(st.lists(st.floats(width=32, allow_nan=False), min_size=0, max_size=600))
def test_bulk_floats_match_scalar_reads(values: list[float]) -> None:
    data = b"".join(enc_float(v) for v in values)
    bulk = reader(data).floats(len(values))
    r = reader(data)
    scalar = [r.float() for _ in values]
    assert bulk.dtype == np.float32
    np.testing.assert_array_equal(bulk, np.asarray(scalar, np.float32))
    np.testing.assert_array_equal(bulk, np.asarray(values, np.float32))


def test_bulk_ints_to_end_and_errors() -> None:
    values = list(range(-700, 700, 3))
    data = b"".join(enc_int(v) for v in values)
    r = reader(data)
    assert r.ints().tolist() == values
    r.expect_end()
    # A corrupt control byte in the middle of a long run is reported at its exact offset.
    bad_at = len(b"".join(enc_int(v) for v in values[:300]))
    corrupt = data[:bad_at] + b"\x40" + data[bad_at + 1 :]
    with pytest.raises(DlibFormatError, match=f"0x40 \\(at byte {bad_at}\\)"):
        reader(corrupt).ints()
    with pytest.raises(DlibFormatError, match=f"at byte {bad_at}"):
        reader(corrupt).ints(len(values))
    # Truncation: the last integer loses its final byte.
    with pytest.raises(DlibFormatError, match="truncated"):
        reader(data[:-1]).ints(len(values))
    with pytest.raises(DlibFormatError, match="truncated"):
        reader(data[:-1]).ints()
    with pytest.raises(DlibFormatError, match="truncated"):
        reader(data).ints(len(values) + 1)


# ---------------------------------------------------------------- bool, string


def test_bool() -> None:
    r = reader(b"10")
    assert r.bool() is True
    assert r.bool() is False
    with pytest.raises(DlibFormatError, match="invalid bool byte 0x01"):
        reader(b"\x01").bool()
    with pytest.raises(DlibFormatError, match="truncated"):
        reader(b"").bool()


def test_string() -> None:
    r = reader(enc_int(5) + b"con_4" + enc_int(0))
    assert r.string() == "con_4"
    assert r.string() == ""
    r.expect_end()
    with pytest.raises(DlibFormatError, match="truncated"):
        reader(enc_int(10) + b"con_4").string()
    with pytest.raises(DlibFormatError, match="string length"):
        reader(enc_int(-3) + b"abc").string()


# ---------------------------------------------------------------- composites


def test_float_matrix_and_vector() -> None:
    data = enc_int(-2) + enc_int(-3) + b"".join(enc_float(v) for v in range(6))
    m = reader(data).float_matrix()
    assert m.dtype == np.float32
    assert m.shape == (2, 3)
    np.testing.assert_array_equal(m, np.arange(6, dtype=np.float32).reshape(2, 3))
    assert reader(enc_float(0.25) + enc_float(-2.0)).float_vector_2() == (0.25, -2.0)
    with pytest.raises(DlibFormatError, match="cannot fit"):
        reader(enc_int(-100000) + enc_int(-100000) + bytes(10)).float_matrix()


def test_tensor_raw_ieee_nchw() -> None:
    vals = np.arange(24, dtype=np.float32) / 7
    data = b"".join(enc_int(v) for v in (2, 1, 2, 3, 4)) + vals.astype("<f4").tobytes()
    t = reader(data).tensor()
    assert t.dtype == np.float32
    assert t.shape == (1, 2, 3, 4)
    np.testing.assert_array_equal(t.ravel(), vals)
    empty = reader(b"".join(enc_int(v) for v in (2, 0, 0, 0, 0))).tensor()
    assert empty.shape == (0, 0, 0, 0)
    with pytest.raises(DlibFormatError, match="truncated"):
        reader(data[:-1]).tensor()
    with pytest.raises(DlibFormatError, match="tensor version 3"):
        reader(b"".join(enc_int(v) for v in (3, 0, 0, 0, 0))).tensor()
    with pytest.raises(DlibFormatError, match="negative"):
        reader(b"".join(enc_int(v) for v in (2, 0, -1, 0, 0))).tensor()


def test_alias_tensor() -> None:
    r = reader(b"".join(enc_int(v) for v in (1, 32, 3, 7, 7)))
    assert r.alias_tensor() == (32, 3, 7, 7)
    with pytest.raises(DlibFormatError, match="alias_tensor version 2"):
        reader(b"".join(enc_int(v) for v in (2, 1, 1, 1, 1))).alias_tensor()


def test_expect_end_and_raw() -> None:
    r = reader(b"\x01\x00\xaa")
    r.int()
    with pytest.raises(DlibFormatError, match="1 unexpected trailing bytes"):
        r.expect_end()
    assert r.raw(1) == b"\xaa"
    with pytest.raises(DlibFormatError, match="truncated"):
        r.raw(1)


def test_ieee_float_bytes_are_not_dlib_floats() -> None:
    # A sanity check on the fixture encoder itself: dlib floats differ from IEEE bytes.
    assert enc_float(1.0) != struct.pack("<f", 1.0)
