"""All-atom clashscore (Word et al. 1999, J. Mol. Biol. 285:1735; MolProbity/probe).

Definition: the number of *serious clashes* -- pairs of atoms whose van der Waals spheres
overlap by ≥ 0.4 Å -- per 1000 atoms of the model with hydrogens present (MolProbity's
``clashscore``). Each atom pair counts once.

How it is computed here (probe-like, not probe's dot surfaces):

* Hydrogens: placed and rotatable groups oriented by :mod:`.hydrogens` (monomer library,
  electron-cloud X-H distances, reduce-like orientation of OH/SH/NH3+/Met methyl).
* Radii: probe's explicit-hydrogen van der Waals radii for electron-cloud hydrogens
  (:data:`RADIUS`: C 1.70, aromatic C 1.75, N 1.55, O 1.40, S 1.80, H 1.22, polar and
  aromatic H 1.05 Å, metal ions their ionic-based probe radii).
* Overlap: probe's dot surfaces -- the largest overlap of a surface dot (16 per Å²) of one
  atom inside the other atom's sphere, dots buried in an atom bonded to their own atom left
  out (so a donor N whose H points at an acceptor does not clash with it).
* Pairs not scored: atoms whose parents (a hydrogen's parent is the atom it is bonded to,
  other atoms are their own) are at most 3 bonds apart -- so X-X pairs up to 1-4, H-X up to
  1-5 and H-H up to 1-6, probe's bond-chain rule with ``-4H``; polar hydrogen with an H-bond acceptor (an H-bond), contacts with metal
  ions, alternative conformers of each other, atoms within one residue that has no
  dictionary (bonds unknown), and zero-occupancy atoms.
* Waters: a water O is an H-bond donor (its hydrogens are implicit) to any acceptor;
  water-water pairs are not scored and waters are not in the denominator (probe's
  ``not water`` source selection in phenix.clashscore).
* Denominator: all other atoms after hydrogens were added, ligands included.
"""

from __future__ import annotations

import gemmi
import numpy as np
from numba import njit

from ..nonbonded import path_codes

OVERLAP = 0.4


@njit(cache=True)
def clash_kernel(xyz, pi, pj, kind, rad, hb, is_h, occ, water, overlap):
    """Indices ``k`` of pairs ``(pi[k], pj[k])`` that clash, and their overlaps (Å).

    ``kind``: bond-path code (4 = 1-4, 5 = 1-5, 0 = further); ``hb``: H-bond class
    (2 acceptor, 3 both, 4 polar H, 5 metal); ``water``: water atoms (their hydrogens are
    implicit: a water O is an H-bond donor to any acceptor; water-water pairs not scored).
    """
    m = pi.shape[0]
    keep = np.empty(m, dtype=np.int64)
    ov = np.empty(m)
    n = 0
    for k in range(m):
        i = pi[k]
        j = pj[k]
        if kind[k] == 4 or (kind[k] == 5 and (is_h[i] or is_h[j])):
            continue
        if occ[i] <= 0.0 or occ[j] <= 0.0:
            continue
        if water[i] and water[j]:
            continue
        hi = hb[i]
        hj = hb[j]
        if (water[i] and (hj == 2 or hj == 3)) or (water[j] and (hi == 2 or hi == 3)):
            continue
        if hi == 5 or hj == 5:
            continue
        if (hi == 4 and (hj == 2 or hj == 3)) or (hj == 4 and (hi == 2 or hi == 3)):
            continue
        dx = xyz[i, 0] - xyz[j, 0]
        dy = xyz[i, 1] - xyz[j, 1]
        dz = xyz[i, 2] - xyz[j, 2]
        o = rad[i] + rad[j] - np.sqrt(dx * dx + dy * dy + dz * dz)
        if o >= overlap:
            keep[n] = k
            ov[n] = o
            n += 1
    return keep[:n], ov[:n]


