"""Nonbonded repulsion: neighbour list (cell list, numba) and its energy/gradient and clash kernels.

Pairs considered: every atom pair closer than ``cutoff = 2·max(vdW radius) + buffer`` that is
not bonded (1-2), not 1-3 related, not an explicit connection of the model (LINK/struct_conn,
e.g. metal coordination) or 1-3 through one, not inside one dictionary-less residue, and not
two different alternative conformers (non-blank altlocs that differ). Bond-path distances
(1-2 … 1-5) come from a breadth-first search over the bond graph, stored per atom (CSR) in
``Restraints.partner_ptr/partner_idx/partner_code``.

Repulsion (one-sided harmonic, as the "VDW repulsion" of Refmac/phenix but in squared form)::

    E = Σ_pairs  ((d0 - d) / σ_nb)²   for d < d0, else 0,      σ_nb = 0.2 Å

with ``d0`` the sum of the library's vdW radii (``ener_lib`` ``_lib_atom.vdw_radius`` of each
atom's energy type; hydrogens 1.1 Å), except: H-bond donor–acceptor heavy-atom pairs ``d0 - 0.6`` Å (cctbx's
``const_shrink_donor_acceptor``); polar hydrogen–acceptor 1.75 Å; pairs with a metal ion
1.9 Å; then 1-4 pairs ``×0.8`` (cctbx's ``vdw_1_4_factor``) and 1-5 pairs ``×0.85`` (our
choice: peptide O(i)···C(i+1), C(i-1)···N(i+1) and O···Cγ are 1-5 pairs that sit at 2.8-3.1 Å in
well-refined models, below the plain vdW sum).

The list is rebuilt only when an atom moved more than ``buffer/2`` since the last build
(then no pair can have entered the cutoff unseen). :class:`NonbondedList` lives in
``Restraints.nonbonded``; :func:`rerefine.refine.geometry.restraint_energy_gradient` calls
``update(xyz)`` itself, so callers only need to pass coordinates.

:class:`ClashGuard` adds, during refinement, a stiffer repulsion below the MolProbity clash
distance (Probe radii, :func:`count_overlaps`), on the same pair list.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .threads import use_parallel

SIGMA_NB = 0.2
FACTOR_14 = 0.8
SHRINK_DONOR_ACCEPTOR = 0.6
FACTOR_15 = 0.85
D0_HBOND_H = 1.75
D0_METAL = 1.9

# Probe (MolProbity) van der Waals radii, Å (Word et al. 1999, J Mol Biol 285:1735; the
# "explicit hydrogen" set of probe/reduce): used only to count clashes.
PROBE_RADIUS = {"C": 1.70, "N": 1.55, "O": 1.40, "S": 1.80, "P": 1.80, "SE": 1.90, "H": 1.17,
                "F": 1.30, "CL": 1.77, "BR": 1.97, "I": 2.20}
PROBE_POLAR_H = 1.00
PROBE_METAL = 0.9  # metals: probe uses small (ionic) radii
CLASH_OVERLAP = 0.4
#: Pairs per atom the serial pair search's buffers first hold: 4x a protein's with riding hydrogens
#: (5ME2: 15.9 per atom within the cutoff, 7.3 without hydrogens); a denser model grows them and
#: searches again.
PAIR_BUFFER_PER_ATOM = 64


def topology_partners(n: int, bond_idx: np.ndarray, extra_pairs: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-atom lists of atoms 1-2 … 1-5 bonds away (CSR: ``ptr``, ``idx``, ``code``).

    Only partners ``j > i`` are stored, sorted by ``j``; ``code`` is the bond-path length + 1
    (2 = bonded, 3 = 1-3, 4 = 1-4, 5 = 1-5), the shortest path wins. ``extra_pairs``
    (explicit connections such as metal coordination) count as bonds.
    """
    pairs = np.concatenate([np.asarray(bond_idx, dtype=np.int64).reshape(-1, 2),
                            np.asarray(extra_pairs, dtype=np.int64).reshape(-1, 2)])
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    both = np.concatenate([pairs, pairs[:, ::-1]])
    adj_ptr = np.zeros(n + 1, dtype=np.int64)
    np.add.at(adj_ptr, both[:, 0] + 1, 1)
    adj_ptr = np.cumsum(adj_ptr)
    adj = both[np.argsort(both[:, 0], kind="stable"), 1].astype(np.int64)
    dummy_i = np.zeros(1, dtype=np.int64)
    dummy_c = np.zeros(1, dtype=np.uint8)
    counts = _partners_pass(n, adj_ptr, adj, False, np.zeros(n + 1, dtype=np.int64), dummy_i, dummy_c)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=ptr[1:])
    idx = np.empty(ptr[-1], dtype=np.int64)
    code = np.empty(ptr[-1], dtype=np.uint8)
    _partners_pass(n, adj_ptr, adj, True, ptr, idx, code)
    return ptr, idx, code


