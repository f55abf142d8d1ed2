"""Reader for dlib's binary serialization (``dlib/serialize.h``), section 1 of dlib-models.md.

dlib files have no header and no framing: one C++ object is written recursively, so the
caller must know the type layout and read primitives in order. Every read here is
bounds-checked and raises :class:`DlibFormatError` naming the source file and the byte
offset — a truncated or corrupt model file never surfaces as ``IndexError`` or a silently
wrong number.

Hot paths: the ERT landmark file holds ~1.3M dlib floats (2.6M variable-length integers),
so :meth:`DlibReader.int` avoids allocations beyond the one ``bytes`` slice, and
:meth:`DlibReader.ints` / :meth:`DlibReader.floats` decode long runs in bulk — a tight
Python loop only walks the control bytes, and the values are assembled with numpy.
"""

from __future__ import annotations

import builtins
import math
import re

import numpy as np
import numpy.typing as npt

from service.errors import ModelPackError

# Special exponents written by dlib's float_details for non-finite values.
_EXP_INF = 32000
_EXP_NINF = 32001
_EXP_NAN = 32002

_TENSOR_VERSION = 2

# Below this count a plain Python walk beats setting up the regex + numpy machinery.
_BULK_MIN = 256

# One dlib integer: a control byte with length n in 1..8 (sign bit optional, 0x70 clear)
# followed by exactly n magnitude bytes. Alternatives are keyed by the first byte, so a
# match at a valid position is unique.
_INT_TOKEN = re.compile(
    b"|".join(
        b"[" + re.escape(bytes([n])) + re.escape(bytes([0x80 | n])) + b"]" + b"." * n
        for n in range(1, 9)
    ),
    re.DOTALL,
)
_ALIAS_TENSOR_VERSION = 1


class DlibFormatError(ModelPackError):
    """A dlib model file does not have the structure its type says it must have."""

    def __init__(self, source: str, offset: int, what: str) -> None:
        super().__init__(
            f"{source}: {what} (at byte {offset})",
            metadata={"source": source, "offset": str(offset)},
        )
        self.source = source
        self.offset = offset


