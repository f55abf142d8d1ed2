"""Re-issuing a revocable collection's templates under a new transform generation.

``rotate_transform`` (``facegate crypto rotate-transform``, server stopped) draws generation
g+1, makes it current, then maps every stored template ``R_g x`` to ``R_{g+1} x`` with
``R_{g+1} R_g^T``; no face is re-captured. Rows carry their generation (bound into their
ciphertext), so a pass killed midway leaves each row wholly old or wholly new, and the next
start finishes it (``finish_interrupted_reissues``) before any gallery is built. Once no
row uses generation g its salt is deleted, so R_g can never be re-created.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.config import Settings
from service.crypto.data_keys import transform_master_key
from service.crypto.template_transform import OrthogonalTransform
from service.pipeline.types import FloatArray
from service.store.sqlite import CollectionRow, SqliteStore
from service.store.sqlite_crypto import PassReport
from service.vector_index.snapshot_files import snapshot_path

log = logging.getLogger(__name__)


def reissue_collection(store: SqliteStore, row: CollectionRow, master: bytes) -> PassReport:
    """Bring every template of ``row`` to its current generation; forget unused salts."""
    salts = store.transform_salts(row.id)
    combined: dict[tuple[int, int], npt.NDArray[np.float64]] = {}

    def transform(gen: int, dim: int) -> OrthogonalTransform:
        if gen not in salts:
            raise RuntimeError(f"collection {row.name!r}: the salt of generation {gen} is gone")
        return OrthogonalTransform.derive(master, row.id, gen, salts[gen], dim)

    def reissue(old_gen: int, template: FloatArray) -> FloatArray:
        dim = int(template.shape[-1])
        if (old_gen, dim) not in combined:
            new, old = transform(row.transform_gen, dim), transform(old_gen, dim)
            combined[(old_gen, dim)] = new.matrix @ old.matrix.T
        return OrthogonalTransform(combined[(old_gen, dim)], row.transform_gen).apply(template)

    report = store.crypto.retransform_all(row, reissue)
    store.crypto.forget_old_generations(row)
    return report


def rotate_transform(
    store: SqliteStore, name: str, master: bytes, snapshot_dir: Path
) -> tuple[CollectionRow, PassReport]:
    """Revoke collection ``name``'s transform: re-issue all its templates under a new one."""
    row = store.get_collection(name)
    # Its snapshot holds vectors under the old generation. Its cipher context names the
    # generation, so it could not be loaded anyway; removing it first keeps no stale copy.
    snapshot_path(snapshot_dir, row).unlink(missing_ok=True)
    row = store.crypto.begin_transform_rotation(row)
    return row, reissue_collection(store, row, master)


def finish_interrupted_reissues(store: SqliteStore, settings: Settings) -> None:
    """At start-up: complete any re-issue a killed ``rotate-transform`` left half done."""
    for row in store.list_collections():
        if row.transform_gen and store.crypto.faces_behind(row):
            log.warning(
                "collection %r: finishing an interrupted transform re-issue (generation %d)",
                row.name,
                row.transform_gen,
            )
            report = reissue_collection(store, row, transform_master_key(settings))
            log.warning("collection %r: re-issued %d templates", row.name, report.resealed)
