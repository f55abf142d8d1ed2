"""``facegate models add NAME ...``: write a bring-your-own model pack from two ONNX files.

The detector and embedder conventions come from a preset (``--detector-preset``,
``--embedder-preset``: the verified values in ``service.models.byo_presets``, copied into
the manifest in full) and/or flags, which override the preset field by field. Nothing is
guessed from the files: a convention that is neither in the preset nor given is an error
naming it. Before anything is written, both models are opened with the stated input and
output names; then the files are copied (or symlinked with ``--symlink``) into
``<packs-dir>/NAME/`` (or ``--dest``), their sha256 pinned, and ``manifest.json`` written.
Serve it with ``model_pack = "NAME"`` (settings) or ``FACEGATE_MODEL_PACK=NAME``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from service.cli.pack_output import add_pack_flags, fail, pack_summary, packs_dir, print_summary
from service.errors import FacegateError, InvalidArgument, ModelPackError
from service.models.byo_presets import DETECTOR_PRESETS, EMBEDDER_PRESETS, NORMALISATIONS


def register(sub: Any) -> None:
    add = sub.add_parser(
        "add",
        help="write a bring-your-own pack (detector + ArcFace-style embedder) with sha256 pins",
    )
    add_pack_flags(add)
    add.add_argument("name", help="pack name (a directory under the packs directory)")
    add.add_argument("--dest", type=Path, default=None, help="pack directory (default: packs/NAME)")
    add.add_argument("--symlink", action="store_true", help="symlink the files instead of copying")
    add.add_argument("--model-name", default=None, help="model id stem (default: embedder stem)")
    add.add_argument(
        "--cosine-threshold",
        type=float,
        required=True,
        help="thresholds.cosine_default: the cosine a match needs (measure it: accuracy.py)",
    )
    d = add.add_argument_group("detector")
    d.add_argument("--detector", type=Path, required=True, metavar="ONNX")
    d.add_argument("--detector-preset", choices=sorted(DETECTOR_PRESETS))
    d.add_argument("--detector-kind", choices=("yunet", "scrfd", "retinaface"))
    d.add_argument("--detector-input", metavar="NAME", help="ONNX input name")
    d.add_argument("--detector-size", metavar="WxH", help="network input size, e.g. 640x640")
    d.add_argument("--detector-colour", choices=("RGB", "BGR"))
    d.add_argument("--detector-mean", metavar="M,M,M", help="0..255 units, model colour order")
    d.add_argument("--detector-std", metavar="S,S,S")
    d.add_argument(
        "--detector-output",
        action="append",
        default=[],
        metavar="ROLE=ONNX_NAME",
        help="e.g. score_8=446 (scrfd), cls_8=cls_8 (yunet), loc=output0 (retinaface)",
    )
    d.add_argument("--strides", metavar="8,16,32")
    d.add_argument("--anchors-per-cell", type=int, help="scrfd")
    d.add_argument("--steps", metavar="8,16,32", help="retinaface")
    d.add_argument("--min-sizes", metavar="16,32;64,128;256,512", help="retinaface")
    d.add_argument("--variances", metavar="0.1,0.2", help="retinaface")
    d.add_argument("--score-threshold", type=float)
    d.add_argument("--nms-iou", type=float)
    e = add.add_argument_group("embedder")
    e.add_argument("--embedder", type=Path, required=True, metavar="ONNX")
    e.add_argument("--embedder-preset", choices=sorted(EMBEDDER_PRESETS))
    e.add_argument("--embedder-input", metavar="NAME")
    e.add_argument("--embedder-output", metavar="NAME")
    e.add_argument("--chip-size", type=int)
    e.add_argument("--embedder-colour", choices=("RGB", "BGR"))
    e.add_argument("--norm", choices=sorted(NORMALISATIONS), help="named mean/std")
    e.add_argument("--embedder-mean", metavar="M,M,M", help="0..255 units, model colour order")
    e.add_argument("--embedder-std", metavar="S,S,S")
    e.add_argument("--embedding-dim", type=int)
    add.set_defaults(func=run_add)


def _floats(flag: str, text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise InvalidArgument(f"{flag}: expected comma-separated numbers, got {text!r}") from None


def _ints(flag: str, text: str) -> list[int]:
    values = _floats(flag, text)
    if any(v != int(v) for v in values):
        raise InvalidArgument(f"{flag}: expected integers, got {text!r}")
    return [int(v) for v in values]


def detector_section(args: argparse.Namespace) -> dict[str, Any]:
    doc: dict[str, Any] = (
        dict(DETECTOR_PRESETS[args.detector_preset]) if args.detector_preset else {}
    )
    doc["outputs"] = dict(doc.get("outputs", {}))
    simple = {
        "kind": args.detector_kind,
        "input": args.detector_input,
        "colour": args.detector_colour,
        "anchors_per_cell": args.anchors_per_cell,
        "score_threshold": args.score_threshold,
        "nms_iou": args.nms_iou,
    }
    doc.update({k: v for k, v in simple.items() if v is not None})
    if args.detector_size:
        w, _, h = args.detector_size.lower().partition("x")
        doc["input_size"] = _ints("--detector-size", f"{w},{h}")
    for key, flag, parse in (
        ("mean", "--detector-mean", _floats),
        ("std", "--detector-std", _floats),
        ("strides", "--strides", _ints),
        ("steps", "--steps", _ints),
        ("variances", "--variances", _floats),
    ):
        value = getattr(args, flag[2:].replace("-", "_"))
        if value:
            doc[key] = parse(flag, value)
    if args.min_sizes:
        doc["min_sizes"] = [_ints("--min-sizes", part) for part in args.min_sizes.split(";")]
    for item in args.detector_output:
        role, sep, name = item.partition("=")
        if not sep or not role or not name:
            raise InvalidArgument(f"--detector-output: expected ROLE=ONNX_NAME, got {item!r}")
        doc["outputs"][role] = name
    return doc


def embedder_section(args: argparse.Namespace) -> dict[str, Any]:
    doc: dict[str, Any] = (
        dict(EMBEDDER_PRESETS[args.embedder_preset]) if args.embedder_preset else {}
    )
    if not args.embedder_preset:
        from service.models.byo_pack import ARCFACE_112_TEMPLATE

        doc.update(kind="arcface", padding=0.0, template=[list(p) for p in ARCFACE_112_TEMPLATE])
    simple = {
        "input": args.embedder_input,
        "output": args.embedder_output,
        "chip_size": args.chip_size,
        "colour": args.embedder_colour,
        "embedding_dim": args.embedding_dim,
    }
    doc.update({k: v for k, v in simple.items() if v is not None})
    if args.norm:
        doc["mean"], doc["std"] = (list(v) for v in NORMALISATIONS[args.norm])
    if args.embedder_mean:
        doc["mean"] = _floats("--embedder-mean", args.embedder_mean)
    if args.embedder_std:
        doc["std"] = _floats("--embedder-std", args.embedder_std)
    if doc.get("chip_size", 112) != 112:
        raise InvalidArgument(
            "only the standard ArcFace 112×112 template is built in; a chip size other than "
            "112 needs its own template in the manifest"
        )
    return doc


def run_add(args: argparse.Namespace) -> int:
    from service.models.byo_pack import (
        check_pack_name,
        load_byo_pack,
        parse_detector_spec,
        parse_embedder_spec,
        write_byo_pack,
    )
    from service.pipeline.arcface import ArcFaceEmbedder
    from service.pipeline.onnx_detectors import build_detector

    try:
        name = check_pack_name(args.name)
        dest = args.dest if args.dest is not None else packs_dir(args) / name
        detector, embedder = detector_section(args), embedder_section(args)
        where = f"pack {name!r}"
        # Open both models with the stated names before writing anything.
        build_detector(args.detector, parse_detector_spec(detector, where))
        ArcFaceEmbedder(args.embedder, parse_embedder_spec(embedder, where))
        write_byo_pack(
            dest,
            detector_file=args.detector,
            detector=detector,
            embedder_file=args.embedder,
            embedder=embedder,
            cosine_default=args.cosine_threshold,
            model_name=args.model_name,
            symlink=args.symlink,
        )
        pack = load_byo_pack(dest, dest.parent)
    except (ModelPackError, FacegateError, OSError) as exc:
        return fail(exc)
    summary = pack_summary(pack.pack_dir, pack.manifest)
    print_summary(summary, args.json, "wrote")
    return 0
