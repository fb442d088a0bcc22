"""Peaks of a density map: local maxima, their sub-voxel position and shape, the size of the
blob holding each, and greedy spacing of accepted positions (numba kernels; used by
:mod:`.douse` for ordered waters).

The shape of a peak is read from the Hessian ``H`` of the map at the peak voxel (central
differences, converted to Å): all eigenvalues of ``-H`` positive at a maximum, and their ratio
``λ_min / λ_max`` is the sphericity (1 for a spherical peak). The position is refined by the
Newton step ``-H⁻¹ g`` of the local quadratic (Coot's and phenix.ordered_solvent's peak
search refine positions the same way).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange
from scipy import ndimage

from .mapio import DensityMap


# ---- kernels ---------------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def local_maxima(data, threshold):
    """Interior voxels that are the strict maximum of their 3×3×3 neighbourhood and ``>= threshold``.

    Parameters
    ----------
    data : numpy.ndarray
        float32 map ``[ix, iy, iz]``.
    threshold : float
        Smallest value, map units.

    Returns
    -------
    numpy.ndarray
        bool, same shape; the one-voxel border is never a maximum (its neighbourhood is cut).
    """
    nx, ny, nz = data.shape
    out = np.zeros(data.shape, dtype=np.bool_)
    for i in prange(1, nx - 1):
        for j in range(1, ny - 1):
            for k in range(1, nz - 1):
                v = data[i, j, k]
                if v < threshold:
                    continue
                best = True
                for a in range(-1, 2):
                    for b in range(-1, 2):
                        for c in range(-1, 2):
                            if (a != 0 or b != 0 or c != 0) and data[i + a, j + b, k + c] >= v:
                                best = False
                if best:
                    out[i, j, k] = True
    return out


@njit(cache=True, parallel=True)
def peak_derivatives(data, idx, step):
    """Gradient and Hessian of ``data`` at voxels ``idx`` (N, 3) by central differences.

    Parameters
    ----------
    data : numpy.ndarray
        float32 map ``[ix, iy, iz]``.
    idx : numpy.ndarray
        int64 voxel indices (N, 3), at least ``step`` voxels from every face.
    step : int
        Difference step, voxels.

    Returns
    -------
    (numpy.ndarray, numpy.ndarray)
        Gradient (N, 3) and Hessian (N, 3, 3) in map units per voxel (squared).
    """
    n = idx.shape[0]
    g = np.zeros((n, 3))
    h = np.zeros((n, 3, 3))
    s = step
    for p in prange(n):
        i, j, k = idx[p, 0], idx[p, 1], idx[p, 2]
        c = float(data[i, j, k])
        xp, xm = float(data[i + s, j, k]), float(data[i - s, j, k])
        yp, ym = float(data[i, j + s, k]), float(data[i, j - s, k])
        zp, zm = float(data[i, j, k + s]), float(data[i, j, k - s])
        g[p, 0] = (xp - xm) / (2.0 * s)
        g[p, 1] = (yp - ym) / (2.0 * s)
        g[p, 2] = (zp - zm) / (2.0 * s)
        h[p, 0, 0] = (xp - 2.0 * c + xm) / (s * s)
        h[p, 1, 1] = (yp - 2.0 * c + ym) / (s * s)
        h[p, 2, 2] = (zp - 2.0 * c + zm) / (s * s)
        d4 = 4.0 * s * s
        hxy = (float(data[i + s, j + s, k]) - float(data[i + s, j - s, k])
               - float(data[i - s, j + s, k]) + float(data[i - s, j - s, k])) / d4
        hxz = (float(data[i + s, j, k + s]) - float(data[i + s, j, k - s])
               - float(data[i - s, j, k + s]) + float(data[i - s, j, k - s])) / d4
        hyz = (float(data[i, j + s, k + s]) - float(data[i, j + s, k - s])
               - float(data[i, j - s, k + s]) + float(data[i, j - s, k - s])) / d4
        h[p, 0, 1] = h[p, 1, 0] = hxy
        h[p, 0, 2] = h[p, 2, 0] = hxz
        h[p, 1, 2] = h[p, 2, 1] = hyz
    return g, h


# ---- peaks -----------------------------------------------------------------------------------

@dataclass
class Peaks:
    """Candidate peaks of a difference map, strongest first."""

    xyz: np.ndarray          # (N, 3) Å, sub-voxel refined
    height_sd: np.ndarray    # D at the voxel, SD of D
    sphericity: np.ndarray   # λ_min/λ_max of -H (0 when not a maximum)


def find_peaks(diff: DensityMap, threshold: float, sd: float, *, step_a: float = 0.5) -> Peaks:
    """Local maxima of ``diff`` above ``threshold`` (map units) with their shape.

    ``step_a`` (Å) sets the finite-difference step of the Hessian (at least one voxel).
    """
    data = diff.data
    vox = float(np.min(diff.voxel_size))
    step = max(1, int(round(step_a / vox)))
    mask = local_maxima(data, np.float32(threshold))
    idx = np.argwhere(mask).astype(np.int64)
    n = np.array(data.shape)
    inner = np.all((idx >= step) & (idx < n - step), axis=1)
    idx = np.ascontiguousarray(idx[inner])
    if len(idx) == 0:
        return Peaks(np.zeros((0, 3)), np.zeros(0), np.zeros(0))
    g, h = peak_derivatives(data, idx, step)
    heights = data[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float64) / sd
    # Newton step to the maximum of the local quadratic (voxel units), at most half a voxel.
    shift = np.zeros((len(idx), 3))
    ok = np.abs(np.linalg.det(h)) > 1e-30
    shift[ok] = -np.linalg.solve(h[ok], g[ok][..., None])[..., 0]
    shift = np.clip(shift, -0.5, 0.5)
    m = diff.orth_matrix
    xyz = diff.origin + (idx + shift) @ m.T
    # Hessian in Å: H_cart = M^-T H_grid M^-1
    minv = np.linalg.inv(m)
    hc = np.einsum("ji,njk,kl->nil", minv, h, minv)
    ev = np.linalg.eigvalsh(-hc)  # ascending
    sph = np.where(ev[:, 0] > 0, ev[:, 0] / np.maximum(ev[:, 2], 1e-30), 0.0)
    order = np.argsort(-heights, kind="stable")
    return Peaks(xyz[order], heights[order], sph[order])


@njit(cache=True)
def greedy_spacing(xyz, fixed, min_dist):
    """Accept positions in the given order unless one already accepted (or ``fixed``) is
    closer than ``min_dist`` Å; a cell list keeps it linear in the number of positions.

    Parameters
    ----------
    xyz : numpy.ndarray
        (N, 3) candidate positions, Å, in order of preference.
    fixed : numpy.ndarray
        (M, 3) positions already taken, Å.
    min_dist : float
        Å.

    Returns
    -------
    numpy.ndarray
        bool (N,), accepted.
    """
    n, m = xyz.shape[0], fixed.shape[0]
    acc = np.zeros(n, dtype=np.bool_)
    if n == 0:
        return acc
    lo = np.empty(3)
    hi = np.empty(3)
    for a in range(3):  # fixed points farther out cannot be within min_dist of a candidate
        lo[a] = xyz[:, a].min() - min_dist
        hi[a] = xyz[:, a].max() + min_dist
    dims = np.empty(3, dtype=np.int64)
    for a in range(3):
        dims[a] = int((hi[a] - lo[a]) / min_dist) + 1
    head = np.full(dims[0] * dims[1] * dims[2], -1, dtype=np.int64)
    nxt = np.full(n + m, -1, dtype=np.int64)
    pts = np.empty((n + m, 3))
    d2 = min_dist * min_dist
    count = 0

    def cell(x, a):
        c = int(np.floor((x - lo[a]) / min_dist))
        return c

    for q in range(n + m):
        src = fixed[q] if q < m else xyz[q - m]
        cx, cy, cz = cell(src[0], 0), cell(src[1], 1), cell(src[2], 2)
        clash = False
        for ix in range(cx - 1, cx + 2):
            if ix < 0 or ix >= dims[0] or clash:
                continue
            for iy in range(cy - 1, cy + 2):
                if iy < 0 or iy >= dims[1] or clash:
                    continue
                for iz in range(cz - 1, cz + 2):
                    if iz < 0 or iz >= dims[2]:
                        continue
                    h = head[(ix * dims[1] + iy) * dims[2] + iz]
                    while h >= 0:
                        dx = pts[h, 0] - src[0]
                        dy = pts[h, 1] - src[1]
                        dz = pts[h, 2] - src[2]
                        if dx * dx + dy * dy + dz * dz < d2:
                            clash = True
                            break
                        h = nxt[h]
                    if clash:
                        break
        if q >= m:
            if clash:
                continue
            acc[q - m] = True
        inside = 0 <= cx < dims[0] and 0 <= cy < dims[1] and 0 <= cz < dims[2]
        if inside:
            pts[count] = src
            c = (cx * dims[1] + cy) * dims[2] + cz
            nxt[count] = head[c]
            head[c] = count
            count += 1
    return acc



def blob_volumes(diff: DensityMap, level: float, xyz: np.ndarray) -> np.ndarray:
    """Volume (Å³) of the connected region of ``diff >= level`` (6-connected) holding each position.

    Zero for a position whose voxel is below ``level``.
    """
    lab, _n = ndimage.label(diff.data >= level)
    sizes = np.bincount(lab.ravel()).astype(float) * float(np.prod(diff.voxel_size))
    sizes[0] = 0.0
    g = np.clip(np.round(diff.grid_coordinates(xyz)).astype(np.int64), 0, np.array(diff.shape) - 1)
    return sizes[lab[g[:, 0], g[:, 1], g[:, 2]]]
