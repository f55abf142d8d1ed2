"""Per-stage and whole-pipeline latency of the default pack, next to dlib's own pipeline.

    python benchmarks/pipeline_bench.py [--image PATH] [--repeats N] [--no-dlib] [--json]

The image (default: matplotlib's grace_hopper.jpg) is centre-cropped and resized to 640×480
so the figure is comparable across machines; it holds one face. Each stage is timed on its
own (median of N runs) at 1 and 2 ONNX threads, then the whole pipeline (decode → detect →
landmarks → align → embed), then dlib's CNN pipeline (upsample 1, 5-point, ResNet) on the
same pixels in the same process. Prints one JSON object (with --json) or a table.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.accuracy import dlib_reference, machine  # noqa: E402


def photo_640x480(path: Path | None) -> bytes:
    if path is None:
        import matplotlib.cbook

        path = Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        w, h = rgb.size
        target = 640 / 480
        if w / h > target:  # too wide: crop the sides
            nw = int(h * target)
            rgb = rgb.crop(((w - nw) // 2, 0, (w - nw) // 2 + nw, h))
        else:
            nh = int(w / target)
            rgb = rgb.crop((0, (h - nh) // 2, w, (h - nh) // 2 + nh))
        rgb = rgb.resize((640, 480), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first ORT run allocates
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return round(statistics.median(times) * 1000.0, 2)


def bench_facegate(
    data: bytes, threads: int, upsample: int, repeats: int, packs_dir: Path | None
) -> dict[str, Any]:
    from service.config import load_settings
    from service.pipeline.decode import decode_image
    from service.pipeline.dlib_analyzer import build_default_analyzer

    settings = load_settings(model_dir=packs_dir, model_threads=threads, detector_upsample=upsample)
    a = build_default_analyzer(settings)
    image = decode_image(data, settings.decode)
    det = a.detector.detect(image.rgb, upsample=upsample)
    faces = a.locate(image)
    if len(faces) != 1:
        raise SystemExit(f"expected one face in the benchmark photo, found {len(faces)}")
    chips = a.align(image, faces)
    chips8 = np.ascontiguousarray(np.repeat(chips, 8, axis=0))

    def whole() -> object:
        img = decode_image(data, settings.decode)
        f = a.locate(img)
        return a.embed_chips(a.align(img, f))

    out: dict[str, Any] = {
        "threads": threads,
        "upsample": upsample,
        "decode_ms": median_ms(lambda: decode_image(data, settings.decode), repeats),
        "detect_ms": median_ms(lambda: a.detector.detect(image.rgb, upsample=upsample), repeats),
        "landmarks_ms": median_ms(lambda: a.landmarker.predict(image.rgb, det.boxes), repeats),
        "align_ms": median_ms(lambda: a.align(image, faces), repeats),
        "embed_ms": median_ms(lambda: a.embed_chips(chips), repeats),
        "embed_batch8_ms": median_ms(lambda: a.embed_chips(chips8), repeats),
        "pipeline_ms": median_ms(whole, repeats),
    }
    out["descriptor_faces_per_s"] = round(8000.0 / out["embed_batch8_ms"], 1)
    return out


def bench_dlib(data: bytes, repeats: int) -> dict[str, Any]:
    det, sp, rec = dlib_reference()
    with Image.open(io.BytesIO(data)) as im:
        rgb = np.asarray(im.convert("RGB"))
    dets = det(rgb, 1)
    shape = sp(rgb, dets[0].rect)

    def whole() -> object:
        with Image.open(io.BytesIO(data)) as im:
            img = np.asarray(im.convert("RGB"))
        ds = det(img, 1)
        return [rec.compute_face_descriptor(img, sp(img, d.rect)) for d in ds]

    return {
        "detect_ms": median_ms(lambda: det(rgb, 1), repeats),
        "landmarks_ms": median_ms(lambda: sp(rgb, dets[0].rect), repeats),
        "embed_ms": median_ms(lambda: rec.compute_face_descriptor(rgb, shape), repeats),
        "pipeline_ms": median_ms(whole, repeats),
        "faces": len(dets),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image", type=Path, default=None)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--no-dlib", action="store_true")
    ap.add_argument("--packs-dir", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    data = photo_640x480(args.image)
    result: dict[str, Any] = {
        "image": "640x480 JPEG, one face",
        "machine": machine(),
        # upsample 0 is what the service's automatic policy uses for a 640×480 frame;
        # upsample 1 is dlib's default and the parity configuration.
        "facegate": [
            bench_facegate(data, t, up, args.repeats, args.packs_dir)
            for up in (0, 1)
            for t in (1, 2)
        ],
    }
    if not args.no_dlib:
        result["dlib"] = bench_dlib(data, max(3, args.repeats // 4))
        same = next(r for r in result["facegate"] if r["upsample"] == 1 and r["threads"] == 1)
        result["speedup_vs_dlib_same_upsample_1thread"] = round(
            result["dlib"]["pipeline_ms"] / same["pipeline_ms"], 1
        )
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
