"""Nonbonded repulsion: neighbour list (cell list, numba) and its energy/gradient and clash kernels.

Pairs considered: every atom pair closer than ``cutoff = 2·max(vdW radius) + buffer`` that is
not bonded (1-2), not 1-3 related, not an explicit connection of the model (LINK/struct_conn,
e.g. metal coordination) or 1-3 through one, not inside one dictionary-less residue, and not
two different alternative conformers (non-blank altlocs that differ).

Repulsion (one-sided harmonic, as the "VDW repulsion" of Refmac/phenix but in squared form)::

    E = Σ_pairs  ((d0 - d) / σ_nb)²   for d < d0, else 0,      σ_nb = 0.2 Å

with ``d0`` the sum of the library's vdW radii (``ener_lib`` ``_lib_atom.vdw_radius`` of each
atom's energy type), except: 1-4 pairs ``0.8·d0`` (cctbx's ``vdw_1_4_factor``); H-bond
donor–acceptor heavy-atom pairs 2.6 Å; polar hydrogen–acceptor 1.75 Å; pairs with a metal
ion 1.9 Å. These values are deliberately below the observed contact distances so that a
well-refined deposited model carries almost no repulsion energy.

The list is rebuilt only when an atom moved more than ``buffer/2`` since the last build
(then no pair can have entered the cutoff unseen). :class:`NonbondedList` lives in
``Restraints.nonbonded``; :func:`rerefine.refine.geometry.restraint_energy_gradient` calls
``update(xyz)`` itself, so callers only need to pass coordinates.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

SIGMA_NB = 0.2
FACTOR_14 = 0.8
D0_HBOND = 2.6
D0_HBOND_H = 1.75
D0_METAL = 1.9

# Probe (MolProbity) van der Waals radii, Å (Word et al. 1999, J Mol Biol 285:1735; the
# "explicit hydrogen" set of probe/reduce): used only to count clashes.
PROBE_RADIUS = {"C": 1.70, "N": 1.55, "O": 1.40, "S": 1.80, "P": 1.80, "SE": 1.90, "H": 1.17,
                "F": 1.30, "CL": 1.77, "BR": 1.97, "I": 2.20}
PROBE_POLAR_H = 1.00
PROBE_METAL = 0.9  # metals: probe uses small (ionic) radii
CLASH_OVERLAP = 0.4


def exclusion_keys(n: int, bond_idx: np.ndarray, extra_pairs: np.ndarray,
                   groups: list) -> tuple[np.ndarray, np.ndarray]:
    """Sorted int64 keys ``i*n + j`` (i < j) of excluded (1-2, 1-3) and of 1-4 pairs.

    ``extra_pairs`` (explicit connections) count as bonds; every pair inside one of
    ``groups`` (atoms of dictionary-less residues) is excluded.
    """
    adj: list[set] = [set() for _ in range(n)]
    for i, j in np.asarray(bond_idx).tolist():
        adj[i].add(j)
        adj[j].add(i)
    for i, j in np.asarray(extra_pairs).tolist():
        if i != j:
            adj[i].add(j)
            adj[j].add(i)
    excl = set()
    p14 = set()
    for i in range(n):
        ai = adj[i]
        if not ai:
            continue
        for j in ai:
            if j > i:
                excl.add(i * n + j)
            for k in adj[j]:
                if k > i:
                    excl.add(i * n + k)
                for m in adj[k]:
                    if m > i:
                        p14.add(i * n + m)
    for g in groups:
        g = sorted(g)
        for a in range(len(g)):
            for b in range(a + 1, len(g)):
                excl.add(g[a] * n + g[b])
    p14 -= excl
    return (np.array(sorted(excl), dtype=np.int64), np.array(sorted(p14), dtype=np.int64))


@njit(cache=True)
def _in_sorted(keys, key):
    lo = 0
    hi = keys.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if keys[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo < keys.shape[0] and keys[lo] == key


@njit(cache=True)
def _cell_setup(xyz, cell):
    n = xyz.shape[0]
    lo = np.empty(3)
    hi = np.empty(3)
    for d in range(3):
        lo[d] = xyz[:, d].min()
        hi[d] = xyz[:, d].max()
    dims = np.empty(3, dtype=np.int64)
    for d in range(3):
        dims[d] = int((hi[d] - lo[d]) / cell) + 1
    cid = np.empty(n, dtype=np.int64)
    for i in range(n):
        cx = int((xyz[i, 0] - lo[0]) / cell)
        cy = int((xyz[i, 1] - lo[1]) / cell)
        cz = int((xyz[i, 2] - lo[2]) / cell)
        cid[i] = (cx * dims[1] + cy) * dims[2] + cz
    order = np.argsort(cid)
    ncell = dims[0] * dims[1] * dims[2]
    start = np.zeros(ncell + 1, dtype=np.int64)
    for i in range(n):
        start[cid[i] + 1] += 1
    for c in range(ncell):
        start[c + 1] += start[c]
    return lo, dims, order, start


@njit(parallel=True, cache=True)
def _pair_pass(xyz, cutoff, cell, lo, dims, order, start, excl, altloc, fill, offs, out_j):
    """Count (fill=False) or write (fill=True) the partners j > i of every atom i within cutoff."""
    n = xyz.shape[0]
    c2 = cutoff * cutoff
    counts = np.zeros(n, dtype=np.int64)
    for i in prange(n):
        cx = int((xyz[i, 0] - lo[0]) / cell)
        cy = int((xyz[i, 1] - lo[1]) / cell)
        cz = int((xyz[i, 2] - lo[2]) / cell)
        cnt = 0
        pos = offs[i] if fill else 0
        for dx in range(-1, 2):
            x = cx + dx
            if x < 0 or x >= dims[0]:
                continue
            for dy in range(-1, 2):
                y = cy + dy
                if y < 0 or y >= dims[1]:
                    continue
                for dz in range(-1, 2):
                    z = cz + dz
                    if z < 0 or z >= dims[2]:
                        continue
                    c = (x * dims[1] + y) * dims[2] + z
                    for t in range(start[c], start[c + 1]):
                        j = order[t]
                        if j <= i:
                            continue
                        if altloc[i] != 0 and altloc[j] != 0 and altloc[i] != altloc[j]:
                            continue
                        ddx = xyz[j, 0] - xyz[i, 0]
                        ddy = xyz[j, 1] - xyz[i, 1]
                        ddz = xyz[j, 2] - xyz[i, 2]
                        if ddx * ddx + ddy * ddy + ddz * ddz >= c2:
                            continue
                        if _in_sorted(excl, i * n + j):
                            continue
                        if fill:
                            out_j[pos] = j
                            pos += 1
                        cnt += 1
        counts[i] = cnt
    return counts


@njit(parallel=True, cache=True)
def _pair_params(pi, pj, n, p14, vdw, hb, d0):
    for k in prange(pi.shape[0]):
        i = pi[k]
        j = pj[k]
        hi = hb[i]
        hj = hb[j]
        if hi == 5 or hj == 5:
            v = D0_METAL
        elif (hi == 4 and (hj == 2 or hj == 3)) or (hj == 4 and (hi == 2 or hi == 3)):
            v = D0_HBOND_H
        elif ((hi == 1 or hi == 3) and (hj == 2 or hj == 3)) or ((hj == 1 or hj == 3) and (hi == 2 or hi == 3)):
            v = D0_HBOND
        else:
            v = vdw[i] + vdw[j]
        if _in_sorted(p14, i * n + j):
            v *= FACTOR_14
        d0[k] = v


class NonbondedList:
    """Cell-list neighbour list of the repulsion term (see module docstring).

    Attributes
    ----------
    pi, pj : ndarray int32 (M,)
        Candidate pairs (i < j) within ``cutoff`` at the last build.
    d0 : ndarray (M,)
        Repulsion distance of each pair, Å.
    cutoff : float
        ``2·max(vdW) + buffer``, Å.
    n_builds : int
        How many times the list was (re)built.
    """

    def __init__(self, r, buffer: float = 1.0):
        self._r = r
        self.buffer = float(buffer)
        self.cutoff = 2.0 * float(max(r.vdw_radius.max(), 1.9)) + self.buffer if r.n_atoms else 0.0
        self.pi = np.zeros(0, dtype=np.int32)
        self.pj = np.zeros(0, dtype=np.int32)
        self.d0 = np.zeros(0)
        self.is14 = np.zeros(0, dtype=bool)
        self._ref = None
        self.n_builds = 0

    @property
    def n_pairs(self) -> int:
        return int(self.pi.shape[0])

    def update(self, xyz: np.ndarray) -> bool:
        """Rebuild the list if an atom moved more than ``buffer/2`` since the last build; True if rebuilt."""
        xyz = np.ascontiguousarray(xyz, dtype=np.float64)
        if self._ref is not None and self._ref.shape == xyz.shape:
            if _max_disp2(xyz, self._ref) <= (0.5 * self.buffer) ** 2:
                return False
        self.build(xyz)
        return True

    def build(self, xyz: np.ndarray) -> None:
        """Build the pair list from scratch at coordinates ``xyz`` (N, 3)."""
        r = self._r
        xyz = np.ascontiguousarray(xyz, dtype=np.float64)
        n = xyz.shape[0]
        if n < 2:
            self._ref = xyz.copy()
            return
        cell = self.cutoff
        # keep the cell grid no bigger than a few cells per atom for sparse, huge models
        while True:
            ext = xyz.max(axis=0) - xyz.min(axis=0)
            ncell = np.prod(np.floor(ext / cell) + 1)
            if ncell <= 8 * n + 1000:
                break
            cell *= 1.5
        lo, dims, order, start = _cell_setup(xyz, cell)
        dummy = np.zeros(1, dtype=np.int32)
        offs0 = np.zeros(n, dtype=np.int64)
        counts = _pair_pass(xyz, self.cutoff, cell, lo, dims, order, start, r.exclusions, r.altloc,
                            False, offs0, dummy)
        offs = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=offs[1:])
        pj = np.empty(offs[-1], dtype=np.int32)
        _pair_pass(xyz, self.cutoff, cell, lo, dims, order, start, r.exclusions, r.altloc, True, offs[:-1], pj)
        pi = np.repeat(np.arange(n, dtype=np.int32), counts)
        d0 = np.empty(pi.shape[0])
        _pair_params(pi, pj, n, r.pairs14, r.vdw_radius, r.hb_type, d0)
        self.pi, self.pj, self.d0 = pi, pj, d0
        self._ref = xyz.copy()
        self.n_builds += 1


@njit(cache=True)
def _max_disp2(a, b):
    m = 0.0
    for i in range(a.shape[0]):
        d = (a[i, 0] - b[i, 0]) ** 2 + (a[i, 1] - b[i, 1]) ** 2 + (a[i, 2] - b[i, 2]) ** 2
        if d > m:
            m = d
    return m


@njit(parallel=True, cache=True)
def nonbonded_kernel(xyz, pi, pj, d0, sigma, weight, gbuf):
    """Add the repulsion gradient into ``gbuf`` (chunks, N, 3); return the energy."""
    nchunk = gbuf.shape[0]
    m = pi.shape[0]
    e = np.zeros(nchunk)
    inv = 1.0 / (sigma * sigma)
    for c in prange(nchunk):
        g = gbuf[c]
        acc = 0.0
        for k in range(c * m // nchunk, (c + 1) * m // nchunk):
            i = pi[k]
            j = pj[k]
            dx = xyz[i, 0] - xyz[j, 0]
            dy = xyz[i, 1] - xyz[j, 1]
            dz = xyz[i, 2] - xyz[j, 2]
            dd = dx * dx + dy * dy + dz * dz
            t = d0[k]
            if dd >= t * t:
                continue
            d = np.sqrt(dd)
            u = t - d
            acc += weight * u * u * inv
            if d > 1e-12:
                f = -2.0 * weight * u * inv / d
                g[i, 0] += f * dx
                g[i, 1] += f * dy
                g[i, 2] += f * dz
                g[j, 0] -= f * dx
                g[j, 1] -= f * dy
                g[j, 2] -= f * dz
        e[c] = acc
    return e.sum()


def probe_radii(r) -> np.ndarray:
    """Per-atom Probe radius (Å) for clash counting: element radius, polar H 1.0, metal ions 0.9."""
    out = np.array([PROBE_RADIUS.get(e, 1.8) for e in r.element], dtype=np.float64)
    out[r.hb_type == 4] = PROBE_POLAR_H
    out[r.hb_type == 5] = PROBE_METAL
    return out


@njit(cache=True)
def count_overlaps(xyz, pi, pj, rad, hb, p14, n, overlap):
    """Pairs (not 1-4, not H-bond donor/acceptor pairs) with ``d < rad_i + rad_j - overlap``."""
    cnt = 0
    for k in range(pi.shape[0]):
        i = pi[k]
        j = pj[k]
        hi = hb[i]
        hj = hb[j]
        if (hi == 4 and (hj == 2 or hj == 3)) or (hj == 4 and (hi == 2 or hi == 3)):
            continue
        if ((hi == 1 or hi == 3) and (hj == 2 or hj == 3)) or ((hj == 1 or hj == 3) and (hi == 2 or hi == 3)):
            continue
        if hi == 5 or hj == 5:
            continue
        lim = rad[i] + rad[j] - overlap
        dx = xyz[i, 0] - xyz[j, 0]
        dy = xyz[i, 1] - xyz[j, 1]
        dz = xyz[i, 2] - xyz[j, 2]
        if dx * dx + dy * dy + dz * dz < lim * lim:
            if _in_sorted(p14, i * n + j):
                continue
            cnt += 1
    return cnt
