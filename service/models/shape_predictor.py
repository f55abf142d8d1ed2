"""dlib's ERT shape predictor file (``shape_predictor_*.dat``) as flat numpy arrays.

Layout (dlib-models.md §7.1): version 1, ``matrix<float,0,1>`` initial shape, then per
cascade a forest of regression trees, the feature pixels' anchor landmarks and their
offsets. Everything in the file is a dlib integer (a float is a mantissa/exponent pair of
integers), so the whole payload is tokenised in one bulk pass by
:meth:`DlibReader.ints` and the regular structure — every tree of every cascade has the
same number of splits and leaves — is cut out of the token array with reshapes. Dlib's
own models are regular; a file that is not is rejected rather than half-supported.

The converted model is saved as an ``.npz`` without pickles and validated again on load,
because the landmark stage indexes arrays with values read from it.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service.errors import ModelPackError
from service.models.dlib_serialize import DlibFormatError, DlibReader

FORMAT = "facegate.ert.v1"

IntArray = npt.NDArray[np.int32]
F32Array = npt.NDArray[np.float32]

_EXP_SPECIAL = 32000  # dlib's float_details exponents ≥ this encode inf / nan
_MAX_PARTS = 1000
_MAX_SPLITS = 1 << 12


@dataclass(frozen=True, slots=True, eq=False)
class ShapePredictorModel:
    """An ERT cascade: C cascades of T trees with S splits and L = S+1 leaves, P parts.

    initial_shape (2P,) float32 — normalised to the face box, x0,y0,x1,y1,...
    split_idx1, split_idx2 (C,T,S) int32 — feature indices compared at each node (heap order)
    split_thresh (C,T,S) float32 — go left when feat[idx1] − feat[idx2] > thresh
    leaf_values (C,T,L,2P) float32 — shape increments
    anchor_idx (C,F) int32 — landmark each feature pixel is anchored to
    deltas (C,F,2) float32 — the pixel's offset from its anchor in the initial-shape frame
    """

    initial_shape: F32Array
    split_idx1: IntArray
    split_idx2: IntArray
    split_thresh: F32Array
    leaf_values: F32Array
    anchor_idx: IntArray
    deltas: F32Array
    source: str = ""

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def num_parts(self) -> int:
        return int(self.initial_shape.shape[0] // 2)

    @property
    def num_cascades(self) -> int:
        return int(self.split_idx1.shape[0])

    @property
    def num_trees(self) -> int:
        return int(self.split_idx1.shape[1])

    @property
    def num_splits(self) -> int:
        return int(self.split_idx1.shape[2])

    @property
    def num_leaves(self) -> int:
        return int(self.leaf_values.shape[2])

    @property
    def num_features(self) -> int:
        return int(self.anchor_idx.shape[1])

    def save(self, path: Path) -> None:
        """Write as ``.npz`` (uncompressed: it is loaded at every start)."""
        with open(path, "wb") as f:
            np.savez(
                f,
                format=np.array(FORMAT),
                source=np.array(self.source),
                initial_shape=self.initial_shape,
                split_idx1=self.split_idx1,
                split_idx2=self.split_idx2,
                split_thresh=self.split_thresh,
                leaf_values=self.leaf_values,
                anchor_idx=self.anchor_idx,
                deltas=self.deltas,
            )

    @staticmethod
    def load(path: Path) -> ShapePredictorModel:
        """Read and validate a model written by :meth:`save` (no pickles are ever loaded)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except FileNotFoundError:
            raise ModelPackError(f"{path}: landmark model file not found") from None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise ModelPackError(f"{path}: not a readable landmark model: {exc}") from None
        fmt = arrays.get("format")
        if fmt is None or fmt.shape != () or str(fmt) != FORMAT:
            raise ModelPackError(f"{path}: not a {FORMAT} landmark model (format={fmt!r})")
        names = (
            "initial_shape",
            "split_idx1",
            "split_idx2",
            "split_thresh",
            "leaf_values",
            "anchor_idx",
            "deltas",
        )
        missing = [n for n in names if n not in arrays]
        if missing:
            raise ModelPackError(f"{path}: landmark model lacks arrays {missing}")
        source = arrays.get("source")
        try:
            return ShapePredictorModel(
                **{n: arrays[n] for n in names},
                source=str(source) if source is not None else str(path),
            )
        except ModelPackError as exc:
            raise ModelPackError(f"{path}: {exc.message}") from None