@njit(cache=True)
def _dot_overlap(xyz, i, j, rad, adj_ptr, adj, t_ptr, t_idx, density):
    """Largest overlap (Å) of atom ``j``'s sphere by a surface dot of atom ``i``.

    Dots: a Fibonacci sphere of ``density`` dots per Å² on ``i``'s van der Waals sphere. As in
    probe, a dot inside an atom bonded to ``i`` (``adj``) is buried and skipped, and a dot
    belongs to the one target atom it overlaps most among ``i``'s targets (``t_idx``): a dot
    that reaches deeper into another atom (e.g. the hydrogen of an H-bond donor) is not
    ``j``'s. Returns -1 when no dot of ``i`` belongs to ``j``.
    """
    ri = rad[i]
    rj = rad[j]
    n = int(4.0 * np.pi * ri * ri * density + 0.5)
    best = -1.0
    golden = np.pi * (3.0 - np.sqrt(5.0))
    for k in range(n):
        z = 1.0 - (2.0 * k + 1.0) / n
        rr = np.sqrt(max(0.0, 1.0 - z * z))
        t = golden * k
        px = xyz[i, 0] + ri * rr * np.cos(t)
        py = xyz[i, 1] + ri * rr * np.sin(t)
        pz = xyz[i, 2] + ri * z
        dx = px - xyz[j, 0]
        dy = py - xyz[j, 1]
        dz = pz - xyz[j, 2]
        o = rj - np.sqrt(dx * dx + dy * dy + dz * dz)
        if o <= best:
            continue
        free = True
        for u in range(adj_ptr[i], adj_ptr[i + 1]):
            b = adj[u]
            ex = px - xyz[b, 0]
            ey = py - xyz[b, 1]
            ez = pz - xyz[b, 2]
            if ex * ex + ey * ey + ez * ez < rad[b] * rad[b]:
                free = False
                break
        if not free:
            continue
        for u in range(t_ptr[i], t_ptr[i + 1]):
            b = t_idx[u]
            if b == j:
                continue
            ex = px - xyz[b, 0]
            ey = py - xyz[b, 1]
            ez = pz - xyz[b, 2]
            if rad[b] - np.sqrt(ex * ex + ey * ey + ez * ez) > o:
                free = False
                break
        if free:
            best = o
    return best


@njit(cache=True)
def dot_overlaps(xyz, pi, pj, rad, adj_ptr, adj, t_ptr, t_idx, density):
    """Probe-style overlap of each pair: the larger of i's dots in j and j's dots in i."""
    out = np.empty(pi.shape[0])
    for k in range(pi.shape[0]):
        a = _dot_overlap(xyz, pi[k], pj[k], rad, adj_ptr, adj, t_ptr, t_idx, density)
        b = _dot_overlap(xyz, pj[k], pi[k], rad, adj_ptr, adj, t_ptr, t_idx, density)
        out[k] = a if a > b else b
    return out


def parent_atoms(r) -> np.ndarray:
    """Index of each atom's parent: itself, or for a hydrogen the heavy atom it is bonded to."""
    par = np.arange(r.n_atoms, dtype=np.int64)
    is_h = (r.element == "H") | (r.element == "D")
    b = np.asarray(r.bonds.idx, dtype=np.int64).reshape(-1, 2)
    for h, x in ((b[:, 0], b[:, 1]), (b[:, 1], b[:, 0])):
        m = is_h[h] & ~is_h[x]
        par[h[m]] = x[m]
    return par


