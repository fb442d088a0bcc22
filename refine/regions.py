"""Split a model into regions for refinement in boxes: whole residues, a core refined and a margin held fixed.

A large model is cut into spatial blocks of at most ``max_atoms`` atoms by recursive bisection
along the longest extent of the block. A chain of at most ``max_atoms`` atoms is never cut (larger
chains are cut between residues), and each cut is placed where the fewest atoms lie within
``margin`` of the other side, balanced against an even split and leaving no side below half a
core: copies of an assembly and chains
that barely touch are separated first, so their margins (the fixed atoms each region carries and
refines nothing of) shrink to their few contacts. Each block is the *core* of a :class:`Region`;
its *margin* is every other residue with an atom within ``margin`` Å of a core atom. The margin is held fixed
during the region's refinement, so that every restraint and repulsion a core atom takes part in
is present and the atoms outside the core keep their positions (Afonine: "boxed parts of the model
can be refined").

The *seams* (:func:`seam_regions`) are the residues a region refined next to fixed neighbours of
another region: residues with an atom within ``width`` Å of another region's core. They are
refined again, as cores of their own regions, once the first regions are merged.

All indices are positions in ``st[0].all()`` order (chain, residue, atom).
"""

from __future__ import annotations

from dataclasses import dataclass

import gemmi
import numpy as np
from scipy.spatial import cKDTree

#: Atoms per region core. A core of ~6,000 atoms (a bit more than one 5ME2 copy, 4,468 atoms)
#: with its 6 Å margin fits a map box of ~70³-90³ voxels at 1 Å, far below the density-fit
#: stage's voxel limit (:data:`rerefine.refine.fit_stage.FIT_MAX_VOXELS`), and keeps the margin
#: (fixed atoms, refined elsewhere) to about half of a region's atoms.
REGION_ATOMS = 6000
#: Å, margin shell held fixed around a core: more than the reach of the nonbonded repulsion
#: (contacts below the van der Waals sums, < 4 Å) and of any restraint from a core atom (torsions
#: and planes span < 6 Å); whole residues, so the shell reaches further in places.
MARGIN = 6.0
#: Å, residues within this distance of another region's core are refined again in the seam pass:
#: the reach of the repulsion and of the bonded restraints across a cut.
SEAM_WIDTH = 4.5


@dataclass
class Region:
    """One region of a model.

    Attributes
    ----------
    core : ndarray of int
        Sorted atom indices refined in this region.
    margin : ndarray of int
        Sorted atom indices held fixed (whole residues around the core).
    label : str
        Name used in progress messages (``"1/12"``, ``"seam 3/5"``).
    """

    core: np.ndarray
    margin: np.ndarray
    label: str = ""

    @property
    def atoms(self) -> np.ndarray:
        """Core and margin atoms, sorted: the atoms of the region's sub-model."""
        return np.union1d(self.core, self.margin)


def residue_index(st: gemmi.Structure) -> np.ndarray:
    """Residue serial (over the first model, all chains) of each atom, ``st[0].all()`` order."""
    out = []
    k = 0
    for ch in st[0]:
        for res in ch:
            out.extend([k] * len(res))
            k += 1
    return np.array(out, dtype=np.int64)


def _units(res_ids: np.ndarray, chain_of: np.ndarray, weights: np.ndarray, max_atoms: int) -> list[np.ndarray]:
    """Groups of ``res_ids`` that a cut keeps together: the residues of a chain when they hold at
    most ``max_atoms`` atoms, else each residue on its own."""
    out = []
    for ch in np.unique(chain_of[res_ids]):
        ids = res_ids[chain_of[res_ids] == ch]
        if weights[ids].sum() <= max_atoms:
            out.append(ids)
        else:
            out.extend(ids[:, None])
    return out


