"""Q-score per atom (Pintilie et al. 2020, Nat. Methods 17:328), as MapQ computes it.

Definition (MapQ, github.com/gregdp/mapq, ``qscores.py``: ``MinMaxD``, ``Qscore``/``QscorePt2``,
``SpherePts``; read to learn the algorithm, not copied):

* Reference Gaussian ``g(r) = A exp(-r^2 / 2 sigma^2) + B`` with, over the *whole* map,
  ``maxD = min(mean + 10 SD, max)``, ``minD = max(mean - 1 SD, min)``, ``A = maxD - minD``,
  ``B = minD``; ``sigma`` = 0.6 Å (MapQ's default; 0.4 Å is the EMDB convention).
* Samples: the map value at the atom centre counted ``n_points`` times (reference value
  ``A + B``), then shells r = 0.1, 0.2, ..., 2.0 Å. On each shell MapQ places ``N`` points on a
  Saff-Kuijlaars spiral around the atom (``SpherePts``) and keeps those with no other atom
  closer than ``0.9 r`` (the 0.9 keeps the atom itself out of the test and tolerates near-ties,
  i.e. "this atom is the nearest"). It starts with ``N = n_points`` and, while fewer than
  ``n_points`` points survive, tries again with ``N + 2`` points, up to 50 tries; all survivors
  of the first successful try are used. A shell where 50 tries never give ``n_points`` points
  contributes nothing. The spiral is deterministic, so there is no random resampling: our
  points are MapQ's points.
* Q = correlation about the mean (Pearson) between all sampled map values and the matching
  reference values (Chimera's ``FitMap.overlap_and_correlation``, third value). When either set
  has no spread (e.g. only the centre samples remain) Q is 0, as Chimera returns.
* Map values are trilinear interpolations; sample points that fall outside the map box count
  as 0, like Chimera's ``interpolated_values``.

Our treatment of bad input: an atom whose centre lies outside the map box gets Q = NaN (MapQ
would score it against zeros); hydrogens are not skipped here, the caller passes non-hydrogen
atoms only (MapQ scores and uses as neighbours only non-H atoms). Atoms are the neighbours of
one another, so pass the whole model's non-H atoms (ligands and waters included, as MapQ does)
and use ``which`` to score a subset.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .interpolate import trilinear_point
from .mapio import DensityMap

#: MapQ's retry budget per shell.
N_TRIES = 50
#: A shell point is dropped when another atom is closer than this fraction of the shell radius.
EXCLUSION_FACTOR = 0.9

# Expected Q at resolution d (Å): slope, intercept. From MapQ's SaveQStats (sigma 0.6) and the
# sigma 0.4 lines MapQ gives for protein and nucleic acid.
_EXPECTED = {
    0.6: {"protein": (-0.1775, 1.1192), "nucleic": (-0.1377, 0.9973),
          "water": (-0.0895, 1.0001), "ion": (-0.1103, 1.0795)},
    0.4: {"protein": (-0.1866, 1.1242), "nucleic": (-0.1465, 0.9436),
          # MapQ has no sigma 0.4 lines for water and ions; its SaveQStats keeps the sigma 0.6
          # ones in that case, and so do we.
          "water": (-0.0895, 1.0001), "ion": (-0.1103, 1.0795)},
}


def expected_q(resolution: float, kind: str = "protein", sigma: float = 0.6) -> float:
    """Q-score expected at a map resolution, from MapQ's linear fits to EMDB entries.

    Parameters
    ----------
    resolution : float
        Map resolution, Å (> 0).
    kind : {"protein", "nucleic", "water", "ion"}
        Molecule type.
    sigma : {0.6, 0.4}
        Width of the reference Gaussian, Å. σ 0.6: protein −0.1775·d + 1.1192, nucleic
        −0.1377·d + 0.9973, water −0.0895·d + 1.0001, ion −0.1103·d + 1.0795. σ 0.4: protein
        −0.1866·d + 1.1242, nucleic −0.1465·d + 0.9436; water and ion use the σ 0.6 lines
        (MapQ publishes none for σ 0.4).
    """
    if not (resolution and resolution > 0):
        raise ValueError(f"resolution must be positive, got {resolution!r}")
    key = min(_EXPECTED, key=lambda s: abs(s - sigma))
    if abs(key - sigma) > 1e-6:
        raise ValueError(f"expected-Q lines exist for sigma 0.6 and 0.4 Å only, got {sigma}")
    lines = _EXPECTED[key]
    if kind not in lines:
        raise ValueError(f"kind must be one of {sorted(lines)}, got {kind!r}")
    slope, icept = lines[kind]
    return float(slope * resolution + icept)


def reference_gaussian(dmap: DensityMap) -> tuple[float, float]:
    """MapQ's reference-Gaussian height ``A`` and offset ``B`` from whole-map statistics."""
    st = dmap.statistics()
    max_d = min(st["mean"] + 10.0 * st["sd"], st["max"])
    min_d = max(st["mean"] - st["sd"], st["min"])
    return max_d - min_d, min_d


