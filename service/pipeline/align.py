"""Face-chip alignment, bit-exact with ``dlib.get_face_chip(img, shape, size, padding)``.

A chip is the image resampled through the similarity transform that carries the five
landmarks onto a fixed template. Matching dlib to the last bit matters because the ResNet
was trained on dlib's chips, and because "same photo, same descriptor" is how parity with
dlib is proven. Three things make that possible:

* the transforms are computed with the same floating-point operations in the same order as
  dlib (``find_similarity_transform`` and ``find_affine_transform`` run dlib's own SVD, ported
  below), so every sample coordinate carries the same bits;
* a large face is first shrunk with dlib's integer 5-tap ``pyramid_down<2>`` on a crop of the
  image, exactly as ``extract_image_chips`` does;
* bilinear samples are computed in double and truncated to uint8, black outside the image.

The transform maths runs on Python floats (IEEE doubles, as in dlib's C++ built without FMA);
the per-pixel work is vectorised numpy over all size×size samples at once.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from service.errors import InvalidArgument
from service.pipeline.types import FloatArray, UInt8Array

# dlib's 5-point alignment template (get_face_chip_details), in [0,1] chip coordinates.
DLIB_5POINT_TEMPLATE: tuple[tuple[float, float], ...] = (
    (0.8595674595992, 0.2134981538014),
    (0.6460604764104, 0.2289674387677),
    (0.1205750620789, 0.2137274526848),
    (0.3340850613712, 0.2290642403242),
    (0.4901123135679, 0.6277975316475),
)

_DBL_EPS = 2.220446049250313e-16  # std::numeric_limits<double>::epsilon()
_DBL_MIN = 2.2250738585072014e-308  # std::numeric_limits<double>::min()

Matrix = list[list[float]]


# ----------------------------------------------------------------------------------------
# dlib's linear algebra on tiny matrices, operation for operation


def _svd4(a: Matrix) -> tuple[Matrix, list[float], Matrix]:
    """dlib ``svd4(SVD_SKINNY_U, true, a, u, q, v)`` (Golub–Reinsch, Handbook Algol port).

    a = u·diag(q)·vᵀ for an m×n matrix with m ≥ n. Ported statement by statement so the
    results carry dlib's bits, which a LAPACK SVD would not.
    """
    m = len(a)
    n = len(a[0])
    eps = _DBL_EPS
    tol = _DBL_MIN / eps
    e = [0.0] * n
    q = [0.0] * n
    u = [list(row) for row in a]
    v = [[0.0] * n for _ in range(n)]
    sqrt = math.sqrt

    # Householder reduction to bidiagonal form.
    g = x = 0.0
    lo = 0
    for i in range(n):
        e[i] = g
        s = 0.0
        lo = i + 1
        for j in range(i, m):
            s += u[j][i] * u[j][i]
        if s < tol:
            g = 0.0
        else:
            f = u[i][i]
            g = sqrt(s) if f < 0 else -sqrt(s)
            h = f * g - s
            u[i][i] = f - g
            for j in range(lo, n):
                s = 0.0
                for k in range(i, m):
                    s += u[k][i] * u[k][j]
                f = s / h
                for k in range(i, m):
                    u[k][j] += f * u[k][i]
        q[i] = g
        s = 0.0
        for j in range(lo, n):
            s += u[i][j] * u[i][j]
        if s < tol:
            g = 0.0
        else:
            f = u[i][i + 1]
            g = sqrt(s) if f < 0 else -sqrt(s)
            h = f * g - s
            u[i][i + 1] = f - g
            for j in range(lo, n):
                e[j] = u[i][j] / h
            for j in range(lo, m):
                s = 0.0
                for k in range(lo, n):
                    s += u[j][k] * u[i][k]
                for k in range(lo, n):
                    u[j][k] += s * e[k]
        y = abs(q[i]) + abs(e[i])
        x = max(x, y)

    # Accumulation of right-hand transformations.
    for i in range(n - 1, -1, -1):
        if g != 0.0:
            h = u[i][i + 1] * g
            for j in range(lo, n):
                v[j][i] = u[i][j] / h
            for j in range(lo, n):
                s = 0.0
                for k in range(lo, n):
                    s += u[i][k] * v[k][j]
                for k in range(lo, n):
                    v[k][j] += s * v[k][i]
        for j in range(lo, n):
            v[i][j] = 0.0
            v[j][i] = 0.0
        v[i][i] = 1.0
        g = e[i]
        lo = i

    # Accumulation of left-hand transformations (skinny U: m×n).
    for i in range(n - 1, -1, -1):
        lo = i + 1
        g = q[i]
        for j in range(lo, n):
            u[i][j] = 0.0
        if g != 0.0:
            h = u[i][i] * g
            for j in range(lo, n):
                s = 0.0
                for k in range(lo, m):
                    s += u[k][i] * u[k][j]
                f = s / h
                for k in range(i, m):
                    u[k][j] += f * u[k][i]
            for j in range(i, m):
                u[j][i] /= g
        else:
            for j in range(i, m):
                u[j][i] = 0.0
        u[i][i] += 1.0

    # Diagonalisation of the bidiagonal form.
    eps *= x
    for k in range(n - 1, -1, -1):
        iterations = 0
        while True:
            # test for splitting (e[0] is always 0, so the scan stops by lo == 0)
            cancel = False
            lo = k
            while lo >= 0:
                if abs(e[lo]) <= eps:
                    break
                if abs(q[lo - 1]) <= eps:
                    cancel = True
                    break
                lo -= 1
            if cancel:
                c = 0.0
                s = 1.0
                l1 = lo - 1
                for i in range(lo, k + 1):
                    f = s * e[i]
                    e[i] *= c
                    if abs(f) <= eps:
                        break
                    g = q[i]
                    h = sqrt(f * f + g * g)
                    q[i] = h
                    c = g / h
                    s = -f / h
                    for j in range(m):
                        y = u[j][l1]
                        z = u[j][i]
                        u[j][l1] = y * c + z * s
                        u[j][i] = -y * s + z * c
            z = q[k]
            if lo == k:
                break
            iterations += 1
            if iterations > 300:  # dlib gives up silently and keeps what it has
                return u, q, v
            # shift from the bottom 2×2 minor
            x = q[lo]
            y = q[k - 1]
            g = e[k - 1]
            h = e[k]
            f = ((y - z) * (y + z) + (g - h) * (g + h)) / (2 * h * y)
            g = sqrt(f * f + 1.0)
            f = ((x - z) * (x + z) + h * (y / ((f - g) if f < 0 else (f + g)) - h)) / x
            # next QR transformation
            c = s = 1.0
            for i in range(lo + 1, k + 1):
                g = e[i]
                y = q[i]
                h = s * g
                g *= c
                z = sqrt(f * f + h * h)
                e[i - 1] = z
                c = f / z
                s = h / z
                f = x * c + g * s
                g = -x * s + g * c
                h = y * s
                y *= c
                for j in range(n):
                    x = v[j][i - 1]
                    z = v[j][i]
                    v[j][i - 1] = x * c + z * s
                    v[j][i] = -x * s + z * c
                z = sqrt(f * f + h * h)
                q[i - 1] = z
                if z != 0:
                    c = f / z
                    s = h / z
                f = c * g + s * y
                x = -s * g + c * y
                for j in range(m):
                    y = u[j][i - 1]
                    z = u[j][i]
                    u[j][i - 1] = y * c + z * s
                    u[j][i] = -y * s + z * c
            e[lo] = 0.0
            e[k] = f
            q[k] = x
        if z < 0.0:
            q[k] = -z
            for j in range(n):
                v[j][k] = -v[j][k]
    return u, q, v


def _pinv_square(p: Matrix) -> Matrix:
    """dlib ``pinv`` of a square matrix: v·diag(1/round_zeros(w))·uᵀ."""
    n = len(p)
    u, w, v = _svd4(p)
    cut = _DBL_EPS * n * max(w)
    inv_w = [1.0 / wi if (wi >= cut or wi <= -cut) else 0.0 for wi in w]
    vs = [[v[i][j] * inv_w[j] for j in range(n)] for i in range(n)]
    out: Matrix = []
    for i in range(n):
        row = []
        for j in range(n):
            acc = vs[i][0] * u[j][0]
            for k in range(1, n):
                acc += vs[i][k] * u[j][k]
            row.append(acc)
        out.append(row)
    return out


@lru_cache(maxsize=16)
def _pinv_of_three_points(src: tuple[tuple[float, float], ...]) -> tuple[tuple[float, ...], ...]:
    p = [[pt[0] for pt in src], [pt[1] for pt in src], [1.0, 1.0, 1.0]]
    return tuple(tuple(row) for row in _pinv_square(p))


def affine_from_three_points(
    src: tuple[tuple[float, float], ...], dst: list[tuple[float, float]]
) -> tuple[Matrix, tuple[float, float]]:
    """dlib ``find_affine_transform`` for three point pairs: Q·pinv(P), as (m, b)."""
    pinv = _pinv_of_three_points(src)
    m: Matrix = []
    b: list[float] = []
    for r in range(2):
        q = [pt[r] for pt in dst]
        row = [q[0] * pinv[0][c] + q[1] * pinv[1][c] + q[2] * pinv[2][c] for c in range(3)]
        m.append(row[:2])
        b.append(row[2])
    return m, (b[0], b[1])


def dlib_similarity(
    fx: list[float], fy: list[float], tx: list[float], ty: list[float]
) -> tuple[Matrix, tuple[float, float]]:
    """dlib ``find_similarity_transform`` (Umeyama, eqs. 34–43) on Python floats."""
    n = len(fx)
    mfx = mfy = mtx = mty = 0.0
    for i in range(n):
        mfx += fx[i]
        mfy += fy[i]
        mtx += tx[i]
        mty += ty[i]
    mfx /= n
    mfy /= n
    mtx /= n
    mty /= n
    sigma_from = 0.0
    c00 = c01 = c10 = c11 = 0.0
    for i in range(n):
        dfx = fx[i] - mfx
        dfy = fy[i] - mfy
        dtx = tx[i] - mtx
        dty = ty[i] - mty
        sigma_from += dfx * dfx + dfy * dfy
        c00 += dtx * dfx
        c01 += dtx * dfy
        c10 += dty * dfx
        c11 += dty * dfy
    sigma_from /= n
    inv_n = 1.0 / n  # dlib's matrix /= scalar multiplies by the reciprocal
    cov = [[c00 * inv_n, c01 * inv_n], [c10 * inv_n, c11 * inv_n]]
    u, d, v = _svd4(cov)
    s0 = s1 = 1.0
    det_cov = cov[0][0] * cov[1][1] - cov[0][1] * cov[1][0]
    if det_cov < 0 or (
        det_cov == 0
        and (u[0][0] * u[1][1] - u[0][1] * u[1][0]) * (v[0][0] * v[1][1] - v[0][1] * v[1][0]) < 0
    ):
        if d[1] < d[0]:
            s1 = -1.0
        else:
            s0 = -1.0
    # r = u·s·vᵀ (s diagonal ±1: the zero products are exact, so only the diagonal survives)
    us = [[u[0][0] * s0, u[0][1] * s1], [u[1][0] * s0, u[1][1] * s1]]
    r = [[us[i][0] * v[j][0] + us[i][1] * v[j][1] for j in range(2)] for i in range(2)]
    c = 1.0
    if sigma_from != 0:
        c = 1.0 / sigma_from * (d[0] * s0 + d[1] * s1)
    t0 = mtx - c * (r[0][0] * mfx + r[0][1] * mfy)
    t1 = mty - c * (r[1][0] * mfx + r[1][1] * mfy)
    return [[c * r[0][0], c * r[0][1]], [c * r[1][0], c * r[1][1]]], (t0, t1)


def _as_points(name: str, pts: npt.ArrayLike) -> np.ndarray:
    arr = np.asarray(pts, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 2:
        raise InvalidArgument(f"{name} must be (P, 2) points with P >= 2, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidArgument(f"{name} contains non-finite coordinates")
    return arr


def similarity_transform(
    src: npt.ArrayLike, dst: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Least-squares similarity (scale·rotation + translation) mapping src onto dst.

    Returns (A (2,2), t (2,)) float64 with dst ≈ src·Aᵀ + t, computed exactly as dlib's
    ``find_similarity_transform`` (Umeyama in double precision).
    """
    s = _as_points("src", src)
    d = _as_points("dst", dst)
    if s.shape != d.shape:
        raise InvalidArgument(f"src and dst differ in shape: {s.shape} vs {d.shape}")
    m, t = dlib_similarity(s[:, 0].tolist(), s[:, 1].tolist(), d[:, 0].tolist(), d[:, 1].tolist())
    return np.array(m, dtype=np.float64), np.array(t, dtype=np.float64)


