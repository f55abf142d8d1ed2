"""Verification accuracy of a model pack on an LFW-format folder and pair file.

    python benchmarks/accuracy.py --lfw DIR --pairs FILE --json [--reference-dlib] [--limit N]
        [--pack NAME|DIR|MANIFEST [--packs-dir DIR]] [--threads N]

DIR holds ``<Name>/<Name>_NNNN.jpg`` (or has an ``images/`` folder that does). FILE is an
LFW pair list: an optional header line, then ``name i j`` (same person) and
``name1 i name2 j`` (different people). Each image is embedded once; the face used is the
detection whose centre is nearest the image centre (LFW photos are centred on the subject).
A pair with an image where no face was found counts as a wrong answer at every threshold.

``--pack`` measures a bring-your-own pack (``facegate models add``) instead of the default:
a pack name in the packs directory, or its directory or manifest path.

Prints one JSON line per engine: ``facegate`` (the selected pack, no dlib) and, with
``--reference-dlib``, ``dlib`` (dlib's own CNN detector + 5-point + ResNet, same images,
same session, same scoring: cosine of L2-normalised descriptors).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Pair:
    a: Path
    b: Path
    same: bool


def read_pairs(images: Path, pairs_file: Path) -> list[Pair]:
    pairs: list[Pair] = []
    for line in pairs_file.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            name, i, j = parts
            pairs.append(Pair(image_path(images, name, i), image_path(images, name, j), True))
        elif len(parts) == 4:
            n1, i, n2, j = parts
            pairs.append(Pair(image_path(images, n1, i), image_path(images, n2, j), False))
        # other lines: the header ("1100" or "10 300")
    return pairs


def image_path(images: Path, name: str, index: str) -> Path:
    return images / name / f"{name}_{int(index):04d}.jpg"


def central_face(boxes: np.ndarray, width: int, height: int) -> int | None:
    if len(boxes) == 0:
        return None
    cx = (boxes[:, 0] + boxes[:, 2]) / 2.0 - width / 2.0
    cy = (boxes[:, 1] + boxes[:, 3]) / 2.0 - height / 2.0
    return int(np.argmin(cx * cx + cy * cy))


Embedder = Callable[[Path], "np.ndarray | None"]


def facegate_embedder(
    packs_dir: Path | None, pack: str | None = None, threads: int = 1
) -> tuple[Embedder, float, dict[str, str]]:
    """The pack's embedder, its default threshold, and what it is (model id, licences)."""
    from service.config import load_settings
    from service.pipeline.decode import decode_image
    from service.pipeline.factory import build_analyzer
    from service.pipeline.types import LocatedFaces

    settings = load_settings(model_dir=packs_dir, model_pack=pack, model_threads=threads)
    analyzer = build_analyzer(settings)
    about = {"pack": settings.model_pack, "model_id": analyzer.model_id}
    manifest = getattr(analyzer, "manifest", None)
    if manifest is not None:
        for role in ("detector", "embedder"):
            section = getattr(manifest, role)
            if "kind" in section:
                about[f"{role}_kind"] = str(section["kind"])
            if "licence" in section:
                about[f"{role}_licence"] = str(section["licence"])

    def embed(path: Path) -> np.ndarray | None:
        image = decode_image(path.read_bytes(), settings.decode)
        faces = analyzer.locate(image)
        i = central_face(faces.boxes, image.width, image.height)
        if i is None:
            return None
        one = LocatedFaces(
            boxes=faces.boxes[i : i + 1],
            scores=faces.scores[i : i + 1],
            landmarks=faces.landmarks[i : i + 1],
            layout=faces.layout,
        )
        vector: np.ndarray = analyzer.embed_chips(analyzer.align(image, one))[0]
        return vector

    return embed, analyzer.default_threshold, about


def dlib_reference() -> tuple[Any, Any, Any]:
    """dlib's own detector, 5-point predictor and ResNet on the same .dat files (dev only)."""
    import dlib

    from service.models.pack import locate_source_models

    models = locate_source_models()
    return (
        dlib.cnn_face_detection_model_v1(str(models / "mmod_human_face_detector.dat")),
        dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat")),
        dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat")),
    )


def dlib_embedder() -> Embedder:
    from PIL import Image

    det, sp, rec = dlib_reference()

    def embed(path: Path) -> np.ndarray | None:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"))
        dets = det(rgb, 1)
        boxes = np.array(
            [[d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom()] for d in dets],
            dtype=np.float64,
        ).reshape(-1, 4)
        i = central_face(boxes, rgb.shape[1], rgb.shape[0])
        if i is None:
            return None
        shape = sp(rgb, dets[i].rect)
        v = np.asarray(rec.compute_face_descriptor(rgb, shape), dtype=np.float32)
        return v / np.linalg.norm(v)

    return embed


