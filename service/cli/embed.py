"""`facegate embed IMAGE... [--json]`: the face pipeline as a script, no server needed.

One JSON object per line per image: {"path", "faces": [{"box", "score", "landmarks",
"embedding"}]}. Boxes and landmarks are in the image's pixel coordinates after EXIF
orientation; boxes are dlib's integer rectangles (inclusive edges, not clipped, so they may
reach past the border for faces cut by the frame; a BYO pack's detectors give float edges).
Embeddings are L2-normalised. ``--pack`` (or the settings' ``model_pack``) selects the pack.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from service.config import load_settings
from service.errors import FacegateError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "embed", help="detect, align and embed faces in image files (no server)"
    )
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="one JSON object per line per image")
    p.add_argument("--packs-dir", type=Path, default=None, help="model packs directory")
    p.add_argument("--config", type=Path, default=None, help="TOML settings file")
    p.add_argument(
        "--pack",
        default=None,
        help="model pack: dlib-default, or a BYO pack's name, directory or manifest "
        "(default: settings' model_pack)",
    )
    p.add_argument(
        "--upsample",
        type=int,
        default=None,
        help="detector upsampling: -1 automatic (the service default), 0, 1 (dlib's default) or 2",
    )
    p.set_defaults(func=run)


def _face_records(analyzer: Any, data: bytes, settings: Any) -> list[dict[str, Any]]:
    from service.pipeline.decode import decode_image

    image = decode_image(data, settings.decode)
    faces = analyzer.locate(image)
    embeddings = analyzer.embed_chips(analyzer.align(image, faces))
    return [
        {
            "box": [float(v) for v in faces.boxes[i]],
            "score": float(faces.scores[i]),
            "landmarks": [[float(x), float(y)] for x, y in faces.landmarks[i]],
            "embedding": [float(v) for v in embeddings[i]],
        }
        for i in range(len(faces))
    ]


def run(args: argparse.Namespace) -> int:
    from service.pipeline.factory import build_analyzer

    try:
        settings = load_settings(
            config_file=args.config,
            model_dir=args.packs_dir,
            detector_upsample=args.upsample,
            model_pack=args.pack,
        )
        analyzer = build_analyzer(settings)
    except FacegateError as exc:
        print(f"error: {exc.reason}: {exc.message}", file=sys.stderr)
        return 1
    status = 0
    for path in args.images:
        try:
            data = path.read_bytes()
            faces = _face_records(analyzer, data, settings)
        except OSError as exc:
            print(f"error: {path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
            status = 1
            continue
        except FacegateError as exc:
            print(f"error: {path}: {exc.reason}: {exc.message}", file=sys.stderr)
            status = 1
            continue
        if args.json:
            print(json.dumps({"path": str(path), "faces": faces}), flush=True)
        else:
            print(f"{path}: {len(faces)} face(s)")
            for i, face in enumerate(faces):
                box = ",".join(str(int(v)) for v in face["box"])
                print(f"  #{i}: box=({box}) score={face['score']:.3f}")
    return status