# ----------------------------------------------------------------------------------------
# dlib's rectangles, pyramid and sampling


def _lround(v: float) -> int:
    """std::lround: nearest integer, halves away from zero (Python's round() is banker's)."""
    f = math.floor(v)
    if v >= 0:
        return f + 1 if v - f >= 0.5 else f
    c = math.ceil(v)
    return c - 1 if c - v >= 0.5 else c


def _rect_down(
    rect: tuple[float, float, float, float],
) -> tuple[float, float, float, float]:
    """pyramid_down<2>::rect_down: each corner p ↦ p/2 − (1.25, 0.75)."""
    left, top, right, bottom = rect
    return (left / 2.0 - 1.25, top / 2.0 - 0.75, right / 2.0 - 1.25, bottom / 2.0 - 0.75)


def _area(rect: tuple[float, float, float, float]) -> float:
    left, top, right, bottom = rect
    if top > bottom or left > right:
        return 0.0
    return (right - left + 1) * (bottom - top + 1)


def _rotated_corners(
    rect: tuple[float, float, float, float], angle_sc: tuple[float, float], which: str
) -> list[tuple[float, float]]:
    """dlib rotate_point(center(rect), corner, angle) for the named corners ("tl", "tr", ...)."""
    left, top, right, bottom = rect
    sin_a, cos_a = angle_sc
    cx, cy = (left + right) / 2.0, (top + bottom) / 2.0
    pick = {"tl": (left, top), "tr": (right, top), "bl": (left, bottom), "br": (right, bottom)}
    out = []
    for name in which.split():
        dx = pick[name][0] - cx
        dy = pick[name][1] - cy
        out.append(((cos_a * dx - sin_a * dy) + cx, (sin_a * dx + cos_a * dy) + cy))
    return out