def _bisect(units: list[np.ndarray], centres: np.ndarray, weights: np.ndarray, max_atoms: int,
            margin: float) -> list[np.ndarray]:
    """Residue groups of at most ``max_atoms`` atoms, made of whole ``units`` (a single unit may
    exceed it).

    A group is cut along the longest extent of its unit centres, between two units in that order.
    The cut chosen has the fewest atoms (residue centres) in the shell where the two sides come
    within ``margin`` of each other (the atoms that become margins), plus a balance term of half
    the group's atoms per unit of distance from an even split, so that a gap between copies or
    chains is cut first and a compact blob is halved."""
    w_u = np.array([weights[u].sum() for u in units])
    c_u = np.array([np.average(centres[u], axis=0, weights=np.maximum(weights[u], 1.0)) for u in units])
    lo_u = np.array([centres[u].min(axis=0) for u in units])
    hi_u = np.array([centres[u].max(axis=0) for u in units])
    out, todo = [], [np.arange(len(units))]
    while todo:
        g = todo.pop()
        if w_u[g].sum() <= max_atoms or len(g) < 2:
            out.append(np.sort(np.concatenate([units[i] for i in g])))
            continue
        axis = int(np.argmax(np.ptp(c_u[g], axis=0)))
        order = g[np.argsort(c_u[g, axis], kind="stable")]
        cum = np.cumsum(w_u[order])
        total = cum[-1]
        left_max = np.maximum.accumulate(hi_u[order, axis])[:-1]
        right_min = np.minimum.accumulate(lo_u[order, axis][::-1])[::-1][1:]
        res = np.concatenate([units[i] for i in order])
        pos = centres[res, axis]
        srt = np.argsort(pos)
        pos, cw = pos[srt], np.concatenate([[0.0], np.cumsum(weights[res][srt])])
        a, b = right_min - margin, left_max + margin
        shell = np.where(a <= b, cw[np.searchsorted(pos, b, "right")] - cw[np.searchsorted(pos, a, "left")], 0.0)
        cost = shell + 0.5 * total * np.abs(cum[:-1] / total - 0.5)
        # no side below half a core: otherwise the cut with the thinnest shell peels a residue or
        # two off the end of a compact chain, again and again (one region per residue, each
        # carrying ten times its atoms as margin)
        floor = 0.5 * max_atoms
        ok = (cum[:-1] >= floor) & (total - cum[:-1] >= floor)
        if ok.any():
            cost = np.where(ok, cost, np.inf)
        cut = int(np.argmin(cost)) + 1
        todo.extend([order[cut:], order[:cut]])
    out.sort(key=lambda a: int(a[0]))
    return out


def _with_margins(groups: list[np.ndarray], xyz: np.ndarray, res_of: np.ndarray, margin: float,
                  prefix: str) -> list[Region]:
    """Regions from residue groups: core atoms and the residues within ``margin`` Å of them."""
    regions = []
    for k, res_ids in enumerate(groups):
        in_core = np.isin(res_of, res_ids)
        core = np.flatnonzero(in_core)
        cxyz = xyz[core]
        lo, hi = cxyz.min(axis=0) - margin, cxyz.max(axis=0) + margin
        cand = np.flatnonzero(np.all((xyz >= lo) & (xyz <= hi), axis=1) & ~in_core)
        near = np.zeros(0, np.int64)
        if len(cand):
            d, _ = cKDTree(cxyz).query(xyz[cand], distance_upper_bound=margin)
            near_res = np.unique(res_of[cand[np.isfinite(d)]])
            near = np.flatnonzero(np.isin(res_of, near_res))
        regions.append(Region(core=core, margin=near, label=f"{prefix}{k + 1}/{len(groups)}"))
    return regions