@njit(cache=True)
def _partners_pass(n, adj_ptr, adj, fill, ptr, out_idx, out_code):
    """Breadth-first search to depth 4 from every atom (count, or fill, the partners j > i)."""
    stamp = np.full(n, -1, dtype=np.int64)
    dist = np.zeros(n, dtype=np.uint8)
    counts = np.zeros(n, dtype=np.int64)
    front = np.empty(n, dtype=np.int64)
    found = np.empty(n, dtype=np.int64)
    for i in range(n):
        if adj_ptr[i + 1] == adj_ptr[i]:
            continue
        stamp[i] = i
        front[0] = i
        f_lo = 0
        f_hi = 1
        nfound = 0
        for depth in range(1, 5):
            new_hi = f_hi
            for t in range(f_lo, f_hi):
                a = front[t]
                for u in range(adj_ptr[a], adj_ptr[a + 1]):
                    b = adj[u]
                    if stamp[b] != i:
                        stamp[b] = i
                        dist[b] = depth
                        front[new_hi] = b
                        new_hi += 1
                        if b > i:
                            found[nfound] = b
                            nfound += 1
            f_lo = f_hi
            f_hi = new_hi
        counts[i] = nfound
        if fill:
            part = np.sort(found[:nfound])
            base = ptr[i]
            for t in range(nfound):
                out_idx[base + t] = part[t]
                out_code[base + t] = dist[part[t]] + 1
    return counts


@njit(cache=True)
def _partner_code(ptr, idx, code, i, j):
    """Bond-path code of pair (i < j): 2..5, or 0 when further apart."""
    for t in range(ptr[i], ptr[i + 1]):
        p = idx[t]
        if p == j:
            return code[t]
        if p > j:
            return 0
    return 0


@njit(cache=True)
def _d0(i, j, kind, vdw, hb):
    hi = hb[i]
    hj = hb[j]
    if hi == 5 or hj == 5:
        v = D0_METAL
    elif (hi == 4 and (hj == 2 or hj == 3)) or (hj == 4 and (hi == 2 or hi == 3)):
        v = D0_HBOND_H
    elif ((hi == 1 or hi == 3) and (hj == 2 or hj == 3)) or ((hj == 1 or hj == 3) and (hi == 2 or hi == 3)):
        v = vdw[i] + vdw[j] - SHRINK_DONOR_ACCEPTOR
    else:
        v = vdw[i] + vdw[j]
    if kind == 4:
        v *= FACTOR_14
    elif kind == 5:
        v *= FACTOR_15
    return v


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