def pyramid_down2(img: UInt8Array) -> UInt8Array:
    """dlib ``pyramid_down<2>`` on an RGB uint8 image: separable [1,4,6,4,1], drop odd rows/cols.

    Integer arithmetic as dlib's RGB overload (sums fit in 16 bits, one /256 at the end).
    Output is ((H−3)//2, (W−3)//2); dlib returns an empty image for H ≤ 8 or W ≤ 8.
    """
    h, w = img.shape[:2]
    if h <= 8 or w <= 8:
        return np.zeros((0, 0, 3), np.uint8)
    nc = (w - 3) // 2
    nr = (h - 3) // 2
    s = img.astype(np.uint16)  # 16·16·255 = 65280 fits, as in dlib's uint16 accumulators
    e = 2 * nc
    tmp = s[:, 0:e:2] + 4 * s[:, 1 : e + 1 : 2] + 6 * s[:, 2 : e + 2 : 2]
    tmp += 4 * s[:, 3 : e + 3 : 2] + s[:, 4 : e + 4 : 2]
    e = 2 * nr
    out = tmp[0:e:2] + 4 * tmp[1 : e + 1 : 2] + 6 * tmp[2 : e + 2 : 2]
    out += 4 * tmp[3 : e + 3 : 2] + tmp[4 : e + 4 : 2]
    return np.ascontiguousarray(out >> 8, dtype=np.uint8)


