"""What an Enroll request changes: which images are new faces, which are already enrolled,
and whether they may be enrolled at all.

Rules (checked in the collection's write lock, so concurrent enrolments see each other):

* Idempotence: an image whose keyed digest equals an enrolled face of the uid, or whose
  embedding is near-identical to one (cosine > ``SAME_FACE_COS``, e.g. the same photo
  re-encoded), is not stored again; its existing face id is reported.
* Consistency: every new image must match the uid's faces (the enrolled ones and those
  earlier in the same request) at the collection's threshold; otherwise the request is
  refused with ``InvalidArgument`` (the caller sent a photo of someone else under this uid;
  it is the request that is wrong, not the photo's quality). ``allow_duplicate`` does not
  relax this check.
* Duplicates: a new image matching *another* uid of the collection at the collection's
  threshold (the same test Identify applies) is refused with ``DuplicateFace`` whose
  metadata names that uid, unless ``allow_duplicate``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from service.domain import FaceQuality
from service.errors import DuplicateFace, InvalidArgument
from service.pipeline.types import FloatArray
from service.ports import VectorIndex
from service.store.rows import FaceRow, NewFace

SAME_FACE_COS = 0.99


@dataclass(frozen=True, slots=True)
class _Slot:
    existing: int | None  # face id of an enrolled face, or
    new: int | None  # index into EnrollmentPlan.new_faces


@dataclass(frozen=True, slots=True)
class EnrollmentPlan:
    new_faces: tuple[int, ...]  # request image indices that become new faces
    embeddings: tuple[FloatArray, ...]
    digests: tuple[str, ...]
    slots: tuple[_Slot, ...]  # one per request image

    def new_face(self, j: int, quality: FaceQuality) -> NewFace:
        i = self.new_faces[j]
        b = quality.box
        return NewFace(
            template=self.embeddings[i],
            image_digest=self.digests[i],
            box=(b.left, b.top, b.right, b.bottom),
            det_score=quality.detection_score,
            inter_eye_px=quality.inter_eye_px,
        )

    def resolve(
        self, new_ids: Sequence[int], renamed: Mapping[int, int] | None = None
    ) -> tuple[int, ...]:
        """Face id of each request image, given the ids the store gave the new faces and
        the ids enrolled faces moved to (a phone change re-files them)."""
        renamed = renamed or {}
        out: list[int] = []
        for s in self.slots:
            if s.existing is not None:
                out.append(renamed.get(s.existing, s.existing))
            else:
                assert s.new is not None
                out.append(int(new_ids[s.new]))
        return tuple(out)


def plan_enrollment(
    *,
    uid: str,
    embeddings: Sequence[FloatArray],
    digests: Sequence[str],
    existing: Sequence[FaceRow],
    gallery: VectorIndex,
    threshold: float,
    allow_duplicate: bool,
) -> EnrollmentPlan:
    ref_vectors: list[FloatArray] = [f.template for f in existing]
    ref_slots: list[_Slot] = [_Slot(f.face_id, None) for f in existing]
    by_digest: dict[str, _Slot] = {f.image_digest: _Slot(f.face_id, None) for f in existing}
    new_faces: list[int] = []
    slots: list[_Slot] = []
    for i, (emb, digest) in enumerate(zip(embeddings, digests, strict=True)):
        known = by_digest.get(digest)
        if known is not None:
            slots.append(known)
            continue
        if ref_vectors:
            sims = np.stack(ref_vectors) @ emb
            best = int(np.argmax(sims))
            if sims[best] > SAME_FACE_COS:
                slots.append(ref_slots[best])
                by_digest[digest] = ref_slots[best]
                continue
            if sims[best] < threshold:
                raise InvalidArgument(
                    f"images[{i}] does not match the other faces of uid {uid!r} "
                    f"(best similarity {sims[best]:.3f} < threshold {threshold:.3f})",
                    metadata={
                        "field": f"images[{i}]",
                        "uid": uid,
                        "score": f"{sims[best]:.4f}",
                        "threshold": f"{threshold:.4f}",
                    },
                )
        slot = _Slot(None, len(new_faces))
        new_faces.append(i)
        ref_vectors.append(emb)
        ref_slots.append(slot)
        by_digest[digest] = slot
        slots.append(slot)
    if new_faces and not allow_duplicate:
        _refuse_duplicates(uid, [embeddings[i] for i in new_faces], new_faces, gallery, threshold)
    return EnrollmentPlan(tuple(new_faces), tuple(embeddings), tuple(digests), tuple(slots))


def _refuse_duplicates(
    uid: str, vectors: list[FloatArray], images: list[int], gallery: VectorIndex, threshold: float
) -> None:
    # Top 2 distinct uids suffice: at most one of them is `uid` itself.
    queries = np.ascontiguousarray(np.stack(vectors), dtype=np.float32)
    for i, res in zip(images, gallery.search(queries, 2), strict=True):
        for other, score in zip(res.uids, res.scores.tolist(), strict=True):
            if other != uid and score >= threshold:
                raise DuplicateFace(
                    f"images[{i}] matches the enrolled user {other!r} (similarity "
                    f"{score:.3f} >= {threshold:.3f}); pass allow_duplicate to enrol anyway",
                    metadata={"uid": other, "score": f"{score:.4f}", "image_index": str(i)},
                )
