"""Labelled face folders, and their embeddings computed once per model pack and cached.

A labelled folder is either LFW's layout (``<Name>/<Name>_NNNN.jpg``, optionally under an
``images/`` folder) or any folder with an identity CSV (header ``path,identity``; also
accepted: ``file,identity_id`` as in the shared deepface set), paths relative to the CSV.

Embedding is the expensive step (≈ 0.1 s per LFW photo on one core), so the result is kept
in an ``.npz`` named after the pack's model id, the embedder file's sha256 and a digest of
the file list (relative paths and sizes): a rerun on the same folder and pack loads it
instantly, any change to either embeds again. Besides the vector, the cache keeps the face
each vector came from (box, detector score, 5 landmarks), so a benchmark can replay the
service's own decision path on the same faces without running the networks again.
"""

from __future__ import annotations

import csv
import hashlib
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.accuracy import central_face  # noqa: E402
from service.config import Settings, load_settings  # noqa: E402
from service.pipeline.types import LocatedFaces  # noqa: E402

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CACHE_FORMAT = 1


class DatasetError(Exception):
    """A labelled folder or CSV that cannot be used (the message says why)."""


@dataclass(frozen=True)
class Labelled:
    """Images and their identities, in a stable order (sorted by relative path)."""

    name: str  # what the calibration records as its dataset
    root: Path  # paths are relative to this
    paths: tuple[str, ...]
    identities: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)


def load_labelled(source: Path) -> Labelled:
    """An LFW-layout folder, or an identity CSV (a ``.csv`` file, or a folder holding one)."""
    if source.is_file():
        return _from_csv(source)
    if not source.is_dir():
        raise DatasetError(f"{source}: no such folder or CSV file")
    csvs = sorted(source.glob("*.csv"))
    images = source / "images" if (source / "images").is_dir() else source
    people = sorted(p for p in images.iterdir() if p.is_dir())
    if people:
        return _from_lfw(source, images, people)
    if len(csvs) == 1:
        return _from_csv(csvs[0])
    raise DatasetError(
        f"{source}: neither LFW layout (<Name>/<Name>_NNNN.jpg) nor a single identity CSV"
    )


def _from_lfw(source: Path, images: Path, people: Sequence[Path]) -> Labelled:
    rows: list[tuple[str, str]] = []
    for person in people:
        for f in sorted(person.iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                rows.append((f"{person.name}/{f.name}", person.name))
    if not rows:
        raise DatasetError(f"{images}: the identity folders hold no images")
    return Labelled(
        source.resolve().name,
        images,
        tuple(r[0] for r in rows),
        tuple(r[1] for r in rows),
    )


def _from_csv(path: Path) -> Labelled:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        path_key = next((k for k in ("path", "file") if k in fields), None)
        id_key = next((k for k in ("identity", "identity_id") if k in fields), None)
        if path_key is None or id_key is None:
            raise DatasetError(
                f"{path}: the header must name a path column (path) and an identity column "
                f"(identity); it has {fields}"
            )
        rows = sorted({(r[path_key].strip(), r[id_key].strip()) for r in reader})
    missing = [p for p, _ in rows if not (path.parent / p).is_file()]
    if missing:
        raise DatasetError(f"{path}: {len(missing)} listed images are missing, e.g. {missing[0]}")
    if not rows:
        raise DatasetError(f"{path}: no rows")
    paths = [p for p, _ in rows]
    if len(set(paths)) != len(paths):
        raise DatasetError(f"{path}: an image is listed under two identities")
    return Labelled(
        f"{path.parent.resolve().name}/{path.name}",
        path.parent,
        tuple(paths),
        tuple(i for _, i in rows),
    )


# ---------------------------------------------------------------------------- embedding


@dataclass(frozen=True)
class Embedded:
    """One row per image of a Labelled set; rows with ``found`` False had no face."""

    model_id: str
    vectors: np.ndarray  # (N, D) float32, L2-normalised; zeros where no face was found
    found: np.ndarray  # (N,) bool
    boxes: np.ndarray  # (N, 4) float32
    scores: np.ndarray  # (N,) float32
    landmarks: np.ndarray  # (N, 5, 2) float32
    seconds: float  # embedding time (0 when loaded from the cache)
    cache_path: Path

    def located(self, i: int) -> LocatedFaces:
        return LocatedFaces(
            boxes=self.boxes[i : i + 1].copy(),
            scores=self.scores[i : i + 1].copy(),
            landmarks=self.landmarks[i : i + 1].copy(),
        )


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "facegate" / "embeddings"


def build_analyzer(settings: Settings) -> Any:
    """The analyzer of the pack ``settings`` names (``model_pack``: the dlib default or a
    bring-your-own pack, e.g. ``FACEGATE_MODEL_PACK=retina-mfn``)."""
    from service.pipeline.factory import build_analyzer as build

    return build(settings)


def pack_identity(analyzer: Any) -> tuple[str, str]:
    """(model id, embedder sha256 or "") of an analyzer that exposes its manifest."""
    manifest = getattr(analyzer, "manifest", None)
    files = getattr(manifest, "files", {}) if manifest is not None else {}
    embedder = files.get("embedder") if hasattr(files, "get") else None
    return str(analyzer.model_id), str(getattr(embedder, "sha256", ""))


def cache_key(model_id: str, embedder_sha: str, data: Labelled) -> str:
    h = hashlib.sha256(f"facegate-embeddings/{CACHE_FORMAT}\n{model_id}\n{embedder_sha}\n".encode())
    for rel, ident in zip(data.paths, data.identities, strict=True):
        size = (data.root / rel).stat().st_size
        h.update(f"{rel}\t{ident}\t{size}\n".encode())
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_id)
    return f"{safe}-{h.hexdigest()[:16]}"