def _validate(m: ShapePredictorModel) -> None:
    """Shapes, dtypes and index ranges consistent, values finite — or ModelPackError."""

    def bad(what: str) -> ModelPackError:
        return ModelPackError(f"invalid landmark model: {what}")

    expected = {
        "initial_shape": (np.float32, 1),
        "split_idx1": (np.int32, 3),
        "split_idx2": (np.int32, 3),
        "split_thresh": (np.float32, 3),
        "leaf_values": (np.float32, 4),
        "anchor_idx": (np.int32, 2),
        "deltas": (np.float32, 3),
    }
    for name, (dtype, ndim) in expected.items():
        arr = getattr(m, name)
        if not isinstance(arr, np.ndarray) or arr.dtype != dtype or arr.ndim != ndim:
            got = f"{arr.dtype}/{arr.ndim}-d" if isinstance(arr, np.ndarray) else type(arr)
            raise bad(f"{name} must be a {ndim}-d {np.dtype(dtype).name} array, got {got}")
    n2 = m.initial_shape.shape[0]
    if n2 < 2 or n2 % 2:
        raise bad(f"initial_shape has {n2} values (need 2 per landmark)")
    c, t, s = m.split_idx1.shape
    if c < 1 or t < 1:
        raise bad(f"no cascades or no trees (split arrays {m.split_idx1.shape})")
    if m.split_idx2.shape != (c, t, s) or m.split_thresh.shape != (c, t, s):
        raise bad("split_idx1, split_idx2 and split_thresh differ in shape")
    num_leaves = s + 1
    if num_leaves & s:  # complete binary tree: leaves must be a power of two
        raise bad(f"{s} splits do not form a complete binary tree")
    if m.leaf_values.shape != (c, t, num_leaves, n2):
        raise bad(f"leaf_values shape {m.leaf_values.shape} != {(c, t, num_leaves, n2)}")
    f = m.anchor_idx.shape[1]
    if m.anchor_idx.shape[0] != c or m.deltas.shape != (c, f, 2):
        raise bad(
            f"anchor_idx {m.anchor_idx.shape} / deltas {m.deltas.shape} mismatch {c} cascades"
        )
    if f < 1:
        raise bad("no feature pixels")
    for name in ("split_idx1", "split_idx2"):
        idx = getattr(m, name)
        if idx.size and (idx.min() < 0 or idx.max() >= f):
            raise bad(f"{name} refers to feature pixels outside [0, {f})")
    if m.anchor_idx.min() < 0 or m.anchor_idx.max() >= n2 // 2:
        raise bad(f"anchor_idx refers to landmarks outside [0, {n2 // 2})")
    for name in ("initial_shape", "split_thresh", "leaf_values", "deltas"):
        if not np.isfinite(getattr(m, name)).all():
            raise bad(f"{name} contains non-finite values")


# ----------------------------------------------------------------------------------------
# conversion from the dlib file


def _floats(mant: npt.NDArray[np.int64], exp: npt.NDArray[np.int64]) -> F32Array:
    """Decode mantissa/exponent pairs; dlib's float encoding is exact in float32."""
    with np.errstate(over="ignore"):
        values = np.ldexp(mant.astype(np.float64), np.clip(exp, -1100, 1100))
    return values.astype(np.float32)


