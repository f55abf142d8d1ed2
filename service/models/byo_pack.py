"""Bring-your-own model packs: an operator's detector + ArcFace-style embedder, described.

A BYO pack is a directory holding the model files and a ``manifest.json`` of the same
family as the default pack's (``PackManifest``: files with sha256 and size, ``detector``,
``landmarks``, ``embedder``, ``thresholds``), whose sections state every convention the
stages need, explicitly: nothing is guessed from tensor shapes. ``facegate models add``
writes one (``service/cli/byo.py``); this module parses, checks and loads it.

Detector section (``kind`` = ``yunet`` | ``scrfd`` | ``retinaface``)::

    {"kind": "scrfd", "input": "input.1", "input_size": [640, 640], "colour": "RGB",
     "mean": [127.5, 127.5, 127.5], "std": [128.0, 128.0, 128.0],
     "outputs": {"score_8": "446", "bbox_8": "449", "kps_8": "452", ...},
     "strides": [8, 16, 32], "anchors_per_cell": 2,
     "score_threshold": 0.5, "nms_iou": 0.4}

``outputs`` keys per kind: yunet ``cls_S obj_S bbox_S kps_S``; scrfd ``score_S bbox_S
kps_S`` (S over ``strides``); retinaface ``loc conf landmarks`` plus ``min_sizes``,
``steps`` and ``variances``. Mean and std are in 0..255 pixel units, in the model's
colour order; the model sees (pixel − mean) / std.

Embedder section (``kind`` = ``arcface``): ``input``, ``output``, ``chip_size``,
``colour``, ``mean``, ``std``, ``embedding_dim``, ``template`` (the five landmark targets
in chip pixels, ArcFace order) and ``padding`` 0 (PackManifest's field; chips are tight).

The model id names the embedding space: a hash of the embedder file, its preprocessing
(colour, mean, std, size, template) and the detector file (its landmarks drive the
alignment), so templates of two packs are only compared when all of these agree.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from service.errors import ModelPackError
from service.models.pack import (
    MANIFEST,
    PackFile,
    PackManifest,
    facegate_version,
    sha256_file,
    verify_pack_files,
)

BYO_FORMAT_VERSION = 1
DETECTOR_KINDS = ("yunet", "scrfd", "retinaface")
EMBEDDER_KINDS = ("arcface",)
COLOURS = ("RGB", "BGR")
BYO_ROLES = ("detector", "embedder")

# The standard ArcFace 112×112 five-point template (InsightFace's reference alignment), in
# chip pixels: subject's right eye (image left), left eye, nose tip, right and left mouth
# corners. Every ArcFace-family recogniser (MobileFaceNet, SFace, w600k_*) expects it.
ARCFACE_112_TEMPLATE: tuple[tuple[float, float], ...] = (
    (38.2946, 51.6963),
    (73.5318, 51.5014),
    (56.0252, 71.7366),
    (41.5493, 92.3655),
    (70.7299, 92.2041),
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class DetectorSpec:
    """How to run and decode one face detector (all fields explicit in the manifest)."""

    kind: str
    input_name: str
    input_size: tuple[int, int]  # (width, height) of the letterboxed network input
    colour: str  # channel order the network expects
    mean: tuple[float, float, float]  # 0..255 units, in ``colour`` order
    std: tuple[float, float, float]
    outputs: Mapping[str, str]  # role key (e.g. "score_8") → ONNX output name
    score_threshold: float
    nms_iou: float
    strides: tuple[int, ...] = ()  # yunet, scrfd
    anchors_per_cell: int = 1  # scrfd
    min_sizes: tuple[tuple[int, ...], ...] = ()  # retinaface, one tuple per step
    steps: tuple[int, ...] = ()  # retinaface
    variances: tuple[float, float] = (0.1, 0.2)  # retinaface

    def required_outputs(self) -> tuple[str, ...]:
        if self.kind == "yunet":
            return tuple(f"{r}_{s}" for s in self.strides for r in ("cls", "obj", "bbox", "kps"))
        if self.kind == "scrfd":
            return tuple(f"{r}_{s}" for s in self.strides for r in ("score", "bbox", "kps"))
        return ("loc", "conf", "landmarks")


@dataclass(frozen=True)
class EmbedderSpec:
    """How to feed aligned chips to an ArcFace-style recogniser."""

    input_name: str
    output_name: str
    chip_size: int
    colour: str
    mean: tuple[float, float, float]  # 0..255 units, in ``colour`` order
    std: tuple[float, float, float]
    embedding_dim: int
    template: tuple[tuple[float, float], ...]  # 5 points in chip pixels, ArcFace order


@dataclass(frozen=True)
class ByoPack:
    pack_dir: Path
    manifest: PackManifest
    detector: DetectorSpec
    embedder: EmbedderSpec

    def file(self, role: str) -> Path:
        return self.pack_dir / self.manifest.files[role].path


# ------------------------------------------------------------------ section parsing


class _Section:
    """Typed reads from one manifest section; any problem → ModelPackError naming the key."""

    def __init__(self, doc: Mapping[str, Any], name: str, where: str) -> None:
        self.doc = doc
        self.name = name
        self.where = where

    def bad(self, key: str, what: str) -> ModelPackError:
        return ModelPackError(
            f"{self.where}: invalid model-pack manifest: {self.name}.{key} {what}",
            metadata={"field": f"{self.name}.{key}"},
        )

    def raw(self, key: str) -> Any:
        if key not in self.doc:
            raise self.bad(key, "is missing (BYO packs state every convention explicitly)")
        return self.doc[key]

    def text(self, key: str, choices: Sequence[str] = ()) -> str:
        v = self.raw(key)
        if not isinstance(v, str) or not v:
            raise self.bad(key, f"must be a non-empty string, got {v!r}")
        if choices and v not in choices:
            raise self.bad(key, f"must be one of {', '.join(choices)}, got {v!r}")
        return v

    def number(self, key: str, lo: float, hi: float) -> float:
        v = self.raw(key)
        if not _is_number(v) or not lo <= float(v) <= hi:
            raise self.bad(key, f"must be a number in [{lo}, {hi}], got {v!r}")
        return float(v)

    def integer(self, key: str, lo: int, hi: int) -> int:
        v = self.raw(key)
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise self.bad(key, f"must be an integer in [{lo}, {hi}], got {v!r}")
        return v

    def numbers(self, key: str, n: int | None, *, positive: bool = False) -> tuple[float, ...]:
        v = self.raw(key)
        ok = isinstance(v, list) and (n is None or len(v) == n) and all(_is_number(x) for x in v)
        if ok and positive:
            ok = all(float(x) > 0 for x in v)
        if not ok or not v:
            size = f"{n} " if n is not None else ""
            sign = "positive " if positive else ""
            raise self.bad(key, f"must be a list of {size}{sign}numbers, got {v!r}")
        return tuple(float(x) for x in v)

    def integers(self, key: str, n: int | None = None) -> tuple[int, ...]:
        values = self.numbers(key, n, positive=True)
        if any(x != int(x) for x in values):
            raise self.bad(key, f"must be positive integers, got {self.raw(key)!r}")
        return tuple(int(x) for x in values)


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _triple(values: tuple[float, ...]) -> tuple[float, float, float]:
    return (values[0], values[1], values[2])


def parse_detector_spec(section: Mapping[str, Any], where: str = MANIFEST) -> DetectorSpec:
    s = _Section(section, "detector", where)
    kind = s.text("kind", DETECTOR_KINDS)
    width, height = s.integers("input_size", 2)
    if kind == "scrfd" and (width % 32 or height % 32):
        raise s.bad("input_size", f"must be multiples of 32 for SCRFD, got {[width, height]}")
    outputs = s.raw("outputs")
    if not isinstance(outputs, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v for k, v in outputs.items()
    ):
        raise s.bad("outputs", "must map output roles to ONNX output names")
    extra: dict[str, Any] = {}
    if kind in ("yunet", "scrfd"):
        extra["strides"] = s.integers("strides")
    if kind == "scrfd":
        extra["anchors_per_cell"] = s.integer("anchors_per_cell", 1, 16)
    if kind == "retinaface":
        steps = s.integers("steps")
        sizes = s.raw("min_sizes")
        if not isinstance(sizes, list) or len(sizes) != len(steps):
            raise s.bad("min_sizes", f"must hold one list per step ({len(steps)}), got {sizes!r}")
        extra["steps"] = steps
        extra["min_sizes"] = tuple(
            _Section({"min_sizes": v}, "detector", where).integers("min_sizes") for v in sizes
        )
        v0, v1 = s.numbers("variances", 2, positive=True)
        extra["variances"] = (v0, v1)
    spec = DetectorSpec(
        kind=kind,
        input_name=s.text("input"),
        input_size=(width, height),
        colour=s.text("colour", COLOURS),
        mean=_triple(s.numbers("mean", 3)),
        std=_triple(s.numbers("std", 3, positive=True)),
        outputs=dict(outputs),
        score_threshold=s.number("score_threshold", 0.0, 1.0),
        nms_iou=s.number("nms_iou", 0.0, 1.0),
        **extra,
    )
    missing = [k for k in spec.required_outputs() if k not in outputs]
    if missing:
        raise s.bad("outputs", f"lacks {', '.join(missing)} (a {kind} detector needs them)")
    return spec


def parse_embedder_spec(section: Mapping[str, Any], where: str = MANIFEST) -> EmbedderSpec:
    s = _Section(section, "embedder", where)
    s.text("kind", EMBEDDER_KINDS)
    s.number("padding", 0.0, 0.0)  # chips are tight crops: the template says where
    size = s.integer("chip_size", 16, 1024)
    points = s.raw("template")
    if (
        not isinstance(points, list)
        or len(points) != 5
        or not all(
            isinstance(p, list) and len(p) == 2 and all(_is_number(c) for c in p) for p in points
        )
    ):
        raise s.bad("template", f"must be five [x, y] points in chip pixels, got {points!r}")
    template = tuple((float(p[0]), float(p[1])) for p in points)
    if not all(0 <= c <= size for p in template for c in p):
        raise s.bad("template", f"points must lie inside the {size}×{size} chip")
    return EmbedderSpec(
        input_name=s.text("input"),
        output_name=s.text("output"),
        chip_size=size,
        colour=s.text("colour", COLOURS),
        mean=_triple(s.numbers("mean", 3)),
        std=_triple(s.numbers("std", 3, positive=True)),
        embedding_dim=s.integer("embedding_dim", 2, 65536),
        template=template,
    )


# ------------------------------------------------------------------------- model id


def derive_model_id(manifest: PackManifest, stem: str | None = None) -> str:
    """``<stem>-<12 hex>``: the embedding space's identity (see the module docstring)."""
    e = manifest.embedder
    space = {
        "embedder_sha256": manifest.files["embedder"].sha256,
        "detector_sha256": manifest.files["detector"].sha256,
        "preprocessing": {
            k: e.get(k) for k in ("chip_size", "colour", "mean", "std", "template", "input")
        },
    }
    digest = hashlib.sha256(json.dumps(space, sort_keys=True).encode()).hexdigest()[:12]
    if stem is None:
        stem = manifest.model_id.rsplit("-", 1)[0]
    stem = re.sub(r"[^A-Za-z0-9._]+", "_", stem).strip("_") or "byo"
    return f"{stem}-{digest}"