def _sample_bilinear(
    img: UInt8Array, m: Matrix, b: tuple[float, float], rows: int, cols: int
) -> UInt8Array:
    """transform_image with interpolate_bilinear and a black background, vectorised."""
    h, w = img.shape[:2]
    cc = np.arange(cols, dtype=np.float64)[None, :]
    rr = np.arange(rows, dtype=np.float64)[:, None]
    # point_transform_affine: m·p + b, summed in dlib's order
    x = ((m[0][0] * cc + m[0][1] * rr) + b[0]).ravel()
    y = ((m[1][0] * cc + m[1][1] * rr) + b[1]).ravel()
    fx = np.floor(x)
    fy = np.floor(y)
    left = fx.astype(np.int64)
    top = fy.astype(np.int64)
    ok = (left >= 0) & (top >= 0) & (left + 1 < w) & (top + 1 < h)
    out = np.zeros((rows * cols, 3), np.uint8)
    if ok.all():
        idx: slice | npt.NDArray[np.intp] = slice(None)
    elif ok.any():
        idx = np.nonzero(ok)[0]
    else:
        return out.reshape(rows, cols, 3)
    lr = (x[idx] - fx[idx])[:, None]
    tb = (y[idx] - fy[idx])[:, None]
    # Gather the four neighbours as uint8 through flat indices, then widen only those.
    flat = np.ascontiguousarray(img).reshape(h * w, 3)
    at = top[idx] * w + left[idx]
    tl = flat.take(at, axis=0).astype(np.float64)
    tr = flat.take(at + 1, axis=0).astype(np.float64)
    bl = flat.take(at + w, axis=0).astype(np.float64)
    br = flat.take(at + (w + 1), axis=0).astype(np.float64)
    one_lr = 1 - lr
    val = (1 - tb) * (one_lr * tl + lr * tr) + tb * (one_lr * bl + lr * br)
    out[idx] = val.astype(np.uint8)  # static_cast<unsigned char>: truncation
    return out.reshape(rows, cols, 3)


