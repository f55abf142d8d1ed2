"""Proof under hostile input (issue 6, item 8), through a real server process and real stubs.

* hypothesis mutates real JPEG/PNG/WebP photos (truncation, bit flips, header field edits,
  chunk duplication) and sends them to Identify/Enroll;
* hypothesis mutates serialized requests of every RPC (bytes level) and builds requests with
  arbitrary field values (message level);
* every answer must be a valid response or a status carrying a facegate ErrorInfo reason;
  no INTERNAL, no crash, no hang (each call has a deadline), the server stays SERVING, and
  its resident memory stays within a generous bound (a sanity check, not a measurement);
* decompression and header bombs (a 100 Mpx palette PNG, huge JPEG/WebP headers, GIF/TIFF
  bombs, a zlib text-chunk bomb, a many-scan JPEG) are refused as such;
* transport limits: an over-limit message and calls past ``max_concurrent_rpcs`` are
  RESOURCE_EXHAUSTED, and a cancelled or deadline-expired call gives its slot back.

The decoder's own fuzz test (tests/test_decode.py) covers ``decode_image`` in-process; the
100 Mpx 1-bit PNG and 17 MiB Identify cases are in tests/test_e2e.py.
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from conftest import astronaut_rgb, grace_hopper_path
from facegate.v1 import facegate_pb2 as pb
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from server_process import IDENTIFY_GRADE_ENROLMENT, ServerProcess

from service.domain import CollectionSpec
from service.transport import convert
from service.transport.server import SERVICE_NAME
from service.transport.status import DOMAIN, error_info

pytestmark = pytest.mark.slow

CALL_DEADLINE_S = 60.0  # far above any honest answer: reaching it means a hang
MAX_CONCURRENT = 2
# Sanity bound on the server's RSS growth over one fuzz test (models and arenas excluded by
# measuring after a warm-up); a leak of a decoded frame per call would blow through it.
RSS_GROWTH_BOUND = 400 * 1024 * 1024
SHOP = "shop"

_METHODS = pb.DESCRIPTOR.services_by_name["FaceGate"].methods_by_name


# ---------------------------------------------------------------- the server


@dataclass
class Hostile:
    server: ServerProcess
    channel: grpc.Channel

    def raw(self, method: str) -> grpc.UnaryUnaryMultiCallable[bytes, bytes]:
        return self.channel.unary_unary(
            f"/{SERVICE_NAME}/{method}", request_serializer=None, response_deserializer=None
        )

    def call(self, method: str, payload: bytes) -> str:
        """One call; returns "OK" or the ErrorInfo reason. Fails on anything unexplained."""
        response_type = _response_type(method)
        try:
            raw = self.raw(method)(payload, timeout=CALL_DEADLINE_S)
        except grpc.RpcError as err:
            assert isinstance(err, grpc.Call)
            code = err.code()
            assert self.server.alive(), f"server died on {method}\n{self.server.log_tail()}"
            assert code not in (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.INTERNAL,
                grpc.StatusCode.UNKNOWN,
                grpc.StatusCode.UNAVAILABLE,
            ), f"{method}: {code} {err.details()}\n{self.server.log_tail()}"
            info = error_info(err)
            assert info is not None and info.domain == DOMAIN and info.reason, (
                f"{method}: {code} without a facegate ErrorInfo: {err.details()}"
            )
            return str(info.reason)
        response_type.FromString(raw)  # a valid response message
        return "OK"

    def healthy(self) -> bool:
        stub = health_pb2_grpc.HealthStub(self.channel)
        res = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=30)
        return bool(res.status == health_pb2.HealthCheckResponse.SERVING)

    def ensure_shop(self) -> None:
        """Fuzzed DeleteCollection/CreateCollection calls may touch collections: re-create."""
        spec = CollectionSpec(name=SHOP, enroll_quality=IDENTIFY_GRADE_ENROLMENT)
        self.call("CreateCollection", convert.collection_spec_to_proto(spec).SerializeToString())


def _response_type(method: str) -> type[Message]:
    cls: type[Message] = getattr(pb, _METHODS[method].output_type.name)
    return cls


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory, packs_dir: Path) -> Iterator[Hostile]:
    tmp = tmp_path_factory.mktemp("hostile")
    server = ServerProcess(
        tmp / "data",
        packs_dir,
        tmp / "server.log",
        {"FACEGATE_MAX_CONCURRENT_RPCS": str(MAX_CONCURRENT)},
    )
    server.start()
    try:
        server.wait_ready()
        with grpc.insecure_channel(
            server.target,
            options=[
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ],
        ) as channel:
            h = Hostile(server, channel)
            h.ensure_shop()
            enrol = pb.EnrollRequest(collection=SHOP, uid="grace", images=[SMALL_GRACE_JPEG])
            assert h.call("Enroll", enrol.SerializeToString()) == "OK"
            for _ in range(3):  # first calls grow arenas and caches: memory is measured after
                assert h.call("Identify", _identify(SMALL_GRACE_JPEG)) == "OK"
            yield h
        assert server.terminate() == 0, server.log_tail()
    finally:
        server.kill()


@pytest.fixture
def rss_guard(hostile: Hostile) -> Iterator[None]:
    """Check the server's memory growth over the test, and its health after it."""
    hostile.ensure_shop()
    before = hostile.server.rss_bytes()
    yield
    assert hostile.server.alive(), hostile.server.log_tail()
    assert hostile.healthy()
    after = hostile.server.rss_bytes()
    print(f"server RSS {before / 2**20:.0f} MiB -> {after / 2**20:.0f} MiB")
    assert after - before < RSS_GROWTH_BOUND, (before, after)