@njit(cache=True)
def _pair_atom(i, xyz, c2, cell, lo, dims, order, rank, start, ptr, pidx, pcode, altloc, fixed, residue,
               vdw, hb, fill, offs, out_j, out_kind, out_d0):
    """Close partners of atom ``i`` (half-shell stencil); count them, and write them if ``fill``.

    Each unordered pair is seen once, from the atom whose cell comes first (own cell: the
    atom earlier in cell order), so only 13.5 of the 27 neighbour cells are scanned.
    """
    cx = int((xyz[i, 0] - lo[0]) / cell)
    cy = int((xyz[i, 1] - lo[1]) / cell)
    cz = int((xyz[i, 2] - lo[2]) / cell)
    cnt = 0
    pos = offs[i] if fill else 0
    for dx in range(0, 2):
        x = cx + dx
        if x >= dims[0]:
            continue
        for dy in range(-1, 2):
            if dx == 0 and dy < 0:
                continue
            y = cy + dy
            if y < 0 or y >= dims[1]:
                continue
            for dz in range(-1, 2):
                if dx == 0 and dy == 0 and dz < 0:
                    continue
                z = cz + dz
                if z < 0 or z >= dims[2]:
                    continue
                c = (x * dims[1] + y) * dims[2] + z
                t0 = start[c]
                if dx == 0 and dy == 0 and dz == 0:
                    t0 = rank[i] + 1
                for t in range(t0, start[c + 1]):
                    j = order[t]
                    ddx = xyz[j, 0] - xyz[i, 0]
                    ddy = xyz[j, 1] - xyz[i, 1]
                    ddz = xyz[j, 2] - xyz[i, 2]
                    if ddx * ddx + ddy * ddy + ddz * ddz >= c2:
                        continue
                    if altloc[i] != 0 and altloc[j] != 0 and altloc[i] != altloc[j]:
                        continue
                    # atoms of one dictionary-less residue: bonds unknown, no repulsion
                    if fixed[i] and fixed[j] and residue[i] == residue[j]:
                        continue
                    if i < j:
                        kind = _partner_code(ptr, pidx, pcode, i, j)
                    else:
                        kind = _partner_code(ptr, pidx, pcode, j, i)
                    if kind == 2 or kind == 3:
                        continue
                    if fill:
                        out_j[pos] = j
                        out_kind[pos] = kind
                        out_d0[pos] = _d0(i, j, kind, vdw, hb)
                        pos += 1
                    cnt += 1
    return cnt


# Parallel and serial drivers with distinct names (numba's disk cache is keyed by name and line).
@njit(parallel=True, cache=True)
def _pair_pass(xyz, cutoff, cell, lo, dims, order, start, ptr, pidx, pcode, altloc, fixed, residue,
               vdw, hb, fill, offs, out_j, out_kind, out_d0):
    """Count (fill=False) or write (fill=True) the close partners of every atom, threaded."""
    n = xyz.shape[0]
    rank = np.empty(n, dtype=np.int64)
    for t in range(n):
        rank[order[t]] = t
    counts = np.zeros(n, dtype=np.int64)
    for i in prange(n):
        counts[i] = _pair_atom(i, xyz, cutoff * cutoff, cell, lo, dims, order, rank, start, ptr, pidx, pcode,
                               altloc, fixed, residue, vdw, hb, fill, offs, out_j, out_kind, out_d0)
    return counts


@njit(cache=True)
def _pair_pass_serial(xyz, cutoff, cell, lo, dims, order, start, ptr, pidx, pcode, altloc, fixed, residue,
                      vdw, hb, fill, offs, out_j, out_kind, out_d0):
    """:func:`_pair_pass` on the calling thread (small models)."""
    n = xyz.shape[0]
    rank = np.empty(n, dtype=np.int64)
    for t in range(n):
        rank[order[t]] = t
    counts = np.zeros(n, dtype=np.int64)
    for i in range(n):
        counts[i] = _pair_atom(i, xyz, cutoff * cutoff, cell, lo, dims, order, rank, start, ptr, pidx, pcode,
                               altloc, fixed, residue, vdw, hb, fill, offs, out_j, out_kind, out_d0)
    return counts


@njit(cache=True)
def _pair_pass_once(xyz, cutoff, cell, lo, dims, order, start, ptr, pidx, pcode, altloc, fixed, residue,
                    vdw, hb, out_j, out_kind, out_d0):
    """:func:`_pair_pass_serial` counting and writing in one pass, into buffers of any size.

    Before each atom its partners' bound (the atoms of its 18 stencil cells) is checked against
    the room left; returns the per-atom counts, or an empty array when the buffers are too
    small (nothing valid written then). Same pairs in the same order as the two passes."""
    n = xyz.shape[0]
    rank = np.empty(n, dtype=np.int64)
    for t in range(n):
        rank[order[t]] = t
    counts = np.zeros(n, dtype=np.int64)
    offs = np.zeros(n, dtype=np.int64)
    cap = out_j.shape[0]
    pos = 0
    for i in range(n):
        cx = int((xyz[i, 0] - lo[0]) / cell)
        cy = int((xyz[i, 1] - lo[1]) / cell)
        cz = int((xyz[i, 2] - lo[2]) / cell)
        bound = 0
        for dx in range(0, 2):
            x = cx + dx
            if x >= dims[0]:
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
                    bound += start[c + 1] - start[c]
        if pos + bound > cap:
            return np.zeros(0, dtype=np.int64)
        offs[i] = pos
        counts[i] = _pair_atom(i, xyz, cutoff * cutoff, cell, lo, dims, order, rank, start, ptr, pidx, pcode,
                               altloc, fixed, residue, vdw, hb, True, offs, out_j, out_kind, out_d0)
        pos += counts[i]
    return counts


