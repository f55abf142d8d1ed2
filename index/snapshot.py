"""Atomic, checksummed gallery snapshots.

File layout (little-endian)::

    b"FGGAL\\0v1"  u64 header_len  header (JSON, utf-8)  pad to 64
    array 0, pad to 64, array 1, ...          (offsets in the header)
    sha256 of every byte before it (32 bytes)  b"FGGALEND"

The header carries the caller's store *sequence*: the snapshot contains every
store change up to it, so the service loads the snapshot and replays the store
after that sequence. The index is only a cache of the store.

Writing: serialize to a temp file in the same directory, fsync it, rename it
over the target, fsync the directory. A crash at any point leaves either the
old file or the new one, never a mix; leftover temp files of dead writers are
removed by the next write. Reading verifies magic, length and checksum before
parsing anything, so a torn or corrupted file raises :class:`SnapshotCorrupt`.

Encryption at rest is the caller's: an optional :class:`SnapshotCodec` wraps the bytes on
their way to and from the file (the service seals them with AES-GCM). This module stays
free of keys; the layout above is then the codec's plaintext, checksum included, and the
atomic write and the :class:`SnapshotCorrupt` contract are unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import numpy.typing as npt

from index.config import IndexConfig
from index.errors import SnapshotCorrupt

MAGIC = b"FGGAL\0v1"
END_MAGIC = b"FGGALEND"
FORMAT_VERSION = 1
_ALIGN = 64
_TRAILER = 32 + len(END_MAGIC)
_TMP_MARK = ".tmp-"


@dataclass
class SnapshotData:
    """Everything a snapshot holds, as plain arrays (rows in gallery order)."""

    dim: int
    sequence: int
    config: IndexConfig
    vectors: npt.NDArray[np.float32]
    face_ids: npt.NDArray[np.int64]
    uid_codes: npt.NDArray[np.int64]  # index into uids
    uids: list[str]
    part_codes: npt.NDArray[np.int64]  # index into partitions, -1 = none
    partitions: list[str]
    row_slot: npt.NDArray[np.int64]  # accelerator slot per row, -1 = none
    accel_blob: npt.NDArray[np.uint8] | None
    accel_trained_size: int


class ByteSink(Protocol):
    def write(self, data: bytes | memoryview, /) -> object: ...


class SealedWriter(ByteSink, Protocol):
    def finish(self) -> None:
        """Write whatever the wrapping still holds back (final block, tag)."""


class SnapshotCodec(Protocol):
    """Bytes-level wrapping of a snapshot file (e.g. authenticated encryption)."""

    def writer(self, out: IO[bytes]) -> SealedWriter:
        """A sink that transforms what ``encode`` writes and passes it to ``out``."""

    def read(self, f: IO[bytes], size: int, where: str) -> bytes | bytearray:
        """The plaintext of the ``size``-byte file ``f``; SnapshotCorrupt when it cannot
        be unwrapped (wrong key, altered or truncated file)."""


def _pad(n: int) -> int:
    return (-n) % _ALIGN


def encode(data: SnapshotData, out: ByteSink) -> None:
    """Stream `data` in the snapshot format to `out`, checksumming as it goes."""
    arrays: dict[str, np.ndarray] = {
        "vectors": data.vectors,
        "face_ids": data.face_ids,
        "uid_codes": data.uid_codes,
        "part_codes": data.part_codes,
        "row_slot": data.row_slot,
    }
    if data.accel_blob is not None:
        arrays["accel"] = data.accel_blob
    layout: dict[str, dict[str, Any]] = {}
    offset = 0
    for name, arr in arrays.items():
        layout[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "offset": offset,
                        "nbytes": arr.nbytes}
        offset += arr.nbytes + _pad(arr.nbytes)
    header = json.dumps({
        "format": FORMAT_VERSION,
        "dim": data.dim,
        "sequence": data.sequence,
        "count": int(data.face_ids.shape[0]),
        "config": data.config.to_dict(),
        "uids": data.uids,
        "partitions": data.partitions,
        "accel_trained_size": data.accel_trained_size,
        "payload_bytes": offset,
        "arrays": layout,
    }).encode()
    digest = hashlib.sha256()

    def put(chunk: bytes | memoryview) -> None:
        digest.update(chunk)
        out.write(chunk)

    head = MAGIC + struct.pack("<Q", len(header)) + header
    put(head + b"\0" * _pad(len(head)))
    for arr in arrays.values():
        contiguous = np.ascontiguousarray(arr)
        put(memoryview(contiguous.reshape(-1).view(np.uint8)))  # type: ignore[arg-type]
        put(b"\0" * _pad(arr.nbytes))
    out.write(digest.digest() + END_MAGIC)


def decode(buf: bytes | bytearray | memoryview, where: str = "snapshot") -> SnapshotData:
    """Parse and verify a snapshot image. Raises SnapshotCorrupt on any defect."""
    view = memoryview(buf)
    size = len(view)
    if size < len(MAGIC) + 8 + _TRAILER or bytes(view[: len(MAGIC)]) != MAGIC:
        raise SnapshotCorrupt(f"{where}: not a gallery snapshot or truncated ({size} bytes)")
    if bytes(view[size - len(END_MAGIC):]) != END_MAGIC:
        raise SnapshotCorrupt(f"{where}: truncated (end marker missing)")
    stored = bytes(view[size - _TRAILER: size - len(END_MAGIC)])
    if hashlib.sha256(view[: size - _TRAILER]).digest() != stored:
        raise SnapshotCorrupt(f"{where}: checksum mismatch")
    try:
        return _parse(view[: size - _TRAILER])
    except SnapshotCorrupt:
        raise
    except Exception as exc:  # checksum passed yet content is inconsistent
        raise SnapshotCorrupt(f"{where}: invalid content: {exc}") from exc


def _parse(view: memoryview) -> SnapshotData:
    (hlen,) = struct.unpack_from("<Q", view, len(MAGIC))
    hstart = len(MAGIC) + 8
    header = json.loads(bytes(view[hstart: hstart + hlen]))
    if header["format"] != FORMAT_VERSION:
        raise SnapshotCorrupt(f"unsupported snapshot format {header['format']}")
    base = hstart + hlen + _pad(hstart + hlen)
    if base + int(header["payload_bytes"]) != len(view):
        raise SnapshotCorrupt("payload length does not match header")

    def array(name: str) -> np.ndarray:
        spec = header["arrays"][name]
        dtype = np.dtype(spec["dtype"])
        shape = tuple(int(s) for s in spec["shape"])
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize != spec["nbytes"]:
            raise SnapshotCorrupt(f"array {name}: size does not match shape")
        flat = np.frombuffer(view, dtype=dtype, count=count, offset=base + int(spec["offset"]))
        return flat.reshape(shape).copy()

    dim, n = int(header["dim"]), int(header["count"])
    data = SnapshotData(
        dim=dim,
        sequence=int(header["sequence"]),
        config=IndexConfig.from_dict(header["config"]),
        vectors=array("vectors"),
        face_ids=array("face_ids"),
        uid_codes=array("uid_codes"),
        uids=[str(u) for u in header["uids"]],
        part_codes=array("part_codes"),
        partitions=[str(p) for p in header["partitions"]],
        row_slot=array("row_slot"),
        accel_blob=array("accel") if "accel" in header["arrays"] else None,
        accel_trained_size=int(header["accel_trained_size"]),
    )
    _check_consistent(data, n)
    return data


def _check_consistent(d: SnapshotData, n: int) -> None:
    """Cheap structural checks: a valid checksum over wrong content must not load."""
    if d.vectors.dtype != np.float32 or d.vectors.shape != (n, d.dim):
        raise SnapshotCorrupt("vectors have the wrong shape or dtype")
    for name in ("face_ids", "uid_codes", "part_codes", "row_slot"):
        arr = getattr(d, name)
        if arr.dtype != np.int64 or arr.shape != (n,):
            raise SnapshotCorrupt(f"{name} has the wrong shape or dtype")
    if n and not np.isfinite(d.vectors).all():
        raise SnapshotCorrupt("vectors contain NaN or inf")
    if n and (d.face_ids.min() < 0 or np.unique(d.face_ids).shape[0] != n):
        raise SnapshotCorrupt("face ids are negative or duplicated")
    if n and (d.uid_codes.min() < 0 or d.uid_codes.max() >= len(d.uids)):
        raise SnapshotCorrupt("uid codes out of range")
    if n and (d.part_codes.min() < -1 or d.part_codes.max() >= len(d.partitions)):
        raise SnapshotCorrupt("partition codes out of range")
    if d.sequence < 0:
        raise SnapshotCorrupt("negative sequence")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files left by writers that died (their pid no longer runs)."""
    prefix = f".{path.name}{_TMP_MARK}"
    for tmp in path.parent.glob(f"{prefix}*"):
        pid_text = tmp.name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit():
            continue
        pid = int(pid_text)
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        except PermissionError:
            pass  # alive, owned by someone else