# ---------------------------------------------------------------- seed photos


def _encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **params)
    return buf.getvalue()


def _small(im: Image.Image, width: int) -> Image.Image:
    return im.convert("RGB").resize((width, round(im.height * width / im.width)))


GRACE = Image.open(grace_hopper_path())
ASTRONAUT = Image.fromarray(astronaut_rgb())
SMALL_GRACE_JPEG = _encode(_small(GRACE, 240), "JPEG", quality=88)
SEEDS: dict[str, bytes] = {
    "jpeg": SMALL_GRACE_JPEG,
    "jpeg-progressive": _encode(_small(ASTRONAUT, 220), "JPEG", quality=80, progressive=True),
    "png": _encode(_small(GRACE, 160), "PNG"),
    "png-palette": _encode(_small(ASTRONAUT, 160).convert("P"), "PNG"),
    "webp": _encode(_small(GRACE, 200), "WEBP", quality=75),
    "webp-lossless": _encode(_small(ASTRONAUT, 120), "WEBP", lossless=True),
}


def _identify(image: bytes) -> bytes:
    return pb.IdentifyRequest(collection=SHOP, image=image).SerializeToString()


def _enrol(uid: str, *images: bytes) -> bytes:
    return pb.EnrollRequest(collection=SHOP, uid=uid, images=images).SerializeToString()


# ---------------------------------------------------------------- structure-aware mutations


def _units(data: bytes) -> list[tuple[int, int]]:
    """Spans of the container's structural units: PNG chunks, JPEG marker segments before
    the scan, RIFF chunks of WebP. Best effort on already-mutated bytes."""
    spans: list[tuple[int, int]] = []
    if data.startswith(b"\x89PNG"):
        pos = 8
        while pos + 12 <= len(data):
            end = pos + 12 + int.from_bytes(data[pos : pos + 4], "big")
            spans.append((pos, min(end, len(data))))
            pos = end
    elif data.startswith(b"\xff\xd8"):
        pos = 2
        while pos + 4 <= len(data) and data[pos] == 0xFF and data[pos + 1] != 0xDA:
            end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
            spans.append((pos, min(end, len(data))))
            pos = end
    elif data[:4] == b"RIFF":
        pos = 12
        while pos + 8 <= len(data):
            size = int.from_bytes(data[pos + 4 : pos + 8], "little")
            end = pos + 8 + size + (size & 1)
            spans.append((pos, min(end, len(data))))
            pos = end
    return [s for s in spans if s[0] < s[1]]


def _size_fields(data: bytes) -> list[tuple[int, int]]:
    """(offset, width in bytes) of the header fields that declare the picture's size."""
    if data.startswith(b"\x89PNG"):
        return [(16, 4), (20, 4), (24, 1), (25, 1)]  # IHDR width, height, depth, colour type
    if data.startswith(b"\xff\xd8"):
        for start, _ in _units(data):
            if data[start + 1] in (0xC0, 0xC1, 0xC2):  # SOF: precision, height, width, comps
                return [(start + 4, 1), (start + 5, 2), (start + 7, 2), (start + 9, 1)]
    if data[:4] == b"RIFF":
        return [(4, 4), (16, 4), (24, 3), (27, 3), (26, 2), (28, 2)]
    return [(0, 2)]


