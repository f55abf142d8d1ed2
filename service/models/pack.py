"""The default model pack: dlib's three public-domain models converted for facegate.

``<packs_dir>/dlib-default/`` holds ``mmod_detector.onnx`` (face detector),
``shape_predictor_5.npz`` (5-point ERT landmarks), ``resnet_descriptor.onnx`` (128-d face
descriptor) and ``manifest.json`` (files with sha256, the conventions every stage needs,
the default threshold, and the sha256 of the ``.dat`` sources it was built from).

The sources come from the PyPI package ``face_recognition_models`` (located without
importing it: its ``__init__`` needs ``pkg_resources``). Preparing is pure Python + numpy +
onnx, takes seconds, is idempotent, and is atomic: the pack is built in a temporary
directory beside the target, fsynced, and renamed into place under a lock, so a crash or a
concurrent prepare never leaves a half-written pack that looks valid. Loading re-verifies
every file's sha256.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import onnx

from service.errors import ModelPackError
from service.models.calibration import Calibration, write_text_atomic
from service.models.dlib_dnn import MetricLoss, MmodLoss, parse_dnn
from service.models.mmod_onnx import build_mmod_onnx
from service.models.resnet_onnx import (
    CHIP_SIZE,
    EMBEDDING_DIM,
    INPUT_NAME,
    OUTPUT_NAME,
    build_resnet_onnx,
)
from service.models.shape_predictor import convert_shape_predictor

log = logging.getLogger(__name__)

DEFAULT_PACK = "dlib-default"
MODEL_ID = "dlib-resnet-v1"
# Bump when the converters' output changes: packs of another format are rebuilt.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
ROLES = ("detector", "landmarks", "embedder")

SOURCE_FILES: Mapping[str, str] = MappingProxyType(
    {
        "detector": "mmod_human_face_detector.dat",
        "landmarks": "shape_predictor_5_face_landmarks.dat",
        "embedder": "dlib_face_recognition_resnet_model_v1.dat",
    }
)
PACK_FILES: Mapping[str, str] = MappingProxyType(
    {
        "detector": "mmod_detector.onnx",
        "landmarks": "shape_predictor_5.npz",
        "embedder": "resnet_descriptor.onnx",
    }
)
# face_recognition_models 0.3.0, as published on PyPI.
EXPECTED_SOURCE_SHA256: dict[str, str] = {
    "mmod_human_face_detector.dat": (
        "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6"
    ),
    "shape_predictor_5_face_landmarks.dat": (
        "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888"
    ),
    "dlib_face_recognition_resnet_model_v1.dat": (
        "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30"
    ),
}

CHIP_PADDING = 0.25
MMOD_UPSAMPLE = 1  # face_recognition's default for the CNN detector

# dlib's rule: same person when the Euclidean distance of raw descriptors is <= 0.6 (the
# dist_thresh stored in the ResNet file). facegate compares L2-normalised vectors by cosine.
# For vectors of equal norm r, ||a-b||^2 = 2r^2(1 - cos), so d <= 0.6 ⇔ cos >= 1 - d^2/(2r^2).
# dlib's raw descriptors are NOT unit length: on the 25 faces of the parity fixture
# (tests/fixtures/dlib_descriptors.json) their norms are 1.385–1.631, median 1.476. With
# r = 1.476 the threshold is 0.917, which reproduces dlib's decision on all 300 fixture
# pairs; the unit-norm formula 1 - 0.6^2/2 = 0.82 would accept 220 of them (mostly
# strangers). It is the fallback: collections take the calibrated thresholds measured on
# labelled faces (DEFAULT_CALIBRATION_FILE, benchmarks/calibrate.py) when the pack has them.
DLIB_EUCLIDEAN_THRESHOLD = 0.6
DLIB_DESCRIPTOR_NORM = 1.476
COSINE_DEFAULT = round(1.0 - DLIB_EUCLIDEAN_THRESHOLD**2 / (2.0 * DLIB_DESCRIPTOR_NORM**2), 3)
THRESHOLD_NOTE = (
    "cosine_default = 1 - d^2/(2 r^2) with d = 0.6, dlib's Euclidean same-person threshold "
    "(the loss_metric dist_thresh in the ResNet file), and r = 1.476, the median norm of "
    "dlib's raw descriptors on the parity-fixture faces (for equal norms ||a-b||^2 = "
    "2 r^2 (1 - cos)); uncalibrated"
)

# The default pack's calibration (benchmarks/calibrate.py --write on LFW DevTrain): only
# numbers, committed, because the pack itself is rebuilt from its sources on every machine.
DEFAULT_CALIBRATION_FILE = Path(__file__).with_name("dlib_default_calibration.json")

_HEX = frozenset("0123456789abcdef")


# ---------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class PackFile:
    path: str  # relative to the pack directory
    sha256: str
    bytes: int


def _frozen(d: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class PackManifest:
    """What a pack contains and how its models must be used (``manifest.json``)."""

    name: str
    model_id: str
    format_version: int
    files: Mapping[str, PackFile]
    detector: Mapping[str, Any]
    landmarks: Mapping[str, Any]
    embedder: Mapping[str, Any]
    thresholds: Mapping[str, float]
    source: Mapping[str, str]
    created_by: str
    notes: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    # Thresholds per target false-match rate, measured (None: uncalibrated pack).
    calibration: Calibration | None = None

    def to_json(self) -> str:
        doc = {
            "name": self.name,
            "model_id": self.model_id,
            "format_version": self.format_version,
            "files": {
                role: {"path": f.path, "sha256": f.sha256, "bytes": f.bytes}
                for role, f in self.files.items()
            },
            "detector": dict(self.detector),
            "landmarks": dict(self.landmarks),
            "embedder": dict(self.embedder),
            "thresholds": dict(self.thresholds),
            "source": dict(self.source),
            "created_by": self.created_by,
            "notes": dict(self.notes),
        }
        if self.calibration is not None:
            doc["calibration"] = self.calibration.to_doc()
        return json.dumps(doc, indent=2, sort_keys=True) + "\n"

    @staticmethod
    def from_json(text: str, *, where: str = MANIFEST) -> PackManifest:
        """Parse and validate a manifest; anything missing or malformed → ModelPackError."""

        def bad(what: str) -> ModelPackError:
            return ModelPackError(f"{where}: invalid model-pack manifest: {what}")

        try:
            doc = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise bad(f"not JSON ({exc})") from None
        if not isinstance(doc, dict):
            raise bad("top level is not an object")

        def get(key: str, kind: type | tuple[type, ...]) -> Any:
            if key not in doc:
                raise bad(f"missing {key!r}")
            value = doc[key]
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
                raise bad(f"{key!r} has the wrong type")
            return value

        files_doc = get("files", dict)
        # Every pack has a detector and an embedder; a landmarks file only when the
        # landmarks come from their own model (dlib's ERT), not from the detector.
        landmarks_doc = doc.get("landmarks")
        own_landmarks = not (
            isinstance(landmarks_doc, dict) and landmarks_doc.get("kind") == "detector"
        )
        required = ROLES if own_landmarks else tuple(r for r in ROLES if r != "landmarks")
        files: dict[str, PackFile] = {}
        for role in (*required, *sorted(set(files_doc) - set(required))):
            entry = files_doc.get(role)
            if not isinstance(entry, dict):
                raise bad(f"no file for role {role!r}")
            path, digest, size = entry.get("path"), entry.get("sha256"), entry.get("bytes")
            if (
                not isinstance(path, str)
                or not path
                or "/" in path
                or "\\" in path
                or path.startswith(".")
            ):
                raise bad(f"{role}: bad file name {path!r}")
            if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX:
                raise bad(f"{role}: bad sha256 {digest!r}")
            if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
                raise bad(f"{role}: bad size {size!r}")
            files[role] = PackFile(path, digest, size)
        thresholds = get("thresholds", dict)
        cosine = thresholds.get("cosine_default")
        if (
            not isinstance(cosine, (int, float))
            or isinstance(cosine, bool)
            or not math.isfinite(cosine)
            or not -1.0 <= cosine <= 1.0
        ):
            raise bad(f"thresholds.cosine_default {cosine!r} is not a cosine")
        embedder = get("embedder", dict)
        for key in ("chip_size", "embedding_dim"):
            v = embedder.get(key)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise bad(f"embedder.{key} {v!r} is not a positive integer")
        padding = embedder.get("padding")
        if not isinstance(padding, (int, float)) or not 0 <= padding < 10:
            raise bad(f"embedder.padding {padding!r} is out of range")
        source = get("source", dict)
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in source.items()):
            raise bad("source must map file names to sha256 strings")
        notes = doc.get("notes", {})
        if not isinstance(notes, dict):
            raise bad("'notes' has the wrong type")
        model_id = get("model_id", str)
        calibration = None
        if "calibration" in doc:
            calibration = Calibration.from_doc(doc["calibration"], where=f"{where}: calibration")
            if calibration.model_id != model_id:
                raise bad(
                    f"the calibration was measured on model {calibration.model_id!r}, "
                    f"the pack holds {model_id!r}"
                )
        return PackManifest(
            name=get("name", str),
            model_id=model_id,
            format_version=get("format_version", int),
            files=MappingProxyType(files),
            detector=_frozen(get("detector", dict)),
            landmarks=_frozen(get("landmarks", dict)),
            embedder=_frozen(embedder),
            thresholds=_frozen({k: float(v) for k, v in thresholds.items()}),
            source=_frozen(source),
            created_by=get("created_by", str),
            notes=_frozen({str(k): str(v) for k, v in notes.items()}),
            calibration=calibration,
        )


# ---------------------------------------------------------------------------- sources


def locate_source_models() -> Path:
    """The ``models/`` directory of the installed ``face_recognition_models`` package."""
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelPackError(
            "the face_recognition_models package is not installed; it provides the dlib "
            "model files facegate converts (pip install face_recognition_models==0.3.0)"
        )
    return Path(locations[0]) / "models"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _read_verified_sources(source_dir: Path) -> dict[str, bytes]:
    """role → bytes of each source .dat, after checking its sha256."""
    out: dict[str, bytes] = {}
    for role, name in SOURCE_FILES.items():
        path = source_dir / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ModelPackError(
                f"source model file {name} is missing from {source_dir} "
                "(reinstall it: pip install --force-reinstall face_recognition_models==0.3.0)"
            ) from None
        except OSError as exc:
            raise ModelPackError(f"cannot read source model file {path}: {exc}") from None
        digest = hashlib.sha256(data).hexdigest()
        expected = EXPECTED_SOURCE_SHA256[name]
        if digest != expected:
            raise ModelPackError(
                f"source model file {name} is corrupt: sha256 {digest} ({len(data)} bytes), "
                f"expected {expected} (reinstall: pip install --force-reinstall "
                "face_recognition_models==0.3.0)",
                metadata={"file": name, "sha256": digest, "expected": expected},
            )
        out[role] = data
    return out


# ---------------------------------------------------------------------------- building


def facegate_version() -> str:
    try:
        return "facegate " + importlib.metadata.version("facegate")
    except importlib.metadata.PackageNotFoundError:
        return "facegate (not installed)"


def _convert(sources: Mapping[str, bytes], out_dir: Path) -> PackManifest:
    """Convert the three sources into ``out_dir`` and return the manifest (not yet written)."""
    names = SOURCE_FILES
    mmod_net = parse_dnn(sources["detector"], names["detector"])
    if not isinstance(mmod_net.loss, MmodLoss):
        raise ModelPackError(f"{names['detector']}: expected an MMOD detector network")
    resnet_net = parse_dnn(sources["embedder"], names["embedder"])
    if not isinstance(resnet_net.loss, MetricLoss):
        raise ModelPackError(f"{names['embedder']}: expected a metric-learning network")

    detector_model = build_mmod_onnx(mmod_net)
    embedder_model = build_resnet_onnx(resnet_net)
    _write_bytes(out_dir / PACK_FILES["detector"], detector_model.SerializeToString())
    _write_bytes(out_dir / PACK_FILES["embedder"], embedder_model.SerializeToString())
    landmarks = convert_shape_predictor(sources["landmarks"], names["landmarks"])
    landmark_path = out_dir / PACK_FILES["landmarks"]
    landmarks.save(landmark_path)
    _fsync_file(landmark_path)

    files = {}
    for role, name in PACK_FILES.items():
        path = out_dir / name
        files[role] = PackFile(name, sha256_file(path), path.stat().st_size)

    loss = mmod_net.loss
    window = loss.windows[0]
    return PackManifest(
        name=DEFAULT_PACK,
        model_id=MODEL_ID,
        format_version=FORMAT_VERSION,
        files=MappingProxyType(files),
        detector=_frozen(
            {
                "kind": "dlib_mmod",
                "upsample": MMOD_UPSAMPLE,
                "window": window.width,
                "window_hw": [window.height, window.width],
                "mean_rgb": list(mmod_net.input.mean_rgb),
                "pyramid_padding": mmod_net.input.pyramid_padding,
                "pyramid_outer_padding": mmod_net.input.pyramid_outer_padding,
                "nms_iou": loss.overlaps_nms[0],
                "nms_covered": loss.overlaps_nms[1],
                "score_threshold": 0.0,
                "onnx_input": _io_name(detector_model, "input"),
                "onnx_output": _io_name(detector_model, "output"),
            }
        ),
        landmarks=_frozen(
            {
                "kind": "dlib_ert",
                "points": landmarks.num_parts,
                "cascades": landmarks.num_cascades,
                "trees_per_cascade": landmarks.num_trees,
            }
        ),
        embedder=_frozen(
            {
                "kind": "dlib_resnet",
                "chip_size": CHIP_SIZE,
                "padding": CHIP_PADDING,
                "input": "uint8 RGB NHWC",
                "onnx_input": INPUT_NAME,
                "onnx_output": OUTPUT_NAME,
                "embedding_dim": EMBEDDING_DIM,
                "normalised": False,
                "mean_rgb": list(resnet_net.input.mean_rgb),
            }
        ),
        thresholds=_frozen(
            {
                "cosine_default": COSINE_DEFAULT,
                "dlib_euclidean": DLIB_EUCLIDEAN_THRESHOLD,
                "dlib_descriptor_norm": DLIB_DESCRIPTOR_NORM,
            }
        ),
        source=_frozen({SOURCE_FILES[r]: EXPECTED_SOURCE_SHA256[SOURCE_FILES[r]] for r in ROLES}),
        created_by=facegate_version(),
        notes=_frozen({"cosine_default": THRESHOLD_NOTE}),
        calibration=default_pack_calibration(),
    )


def default_pack_calibration(path: Path = DEFAULT_CALIBRATION_FILE) -> Calibration | None:
    """The committed calibration of the default pack, or None when there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelPackError(f"cannot read {path}: {exc}") from None
    calibration = Calibration.from_json(text, where=str(path))
    if calibration.model_id != MODEL_ID:
        raise ModelPackError(
            f"{path}: calibrated on model {calibration.model_id!r}, "
            f"the default pack is {MODEL_ID!r}"
        )
    return calibration