def evaluate(
    pairs: Sequence[Pair], embed: Embedder, threshold: float, engine: str
) -> dict[str, object]:
    unique = sorted({p.a for p in pairs} | {p.b for p in pairs})
    vectors: dict[Path, np.ndarray | None] = {}
    start = time.perf_counter()
    for path in unique:
        vectors[path] = embed(path)
    elapsed = time.perf_counter() - start
    scores = np.full(len(pairs), np.nan, dtype=np.float64)
    labels = np.array([p.same for p in pairs])
    for k, p in enumerate(pairs):
        va, vb = vectors[p.a], vectors[p.b]
        if va is not None and vb is not None:
            scores[k] = float(np.dot(va, vb))
    detected = ~np.isnan(scores)

    def accuracy(thr: float) -> float:
        predicted = detected & (scores >= thr)
        return float(np.mean(predicted == labels))

    candidates = np.unique(scores[detected])
    best_thr, best_acc = threshold, accuracy(threshold)
    for thr in candidates:
        acc = accuracy(float(thr))
        if acc > best_acc:
            best_thr, best_acc = float(thr), acc
    return {
        "engine": engine,
        "pairs": len(pairs),
        "images": len(unique),
        "undetected": int(sum(v is None for v in vectors.values())),
        "default_threshold": threshold,
        "accuracy_at_default_threshold": round(accuracy(threshold), 4),
        "best_accuracy": round(best_acc, 4),
        "best_threshold": round(best_thr, 4),
        "tar_at_far_1e-2": round(tar_at_far(scores, labels, detected, 1e-2), 4),
        "tar_at_far_1e-3": round(tar_at_far(scores, labels, detected, 1e-3), 4),
        "impostor_pairs": int((~labels).sum()),
        "seconds_per_image": round(elapsed / max(len(unique), 1), 4),
    }


def tar_at_far(scores: np.ndarray, labels: np.ndarray, detected: np.ndarray, far: float) -> float:
    """True-accept rate at the lowest threshold whose false-accept rate is ≤ far.

    With n impostor pairs the smallest measurable non-zero FAR is 1/n; below that the
    threshold is set just above the highest impostor score (reported FAR 0).
    """
    impostor = np.sort(scores[(~labels) & detected])[::-1]
    n_imp = int((~labels).sum())
    allowed = int(np.floor(far * n_imp))
    thr = impostor[allowed] if allowed < len(impostor) else -np.inf
    genuine = scores[labels]
    accepted = (~np.isnan(genuine)) & (genuine > thr)
    return float(accepted.mean()) if len(genuine) else 0.0


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{model}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lfw", type=Path, required=True, help="LFW-format image folder")
    ap.add_argument("--pairs", type=Path, required=True, help="LFW pair list")
    ap.add_argument("--json", action="store_true", help="one JSON line per engine")
    ap.add_argument("--limit", type=int, default=0, help="use the first N same + N different pairs")
    ap.add_argument("--reference-dlib", action="store_true", help="also run dlib's own pipeline")
    ap.add_argument("--packs-dir", type=Path, default=None)
    ap.add_argument(
        "--pack", default=None, help="model pack (default: settings' model_pack, dlib-default)"
    )
    ap.add_argument("--threads", type=int, default=1, help="ONNX threads per model")
    args = ap.parse_args(argv)

    images = args.lfw / "images" if (args.lfw / "images").is_dir() else args.lfw
    pairs = read_pairs(images, args.pairs)
    if args.limit:
        same = [p for p in pairs if p.same][: args.limit]
        diff = [p for p in pairs if not p.same][: args.limit]
        pairs = same + diff
    missing = [p for p in pairs for q in (p.a, p.b) if not q.is_file()]
    if missing:
        print(f"error: {len(missing)} pair images missing, e.g. {missing[0].a}", file=sys.stderr)
        return 1
    embed, threshold, about = facegate_embedder(args.packs_dir, args.pack, args.threads)
    results = [{**evaluate(pairs, embed, threshold, "facegate"), **about}]
    if args.reference_dlib:
        results.append(evaluate(pairs, dlib_embedder(), threshold, "dlib"))
    for r in results:
        r["machine"] = machine()
        print(json.dumps(r) if args.json else "\n".join(f"{k}: {v}" for k, v in r.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