class DlibReader:
    """Sequential reader over one serialized dlib object held in memory.

    ``offset`` is the position of the next unread byte; it only advances on a successful
    read, so after an error it still points at the start of the offending item.
    """

    __slots__ = ("_data", "_size", "offset", "source")

    def __init__(self, data: bytes, source: str) -> None:
        self._data = bytes(data)
        self._size = len(self._data)
        self.source = source
        self.offset = 0

    # ------------------------------------------------------------------ bookkeeping

    @property
    def size(self) -> builtins.int:
        return self._size

    @property
    def remaining(self) -> builtins.int:
        return self._size - self.offset

    def error(self, what: str, offset: builtins.int | None = None) -> DlibFormatError:
        """An error at ``offset`` (default: the current position) in this source."""
        return DlibFormatError(self.source, self.offset if offset is None else offset, what)

    def _truncated(self, what: str, need: builtins.int, at: builtins.int) -> DlibFormatError:
        have = max(self._size - at, 0)
        return self.error(f"file is truncated: {what} needs {need} bytes, {have} left", at)

    def peek_byte(self) -> builtins.int:
        if self.offset >= self._size:
            raise self._truncated("next item", 1, self.offset)
        return self._data[self.offset]

    def raw(self, n: builtins.int, what: str = "raw bytes") -> bytes:
        if n < 0:
            raise self.error(f"negative length {n} for {what}")
        end = self.offset + n
        if end > self._size:
            raise self._truncated(what, n, self.offset)
        out = self._data[self.offset : end]
        self.offset = end
        return out

    def expect_end(self) -> None:
        if self.offset != self._size:
            raise self.error(
                f"{self._size - self.offset} unexpected trailing bytes after the last item"
            )

    # ------------------------------------------------------------------ primitives

    def int(self) -> builtins.int:
        """A dlib integer: control byte (sign 0x80, length 0x0F), then LE magnitude bytes."""
        data = self._data
        pos = self.offset
        if pos >= self._size:
            raise self._truncated("integer", 1, pos)
        c = data[pos]
        n = c & 0x0F
        if c & 0x70 or n == 0 or n > 8:
            raise self.error(f"invalid integer control byte 0x{c:02x}", pos)
        end = pos + 1 + n
        if end > self._size:
            raise self._truncated("integer", 1 + n, pos)
        v = builtins.int.from_bytes(data[pos + 1 : end], "little")
        self.offset = end
        return -v if c & 0x80 else v

    def uint(self, what: str = "unsigned integer") -> builtins.int:
        start = self.offset
        v = self.int()
        if v < 0:
            raise self.error(f"{what} is negative ({v})", start)
        return v

    def float(self) -> builtins.float:
        """A dlib float/double: int64 mantissa then int16 exponent; value = m·2^e."""
        start = self.offset
        if start < self._size and self._data[start] & 0x70:
            raise self.error(
                "old ASCII floating-point format (control byte "
                f"0x{self._data[start]:02x}) is not supported",
                start,
            )
        mantissa = self.int()
        exponent = self.int()
        if exponent == _EXP_INF:
            return math.inf
        if exponent == _EXP_NINF:
            return -math.inf
        if exponent == _EXP_NAN:
            return math.nan
        if not -32768 <= exponent <= 32767 or not -(2**63) <= mantissa < 2**63:
            raise self.error(f"float out of range: mantissa {mantissa}, exponent {exponent}", start)
        try:
            return math.ldexp(mantissa, exponent)
        except OverflowError:
            raise self.error(
                f"float overflows: mantissa {mantissa}, exponent {exponent}", start
            ) from None

    def bool(self) -> builtins.bool:
        """A bool is one ASCII byte, '1' or '0'."""
        pos = self.offset
        if pos >= self._size:
            raise self._truncated("bool", 1, pos)
        c = self._data[pos]
        if c == 0x31:
            value = True
        elif c == 0x30:
            value = False
        else:
            raise self.error(f"invalid bool byte 0x{c:02x} (expected '0' or '1')", pos)
        self.offset = pos + 1
        return value

    def string(self, max_len: builtins.int = 1 << 20) -> str:
        """A std::string: integer length then raw bytes (decoded as UTF-8)."""
        start = self.offset
        n = self.int()
        if n < 0 or n > max_len:
            raise self.error(f"implausible string length {n}", start)
        raw = self.raw(n, "string")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.error(f"string is not valid UTF-8: {raw[:32]!r}", start) from None

    # ------------------------------------------------------------------ bulk

    def ints(self, n: builtins.int | None = None) -> npt.NDArray[np.int64]:
        """``n`` consecutive dlib integers (``None``: every integer up to the end of file).

        Long runs are tokenised by a compiled regex (C speed) and then proven to be the
        contiguous chain from the current offset; values are assembled with numpy.
        Magnitudes must fit int64 (true for every field of dlib model files).
        """
        pos = self.offset
        if n is not None and n < 0:
            raise self.error(f"negative integer count {n}")
        if n is not None and n < _BULK_MIN:
            starts = self._walk(n)
        else:
            endpos = self._size if n is None else min(self._size, pos + 9 * n)
            tokens = _INT_TOKEN.findall(self._data, pos, endpos)
            if n is not None:
                del tokens[n:]
            lengths = np.fromiter(map(len, tokens), np.int64, len(tokens))
            starts = np.empty(len(tokens), np.int64)
            if len(tokens):
                starts[0] = pos
                np.cumsum(lengths[:-1], out=starts[1:])
                starts[1:] += pos
            # findall skips bytes it cannot match, so prove the tokens are the contiguous
            # chain from ``pos``: each computed start must hold a valid control byte whose
            # length is exactly that token's (the first skip would break this), and the run
            # must have the requested length or reach the end of the file.
            ctrl = np.frombuffer(self._data, dtype=np.uint8)[starts] if len(tokens) else None
            ok = ctrl is not None and (n is None or len(tokens) == n)
            if ok and ctrl is not None:
                ok = bool(((ctrl & 0x70) == 0).all() and ((ctrl & 0x0F) + 1 == lengths).all()) and (
                    n is not None or int(starts[-1] + lengths[-1]) == self._size
                )
            if not ok and (n or pos < self._size):
                # Walk the chain in Python to report the exact offset of the bad byte.
                self._walk(n)
                raise self.error("integer run could not be decoded")  # pragma: no cover
        return self._assemble_ints(starts)

    def _walk(self, n: builtins.int | None) -> npt.NDArray[np.int64]:
        """Start offsets of the next ``n`` integers, validating each control byte."""
        data = self._data
        size = self._size
        pos = self.offset
        starts: list[builtins.int] = []
        count = 0
        while (n is None and pos < size) or (n is not None and count < n):
            if pos >= size:
                raise self._truncated(f"integer {count} of {n}", 1, pos)
            c = data[pos]
            length = c & 0x0F
            if c & 0x70 or length == 0 or length > 8:
                raise self.error(f"invalid integer control byte 0x{c:02x}", pos)
            if pos + 1 + length > size:
                raise self._truncated("integer", 1 + length, pos)
            starts.append(pos)
            pos += 1 + length
            count += 1
        return np.asarray(starts, dtype=np.int64)

    def _assemble_ints(self, starts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Values of already-validated integers starting at ``starts``; advances ``offset``."""
        if starts.size == 0:
            return np.zeros(0, np.int64)
        buf = np.frombuffer(self._data, dtype=np.uint8)
        ctrl = buf[starts]
        lengths = ctrl & 0x0F
        mags = np.zeros(starts.size, np.uint64)
        for k in range(8):
            sel = lengths > k
            if not sel.any():
                break
            mags[sel] |= buf[starts[sel] + (1 + k)].astype(np.uint64) << np.uint64(8 * k)
        too_big = mags >= np.uint64(1 << 63)
        if too_big.any():
            i = int(np.argmax(too_big))
            raise self.error("integer magnitude does not fit int64", int(starts[i]))
        values = mags.astype(np.int64)
        neg = (ctrl & 0x80) != 0
        values[neg] = -values[neg]
        self.offset = int(starts[-1]) + 1 + int(lengths[-1])
        return values

    def floats(
        self, n: builtins.int, dtype: npt.DTypeLike = np.float32
    ) -> npt.NDArray[np.floating]:
        """``n`` consecutive dlib floats (mantissa/exponent pairs) as a numpy array."""
        if n < 0:
            raise self.error(f"negative float count {n}")
        start = self.offset
        if n and start < self._size and self._data[start] & 0x70:
            raise self.error("old ASCII floating-point format is not supported", start)
        pairs = self.ints(2 * n).reshape(n, 2)
        mantissa = pairs[:, 0]
        exponent = pairs[:, 1]
        special = exponent >= _EXP_INF
        if ((exponent > _EXP_NAN) | (exponent < -32768)).any():
            self.offset = start
            raise self.error("float exponent out of range in a run of floats", start)
        with np.errstate(over="ignore"):
            values = np.ldexp(mantissa.astype(np.float64), np.where(special, 0, exponent))
        if special.any():
            values[exponent == _EXP_INF] = np.inf
            values[exponent == _EXP_NINF] = -np.inf
            values[exponent == _EXP_NAN] = np.nan
        return values.astype(dtype, copy=False)

    # ------------------------------------------------------------------ composites

    def float_matrix(self) -> npt.NDArray[np.float32]:
        """A ``dlib::matrix<float>``: -nr, -nc (sign marks the new format), row-major floats."""
        start = self.offset
        nr = abs(self.int())
        nc = abs(self.int())
        if nr * nc > self.remaining // 2:
            # Each dlib float takes at least 4 bytes; this catches garbage sizes early.
            raise self.error(f"matrix of {nr}x{nc} cannot fit in the rest of the file", start)
        return self.floats(nr * nc, np.float32).reshape(nr, nc)

    def float_vector_2(self) -> tuple[builtins.float, builtins.float]:
        """A ``dlib::vector<float,2>``: x then y."""
        x = self.float()
        y = self.float()
        return x, y

    def tensor(self) -> npt.NDArray[np.float32]:
        """A dnn ``resizable_tensor``: version 2, n, k, nr, nc, then raw float32 LE (NCHW)."""
        start = self.offset
        version = self.int()
        if version != _TENSOR_VERSION:
            raise self.error(f"unsupported tensor version {version}", start)
        shape = (
            self.uint("tensor dim"),
            self.uint("tensor dim"),
            self.uint("tensor dim"),
            self.uint("tensor dim"),
        )
        count = shape[0] * shape[1] * shape[2] * shape[3]
        nbytes = 4 * count
        if self.offset + nbytes > self._size:
            raise self._truncated(f"tensor of shape {shape}", nbytes, self.offset)
        values = np.frombuffer(self._data, dtype="<f4", count=count, offset=self.offset)
        self.offset += nbytes
        return values.astype(np.float32).reshape(shape)

    def alias_tensor(self) -> tuple[builtins.int, builtins.int, builtins.int, builtins.int]:
        """An ``alias_tensor`` shape: version 1, then n, k, nr, nc (no data)."""
        start = self.offset
        version = self.int()
        if version != _ALIAS_TENSOR_VERSION:
            raise self.error(f"unsupported alias_tensor version {version}", start)
        return (
            self.uint("alias dim"),
            self.uint("alias dim"),
            self.uint("alias dim"),
            self.uint("alias dim"),
        )