def spiral_directions(n: int) -> np.ndarray:
    """``n`` unit vectors on MapQ's Saff-Kuijlaars spiral (``SpherePts``), shape (n, 3)."""
    if n < 2:
        raise ValueError("the spiral needs at least 2 points")
    k = np.arange(n)
    h = -1.0 + 2.0 * k / (n - 1)
    phi = np.arccos(h)
    theta = np.zeros(n)
    for i in range(1, n - 1):  # poles keep theta 0
        theta[i] = (theta[i - 1] + 3.6 / math.sqrt(n * (1.0 - h[i] ** 2))) % (2.0 * math.pi)
    return np.column_stack([np.sin(phi) * np.cos(theta), np.sin(phi) * np.sin(theta), np.cos(phi)])


def _spiral_table(n_points: int, n_tries: int) -> tuple[np.ndarray, np.ndarray]:
    """All try spirals concatenated: directions (M, 3) and offsets (n_tries + 1,)."""
    dirs, offs = [], [0]
    for t in range(n_tries):
        d = spiral_directions(n_points + 2 * t)
        dirs.append(d)
        offs.append(offs[-1] + len(d))
    return np.ascontiguousarray(np.vstack(dirs)), np.array(offs, dtype=np.int64)


@njit(cache=True)
def _cell_list(xyz, lo, size, dims):
    """Atoms sorted by cell (counting sort): order (N,) and start offsets (ncells + 1,)."""
    n = xyz.shape[0]
    ncell = dims[0] * dims[1] * dims[2]
    cid = np.empty(n, dtype=np.int64)
    counts = np.zeros(ncell + 1, dtype=np.int64)
    for i in range(n):
        c = 0
        for a in range(3):
            k = int((xyz[i, a] - lo[a]) / size)
            k = min(max(k, 0), dims[a] - 1)
            c = c * dims[a] + k
        cid[i] = c
        counts[c + 1] += 1
    for c in range(ncell):
        counts[c + 1] += counts[c]
    fill = counts[:-1].copy()
    order = np.empty(n, dtype=np.int64)
    for i in range(n):
        order[fill[cid[i]]] = i
        fill[cid[i]] += 1
    return order, counts