# ------------------------------------------------------------------------- loading


def is_byo_manifest(manifest: PackManifest) -> bool:
    return manifest.detector.get("kind") in DETECTOR_KINDS


def check_pack_name(name: str) -> str:
    if not _NAME.match(name):
        raise ModelPackError(
            f"pack name {name!r} must be 1-64 letters, digits, '.', '_' or '-' "
            "(and not start with a dot or dash)"
        )
    return name


def byo_pack_dir(location: str | Path, packs_dir: Path) -> Path:
    """A pack given by name (a directory in ``packs_dir``), directory or manifest path."""
    text = str(location)
    if "/" not in text and not text.endswith(".json"):
        return packs_dir / check_pack_name(text)
    path = Path(text).expanduser()
    return path.parent if path.suffix == ".json" else path


def load_byo_pack(location: str | Path, packs_dir: Path) -> ByoPack:
    """Read, validate and verify (every file's sha256) a BYO pack."""
    pack_dir = byo_pack_dir(location, packs_dir)
    manifest_path = pack_dir / MANIFEST
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelPackError(
            f"model pack {str(location)!r}: no {manifest_path} (write one with: facegate "
            "models add)",
            metadata={"file": str(manifest_path)},
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelPackError(f"cannot read {manifest_path}: {exc}") from None
    where = str(manifest_path)
    manifest = PackManifest.from_json(text, where=where)
    if not is_byo_manifest(manifest):
        raise ModelPackError(
            f"{where}: detector.kind {manifest.detector.get('kind')!r} is not a BYO detector "
            f'({", ".join(DETECTOR_KINDS)}); the dlib pack is model_pack = "dlib-default"'
        )
    if manifest.format_version != BYO_FORMAT_VERSION:
        raise ModelPackError(
            f"{where}: BYO manifest format {manifest.format_version}, this facegate reads "
            f"{BYO_FORMAT_VERSION}"
        )
    for role in BYO_ROLES:
        if role not in manifest.files:
            raise ModelPackError(f"{where}: no file for role {role!r}")
    detector = parse_detector_spec(manifest.detector, where)
    embedder = parse_embedder_spec(manifest.embedder, where)
    expected = derive_model_id(manifest)
    if manifest.model_id != expected:
        raise ModelPackError(
            f"{where}: model_id {manifest.model_id!r} does not match the files and "
            f"conventions it names ({expected!r}); templates must not be mixed across "
            "models, so rewrite the manifest with: facegate models add",
            metadata={"model_id": manifest.model_id, "expected": expected},
        )
    verify_pack_files(pack_dir, manifest)
    return ByoPack(pack_dir, manifest, detector, embedder)


# ------------------------------------------------------------------------- writing


def _place(src: Path, dest: Path, symlink: bool) -> None:
    if dest.exists() or dest.is_symlink():
        dest.unlink()
    if symlink:
        dest.symlink_to(src.resolve())
    else:
        shutil.copyfile(src, dest)


def write_byo_pack(
    pack_dir: Path,
    *,
    detector_file: Path,
    detector: Mapping[str, Any],
    embedder_file: Path,
    embedder: Mapping[str, Any],
    cosine_default: float,
    model_name: str | None = None,
    symlink: bool = False,
    notes: Mapping[str, str] | None = None,
) -> PackManifest:
    """Place the two files in ``pack_dir`` (copies, or symlinks), pin their sha256 and write
    ``manifest.json`` atomically. The sections are validated before anything is written."""
    where = str(pack_dir / MANIFEST)
    parse_detector_spec(detector, where)
    parse_embedder_spec(embedder, where)
    if not (_is_number(cosine_default) and -1.0 <= cosine_default <= 1.0):
        raise ModelPackError(f"thresholds.cosine_default {cosine_default!r} is not a cosine")
    sources = {"detector": Path(detector_file), "embedder": Path(embedder_file)}
    for role, src in sources.items():
        if not src.is_file():
            raise ModelPackError(f"{role} file {src} does not exist", metadata={"file": str(src)})
    if sources["detector"].name == sources["embedder"].name:
        raise ModelPackError("the detector and embedder files must have different names")
    check_pack_name(pack_dir.name)
    pack_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, PackFile] = {}
    for role, src in sources.items():
        dest = pack_dir / src.name
        if dest.resolve() != src.resolve():
            _place(src, dest, symlink)
        files[role] = PackFile(src.name, sha256_file(dest), dest.stat().st_size)
    stem = model_name or sources["embedder"].stem
    draft = PackManifest(
        name=pack_dir.name,
        model_id=stem,
        format_version=BYO_FORMAT_VERSION,
        files=MappingProxyType(files),
        detector=MappingProxyType(dict(detector)),
        landmarks=MappingProxyType({"kind": "detector", "layout": "arcface5", "points": 5}),
        embedder=MappingProxyType(dict(embedder)),
        thresholds=MappingProxyType({"cosine_default": float(cosine_default)}),
        source=MappingProxyType({src.name: files[r].sha256 for r, src in sources.items()}),
        created_by=facegate_version(),
        notes=MappingProxyType(dict(notes or {})),
    )
    manifest = replace(draft, model_id=derive_model_id(draft, stem))
    tmp = pack_dir / f".{MANIFEST}.tmp"
    tmp.write_text(manifest.to_json(), encoding="utf-8")
    os.replace(tmp, pack_dir / MANIFEST)
    return manifest