def split_regions(st: gemmi.Structure, max_atoms: int = REGION_ATOMS, margin: float = MARGIN,
                  xyz: np.ndarray | None = None) -> list[Region]:
    """Cut the first model of ``st`` into regions of whole residues.

    Parameters
    ----------
    st : gemmi.Structure
        The model.
    max_atoms : int
        Most atoms in one core (a residue is never split).
    margin : float
        Å, margin shell (whole residues) held fixed around each core.
    xyz : ndarray, optional
        Atom positions (N, 3), Å; default the model's.

    Returns
    -------
    list of Region
        Cores partition the atoms; sorted by their first atom.
    """
    res_of = residue_index(st)
    if xyz is None:
        xyz = np.array([c.atom.pos.tolist() for c in st[0].all()], dtype=np.float64).reshape(-1, 3)
    centres, weights, chain_of = _residue_table(st, res_of, xyz)
    groups = _bisect(_units(np.arange(len(weights)), chain_of, weights, max_atoms), centres, weights, max_atoms,
                     margin)
    return _with_margins(groups, xyz, res_of, margin, "")


def _residue_table(st: gemmi.Structure, res_of: np.ndarray, xyz: np.ndarray):
    """Centre (Å), atom count and chain serial of each residue of the first model."""
    nres = int(res_of.max()) + 1 if len(res_of) else 0
    weights = np.bincount(res_of, minlength=nres).astype(float)
    centres = np.zeros((nres, 3))
    np.add.at(centres, res_of, xyz)
    centres /= np.maximum(weights, 1.0)[:, None]
    chain_of = np.repeat(np.arange(len(st[0])), [len(ch) for ch in st[0]])
    return centres, weights, chain_of


def seam_regions(st: gemmi.Structure, regions: list[Region], xyz: np.ndarray, width: float = SEAM_WIDTH,
                 max_atoms: int = REGION_ATOMS, margin: float = MARGIN) -> list[Region]:
    """Regions whose cores are the seams between ``regions``: every residue with an atom within
    ``width`` Å of an atom of another region's core, cut again into regions of at most
    ``max_atoms`` atoms with their own margins. Empty when there is a single region."""
    if len(regions) < 2:
        return []
    res_of = residue_index(st)
    owner = np.full(len(xyz), -1, np.int64)
    for k, reg in enumerate(regions):
        owner[reg.core] = k
    tree = cKDTree(xyz)
    seam_res = set()
    for k, reg in enumerate(regions):
        # margin atoms of region k (other regions' cores) close to its core, and the core atoms close to them
        cand = reg.margin
        if not len(cand):
            continue
        d, _ = cKDTree(xyz[reg.core]).query(xyz[cand], distance_upper_bound=width)
        close = cand[np.isfinite(d)]
        seam_res.update(np.unique(res_of[close]).tolist())
        for nb in tree.query_ball_point(xyz[close], width):
            nb = np.asarray(nb, np.int64)
            seam_res.update(np.unique(res_of[nb[owner[nb] == k]]).tolist())
    if not seam_res:
        return []
    ids = np.array(sorted(seam_res), np.int64)
    centres, weights, chain_of = _residue_table(st, res_of, xyz)
    groups = _bisect(_units(ids, chain_of, weights, max_atoms), centres, weights, max_atoms, margin)
    return _with_margins(groups, xyz, res_of, margin, "seam ")


def sub_model(st: gemmi.Structure, atoms: np.ndarray) -> gemmi.Structure:
    """A copy of ``st`` (first model) keeping only the residues of ``atoms`` (whole residues; the
    structure's cell, entities and records kept). Its atoms are ``atoms`` in the same order."""
    res_of = residue_index(st)
    keep = np.zeros(int(res_of.max()) + 1 if len(res_of) else 0, bool)
    keep[res_of[atoms]] = True
    sub = st.clone()
    while len(sub) > 1:
        del sub[len(sub) - 1]
    k = 0
    drop_chains = []
    for ci, ch in enumerate(sub[0]):
        n = len(ch)
        flags = keep[k : k + n]
        k += n
        for ri in range(n - 1, -1, -1):
            if not flags[ri]:
                del ch[ri]
        if len(ch) == 0:
            drop_chains.append(ci)
    for ci in reversed(drop_chains):
        del sub[0][ci]
    return sub


__all__ = ["Region", "split_regions", "seam_regions", "sub_model", "residue_index", "REGION_ATOMS", "MARGIN",
           "SEAM_WIDTH"]