def embed_labelled(
    data: Labelled,
    *,
    settings: Settings | None = None,
    analyzer: Any = None,
    cache_dir: Path | None = None,
    progress: bool = False,
) -> Embedded:
    """Every image's face embedding (the face nearest the image centre), cached."""
    from service.pipeline.decode import decode_image

    settings = settings if settings is not None else load_settings()
    analyzer = analyzer if analyzer is not None else build_analyzer(settings)
    model_id, embedder_sha = pack_identity(analyzer)
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"{cache_key(model_id, embedder_sha, data)}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            if list(z["paths"]) == list(data.paths):
                return Embedded(
                    model_id,
                    z["vectors"],
                    z["found"],
                    z["boxes"],
                    z["scores"],
                    z["landmarks"],
                    0.0,
                    path,
                )
    n, dim = len(data), int(analyzer.embedding_dim)
    vectors = np.zeros((n, dim), np.float32)
    found = np.zeros(n, bool)
    boxes = np.zeros((n, 4), np.float32)
    scores = np.zeros(n, np.float32)
    landmarks = np.zeros((n, 5, 2), np.float32)
    start = time.perf_counter()
    for k, rel in enumerate(data.paths):
        image = decode_image((data.root / rel).read_bytes(), settings.decode)
        faces = analyzer.locate(image)
        i = central_face(faces.boxes, image.width, image.height)
        if i is not None:
            one = LocatedFaces(
                boxes=faces.boxes[i : i + 1],
                scores=faces.scores[i : i + 1],
                landmarks=faces.landmarks[i : i + 1],
            )
            vectors[k] = analyzer.embed_chips(analyzer.align(image, one))[0]
            found[k] = True
            boxes[k], scores[k], landmarks[k] = one.boxes[0], one.scores[0], one.landmarks[0]
        if progress and (k + 1) % 250 == 0:
            rate = (time.perf_counter() - start) / (k + 1)
            print(
                f"  embedded {k + 1}/{n} ({rate:.3f} s/image, ~{rate * (n - k - 1) / 60:.0f} min"
                " left)",
                file=sys.stderr,
                flush=True,
            )
    seconds = time.perf_counter() - start
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}.npz")
    np.savez(
        tmp,
        paths=np.array(data.paths),
        vectors=vectors,
        found=found,
        boxes=boxes,
        scores=scores,
        landmarks=landmarks,
    )
    os.replace(tmp, path)  # atomic: an interrupted run never leaves a truncated cache
    return Embedded(model_id, vectors, found, boxes, scores, landmarks, seconds, path)