@st.composite
def mutated_photos(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        kind = draw(st.sampled_from(["truncate", "flip", "size", "duplicate", "splice"]))
        if kind == "truncate":
            del data[draw(st.integers(0, len(data) - 1)) :]
        elif kind == "flip":
            for _ in range(draw(st.integers(1, 8))):
                pos = draw(st.integers(0, len(data) - 1))
                data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "size":
            offset, width = draw(st.sampled_from(_size_fields(bytes(data))))
            value = draw(
                st.sampled_from([0, 1, 15, 16, 255, 4096, 12_001, 65_535, 2**31 - 1, 2**32 - 1])
                | st.integers(0, 2 ** (8 * width) - 1)
            )
            value %= 2 ** (8 * width)
            order = "little" if data[:4] == b"RIFF" else "big"
            data[offset : offset + width] = value.to_bytes(width, order)
        elif kind == "duplicate":
            units = _units(bytes(data))
            if units:
                start, end = draw(st.sampled_from(units))
                at = draw(st.sampled_from(sorted({s for s, _ in units} | {end, len(data)})))
                data[at:at] = data[start:end] * draw(st.integers(1, 3))
        else:  # copy an arbitrary span elsewhere (covers IDAT/scan data reuse)
            start = draw(st.integers(0, len(data) - 1))
            span = data[start : start + draw(st.integers(1, 512))]
            at = draw(st.integers(0, len(data)))
            data[at:at] = span
    return bytes(data)


FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    # rss_guard is meant to run once around all examples (memory before/after the test)
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


@FUZZ
@given(photo=mutated_photos(), enrol=st.booleans())
def test_fuzz_mutated_photos_through_identify_and_enroll(
    hostile: Hostile, rss_guard: None, photo: bytes, enrol: bool
) -> None:
    if enrol:
        request = pb.EnrollRequest(collection=SHOP, uid="fuzz", images=[photo])
        request.allow_duplicate = True
        reason = hostile.call("Enroll", request.SerializeToString())
    else:
        reason = hostile.call("Identify", _identify(photo))
    event(reason)  # the spread of answers shows in --hypothesis-show-statistics
    # Only the pipeline's verdicts (or an answer) are acceptable for a photo.
    assert reason in {
        "OK",
        "INVALID_ARGUMENT",
        "IMAGE_UNDECODABLE",
        "IMAGE_TOO_LARGE",
        "NO_FACE",
        "MULTIPLE_FACES",
        "LOW_QUALITY",
        "LIVENESS_FAILED",
        "DUPLICATE_FACE",
    }, reason


# ---------------------------------------------------------------- protobuf requests


def _template() -> bytes:
    v = np.random.default_rng(1).standard_normal(128).astype("<f4")
    return (v / np.linalg.norm(v)).astype("<f4").tobytes()


def _request_seeds() -> dict[str, Message]:
    face = SEEDS["jpeg"]
    return {
        "CreateCollection": pb.CreateCollectionRequest(
            name="fz", threshold=0.9, margin=0.02, hint_required_above=10
        ),
        "DeleteCollection": pb.DeleteCollectionRequest(name="scratch"),
        "UpdateCollection": pb.UpdateCollectionRequest(
            name="fz", threshold=0.8, identify_returns_metadata=True
        ),
        "GetCollection": pb.GetCollectionRequest(name=SHOP),
        "ListCollections": pb.ListCollectionsRequest(),
        "GetServerInfo": pb.GetServerInfoRequest(),
        "Enroll": pb.EnrollRequest(
            collection=SHOP,
            uid="fz-user",
            images=[face],
            phone_number="+15550001234",
            metadata={"k": "v"},
            allow_duplicate=True,
        ),
        "Identify": pb.IdentifyRequest(collection=SHOP, image=face, hint="1234", top_k=3),
        "Verify": pb.VerifyRequest(collection=SHOP, uid="grace", image=face),
        "DeleteUser": pb.DeleteUserRequest(collection=SHOP, uid="fz-nobody"),
        "GetUser": pb.GetUserRequest(collection=SHOP, uid="grace"),
        "ListUsers": pb.ListUsersRequest(collection=SHOP, page_size=2, page_token=""),
        "ImportTemplates": pb.ImportTemplatesRequest(
            collection=SHOP,
            model_id="dlib-default",
            templates=[pb.TemplateRecord(uid="fz-import", embedding=_template())],
        ),
    }


REQUEST_SEEDS = _request_seeds()
assert set(REQUEST_SEEDS) == set(_METHODS), "a new RPC needs a seed request here"

_INTERESTING = [b"\xff" * 10 + b"\x01", b"\x80" * 11, b"\x00", b"\xff\xff\xff\xff\x0f"]


@st.composite
def mutated_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    method = draw(st.sampled_from(sorted(REQUEST_SEEDS)))
    data = bytearray(REQUEST_SEEDS[method].SerializeToString())
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "duplicate", "varint"]))
        pos = draw(st.integers(0, len(data)))
        if kind == "flip" and data:
            data[min(pos, len(data) - 1)] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=24))
        elif kind == "duplicate":  # a repeated field record merges (or repeats) in protobuf
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 64))]
        else:  # overlong, maximal or negative varints where a tag or length was
            data[pos : pos + 1] = draw(st.sampled_from(_INTERESTING))
    return method, bytes(data)