def _chip_details(
    pts: np.ndarray, template: np.ndarray, size: int, padding: float
) -> tuple[tuple[float, float, float, float], float]:
    """get_face_chip_details: the chip's rectangle (l,t,r,b) in the image and its angle."""
    inv = 1.0 / (2 * padding + 1)  # dlib divides a vector expression: multiply by reciprocal
    fx = [((padding + float(px)) * inv) * size for px in template[:, 0]]
    fy = [((padding + float(py)) * inv) * size for py in template[:, 1]]
    m, t = dlib_similarity(fx, fy, pts[:, 0].tolist(), pts[:, 1].tolist())
    px, py = m[0][0], m[1][0]  # m·(1, 0)
    angle = math.atan2(py, px)
    scale = math.sqrt(px * px + py * py)
    half = size / 2.0
    cx = (m[0][0] * half + m[0][1] * half) + t[0]
    cy = (m[1][0] * half + m[1][1] * half) + t[1]
    wd = size * scale - 1  # centered_drect decrements width and height
    return (cx - wd / 2, cy - wd / 2, cx + wd / 2, cy + wd / 2), angle


def _extract_one(
    rgb: UInt8Array, rect: tuple[float, float, float, float], angle: float, size: int
) -> UInt8Array:
    """extract_image_chips for one chip_details (rows = cols = size), bilinear."""
    img_h, img_w = rgb.shape[:2]
    left, top, right, bottom = rect
    chip_area = float(size * size)
    if angle == 0 and size == right - left + 1 and size == bottom - top + 1:
        # dlib's plain copy path: no scaling, no rotation
        cl, ct = _lround(left), _lround(top)
        out = np.zeros((size, size, 3), np.uint8)
        y0, y1 = max(ct, 0), min(ct + size, img_h)
        x0, x1 = max(cl, 0), min(cl + size, img_w)
        if y0 < y1 and x0 < x1:
            out[y0 - ct : y1 - ct, x0 - cl : x1 - cl] = rgb[y0:y1, x0:x1]
        return out

    # pyramid depth dlib would build for this chip (grow: border the 5-tap filter needs)
    depth = 0
    grow = 2.0
    down = _rect_down(rect)
    while _area(down) > chip_area:
        down = _rect_down(down)
        depth += 1
        grow = grow * 2 + 2

    angle_sc = (math.sin(angle), math.cos(angle))
    corners = _rotated_corners(rect, angle_sc, "tl tr bl br")
    xs = [pt[0] for pt in corners]
    ys = [pt[1] for pt in corners]
    # grow_rect, intersect with the image, then the implicit drectangle→rectangle lround
    box_l = _lround(max(min(xs) - grow, 0.0))
    box_t = _lround(max(min(ys) - grow, 0.0))
    box_r = _lround(min(max(xs) + grow, float(img_w - 1)))
    box_b = _lround(min(max(ys) + grow, float(img_h - 1)))
    if box_l > box_r or box_t > box_b:  # the face lies outside the image: empty crop
        box_l = box_t = 0
        crop = np.zeros((0, 0, 3), np.uint8)
    else:
        crop = rgb[box_t : box_b + 1, box_l : box_r + 1]

    # pyramid level to sample from (−1: the crop itself), the rect shrunk to match
    level = -1
    in_crop = (left - box_l, top - box_t, right - box_l, bottom - box_t)
    while _area(_rect_down(in_crop)) > chip_area:
        level += 1
        in_crop = _rect_down(in_crop)
    src = crop
    for _ in range(min(level, depth - 1) + 1):
        src = pyramid_down2(src)

    dst = _rotated_corners(in_crop, angle_sc, "tl tr bl")
    last = float(size - 1)
    m, off = affine_from_three_points(((0.0, 0.0), (last, 0.0), (0.0, last)), dst)
    return _sample_bilinear(src, m, off, size, size)