class _Tokens:
    """Cursor over the token array with errors that name the token and, lazily, its byte."""

    def __init__(self, tokens: npt.NDArray[np.int64], data: bytes, start: int, source: str):
        self.tok = tokens
        self.i = 0
        self._data = data
        self._start = start
        self.source = source

    def error(self, what: str, at: int | None = None) -> DlibFormatError:
        k = self.i if at is None else at
        if k >= len(self.tok):
            return DlibFormatError(self.source, len(self._data), f"file is truncated: {what}")
        # Errors are rare: walk control bytes to turn the token index into a byte offset.
        pos = self._start
        data = self._data
        for _ in range(k):
            pos += (data[pos] & 0x0F) + 1
        return DlibFormatError(self.source, pos, what)

    def take(self, n: int, what: str) -> npt.NDArray[np.int64]:
        if n < 0 or self.i + n > len(self.tok):
            raise self.error(
                f"{what} needs {n} values, {len(self.tok) - self.i} left", len(self.tok)
            )
        out = self.tok[self.i : self.i + n]
        self.i += n
        return out

    def count(self, what: str, limit: int) -> int:
        v = int(self.take(1, what)[0])
        if not 0 <= v <= limit:
            self.i -= 1
            raise self.error(f"implausible {what} {v}")
        return v

    def floats(self, n: int, what: str) -> F32Array:
        pairs = self.take(2 * n, what).reshape(n, 2)
        if (pairs[:, 1] >= _EXP_SPECIAL).any():
            raise self.error(f"{what} contains inf or nan", self.i - 2 * n)
        return _floats(pairs[:, 0], pairs[:, 1])

    def float_column(self, what: str) -> F32Array:
        nr = abs(int(self.take(1, what)[0]))
        nc = abs(int(self.take(1, what)[0]))
        if nc != 1 or nr > 2 * _MAX_PARTS:
            raise self.error(
                f"{what} is a {nr}x{nc} matrix, expected a column of <= {2 * _MAX_PARTS}"
            )
        return self.floats(nr, what)