# Plausible values for the fields that decide how deep a request gets (past the collection
# lookup into the pipeline and the store); anything else is drawn by type.
_LIKELY: dict[str, list[Any]] = {
    "collection": [SHOP],
    "name": [SHOP, "fz"],
    "uid": ["grace", "fz-user"],
    "image": list(SEEDS.values()),
    "images": list(SEEDS.values()),
    "model_id": ["dlib-default"],
}


def _field_value(draw: st.DrawFn, field: FieldDescriptor) -> Any:
    likely = _LIKELY.get(field.name)
    if likely and draw(st.integers(0, 9)) < 7:
        return draw(st.sampled_from(likely))
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return draw(
            st.sampled_from([SHOP, "grace", "", "a" * 300, "../../etc", "\x00", "名前"])
            | st.text(max_size=40)
        )
    if t == FieldDescriptor.TYPE_BYTES:
        return draw(st.sampled_from([b"", SEEDS["png"], _template()]) | st.binary(max_size=300))
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return draw(st.floats(allow_nan=True, allow_infinity=True, width=32))
    if t == FieldDescriptor.TYPE_BOOL:
        return draw(st.booleans())
    if t == FieldDescriptor.TYPE_ENUM:
        return draw(st.integers(-2, 5))
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return draw(st.sampled_from([0, 1, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1))
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return draw(st.integers(0, 2**64 - 1))
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64):
        return draw(st.integers(-(2**63), 2**63 - 1))
    return draw(st.integers(-(2**31), 2**31 - 1))


def _fill(draw: st.DrawFn, msg: Message, depth: int = 0) -> None:
    for field in msg.DESCRIPTOR.fields:
        if field.name not in _LIKELY and not draw(st.booleans()):
            continue
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if is_map:
            target = getattr(msg, field.name)
            for _ in range(draw(st.integers(0, 3))):
                target[draw(st.text(max_size=70))] = draw(st.text(max_size=300))
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth > 1:
                continue
            count = draw(st.integers(0, 3)) if _repeated(field) else 1
            for _ in range(count):
                child = getattr(msg, field.name).add() if _repeated(field) else None
                child = child if child is not None else getattr(msg, field.name)
                _fill(draw, child, depth + 1)
        elif _repeated(field):
            values = [_field_value(draw, field) for _ in range(draw(st.integers(0, 12)))]
            getattr(msg, field.name).extend(values)
        else:
            setattr(msg, field.name, _field_value(draw, field))


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


@st.composite
def arbitrary_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    method = draw(st.sampled_from(sorted(REQUEST_SEEDS)))
    msg = type(REQUEST_SEEDS[method])()
    _fill(draw, msg)
    if method in ("DeleteCollection", "UpdateCollection") and msg.name == SHOP:
        msg.name = "scratch"  # keep the shared collection as it is: other examples need it
    return method, msg.SerializeToString()


@FUZZ.__class__(FUZZ, max_examples=400)  # cheap: most end at parsing or validation
@given(request=mutated_requests() | arbitrary_requests())
def test_fuzz_request_messages_of_every_rpc(
    hostile: Hostile, rss_guard: None, request: tuple[str, bytes]
) -> None:
    method, payload = request
    event(f"{method}: {hostile.call(method, payload)}")  # asserts a response or facegate status


# ---------------------------------------------------------------- bombs


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, depth: int, colour: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    plte = _png_chunk(b"PLTE", bytes(range(256)) * 3) if colour == 3 else b""
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + plte
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _palette_png_100mpx() -> bytes:
    """10,000 x 10,000 8-bit palette PNG of zero rows: ~100 KB on the wire, 100 Mpx decoded
    (Pillow's own guard only warns at this size)."""
    rows = zlib.compressobj(9)
    row = b"\x00" * 10_001
    idat = b"".join(rows.compress(row) for _ in range(10_000)) + rows.flush()
    return _png(10_000, 10_000, 8, 3, idat)