def bond_adjacency(n: int, bond_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR adjacency (``ptr``, ``idx``) of the graph of ``n`` atoms with edges ``bond_idx`` (M, 2)."""
    b = np.asarray(bond_idx, dtype=np.int64).reshape(-1, 2)
    both = np.concatenate([b, b[:, ::-1]])
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.add.at(ptr, both[:, 0] + 1, 1)
    ptr = np.cumsum(ptr)
    idx = both[np.argsort(both[:, 0], kind="stable"), 1].astype(np.int64)
    return ptr, idx


DOT_DENSITY = 16.0


#: probe's explicit-hydrogen van der Waals radii for electron-cloud hydrogens (Å; probe's
#: atom table, Word et al. 1999 with the 2017 electron-cloud update): element -> radius.
#: (:data:`rerefine.refine.nonbonded.PROBE_RADIUS` keeps the nuclear-H values for refinement.)
RADIUS = {"H": 1.22, "C": 1.70, "N": 1.55, "O": 1.40, "P": 1.80, "S": 1.80, "SE": 1.90, "AS": 2.00,
          "F": 1.30, "CL": 1.77, "BR": 1.95, "I": 2.10,
          "LI": 1.34, "NA": 1.69, "AL": 1.24, "K": 2.07, "MG": 1.39, "CA": 1.73, "MN": 1.54, "FE": 1.48,
          "CO": 1.44, "NI": 1.40, "CU": 1.46, "ZN": 1.45, "RB": 2.22, "SR": 1.84, "MO": 1.67, "AG": 2.00,
          "CD": 1.65, "IN": 1.55, "CS": 2.43, "BA": 2.03, "AU": 1.84, "HG": 1.74, "TL": 2.18, "PB": 1.58}
RADIUS_POLAR_H = 1.05
RADIUS_AROMATIC_H = 1.05
RADIUS_AROMATIC_C = 1.75
#: ring atoms probe treats as aromatic (residue -> atom names)
AROMATIC = {
    "PHE": {"CG", "CD1", "CD2", "CE1", "CE2", "CZ"},
    "TYR": {"CG", "CD1", "CD2", "CE1", "CE2", "CZ"},
    "TRP": {"CG", "CD1", "CD2", "NE1", "CE2", "CE3", "CZ2", "CZ3", "CH2"},
    "HIS": {"CG", "ND1", "CD2", "CE1", "NE2"},
}


def contact_radii(r, st: gemmi.Structure) -> np.ndarray:
    """Probe's van der Waals radius (Å) of every atom (``st[0].all()`` order, restraints ``r``).

    Element radius from :data:`RADIUS` (1.8 Å for others); aromatic ring carbons 1.75 Å;
    hydrogens on N/O (polar) and on aromatic ring atoms 1.05 Å, other hydrogens 1.22 Å.
    """
    el = r.element
    rad = np.array([RADIUS.get(e, 1.8) for e in el], dtype=np.float64)
    arom = np.zeros(len(el), dtype=bool)
    for i, c in enumerate(st[0].all()):
        names = AROMATIC.get(c.residue.name)
        if names is not None and c.atom.name in names:
            arom[i] = True
    rad[arom & (el == "C")] = RADIUS_AROMATIC_C
    is_h = (el == "H") | (el == "D")
    b = np.asarray(r.bonds.idx).reshape(-1, 2)
    for h, x in ((b[:, 0], b[:, 1]), (b[:, 1], b[:, 0])):
        m = is_h[h] & arom[x]
        rad[h[m]] = RADIUS_AROMATIC_H
    rad[r.hb_type == 4] = RADIUS_POLAR_H
    return rad


def clashes(r, xyz: np.ndarray, occupancy: np.ndarray, counted: np.ndarray, rad: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Serious clashes of a model with restraints ``r`` (built on the model with hydrogens).

    ``counted``: atoms that are not water (:func:`counted_atoms`); pairs of two waters are
    not scored (probe's source selection ``not water``).

    Returns
    -------
    (i, j, overlap) : ndarrays
        Atom indices (``st[0].all()`` order) and overlap (Å, positive), largest first.
    """
    nb = r.nonbonded
    nb.update(xyz)
    is_h = (r.element == "H") | (r.element == "D")
    k, ov = clash_kernel(xyz, nb.pi, nb.pj, nb.kind, rad, r.hb_type, is_h, np.asarray(occupancy, dtype=np.float64),
                         ~np.asarray(counted, dtype=bool), OVERLAP)
    pi, pj = nb.pi[k], nb.pj[k]
    # probe's bond-chain rule: hydrogens count from their parent atom, pairs whose parents are
    # at most 3 bonds apart do not score (H-H pairs up to 1-6, H-X up to 1-5, X-X up to 1-4)
    par = parent_atoms(r)
    pc = path_codes(r.partner_ptr, r.partner_idx, r.partner_code, par[pi], par[pj])
    far = (pc == 0) | (pc == 5)
    pi, pj = pi[far], pj[far]
    ptr, adj = bond_adjacency(r.n_atoms, r.bonds.idx)
    # every atom's possible targets (for assigning each dot to one target)
    occ = np.asarray(occupancy, dtype=np.float64)
    ai, aj = nb.pi.astype(np.int64), nb.pj.astype(np.int64)
    pc_all = path_codes(r.partner_ptr, r.partner_idx, r.partner_code, par[ai], par[aj])
    ok = ((pc_all == 0) | (pc_all == 5)) & (occ[ai] > 0) & (occ[aj] > 0)
    t_ptr, t_idx = bond_adjacency(r.n_atoms, np.stack([ai[ok], aj[ok]], axis=1))
    ov = dot_overlaps(xyz, pi, pj, rad, ptr, adj, t_ptr, t_idx, DOT_DENSITY)
    keep = ov >= OVERLAP
    pi, pj, ov = pi[keep], pj[keep], ov[keep]
    order = np.argsort(-ov, kind="stable")
    return pi[order], pj[order], ov[order]


def atom_label(cra: gemmi.CRA) -> str:
    """``CHAIN:SEQ[ICODE]:RESNAME/ATOM[ALT]`` of one atom (a ``gemmi.CRA``)."""
    alt = cra.atom.altloc
    return (f"{cra.chain.name}:{cra.residue.seqid.num}{cra.residue.seqid.icode.strip()}:"
            f"{cra.residue.name}/{cra.atom.name}{'' if alt == chr(0) else alt}")


def counted_atoms(st: gemmi.Structure) -> np.ndarray:
    """Mask of the atoms that make the clashscore's denominator: every atom but waters."""
    return np.array([not c.residue.is_water() for c in st[0].all()], dtype=bool)


def occupancies(st: gemmi.Structure) -> np.ndarray:
    """Occupancy of every atom of the first model."""
    return np.array([c.atom.occ for c in st[0].all()], dtype=np.float64)


__all__ = ["OVERLAP", "DOT_DENSITY", "RADIUS", "clash_kernel", "dot_overlaps", "clashes", "contact_radii",
           "parent_atoms", "bond_adjacency", "atom_label", "counted_atoms", "occupancies"]