def write_data(path: Path, data: SnapshotData, codec: SnapshotCodec | None = None) -> None:
    """serialize (through ``codec``) -> temp file -> fsync -> rename -> fsync directory."""
    path = Path(path)
    _remove_stale_temps(path)
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:12]}")
    try:
        with open(tmp, "xb") as f:
            if codec is None:
                encode(data, f)
            else:
                sink = codec.writer(f)
                encode(data, sink)
                sink.finish()
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def read_data(path: Path, codec: SnapshotCodec | None = None) -> SnapshotData:
    """Read and verify a snapshot file. Missing file -> FileNotFoundError."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if codec is not None:
            try:
                plain = codec.read(f, size, str(path))
            except (SnapshotCorrupt, OSError):
                raise
            except Exception as exc:
                raise SnapshotCorrupt(f"{path}: cannot unwrap: {exc}") from exc
            return decode(plain, str(path))
        buf = bytearray(size)
        got = f.readinto(buf)
    if got != size:
        raise SnapshotCorrupt(f"{path}: short read ({got} of {size} bytes)")
    return decode(buf, str(path))


__all__ = [
    "ByteSink",
    "SealedWriter",
    "SnapshotCodec",
    "SnapshotData",
    "decode",
    "encode",
    "read_data",
    "write_data",
]