def _zlib_text_bomb() -> bytes:
    """A normal small photo with a zTXt chunk that inflates to 64 MB (Pillow's cap is 1 MB)."""
    photo = _encode(_small(GRACE, 160), "PNG")
    packer = zlib.compressobj(9)
    zeros = b"\x00" * (1 << 20)
    body = b"".join(packer.compress(zeros) for _ in range(64)) + packer.flush()
    chunk = _png_chunk(b"zTXt", b"Comment\x00\x00" + body)
    return photo[:33] + chunk + photo[33:]  # right after IHDR


def _jpeg_with_size(width: int, height: int) -> bytes:
    data = bytearray(SEEDS["jpeg"])
    (sof,) = [s for s, _ in _units(bytes(data)) if data[s + 1] in (0xC0, 0xC2)]
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _webp_canvas(width: int, height: int) -> bytes:
    body = bytes([0x10, 0, 0, 0]) + (width - 1).to_bytes(3, "little")
    body += (height - 1).to_bytes(3, "little")
    chunk = b"VP8X" + struct.pack("<I", len(body)) + body
    rest = SEEDS["webp"][12:]
    return b"RIFF" + struct.pack("<I", 4 + len(chunk) + len(rest)) + b"WEBP" + chunk + rest


def _gif_bomb() -> bytes:
    """GIF declaring a 65,535 x 65,535 screen and frame (LZW of it would be tiny)."""
    screen = struct.pack("<HHBBB", 65_535, 65_535, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 65_535, 65_535, 0) + b"\x02\x02\x4c\x01\x00"
    return b"GIF89a" + screen + frame + b"\x3b"


def _tiff_bomb() -> bytes:
    """Little-endian TIFF with one IFD declaring 100,000 x 100,000 pixels."""
    entries = [
        (256, 4, 1, 100_000),  # ImageWidth
        (257, 4, 1, 100_000),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 8),  # Compression: deflate
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, 1, 200),  # StripOffsets
        (279, 4, 1, 16),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    ifd += b"".join(struct.pack("<HHII", *e) for e in entries) + b"\x00\x00\x00\x00"
    data = b"II*\x00" + struct.pack("<I", 8) + ifd
    return data + b"\x00" * (200 - len(data)) + zlib.compress(b"\x00" * 1_000_000)[:16]


def _many_scans_jpeg() -> bytes:
    return _encode(_small(GRACE, 64), "JPEG", quality=70, progressive=True)[:-2] + (
        b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00\x00" * 300 + b"\xff\xd9"
    )


BOMBS: list[tuple[str, Callable[[], bytes], str, str | None]] = [
    # (name, make, expected reason, expected limit_name)
    ("palette PNG of 100 Mpx", _palette_png_100mpx, "IMAGE_TOO_LARGE", "max_pixels"),
    (
        "JPEG header 65535 x 65535",
        lambda: _jpeg_with_size(65_535, 65_535),
        "IMAGE_TOO_LARGE",
        "max_side",
    ),
    (
        "JPEG header 8000 x 8000",
        lambda: _jpeg_with_size(8000, 8000),
        "IMAGE_TOO_LARGE",
        "max_pixels",
    ),
    (
        "WebP canvas 16384 x 16384",
        lambda: _webp_canvas(16_384, 16_384),
        "IMAGE_TOO_LARGE",
        "max_side",
    ),
    ("WebP canvas 7000 x 7000", lambda: _webp_canvas(7000, 7000), "IMAGE_TOO_LARGE", "max_pixels"),
    ("GIF 65535 x 65535", _gif_bomb, "IMAGE_UNDECODABLE", None),
    ("TIFF 100000 x 100000", _tiff_bomb, "IMAGE_UNDECODABLE", None),
    ("JPEG with 300 scans", _many_scans_jpeg, "IMAGE_TOO_LARGE", None),
]


@pytest.mark.parametrize("bomb", BOMBS, ids=[b[0] for b in BOMBS])
def test_bombs_are_refused_through_the_rpc(
    hostile: Hostile, rss_guard: None, bomb: tuple[str, Callable[[], bytes], str, str | None]
) -> None:
    name, make, reason, limit = bomb
    data = make()
    assert len(data) < 1_100_000, f"{name}: the bomb itself should be small"
    for method, payload in (
        ("Identify", _identify(data)),
        ("Enroll", _enrol("bomb", data)),
    ):
        try:
            hostile.raw(method)(payload, timeout=CALL_DEADLINE_S)
        except grpc.RpcError as err:
            info = error_info(err)
            assert info is not None, f"{name}: {err}"
            assert info.reason == reason, f"{name}: {info.reason} {info.metadata}"
            if limit is not None:
                assert info.metadata["limit_name"] == limit, dict(info.metadata)
            continue
        pytest.fail(f"{name}: {method} accepted a bomb")