@njit(cache=True)
def _q_one(a, xyz, gatom, data, order, starts, lo, size, dims, reach,
           dirs, dirs_grid, offs, n_points, n_shells, r_step, excl, amp, base, sigma,
           nb, nbd2, accept):
    """Q-score of atom ``a``; scratch arrays nb (cap, 3), nbd2 (cap,), accept (M,)."""
    gx, gy, gz = gatom[a, 0], gatom[a, 1], gatom[a, 2]
    d0 = trilinear_point(data, gx, gy, gz, np.nan)
    if not np.isfinite(d0):
        return np.nan, nb, nbd2
    # neighbours within reach (relative vectors), from the 27 surrounding cells
    px, py, pz = xyz[a, 0], xyz[a, 1], xyz[a, 2]
    ci = min(max(int((px - lo[0]) / size), 0), dims[0] - 1)
    cj = min(max(int((py - lo[1]) / size), 0), dims[1] - 1)
    ck = min(max(int((pz - lo[2]) / size), 0), dims[2] - 1)
    reach2 = reach * reach
    nn = 0
    for i in range(max(ci - 1, 0), min(ci + 2, dims[0])):
        for j in range(max(cj - 1, 0), min(cj + 2, dims[1])):
            for k in range(max(ck - 1, 0), min(ck + 2, dims[2])):
                c = (i * dims[1] + j) * dims[2] + k
                for s in range(starts[c], starts[c + 1]):
                    b = order[s]
                    if b == a:
                        continue
                    dx = xyz[b, 0] - px
                    dy = xyz[b, 1] - py
                    dz = xyz[b, 2] - pz
                    d2 = dx * dx + dy * dy + dz * dz
                    if d2 < reach2:
                        if nn == nb.shape[0]:  # grow scratch
                            nb2 = np.empty((2 * nn, 3))
                            nb2[:nn] = nb
                            nb = nb2
                            nbd22 = np.empty(2 * nn)
                            nbd22[:nn] = nbd2
                            nbd2 = nbd22
                        nb[nn, 0] = dx
                        nb[nn, 1] = dy
                        nb[nn, 2] = dz
                        nbd2[nn] = d2
                        nn += 1
    # running sums for the Pearson correlation
    g0 = amp + base
    sw = float(n_points)
    sd = sw * d0
    sg = sw * g0
    sdd = sw * d0 * d0
    sgg = sw * g0 * g0
    sdg = sw * d0 * g0
    n_tries = offs.shape[0] - 1
    for shell in range(1, n_shells + 1):
        r = shell * r_step
        out2 = (excl * r) * (excl * r)
        # only atoms closer than r + excl*r can veto a point of this shell
        lim = (r + excl * r) * (r + excl * r)
        m = 0
        for q in range(nn):
            if nbd2[q] < lim:
                if q != m:
                    # move relevant neighbours to the front (kept for larger shells too)
                    t0, t1, t2, t3 = nb[m, 0], nb[m, 1], nb[m, 2], nbd2[m]
                    nb[m, 0], nb[m, 1], nb[m, 2], nbd2[m] = nb[q, 0], nb[q, 1], nb[q, 2], nbd2[q]
                    nb[q, 0], nb[q, 1], nb[q, 2], nbd2[q] = t0, t1, t2, t3
                m += 1
        gv = amp * math.exp(-0.5 * (r / sigma) ** 2) + base
        for t in range(n_tries):
            na = 0
            for p in range(offs[t], offs[t + 1]):
                x = r * dirs[p, 0]
                y = r * dirs[p, 1]
                z = r * dirs[p, 2]
                ok = True
                for q in range(m):
                    ex = x - nb[q, 0]
                    ey = y - nb[q, 1]
                    ez = z - nb[q, 2]
                    if ex * ex + ey * ey + ez * ez < out2:
                        ok = False
                        break
                if ok:
                    accept[na] = p
                    na += 1
            if na >= n_points:
                for u in range(na):
                    p = accept[u]
                    v = trilinear_point(data, gx + r * dirs_grid[p, 0], gy + r * dirs_grid[p, 1],
                                        gz + r * dirs_grid[p, 2], 0.0)
                    sd += v
                    sdd += v * v
                    sdg += v * gv
                sw += na
                sg += na * gv
                sgg += na * gv * gv
                break
    cov = sdg - sd * sg / sw
    vd = sdd - sd * sd / sw
    vg = sgg - sg * sg / sw
    # relative tolerances: sums of identical values leave rounding residue
    if vg <= 1e-12 * sgg or vd <= 1e-12 * sdd or vd <= 0.0 or vg <= 0.0:
        return 0.0, nb, nbd2
    return cov / math.sqrt(vd * vg), nb, nbd2