def extract_chips(
    rgb: UInt8Array,
    landmarks: FloatArray,
    *,
    size: int = 150,
    padding: float = 0.25,
    template: npt.ArrayLike | None = None,
) -> UInt8Array:
    """(N, size, size, 3) uint8 aligned face chips, one per (5, 2) landmark set.

    Bit-exact with ``dlib.get_face_chip(img, shape, size, padding)`` for integer landmarks
    (what dlib's shape predictor returns). ``template`` gives the landmarks' target positions
    in [0,1] chip coordinates before padding (default: dlib's 5-point template); the chip
    maps template point p to pixel ``(padding + p) / (2·padding + 1) · size``.
    """
    if (
        not isinstance(rgb, np.ndarray)
        or rgb.dtype != np.uint8
        or rgb.ndim != 3
        or (rgb.shape[2] != 3)
    ):
        raise InvalidArgument("image must be a uint8 (H, W, 3) RGB array")
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or not 1 <= size <= 4096:
        raise InvalidArgument(f"chip size must be an integer in [1, 4096], got {size!r}")
    if not (math.isfinite(padding) and 0 <= padding <= 10):
        raise InvalidArgument(f"padding must be in [0, 10], got {padding!r}")
    tmpl = np.asarray(DLIB_5POINT_TEMPLATE if template is None else template, np.float64)
    if tmpl.ndim != 2 or tmpl.shape[1] != 2 or tmpl.shape[0] < 2 or not np.isfinite(tmpl).all():
        raise InvalidArgument(f"template must be finite (P, 2) points, got shape {tmpl.shape}")
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[1:] != tmpl.shape:
        raise InvalidArgument(
            f"landmarks must be (N, {tmpl.shape[0]}, 2), got shape {np.shape(landmarks)}"
        )
    if not np.isfinite(pts).all():
        raise InvalidArgument("landmarks contain non-finite coordinates")
    size = int(size)
    padding = float(padding)
    out = np.zeros((pts.shape[0], size, size, 3), np.uint8)
    for i in range(pts.shape[0]):
        rect, angle = _chip_details(pts[i], tmpl, size, padding)
        out[i] = _extract_one(rgb, rect, angle, size)
    return out