class NonbondedList:
    """Cell-list neighbour list of the repulsion term (see module docstring).

    Attributes
    ----------
    pi, pj : ndarray int32 (M,)
        Candidate pairs within ``cutoff`` at the last build, each unordered pair once
        (``pi`` ascending; ``pj`` may be smaller than ``pi``).
    kind : ndarray uint8 (M,)
        4 for 1-4 pairs, 5 for 1-5 pairs, 0 otherwise.
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
        self.kind = np.zeros(0, dtype=np.uint8)
        self.d0 = np.zeros(0)
        self._ref = None
        self.n_builds = 0

    @property
    def n_pairs(self) -> int:
        return int(self.pi.shape[0])

    def update(self, xyz: np.ndarray, *, parallel: bool | None = None) -> bool:
        """Rebuild the list if an atom moved more than ``buffer/2`` since the last build; True if rebuilt.

        ``parallel``: as in :meth:`build`."""
        xyz = np.ascontiguousarray(xyz, dtype=np.float64)
        if self._ref is not None and self._ref.shape == xyz.shape:
            if _max_disp2(xyz, self._ref) <= (0.5 * self.buffer) ** 2:
                return False
        self.build(xyz, parallel=parallel)
        return True

    def build(self, xyz: np.ndarray, *, parallel: bool | None = None) -> None:
        """Build the pair list from scratch at coordinates ``xyz`` (N, 3); ``parallel`` forces the
        threaded or serial pair search (default: by size, :func:`rerefine.refine.threads.use_parallel`)."""
        r = self._r
        xyz = np.ascontiguousarray(xyz, dtype=np.float64)
        n = xyz.shape[0]
        if not np.isfinite(xyz).all():
            raise ValueError("nonbonded list: non-finite coordinates")
        self._ref = xyz.copy()
        self.n_builds += 1
        if n < 2:
            return
        cell = self.cutoff
        # keep the cell grid at most a few cells per atom for sparse, huge models
        ext = xyz.max(axis=0) - xyz.min(axis=0)
        while np.prod(np.floor(ext / cell) + 1) > 8 * n + 1000:
            cell *= 1.5
        lo, dims, order, start = _cell_setup(xyz, cell)
        args = (xyz, self.cutoff, cell, lo, dims, order, start, r.partner_ptr, r.partner_idx, r.partner_code,
                r.altloc, r.fixed, r.residue, r.vdw_radius, r.hb_type)
        if use_parallel(n, parallel):
            counts = _pair_pass(*args, False, np.zeros(n, dtype=np.int64), np.zeros(1, dtype=np.int32),
                                np.zeros(1, dtype=np.uint8), np.zeros(1))
            offs = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(counts, out=offs[1:])
            m = int(offs[-1])
            pj = np.empty(m, dtype=np.int32)
            kind = np.empty(m, dtype=np.uint8)
            d0 = np.empty(m)
            _pair_pass(*args, True, offs[:-1], pj, kind, d0)
        else:
            # one pass into buffers sized from the last build (the threaded search needs its counts
            # first to know where each atom writes); grown and searched again if too small
            cap = max(2 * self.pi.shape[0], PAIR_BUFFER_PER_ATOM * n)
            while True:
                pj = np.empty(cap, dtype=np.int32)
                kind = np.empty(cap, dtype=np.uint8)
                d0 = np.empty(cap)
                counts = _pair_pass_once(*args, pj, kind, d0)
                if counts.shape[0] == n:
                    break
                cap *= 2
            m = int(counts.sum())
            pj, kind, d0 = pj[:m].copy(), kind[:m].copy(), d0[:m].copy()
        self.pi = np.repeat(np.arange(n, dtype=np.int32), counts)
        self.pj, self.kind, self.d0 = pj, kind, d0


@njit(cache=True)
def _max_disp2(a, b):
    m = 0.0
    for i in range(a.shape[0]):
        d = (a[i, 0] - b[i, 0]) ** 2 + (a[i, 1] - b[i, 1]) ** 2 + (a[i, 2] - b[i, 2]) ** 2
        if d > m:
            m = d
    return m


@njit(cache=True)
def nonbonded_range(xyz, pi, pj, d0, sigma, weight, g, lo, hi):
    """Add the repulsion gradient into ``gbuf`` (chunks, N, 3); return the energy."""
    inv = 1.0 / (sigma * sigma)
    acc = 0.0
    for k in range(lo, hi):
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
    return acc


def probe_radii(r) -> np.ndarray:
    """Per-atom Probe radius (Å) for clash counting: element radius, polar H 1.0, metal ions 0.9."""
    out = np.array([PROBE_RADIUS.get(e, 1.8) for e in r.element], dtype=np.float64)
    out[r.hb_type == 4] = PROBE_POLAR_H
    out[r.hb_type == 5] = PROBE_METAL
    return out


@njit(cache=True)
def count_overlaps(xyz, pi, pj, kind, rad, hb, overlap):
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
        if kind[k] != 4 and dx * dx + dy * dy + dz * dz < lim * lim:
            cnt += 1
    return cnt


@njit(cache=True)
def path_codes(ptr, idx, code, a, b):
    """Bond-path codes (2..5 = 1-2 … 1-5, 0 = further) of the atom pairs ``(a[k], b[k])``."""
    out = np.zeros(a.shape[0], dtype=np.uint8)
    for k in range(a.shape[0]):
        i = a[k]
        j = b[k]
        if i == j:
            out[k] = 1
        elif i < j:
            out[k] = _partner_code(ptr, idx, code, i, j)
        else:
            out[k] = _partner_code(ptr, idx, code, j, i)
    return out


class ClashGuard:
    """Extra repulsion keeping pairs out of the MolProbity clash range during refinement.

    The library repulsion lets 1-5 pairs (C(i)...N(i+2), O...CG) come to 0.85 x the vdW
    sum, closer than the Probe radii minus 0.4 Å that :func:`count_overlaps` counts as a
    clash (Word et al. 1999): the map pull at low resolution then creates clashes by the
    hundred. This term repels every pair that the clash count would consider (same pair list,
    not 1-4, not H-bond donor/acceptor, not metal) once closer than that limit + ``margin``
    (Å), with the harmonic form of :func:`nonbonded_range` and width ``sigma`` (Å).
    """

    def __init__(self, r, margin: float = 0.1, sigma: float = 0.03):
        self.r = r
        self.rad = probe_radii(r)
        self.overlap = CLASH_OVERLAP - margin
        self.sigma = sigma
        self.fixed = np.asarray(r.fixed, np.bool_)
        self._builds = -1
        self._pi = self._pj = self._lim = None

    def _refresh(self):
        nb = self.r.nonbonded
        hb = self.r.hb_type
        pi, pj = nb.pi, nb.pj
        hi, hj = hb[pi], hb[pj]
        don = (hi == 1) | (hi == 3)
        acc = (hi == 2) | (hi == 3)
        donj = (hj == 1) | (hj == 3)
        accj = (hj == 2) | (hj == 3)
        hbond = (don & accj) | (donj & acc) | ((hi == 4) & accj) | ((hj == 4) & acc)
        keep = ~hbond & (hi != 5) & (hj != 5)
        kind = getattr(nb, "kind", None)
        if kind is not None and len(kind) == len(pi):
            keep &= kind != 4
        self._pi = np.ascontiguousarray(pi[keep])
        self._pj = np.ascontiguousarray(pj[keep])
        self._lim = self.rad[self._pi] + self.rad[self._pj] - self.overlap
        self._builds = nb.n_builds

    def energy_gradient(self, xyz: np.ndarray, grad: np.ndarray) -> float:
        """Energy; adds the gradient into ``grad``. Call after the restraint term (list is fresh)."""
        if self.r.nonbonded is None:
            return 0.0
        if self._builds != self.r.nonbonded.n_builds:
            self._refresh()
        g = np.zeros_like(grad)
        e = nonbonded_range(xyz, self._pi, self._pj, self._lim, self.sigma, 1.0, g, 0, len(self._pi))
        g[self.fixed] = 0.0
        grad += g
        return float(e)