def test_zlib_text_chunk_bomb_is_bounded(hostile: Hostile, rss_guard: None) -> None:
    """Pillow caps decompressed text chunks; the photo is refused or answered, and memory
    stays bounded (rss_guard) either way."""
    data = _zlib_text_bomb()
    assert len(data) < 1_100_000
    assert hostile.call("Identify", _identify(data)) in {"OK", "IMAGE_UNDECODABLE"}


# ---------------------------------------------------------------- transport limits


def test_over_limit_enrolment_is_resource_exhausted(hostile: Hostile, rss_guard: None) -> None:
    images = [b"\xff\xd8\xff" + b"\x00" * (9 * 1024 * 1024)] * 2  # 18 MiB > 16 MiB
    payload = pb.EnrollRequest(collection=SHOP, uid="big", images=images).SerializeToString()
    with pytest.raises(grpc.RpcError) as info:
        hostile.raw("Enroll")(payload, timeout=CALL_DEADLINE_S)
    assert isinstance(info.value, grpc.Call)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    get = pb.GetUserRequest(collection=SHOP, uid="big").SerializeToString()
    assert hostile.call("GetUser", get) == "UNKNOWN_USER"


def _slow_enrolment(uid: str) -> bytes:
    """Ten large photos of one face: seconds of pipeline work (and a user if it completes)."""
    big = _encode(GRACE.convert("RGB").resize((1600, 1876)), "JPEG", quality=85)
    request = pb.EnrollRequest(collection=SHOP, uid=uid, images=[big] * 10)
    request.allow_duplicate = True
    return request.SerializeToString()


def _refused_past_the_limit(hostile: Hostile) -> bool:
    """True when a quick call is refused because every slot is taken."""
    try:
        hostile.raw("ListCollections")(b"", timeout=CALL_DEADLINE_S)
    except grpc.RpcError as err:
        assert isinstance(err, grpc.Call)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
        return True
    return False


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_calls_past_the_limit_are_refused_and_abandoned_calls_free_their_slots(
    hostile: Hostile, how: str
) -> None:
    hostile.ensure_shop()
    uids = [f"slow-{how}-{i}" for i in range(MAX_CONCURRENT)]
    enroll = hostile.raw("Enroll")
    timeout = 600.0 if how == "cancel" else 4.0
    slow = [enroll.future(_slow_enrolment(uid), timeout=timeout) for uid in uids]
    # Every slot is busy with a slow enrolment: a further call is refused, not queued.
    give_up = time.monotonic() + 60
    while not _refused_past_the_limit(hostile):
        assert time.monotonic() < give_up and not any(f.done() for f in slow), (
            "the slow calls never filled the slots"
        )
        time.sleep(0.02)
    if how == "cancel":
        for f in slow:
            assert f.cancel()
    for f in slow:
        with pytest.raises(grpc.FutureCancelledError if how == "cancel" else grpc.RpcError):
            f.result(timeout=CALL_DEADLINE_S)
    # The server stops the abandoned work: both slots come back (two calls at once are
    # admitted), and neither enrolment ever completes (a handler that ran on would have
    # enrolled its user by the time its slot is free).
    give_up = time.monotonic() + 120
    while not _both_slots_answer(hostile):
        assert time.monotonic() < give_up, "the abandoned calls kept their slots"
        time.sleep(0.05)
    for uid in uids:
        get = pb.GetUserRequest(collection=SHOP, uid=uid).SerializeToString()
        assert hostile.call("GetUser", get) == "UNKNOWN_USER", f"{uid}: the abandoned call ran on"


def _both_slots_answer(hostile: Hostile) -> bool:
    payload = _identify(SMALL_GRACE_JPEG)
    identify = hostile.raw("Identify")
    calls = [identify.future(payload, timeout=CALL_DEADLINE_S) for _ in range(MAX_CONCURRENT)]
    answered = True
    for call in calls:
        try:
            call.result()
        except grpc.RpcError as err:
            assert isinstance(err, grpc.Call)
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            answered = False
    return answered