def convert_shape_predictor(data: bytes, source: str) -> ShapePredictorModel:
    """Parse a dlib ``shape_predictor`` file (e.g. shape_predictor_5_face_landmarks.dat)."""
    reader = DlibReader(data, source)
    version = reader.int()
    if version != 1:
        raise reader.error(f"unsupported shape_predictor version {version}", 0)
    start = reader.offset
    cur = _Tokens(reader.ints(None), bytes(data), start, source)

    initial_shape = cur.float_column("initial_shape")
    n2 = initial_shape.shape[0]
    if n2 < 2 or n2 % 2:
        raise cur.error(f"initial_shape has {n2} values (need 2 per landmark)")

    num_cascades = cur.count("number of cascades", 1000)
    if num_cascades < 1:
        raise cur.error("the model has no cascades")
    idx1: list[npt.NDArray[np.int64]] = []
    idx2: list[npt.NDArray[np.int64]] = []
    thresh: list[F32Array] = []
    leaves: list[F32Array] = []
    shape: tuple[int, int] | None = None  # (trees, splits) of the first cascade
    for k in range(num_cascades):
        num_trees = cur.count(f"number of trees in cascade {k}", 1 << 20)
        at = cur.i
        num_splits = cur.count(f"number of splits (cascade {k}, tree 0)", _MAX_SPLITS)
        if num_trees < 1:
            raise cur.error(f"cascade {k} has no trees", at - 1)
        # tree = S, S×(idx1, idx2, mantissa, exponent), L, L×(-nr, -nc, 2P×(m, e))
        num_leaves = num_splits + 1
        tree_len = 2 + 4 * num_splits + num_leaves * (2 + 2 * n2)
        cur.i = at
        block = cur.take(num_trees * tree_len, f"cascade {k} trees").reshape(num_trees, tree_len)
        lo = 1 + 4 * num_splits
        leaf_part = block[:, lo + 1 :].reshape(num_trees, num_leaves, 2 + 2 * n2)
        regular = (
            (block[:, 0] == num_splits).all()
            and (block[:, lo] == num_leaves).all()
            and (np.abs(leaf_part[:, :, 0]) == n2).all()
            and (np.abs(leaf_part[:, :, 1]) == 1).all()
        )
        if not regular:
            bad_tree = int(
                np.argmax(
                    (block[:, 0] != num_splits)
                    | (block[:, lo] != num_leaves)
                    | (np.abs(leaf_part[:, :, 0]) != n2).any(axis=1)
                    | (np.abs(leaf_part[:, :, 1]) != 1).any(axis=1)
                )
            )
            raise cur.error(
                f"cascade {k} tree {bad_tree} does not have {num_splits} splits and "
                f"{num_leaves} leaves of {n2} values like tree 0 (corrupt or unsupported file)",
                at + bad_tree * tree_len,
            )
        if shape is not None and shape != (num_trees, num_splits):
            raise cur.error(
                f"cascade {k} has {num_trees} trees of {num_splits} splits, cascade 0 has "
                f"{shape[0]} of {shape[1]} (unsupported irregular model)",
                at - 1,
            )
        shape = (num_trees, num_splits)
        splits = block[:, 1:lo].reshape(num_trees, num_splits, 4)
        leaf_pairs = leaf_part[:, :, 2:].reshape(num_trees, num_leaves, n2, 2)
        if (splits[:, :, 3] >= _EXP_SPECIAL).any() or (leaf_pairs[..., 1] >= _EXP_SPECIAL).any():
            raise cur.error(f"cascade {k} contains inf or nan values", at)
        idx1.append(splits[:, :, 0])
        idx2.append(splits[:, :, 1])
        thresh.append(_floats(splits[:, :, 2], splits[:, :, 3]))
        leaves.append(_floats(leaf_pairs[..., 0], leaf_pairs[..., 1]))

    if cur.count("number of anchor lists", 1000) != num_cascades:
        raise cur.error(f"anchor lists do not match {num_cascades} cascades", cur.i - 1)
    anchors: list[npt.NDArray[np.int64]] = []
    for k in range(num_cascades):
        num_feats = cur.count(f"number of feature pixels (cascade {k})", 1 << 20)
        anchors.append(cur.take(num_feats, f"anchor indices of cascade {k}"))
    if cur.count("number of delta lists", 1000) != num_cascades:
        raise cur.error(f"delta lists do not match {num_cascades} cascades", cur.i - 1)
    deltas: list[F32Array] = []
    for k in range(num_cascades):
        num_feats = cur.count(f"number of deltas (cascade {k})", 1 << 20)
        if num_feats != len(anchors[k]):
            raise cur.error(
                f"cascade {k}: {num_feats} deltas for {len(anchors[k])} anchors", cur.i - 1
            )
        deltas.append(cur.floats(2 * num_feats, f"deltas of cascade {k}").reshape(num_feats, 2))
    if cur.i != len(cur.tok):
        raise cur.error(f"{len(cur.tok) - cur.i} unexpected values after the last item")
    if len({len(a) for a in anchors}) != 1:
        raise cur.error("cascades use different numbers of feature pixels (unsupported)", 0)

    def as_i32(parts: list[npt.NDArray[np.int64]], what: str) -> IntArray:
        arr = np.stack(parts)
        if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(np.int32).max):
            raise DlibFormatError(source, start, f"{what} out of range")
        return arr.astype(np.int32)

    try:
        return ShapePredictorModel(
            initial_shape=initial_shape,
            split_idx1=as_i32(idx1, "split feature index"),
            split_idx2=as_i32(idx2, "split feature index"),
            split_thresh=np.stack(thresh),
            leaf_values=np.stack(leaves),
            anchor_idx=as_i32(anchors, "anchor index"),
            deltas=np.stack(deltas),
            source=source,
        )
    except DlibFormatError:
        raise
    except ModelPackError as exc:
        raise DlibFormatError(source, start, exc.message) from None
