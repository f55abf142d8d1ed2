"""gRPC load benchmark for operators: Identify at a fixed concurrency against a running server.

    python benchmarks/load_bench.py --target HOST:PORT --collection C --gallery N \
        --concurrency K --duration S [--json] [--plot latency.png] [--photos DIR] [--baseline]

1. Creates collection C if missing (``--kind``, default MEMBER; no hint requirement;
   enrolment under the identification quality limits: LFW faces are too small for the
   strict enrolment preset).
2. ``--gallery N``: tops the collection up to N users with synthetic templates (seeded
   random unit vectors of the server's model dimension) through the admin ImportTemplates
   RPC, in chunks — search cost depends on gallery size, and real photos of 100k people
   are not to be had.
3. Enrols real people from ``--photos`` (an LFW-layout folder: one enrolment photo per
   person, the others are probes; default ``../shared/faces/lfw-devtrain`` when present,
   else the face photos shipped in matplotlib and scikit-image) and keeps some people
   un-enrolled as strangers.
4. Drives Identify from K threads for S seconds with the probe photos and reports RPS,
   latency percentiles, errors by status code, decisions, and wrong matches (a MATCH to
   another user than the probe's — the one outcome face pay must never produce).
5. ``--baseline``: before the load, runs the pipeline stages alone in this process
   (decode → detect → landmarks → align → embed, one thread per core) on the same probes, to
   say what fraction of the stages' own throughput the server delivers.

Mixed mode (the soak), instead of steps 3-5:

    python benchmarks/load_bench.py --target HOST:PORT --mix enroll=2,identify=6,delete=2 \
        --concurrency K --duration S --window W --server-pid PID [--people N] [--json]

K threads run a weighted mix of Enroll (people not enrolled, real photos), Identify
(enrolled people's other photos and never-enrolled strangers) and Delete for S seconds;
reports errors by status code, refusals by reason, wrong matches, throughput and latency per
operation kind per W-second window, the server's RSS each window (from /proc/PID) with the
flat-memory ratios, and whether the collection's user count adds up (see load_mix.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.accuracy import machine  # noqa: E402
from benchmarks.load_mix import Identity, MixedLoad, parse_mix  # noqa: E402
from service.domain import (  # noqa: E402
    CollectionKind,
    CollectionSpec,
    Decision,
    EnrollRequest,
    IdentifyRequest,
)
from service.errors import FacegateError, FaceRejected, UnknownCollection  # noqa: E402
from service.pipeline.quality import QualityLimits, QualityPolicy  # noqa: E402
from service.transport.client import FaceGateClient  # noqa: E402
from service.transport.status import code_for  # noqa: E402

SYNTHETIC_PREFIX = "synthetic-"
# LFW photos are 250x250 with faces too small for the strict enrolment preset; the benchmark
# measures load, so its collection enrols with identification's (lenient) quality limits.
IDENTIFY_GRADE_ENROLMENT = QualityLimits(
    **{f.name: getattr(QualityPolicy.identify(), f.name) for f in dataclasses.fields(QualityLimits)}
)
IMPORT_CHUNK = 2000


@dataclass(frozen=True)
class Probe:
    image: bytes
    uid: str | None  # None: a stranger, the right answer is NO_MATCH


@dataclass(frozen=True)
class Person:
    uid: str
    enrol: bytes
    probes: tuple[bytes, ...]


def pypi_people() -> tuple[list[Person], list[bytes]]:
    """Two real people from PyPI packages; probes are re-encoded, mirrored and cropped copies."""
    import matplotlib.cbook
    from PIL import Image, ImageOps
    from skimage import data

    hopper = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    astronaut = Image.fromarray(data.astronaut())  # type: ignore[no-untyped-call]
    people = []
    for uid, im in (("grace-hopper", hopper.convert("RGB")), ("eileen-collins", astronaut)):
        w, h = im.size
        variants = [
            ImageOps.mirror(im),
            im.crop((w // 20, h // 20, w - w // 20, h - h // 20)),
            im.resize((w * 3 // 4, h * 3 // 4)),
        ]
        people.append(Person(uid, _jpeg(im), tuple(_jpeg(v, 80) for v in variants)))
    return people, []


def _jpeg(im: Any, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def lfw_people(folder: Path, n_people: int, n_strangers: int) -> tuple[list[Person], list[bytes]]:
    images = folder / "images" if (folder / "images").is_dir() else folder
    rng = random.Random(7)
    names = sorted(p.name for p in images.iterdir() if p.is_dir())
    multi = [n for n in names if len(list((images / n).glob("*.jpg"))) >= 2]
    single = [n for n in names if n not in set(multi)]
    rng.shuffle(multi)
    rng.shuffle(single)
    people = []
    for name in multi[:n_people]:
        files = sorted((images / name).glob("*.jpg"))
        people.append(
            Person(name, files[0].read_bytes(), tuple(f.read_bytes() for f in files[1:4]))
        )
    strangers = [next((images / n).glob("*.jpg")).read_bytes() for n in single[:n_strangers]]
    return people, strangers


def ensure_collection(
    client: FaceGateClient, name: str, kind: CollectionKind = CollectionKind.MEMBER
) -> Any:
    try:
        return client.get_collection(name)
    except UnknownCollection:
        return client.create_collection(
            CollectionSpec(
                name=name,
                kind=kind,
                hint_required_above=0,
                enroll_quality=IDENTIFY_GRADE_ENROLMENT,
            )
        )


def top_up_gallery(client: FaceGateClient, name: str, target: int, log: Any) -> int:
    info = client.get_collection(name)
    # Each top-up names its users with its own run tag, so it can never collide with an
    # earlier top-up (even after deletions) or with the real people enrolled after it.
    have = info.user_count
    dim = info.embedding_dim
    run = f"{int(time.time()):x}"
    rng = np.random.default_rng(12345 + have)
    start = time.perf_counter()
    while have < target:
        n = min(IMPORT_CHUNK, target - have)
        vectors = rng.standard_normal((n, dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        uids = [f"{SYNTHETIC_PREFIX}{run}-{i:08d}" for i in range(have, have + n)]
        client.import_templates(name, info.model_id, uids, vectors)
        have += n
        log(f"imported {have}/{target} synthetic users")
    return round(time.perf_counter() - start)


def enrol_people(client: FaceGateClient, name: str, people: Sequence[Person]) -> list[Person]:
    enrolled = []
    for person in people:
        try:
            client.enroll(EnrollRequest(collection=name, uid=person.uid, images=[person.enrol]))
            enrolled.append(person)
        except FacegateError as exc:  # no face in the enrolment photo, duplicate, ...
            print(f"skip {person.uid}: {exc.reason}", file=sys.stderr)
    return enrolled


def screen_probes(
    client: FaceGateClient, name: str, probes: Sequence[Probe]
) -> tuple[list[Probe], Counter[str]]:
    kept: list[Probe] = []
    refused: Counter[str] = Counter()
    for probe in probes:
        try:
            client.identify(IdentifyRequest(collection=name, image=probe.image))
            kept.append(probe)
        except FaceRejected as exc:
            refused[exc.reason] += 1
    return kept, refused


def baseline_ips(probes: Sequence[Probe], seconds: float, threads: int) -> float:
    """Images/s of the pipeline stages alone, in this process, one ONNX thread per worker."""
    from service.config import load_settings
    from service.pipeline.decode import decode_image
    from service.pipeline.dlib_analyzer import build_default_analyzer

    settings = load_settings(model_threads=1)
    analyzer = build_default_analyzer(settings)
    done = [0] * threads
    stop = time.monotonic() + seconds

    def work(i: int) -> None:
        k = i
        while time.monotonic() < stop:
            image = decode_image(probes[k % len(probes)].image, settings.decode)
            faces = analyzer.locate(image)
            if len(faces):
                analyzer.embed_chips(analyzer.align(image, faces)[:1])
            done[i] += 1
            k += threads

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    t0 = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(done) / (time.monotonic() - t0)


def drive(
    client: FaceGateClient, name: str, probes: Sequence[Probe], concurrency: int, seconds: float
) -> dict[str, Any]:
    lock = threading.Lock()
    latencies: list[tuple[float, float]] = []  # (start offset s, latency s)
    codes: Counter[str] = Counter()
    decisions: Counter[str] = Counter()
    wrong = Counter[str]()
    t0 = time.monotonic()
    stop = t0 + seconds

    def work(i: int) -> None:
        k = i
        while (now := time.monotonic()) < stop:
            probe = probes[k % len(probes)]
            k += concurrency
            try:
                res = client.identify(IdentifyRequest(collection=name, image=probe.image))
                outcome, decision = "OK", res.decision.value
                bad = res.decision is Decision.MATCH and res.uid != probe.uid
            except FacegateError as exc:
                outcome, decision, bad = code_for(exc).name, None, False
            latency = time.monotonic() - now
            with lock:
                latencies.append((now - t0, latency))
                codes[outcome] += 1
                if decision:
                    decisions[decision] += 1
                if bad:
                    wrong["match_to_wrong_uid" if probe.uid else "stranger_matched"] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(concurrency)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.monotonic() - t0
    lat = np.array([x[1] for x in latencies]) * 1000.0
    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / elapsed, 2),
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        "max_ms": round(float(lat.max()), 1) if len(lat) else None,
        "status_codes": dict(codes),
        "errors": sum(v for k, v in codes.items() if k != "OK"),
        "decisions": dict(decisions),
        "wrong_matches": dict(wrong),
        "_series": latencies,
    }


def plot(series: Sequence[tuple[float, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([s[0] for s in series])
    lat = np.array([s[1] for s in series]) * 1000.0
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(t, lat, ".", markersize=2)
    a.set_xlabel("time since start (s)")
    a.set_ylabel("Identify latency (ms)")
    b.hist(lat, bins=60)
    for q in (50, 95, 99):
        b.axvline(float(np.percentile(lat, q)), linestyle="--", label=f"p{q}")
    b.set_xlabel("latency (ms)")
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--collection", default="load-bench")
    ap.add_argument("--gallery", type=int, default=0, help="top up to N users (synthetic)")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--photos", type=Path, default=None, help="LFW-layout folder of real photos")
    ap.add_argument("--people", type=int, default=40, help="real people to enrol from --photos")
    ap.add_argument("--plot", type=Path, default=None, help="write a latency PNG here")
    ap.add_argument("--baseline", action="store_true", help="measure the stages alone first")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--mix", help="mixed mode weights, e.g. enroll=2,identify=6,delete=2")
    ap.add_argument("--window", type=float, default=60.0, help="mixed mode: report window (s)")
    ap.add_argument("--server-pid", type=int, help="mixed mode: sample this process's RSS")
    ap.add_argument(
        "--kind",
        choices=["member", "pay"],
        default="member",
        help="kind of a collection the benchmark creates (its default threshold and margin)",
    )
    ap.add_argument("--seed", type=int, default=1, help="mixed mode: operation schedule seed")
    args = ap.parse_args(argv)
    if args.mix:
        return run_mixed(args)

    def log(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr)

    photos = args.photos
    if photos is None and (ROOT.parent / "shared/faces/lfw-devtrain").is_dir():
        photos = ROOT.parent / "shared/faces/lfw-devtrain"
    people, strangers = (
        lfw_people(photos, args.people, args.people // 4) if photos else pypi_people()
    )
    with FaceGateClient(args.target, timeout=60.0) as client:
        client.wait_ready(timeout=300.0)
        ensure_collection(client, args.collection, CollectionKind(args.kind.upper()))
        import_s = top_up_gallery(client, args.collection, args.gallery, log)
        enrolled = enrol_people(client, args.collection, people)
        probes = [Probe(img, p.uid) for p in enrolled for img in p.probes]
        probes += [Probe(img, None) for img in strangers]
        random.Random(3).shuffle(probes)
        # A photo the service refuses on its own merits (two faces, no face) is a correct
        # answer, not a load error: screen the probes once, untimed, and keep the usable ones.
        probes, refused = screen_probes(client, args.collection, probes)
        result: dict[str, Any] = {
            "target": args.target,
            "collection": args.collection,
            "gallery_users": client.get_collection(args.collection).user_count,
            "enrolled_real": len(enrolled),
            "probe_images": len(probes),
            "probes_refused_in_screening": dict(refused),
            "concurrency": args.concurrency,
            "duration_s": args.duration,
            "import_seconds": import_s,
            "machine": machine(),
            "bench_pid_cores": os.cpu_count(),
        }
        if args.baseline:
            result["stages_alone_ips"] = round(
                baseline_ips(probes, min(args.duration, 20.0), os.cpu_count() or 1), 2
            )
        run = drive(client, args.collection, probes, args.concurrency, args.duration)
    series = run.pop("_series")
    result.update(run)
    if result.get("stages_alone_ips"):
        result["fraction_of_stages_alone"] = round(result["rps"] / result["stages_alone_ips"], 3)
    if args.plot:
        plot(
            series,
            args.plot,
            f"Identify, gallery {result['gallery_users']}, concurrency {args.concurrency}",
        )
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


def run_mixed(args: argparse.Namespace) -> int:
    """The soak: a weighted Enroll/Identify/Delete mix (benchmarks/load_mix.py)."""
    weights = parse_mix(args.mix)

    def log(msg: str) -> None:
        if not args.json:
            print(msg, file=sys.stderr)

    photos = args.photos
    if photos is None and (ROOT.parent / "shared/faces/lfw-devtrain").is_dir():
        photos = ROOT.parent / "shared/faces/lfw-devtrain"
    if photos:
        people, strangers = lfw_people(photos, args.people, args.people // 4)
    else:  # two real people only: their variants must be allowed to look alike
        people, strangers = pypi_people()
    identities = [Identity(p.uid, p.enrol, p.probes) for p in people]
    with FaceGateClient(args.target, timeout=60.0) as client:
        client.wait_ready(timeout=300.0)
        ensure_collection(client, args.collection, CollectionKind(args.kind.upper()))
        import_s = top_up_gallery(client, args.collection, args.gallery, log)
        load = MixedLoad(
            client,
            args.collection,
            identities,
            strangers,
            weights,
            allow_duplicate=photos is None,
            seed=args.seed,
        )
        run = load.run(args.concurrency, args.duration, args.window, args.server_pid, log)
    result: dict[str, Any] = {
        "target": args.target,
        "collection": args.collection,
        "people": len(identities),
        "strangers": len(strangers),
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "window_s": args.window,
        "import_seconds": import_s,
        "machine": machine(),
        **run,
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
