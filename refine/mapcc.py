"""Real-space correlation between a map and a model map: CCmask, CCbox, CCpeaks, CCvolume.

Definitions follow phenix.map_model_cc (Afonine et al. 2018, Acta Cryst D74:814), whose
executable definition is cctbx's ``mmtbx/maps/correlation.py`` (``five_cc``) and
``mmtbx/maps/map_model_cc.py``. Every CC is the plain Pearson correlation (means
removed) of the experimental and the model-map values over a set of grid points:

* **CC_mask**: points inside the molecular (bulk-solvent) mask, see :mod:`.mask`;
* **CC_box**: every point of the box;
* **CC_volume**: the ``N`` highest points of the model map, ``N`` = number of mask
  points (cctbx keeps every point ``>=`` the value of rank ``N`` in descending order,
  i.e. ``N + 1`` points barring ties; we do the same);
* **CC_peaks**: the union of the ``N`` highest points of the model map and of the
  experimental map.

Per chain and per residue (map_model_cc): the CC over the union of spheres of radius
``atom_radius`` (Å) around the atoms of the group, with ``atom_radius`` from
:func:`atom_radius` (mmtbx.maps.mtriage.get_atom_radius).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

#: Peng 1996 electron form-factor coefficients for carbon (ITC Vol. C Table 4.3.2.2),
#: f(s) = sum a_i exp(-b_i s^2), s = sin(theta)/lambda = 1/(2d).
_C_A = (0.0893, 0.2563, 0.7570, 1.0487, 0.3575)
_C_B = (0.2465, 1.7100, 6.4094, 18.6113, 50.2523)


@njit(cache=True)
def _pearson_sums(x, y, sel):
    # Float64 accumulators over float32 maps; sel is a boolean array or None-like (size 0).
    n = 0
    sx = 0.0
    sy = 0.0
    sxx = 0.0
    syy = 0.0
    sxy = 0.0
    use_all = sel.size == 0
    for i in range(x.size):
        if use_all or sel[i]:
            a = float(x[i])
            b = float(y[i])
            n += 1
            sx += a
            sy += b
            sxx += a * a
            syy += b * b
            sxy += a * b
    return n, sx, sy, sxx, syy, sxy


@njit(cache=True)
def _pearson_threshold(x, y, tx, ty):
    # Points where x >= tx or y >= ty (tx/ty = +inf disables a map).
    n = 0
    sx = 0.0
    sy = 0.0
    sxx = 0.0
    syy = 0.0
    sxy = 0.0
    for i in range(x.size):
        if x[i] >= tx or y[i] >= ty:
            a = float(x[i])
            b = float(y[i])
            n += 1
            sx += a
            sy += b
            sxx += a * a
            syy += b * b
            sxy += a * b
    return n, sx, sy, sxx, syy, sxy


def _cc_from_sums(n, sx, sy, sxx, syy, sxy) -> float:
    if n < 2:
        return float("nan")
    vx = sxx - sx * sx / n
    vy = syy - sy * sy / n
    if vx <= 0 or vy <= 0:
        return float("nan")
    return float((sxy - sx * sy / n) / math.sqrt(vx * vy))


def pearson(x: np.ndarray, y: np.ndarray, selection: np.ndarray | None = None) -> float:
    """Pearson CC of two equally shaped arrays, optionally over a boolean selection."""
    xr = np.ascontiguousarray(x).ravel()
    yr = np.ascontiguousarray(y).ravel()
    sel = np.zeros(0, dtype=np.bool_) if selection is None else np.ascontiguousarray(selection).ravel()
    return _cc_from_sums(*_pearson_sums(xr, yr, sel))


def _value_of_rank(a: np.ndarray, n: int) -> float:
    """Value of rank ``n`` (0-based) in descending order (cctbx's cut-off for the N highest points)."""
    flat = a.ravel()
    n = min(max(int(n), 0), flat.size - 1)
    return kth_smallest(flat, flat.size - 1 - n)


#: Bins of :func:`kth_smallest`'s histogram pass.
_SELECT_BINS = 1 << 16


@njit(cache=True, parallel=True)
def _range_and_chunks(x, n_chunks):
    n = x.size
    lo = np.empty(n_chunks, x.dtype)
    hi = np.empty(n_chunks, x.dtype)
    finite = np.ones(n_chunks, np.bool_)
    for c in prange(n_chunks):
        a, b = c * n // n_chunks, (c + 1) * n // n_chunks
        mn, mx = x[a], x[a]
        for i in range(a, b):
            v = x[i]
            if not np.isfinite(v):
                finite[c] = False
            if v < mn:
                mn = v
            if v > mx:
                mx = v
        lo[c], hi[c] = mn, mx
    return lo.min(), hi.max(), finite.all()


@njit(cache=True, parallel=True)
def _bin_counts(x, lo, scale, n_bins, n_chunks):
    n = x.size
    counts = np.zeros((n_chunks, n_bins), np.int64)
    for c in prange(n_chunks):
        a, b = c * n // n_chunks, (c + 1) * n // n_chunks
        for i in range(a, b):
            k = int((np.float64(x[i]) - lo) * scale)
            counts[c, min(k, n_bins - 1)] += 1
    return counts.sum(axis=0)


@njit(cache=True)
def _values_in_bin(x, lo, scale, n_bins, which, count):
    out = np.empty(count, x.dtype)
    j = 0
    for i in range(x.size):
        k = min(int((np.float64(x[i]) - lo) * scale), n_bins - 1)
        if k == which:
            out[j] = x[i]
            j += 1
    return out, out.min(), out.max()


def kth_smallest(x: np.ndarray, k: int) -> float:
    """The ``k``-th smallest value (0-based) of a float array: ``np.partition(x.ravel(), k)[k]``.

    Exact, by selection: a parallel histogram pass (numba ``prange``) over the values' range
    finds the bin holding rank ``k`` (the bin index is a monotone function of the value, so
    every value of a lower bin is smaller); only that bin's values are kept and the search goes
    on among them, until they are few (then ``np.partition``) or all equal. Arrays with
    non-finite values go to ``np.partition`` itself.
    """
    x = np.ascontiguousarray(x).ravel()
    k = int(k)
    if not 0 <= k < x.size:
        raise ValueError(f"kth_smallest: rank {k} outside 0..{x.size - 1}")
    if x.dtype not in (np.float32, np.float64):
        return float(np.partition(x, k)[k])
    n_chunks = 64
    if x.size < 4 * _SELECT_BINS:
        return float(np.partition(x, k)[k])
    lo, hi, finite = _range_and_chunks(x, n_chunks)
    if not finite:
        return float(np.partition(x, k)[k])
    while True:
        lo, hi = float(lo), float(hi)
        if hi == lo:
            return lo
        if x.size < 4 * _SELECT_BINS:
            break
        scale = _SELECT_BINS / (hi - lo)
        counts = _bin_counts(x, lo, scale, _SELECT_BINS, n_chunks)
        cum = np.cumsum(counts)
        which = int(np.searchsorted(cum, k, side="right"))
        k -= int(cum[which - 1]) if which else 0
        x, lo, hi = _values_in_bin(x, lo, scale, _SELECT_BINS, which, int(counts[which]))
    return float(np.partition(x, k)[k])


def five_cc(exp: np.ndarray, calc: np.ndarray, mask: np.ndarray) -> dict:
    """CC_mask, CC_box, CC_volume and CC_peaks of ``exp`` against the model map ``calc``.

    Parameters
    ----------
    exp, calc : numpy.ndarray
        Experimental and model map values on the same grid.
    mask : numpy.ndarray of bool
        Molecular mask on the same grid (:func:`rerefine.refine.mask.molecular_mask`).

    Returns
    -------
    dict
        ``cc_mask``, ``cc_box``, ``cc_volume``, ``cc_peaks`` (floats; NaN when undefined)
        and ``n_mask`` (number of mask points, the ``N`` of CC_volume/CC_peaks).
    """
    if exp.shape != calc.shape or exp.shape != mask.shape:
        raise ValueError("maps and mask must share one grid")
    x = np.ascontiguousarray(exp).ravel()
    y = np.ascontiguousarray(calc).ravel()
    m = np.ascontiguousarray(mask).ravel()
    n_mask = int(np.count_nonzero(m))
    out = {"cc_mask": _cc_from_sums(*_pearson_sums(x, y, m)),
           "cc_box": _cc_from_sums(*_pearson_sums(x, y, np.zeros(0, np.bool_))),
           "n_mask": n_mask}
    if n_mask == 0:
        out["cc_volume"] = out["cc_peaks"] = float("nan")
        return out
    ty = _value_of_rank(y, n_mask)
    tx = _value_of_rank(x, n_mask)
    out["cc_volume"] = _cc_from_sums(*_pearson_threshold(x, y, np.inf, ty))
    out["cc_peaks"] = _cc_from_sums(*_pearson_threshold(x, y, tx, ty))
    return out


def carbon_image(d_min: float, b_iso: float, radius_max: float, radius_step: float,
                 n_steps: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Radial Fourier image of a carbon atom (electron form factor, B ``b_iso``) cut at ``d_min``.

    ``rho(r) = integral_0^{1/d_min} (2/r) s f(s) exp(-B s^2/4) sin(2 pi r s) ds``, with
    ``s = 1/d`` and ``f`` the Peng electron form factor (as ``maptbx.atom_curves.image``),
    evaluated with Simpson's rule.
    """
    s = np.linspace(0.0, 1.0 / d_min, n_steps + 1)
    ss = (s / 2.0) ** 2  # (sin theta / lambda)^2
    f = np.zeros_like(s)
    for a, b in zip(_C_A, _C_B):
        f += a * np.exp(-b * ss)
    f *= np.exp(-b_iso * ss)
    r = np.arange(0.0, radius_max, radius_step)
    w = np.ones(n_steps + 1)
    w[1:-1:2] = 4.0
    w[2:-1:2] = 2.0
    w *= (s[1] - s[0]) / 3.0
    vals = np.empty_like(r)
    for i, ri in enumerate(r):
        if ri > 1e-9:
            g = 2.0 / ri * s * f * np.sin(2 * np.pi * ri * s)
        else:
            g = 4 * np.pi * s * s * f
        vals[i] = np.dot(w, g)
    return r, vals


def atom_radius(d_min: float, b_mean: float) -> float:
    """Radius (Å) of the spheres used for per-chain and per-residue CC.

    As ``mmtbx.maps.mtriage.get_atom_radius``: twice the first inflection point of the
    carbon image at ``d_min`` and the model's mean B (radial step 0.1 Å), or ``d_min``
    if larger, clamped to [3, 10] Å.
    """
    step = 0.1
    r, v = carbon_image(d_min, b_mean, max(15.0, d_min), step)
    rad_image = None
    for i in range(len(v)):
        if 0 < i < len(v) - 1:
            dxx = v[i - 1] + v[i + 1] - 2 * v[i]
        elif i == 0:
            dxx = 2 * v[1] - 2 * v[0]
        else:
            break
        if dxx > 0:
            rad_image = (r[i - 1] + r[i]) / 2.0 * 2.0 if i > 0 else 0.0
            break
    radii = [d_min] + ([rad_image] if rad_image is not None else [])
    return float(max(3.0, min(10.0, max(radii))))


@njit(cache=True, parallel=True)
def _group_cc_sums(exp, calc, grid_xyz, starts, h, radius):
    # For every group (atoms grid_xyz[starts[g]:starts[g+1]]) the Pearson sums over the
    # union of spheres of `radius` Å around its atoms. A local bounding-box stamp keeps
    # memory per group small.
    ng = starts.size - 1
    out = np.zeros((ng, 6))
    nx, ny, nz = exp.shape
    r2 = radius * radius
    for g in prange(ng):
        a0 = starts[g]
        a1 = starts[g + 1]
        if a1 <= a0:
            continue
        lo = np.empty(3, np.int64)
        hi = np.empty(3, np.int64)
        for d in range(3):
            mn = 1e30
            mx = -1e30
            for a in range(a0, a1):
                mn = min(mn, grid_xyz[a, d])
                mx = max(mx, grid_xyz[a, d])
            ext = radius / h[d]
            lo[d] = max(0, int(math.floor(mn - ext)))
            hi[d] = min((nx, ny, nz)[d] - 1, int(math.ceil(mx + ext)))
        if hi[0] < lo[0] or hi[1] < lo[1] or hi[2] < lo[2]:
            continue
        sel = np.zeros((hi[0] - lo[0] + 1, hi[1] - lo[1] + 1, hi[2] - lo[2] + 1), np.bool_)
        for a in range(a0, a1):
            c0 = grid_xyz[a, 0]
            c1 = grid_xyz[a, 1]
            c2 = grid_xyz[a, 2]
            i0 = max(lo[0], int(math.ceil(c0 - radius / h[0])))
            i1 = min(hi[0], int(math.floor(c0 + radius / h[0])))
            j0 = max(lo[1], int(math.ceil(c1 - radius / h[1])))
            j1 = min(hi[1], int(math.floor(c1 + radius / h[1])))
            k0 = max(lo[2], int(math.ceil(c2 - radius / h[2])))
            k1 = min(hi[2], int(math.floor(c2 + radius / h[2])))
            for i in range(i0, i1 + 1):
                dx = (i - c0) * h[0]
                for j in range(j0, j1 + 1):
                    dy = (j - c1) * h[1]
                    dxy = dx * dx + dy * dy
                    if dxy > r2:
                        continue
                    for k in range(k0, k1 + 1):
                        dz = (k - c2) * h[2]
                        if dxy + dz * dz <= r2:
                            sel[i - lo[0], j - lo[1], k - lo[2]] = True
        n = 0
        sx = 0.0
        sy = 0.0
        sxx = 0.0
        syy = 0.0
        sxy = 0.0
        for i in range(sel.shape[0]):
            for j in range(sel.shape[1]):
                for k in range(sel.shape[2]):
                    if sel[i, j, k]:
                        a = float(exp[lo[0] + i, lo[1] + j, lo[2] + k])
                        b = float(calc[lo[0] + i, lo[1] + j, lo[2] + k])
                        n += 1
                        sx += a
                        sy += b
                        sxx += a * a
                        syy += b * b
                        sxy += a * b
        out[g, 0] = n
        out[g, 1] = sx
        out[g, 2] = sy
        out[g, 3] = sxx
        out[g, 4] = syy
        out[g, 5] = sxy
    return out


def group_cc(exp: np.ndarray, calc: np.ndarray, grid_xyz: np.ndarray, groups: list[np.ndarray],
             voxel_size: np.ndarray, radius: float) -> np.ndarray:
    """CC inside spheres of ``radius`` Å around the atoms of each group.

    Parameters
    ----------
    exp, calc : numpy.ndarray
        Maps on one orthogonal grid.
    grid_xyz : numpy.ndarray, shape (N, 3)
        Atom positions in fractional voxel indices of that grid.
    groups : list of int arrays
        Atom indices of every group (residue, chain, ...).
    voxel_size : array of 3 floats, Å.
    radius : float, Å.

    Returns
    -------
    numpy.ndarray of float, one CC per group (NaN for fewer than 2 points).
    """
    order = np.concatenate([np.asarray(g, np.int64) for g in groups]) if groups else np.zeros(0, np.int64)
    starts = np.zeros(len(groups) + 1, np.int64)
    starts[1:] = np.cumsum([len(g) for g in groups])
    xyz = np.ascontiguousarray(np.asarray(grid_xyz, np.float64)[order])
    sums = _group_cc_sums(exp, calc, xyz, starts, np.asarray(voxel_size, np.float64), float(radius))
    return np.array([_cc_from_sums(*row) for row in sums])