def _io_name(model: onnx.ModelProto, which: str) -> str:
    values = model.graph.input if which == "input" else model.graph.output
    initializers = {t.name for t in model.graph.initializer}
    names = [v.name for v in values if v.name not in initializers]
    return names[0] if names else ""


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on directories
        _fsync_file(path)


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def _pack_lock(packs_dir: Path, name: str) -> Iterator[None]:
    """An exclusive inter-process lock for preparing one pack."""
    with open(packs_dir / f".{name}.lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _remove_leftovers(packs_dir: Path, name: str) -> None:
    """Temporary directories of an interrupted prepare (we hold the lock, so none is live)."""
    for prefix in (f".{name}.tmp-", f".{name}.old-"):
        for leftover in packs_dir.glob(prefix + "*"):
            shutil.rmtree(leftover, ignore_errors=True)


def prepare_default_pack(
    packs_dir: Path, *, force: bool = False, source_dir: Path | None = None
) -> PackManifest:
    """Convert the dlib models into ``<packs_dir>/dlib-default`` (seconds).

    The sources' sha256 are always verified. Without ``force``, an existing pack whose files
    verify and which was built from these sources by this converter format is kept as is.
    """
    source_dir = source_dir if source_dir is not None else locate_source_models()
    sources = _read_verified_sources(source_dir)
    try:
        packs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelPackError(f"cannot create the packs directory {packs_dir}: {exc}") from None
    target = packs_dir / DEFAULT_PACK
    with _pack_lock(packs_dir, DEFAULT_PACK):
        if not force and target.exists():
            with contextlib.suppress(ModelPackError):
                _, existing = load_pack(packs_dir, DEFAULT_PACK)
                if dict(existing.source) == EXPECTED_SOURCE_SHA256:
                    return _with_current_calibration(target, existing)
        _remove_leftovers(packs_dir, DEFAULT_PACK)
        tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_PACK}.tmp-", dir=packs_dir))
        try:
            manifest = _convert(sources, tmp)
            _write_bytes(tmp / MANIFEST, manifest.to_json().encode("utf-8"))
            tmp.chmod(0o755)  # mkdtemp makes it private; the pack is meant to be shared
            _fsync_dir(tmp)
            old = None
            if target.exists() or target.is_symlink():
                old = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_PACK}.old-", dir=packs_dir))
                os.replace(target, old / DEFAULT_PACK)
            os.replace(tmp, target)
            _fsync_dir(packs_dir)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("prepared model pack %s in %s", DEFAULT_PACK, target)
    return manifest