@njit(cache=True, parallel=True)
def _q_kernel(xyz, gatom, which, data, order, starts, lo, size, dims, reach,
              dirs, dirs_grid, offs, n_points, n_shells, r_step, excl, amp, base, sigma):
    nw = which.shape[0]
    out = np.empty(nw, dtype=np.float64)
    n_chunks = min(nw, 256)
    for c in prange(n_chunks):
        # scratch per chunk so threads never share it
        nb = np.empty((64, 3))
        nbd2 = np.empty(64)
        accept = np.empty(dirs.shape[0], dtype=np.int64)
        start = (nw * c) // n_chunks
        stop = (nw * (c + 1)) // n_chunks
        for w in range(start, stop):
            q, nb, nbd2 = _q_one(which[w], xyz, gatom, data, order, starts, lo, size,
                                 dims, reach, dirs, dirs_grid, offs, n_points, n_shells, r_step,
                                 excl, amp, base, sigma, nb, nbd2, accept)
            out[w] = q
    return out


def atom_q_scores(dmap: DensityMap, xyz: np.ndarray, *, sigma: float = 0.6, n_points: int = 8,
                  r_max: float = 2.0, r_step: float = 0.1, which: np.ndarray | None = None,
                  ref: tuple[float, float] | None = None) -> np.ndarray:
    """Q-score of each atom, as MapQ computes it (see the module docstring for the definition).

    Parameters
    ----------
    dmap : DensityMap
        Experimental map (the whole map or box MapQ would see: ``A`` and ``B`` come from its
        statistics).
    xyz : array_like, shape (N, 3)
        Positions, Å, of the model's non-hydrogen atoms, in the model frame. They are each
        other's neighbours for the nearest-atom test. Skip hydrogens before calling.
    sigma : float
        Width of the reference Gaussian, Å (0.6 MapQ default; 0.4 EMDB convention).
    n_points : int
        Points wanted per shell (MapQ: 8); at least 2.
    r_max, r_step : float
        Shells r = r_step, 2 r_step, ..., r_max Å (plus the centre).
    which : array_like of int, optional
        Indices of the atoms to score (default: all). Neighbours are always all of ``xyz``.
    ref : (A, B), optional
        Reference-Gaussian height and offset; default from ``dmap`` (:func:`reference_gaussian`).

    Returns
    -------
    numpy.ndarray
        Q per scored atom (float64, in [-1, 1]); NaN for atoms whose centre lies outside the map.
    """
    xyz = np.ascontiguousarray(np.asarray(xyz, dtype=np.float64).reshape(-1, 3))
    n = len(xyz)
    which = np.arange(n, dtype=np.int64) if which is None else np.asarray(which, dtype=np.int64).ravel()
    if len(which) == 0 or n == 0:
        return np.zeros(0)
    if which.min() < 0 or which.max() >= n:
        raise IndexError("which holds indices outside the atom list")
    if n_points < 2:
        raise ValueError("n_points must be at least 2")
    if not (sigma > 0 and r_step > 0 and r_max >= r_step):
        raise ValueError("sigma, r_step must be positive and r_max >= r_step")
    n_shells = int(round(r_max / r_step))
    amp, base = reference_gaussian(dmap) if ref is None else ref
    dirs, offs = _spiral_table(int(n_points), N_TRIES)
    inv = np.linalg.inv(dmap.orth_matrix)
    dirs_grid = np.ascontiguousarray(dirs @ inv.T)  # unit steps in voxel units
    gatom = np.ascontiguousarray(dmap.grid_coordinates(xyz))
    reach = (1.0 + EXCLUSION_FACTOR) * n_shells * r_step
    finite = np.all(np.isfinite(xyz), axis=1)
    if not finite.all():
        raise ValueError("atom positions hold NaN or infinite values")
    lo = xyz.min(axis=0) - 1e-6
    span = xyz.max(axis=0) - lo
    size = max(reach, 1e-3)
    dims = np.maximum(np.ceil(span / size).astype(np.int64), 1)
    # keep the cell grid bounded for pathological spreads (memory ~ 8 bytes per cell)
    while np.prod(dims) > 8 * n + 1_000_000:
        size *= 2.0
        dims = np.maximum(np.ceil(span / size).astype(np.int64), 1)
    order, starts = _cell_list(xyz, lo, size, dims)
    return _q_kernel(xyz, gatom, which, dmap.data, order, starts, lo, float(size), dims,
                     float(reach), dirs, dirs_grid, offs, int(n_points), n_shells, float(r_step),
                     EXCLUSION_FACTOR, float(amp), float(base), float(sigma))