def _with_current_calibration(pack_dir: Path, manifest: PackManifest) -> PackManifest:
    """A kept default pack whose calibration is not the committed one gets it (the models
    are unchanged, so only the manifest is rewritten, atomically)."""
    current = default_pack_calibration()
    if manifest.calibration == current:
        return manifest
    updated = dataclasses.replace(manifest, calibration=current)
    write_text_atomic(pack_dir / MANIFEST, updated.to_json())
    log.info("model pack %s: calibration updated in %s", DEFAULT_PACK, pack_dir / MANIFEST)
    return updated


# ---------------------------------------------------------------------------- loading


def load_pack(packs_dir: Path, name: str = DEFAULT_PACK) -> tuple[Path, PackManifest]:
    """The pack directory and its manifest, after verifying every file's size and sha256."""
    pack_dir = packs_dir / name
    manifest_path = pack_dir / MANIFEST
    try:
        text = manifest_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelPackError(
            f"model pack {name!r} not found in {packs_dir} (run: facegate models prepare)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelPackError(f"cannot read {manifest_path}: {exc}") from None
    manifest = PackManifest.from_json(text, where=str(manifest_path))
    if manifest.format_version != FORMAT_VERSION:
        raise ModelPackError(
            f"model pack {name!r} has format version {manifest.format_version}, this facegate "
            f"needs {FORMAT_VERSION} (run: facegate models prepare --force)"
        )
    verify_pack_files(pack_dir, manifest)
    return pack_dir, manifest


def verify_pack_files(pack_dir: Path, manifest: PackManifest) -> None:
    """Check every file's size and sha256 against the manifest (any pack kind)."""
    for role, f in manifest.files.items():
        path = pack_dir / f.path
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise ModelPackError(
                f"model pack file {path} ({role}) is missing",
                metadata={"file": f.path, "role": role},
            ) from None
        except OSError as exc:
            raise ModelPackError(f"cannot read model pack file {path} ({role}): {exc}") from None
        digest = sha256_file(path)
        if digest != f.sha256 or size != f.bytes:
            raise ModelPackError(
                f"model pack file {path} ({role}) is corrupt: sha256 {digest} ({size} "
                f"bytes), expected {f.sha256} ({f.bytes} bytes) as the manifest pins it",
                metadata={
                    "file": f.path,
                    "role": role,
                    "sha256": digest,
                    "expected_sha256": f.sha256,
                    "bytes": str(size),
                    "expected_bytes": str(f.bytes),
                },
            )


def ensure_default_pack(packs_dir: Path) -> tuple[Path, PackManifest]:
    """Load the default pack, preparing it when missing and rebuilding it when invalid."""
    try:
        pack_dir, manifest = load_pack(packs_dir, DEFAULT_PACK)
        if manifest.calibration == default_pack_calibration():
            return pack_dir, manifest
        with _pack_lock(packs_dir, DEFAULT_PACK):
            return pack_dir, _with_current_calibration(pack_dir, manifest)
    except ModelPackError as exc:
        if (packs_dir / DEFAULT_PACK).exists():
            log.warning("model pack %s is unusable (%s); rebuilding it", DEFAULT_PACK, exc)
        else:
            log.info("model pack %s not found in %s; preparing it", DEFAULT_PACK, packs_dir)
    prepare_default_pack(packs_dir)
    return load_pack(packs_dir, DEFAULT_PACK)
