"""Non-crystallographic symmetry (NCS): copies of one chain in a model, and torsion NCS restraints.

**Detection** (:func:`find_ncs_groups`). Two polymer chains are copies when their residue-name
sequences, aligned with gemmi's :func:`gemmi.align_string_sequences`, are at least
:data:`MIN_IDENTITY` identical over the shorter chain and their aligned CA (P for nucleic acids)
atoms superpose (:func:`gemmi.superpose_positions`) within :data:`MAX_RMSD` Å. The two limits are
Phenix's NCS search defaults (``chain_similarity_threshold = 0.85``, ``chain_max_rmsd = 2.0``).
Chains are grouped greedily in file order: the first chain of a group is its reference and every
copy carries the operator that superposes it onto the reference (``x_ref = R x_copy + t``), its
rotation angle, translation length and RMSD after superposition. Gaps and different lengths are
handled by the alignment: only aligned residues with the same name are paired.

**Restraints** (:class:`NcsTorsionRestraint`, optional in refinement). Torsion-angle NCS in the
manner of Headd et al. 2014 (Acta Cryst. D70:1346; Phenix's default NCS for real-space
refinement): the backbone phi/psi and side-chain chi1-chi4 torsions of paired residues are
restrained to agree between copies, not the atoms to a superposition, so copies may differ by
hinge motions. Each pair of copies ``a, b`` of a torsion contributes the top-out form

    E = (1/k) (L / sigma)^2 (1 - exp(-delta^2 / L^2)),   delta = wrap(phi_a - phi_b)

with ``k`` copies in the group (for harmonic terms the sum over pairs divided by ``k`` equals the
sum of each copy's squared deviation from the group mean, Phenix's target; groups of more than
:data:`MAX_ALL_PAIRS` copies restrain each copy to the next in a ring instead, weight 1/2), sigma
:data:`SIGMA` and limit :data:`LIMIT` (Phenix's torsion NCS defaults, 2.5 and 15 degrees): near
zero it is ``(delta / sigma)^2 / k``; torsions that differ by much more than ``L`` between copies
(a different rotamer) feel almost no force. Differences of symmetric end groups (Phe/Tyr chi2,
Asp chi2, Glu chi3) are wrapped to +-90 degrees. The kernel is serial: 5ME2's 1,021 pairs take
0.14 ms an evaluation, a sixth of the library restraints' (benchmarks/bench_ncs.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import gemmi
import numpy as np
from numba import njit

from .geometry import dihedral_angles, dihedral_gradient, fold_period

#: Minimum sequence identity (fraction of the shorter chain) of two copies (Phenix's
#: ``ncs_search.chain_similarity_threshold``).
MIN_IDENTITY = 0.85
#: Å, largest RMSD of the aligned CA/P atoms after superposition (Phenix's ``chain_max_rmsd``).
MAX_RMSD = 2.0
#: Polymer residues a chain needs to take part (shorter peptides are not searched).
MIN_RESIDUES = 10
#: Degrees: torsion NCS sigma and top-out limit (Phenix ``ncs.torsion.sigma``, ``.limit``).
SIGMA = 2.5
LIMIT = 15.0
#: Torsion labels (monomer library) restrained between copies.
#: Groups of up to this many copies restrain every pair of copies, larger ones a ring (:func:`copy_pairs`).
MAX_ALL_PAIRS = 4
NCS_TORSIONS = ("phi", "psi", "chi1", "chi2", "chi3", "chi4")
#: (residue, label) whose 180-degree flip gives the same atoms (equivalent end-group atoms).
SYMMETRIC = {("PHE", "chi2"), ("TYR", "chi2"), ("ASP", "chi2"), ("GLU", "chi3")}
DEG = 180.0 / math.pi


@dataclass
class NcsCopy:
    """One chain of an NCS group and how it superposes onto the group's reference chain.

    Attributes
    ----------
    chain : str
        Chain name.
    rotation : ndarray (3, 3)
        Rotation ``R`` of ``x_ref = R x + t`` (identity for the reference itself).
    translation : ndarray (3,)
        ``t``, Å.
    angle : float
        Rotation angle of ``R``, degrees.
    shift : float
        ``|t|``, Å.
    rmsd : float
        RMSD of the aligned CA/P atoms after superposition, Å.
    n_aligned : int
        Residues paired with the reference (aligned, same residue name).
    identity : float
        Sequence identity with the reference over the shorter chain (0-1).
    residue_pairs : list of (str, str)
        Sequence ids (``str(gemmi.SeqId)``, e.g. ``"52A"``) of the paired residues: reference, copy.
    """

    chain: str
    rotation: np.ndarray
    translation: np.ndarray
    angle: float
    shift: float
    rmsd: float
    n_aligned: int
    identity: float
    residue_pairs: list = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        """JSON-friendly figures (no residue pairs)."""
        return {"chain": self.chain, "rotation_deg": round(self.angle, 2), "shift": round(self.shift, 3),
                "rmsd": round(self.rmsd, 3), "n_aligned": self.n_aligned, "identity": round(self.identity, 4),
                "rotation": np.round(self.rotation, 6).tolist(),
                "translation": np.round(self.translation, 4).tolist()}


@dataclass
class NcsGroup:
    """Chains that are copies of one another: ``copies[0]`` is the reference (identity operator)."""

    copies: list

    @property
    def chains(self) -> list:
        """Chain names, reference first."""
        return [c.chain for c in self.copies]

    def summary(self) -> dict:
        """JSON-friendly description: chains, reference, and each copy's operator and RMSD."""
        return {"chains": self.chains, "reference": self.copies[0].chain,
                "copies": [c.summary() for c in self.copies[1:]]}


def _polymer(chain: gemmi.Chain):
    """(residue names, sequence ids, anchor atom positions or None) of the polymer part of a chain."""
    poly = chain.get_polymer()
    ptype = poly.check_polymer_type()
    nucleic = ptype in (gemmi.PolymerType.Dna, gemmi.PolymerType.Rna, gemmi.PolymerType.DnaRnaHybrid)
    anchor = "P" if nucleic else "CA"
    names, ids, pos = [], [], []
    for res in poly:
        a = res.find_atom(anchor, "*")
        names.append(res.name)
        ids.append(str(res.seqid))
        pos.append(None if a is None else a.pos)
    return names, ids, pos, ptype


def align_residues(names_ref, names_copy) -> tuple[list, float]:
    """Pairs of residue positions ``(i_ref, i_copy)`` aligned with the same residue name.

    Parameters
    ----------
    names_ref, names_copy : list of str
        Residue names of two chains in order.

    Returns
    -------
    (list of (int, int), float)
        The identical aligned pairs (gemmi global alignment, :func:`gemmi.align_string_sequences`)
        and the identity, pairs / length of the shorter sequence (0 when either is empty).
    """
    if not names_ref or not names_copy:
        return [], 0.0
    aln = gemmi.align_string_sequences(list(names_ref), list(names_copy), [])
    pairs = []
    i = j = 0
    num = ""
    for ch in aln.cigar_str():
        if ch.isdigit():
            num += ch
            continue
        n = int(num)
        num = ""
        if ch == "M":
            for _ in range(n):
                if names_ref[i] == names_copy[j]:
                    pairs.append((i, j))
                i += 1
                j += 1
        elif ch == "I":  # residues of the reference facing a gap
            i += n
        else:  # "D": residues of the copy facing a gap
            j += n
    return pairs, len(pairs) / min(len(names_ref), len(names_copy))


def rotation_angle(rot: np.ndarray) -> float:
    """Rotation angle (degrees) of a 3x3 rotation matrix, from its trace."""
    c = (float(np.trace(rot)) - 1.0) / 2.0
    return math.degrees(math.acos(min(1.0, max(-1.0, c))))


def _superpose(ref_pos, copy_pos, pairs):
    """gemmi SupResult of the copy's anchors onto the reference's over ``pairs`` (both present)."""
    p1, p2 = [], []
    for i, j in pairs:
        if ref_pos[i] is not None and copy_pos[j] is not None:
            p1.append(ref_pos[i])
            p2.append(copy_pos[j])
    if len(p1) < 3:
        return None
    return gemmi.superpose_positions(p1, p2)


def find_ncs_groups(st: gemmi.Structure, *, min_identity: float = MIN_IDENTITY, max_rmsd: float = MAX_RMSD,
                    min_residues: int = MIN_RESIDUES) -> list:
    """NCS groups of the first model of ``st``: polymer chains that are copies of one another.

    Parameters
    ----------
    st : gemmi.Structure
        The model (not modified).
    min_identity : float
        Sequence identity over the shorter chain (0-1) from which two chains may be copies.
    max_rmsd : float
        Å; largest RMSD of the aligned CA (P) atoms after superposition.
    min_residues : int
        Chains with fewer polymer residues are not considered.

    Returns
    -------
    list of NcsGroup
        Groups of two or more chains, in file order of their reference chain; empty when the
        model has no copies.
    """
    if len(st) == 0:
        return []
    chains = []
    for ch in st[0]:
        names, ids, pos, ptype = _polymer(ch)
        if len(names) >= min_residues:
            chains.append((ch.name, names, ids, pos, ptype))
    used = [False] * len(chains)
    groups = []
    for a, (name_a, names_a, ids_a, pos_a, type_a) in enumerate(chains):
        if used[a]:
            continue
        copies = [NcsCopy(name_a, np.eye(3), np.zeros(3), 0.0, 0.0, 0.0, len(names_a), 1.0,
                          [(s, s) for s in ids_a])]
        for b in range(a + 1, len(chains)):
            name_b, names_b, ids_b, pos_b, type_b = chains[b]
            if used[b] or type_b != type_a:
                continue
            pairs, ident = align_residues(names_a, names_b)
            if ident < min_identity:
                continue
            sup = _superpose(pos_a, pos_b, pairs)
            if sup is None or not sup.rmsd <= max_rmsd:
                continue
            rot = np.array(sup.transform.mat.tolist())
            t = np.array(sup.transform.vec.tolist())
            copies.append(NcsCopy(name_b, rot, t, rotation_angle(rot), float(np.linalg.norm(t)), float(sup.rmsd),
                                  len(pairs), float(ident), [(ids_a[i], ids_b[j]) for i, j in pairs]))
            used[b] = True
        if len(copies) > 1:
            used[a] = True
            groups.append(NcsGroup(copies))
    return groups


def _atom_table(st: gemmi.Structure) -> dict:
    """(chain, seqid string, atom name) -> atom index in ``st[0].all()`` order, atoms without altloc."""
    table = {}
    for i, cra in enumerate(st[0].all()):
        if cra.atom.altloc == "\0":
            table[(cra.chain.name, str(cra.residue.seqid), cra.atom.name)] = i
    return table


def _chain_atoms(st: gemmi.Structure, names) -> dict:
    """chain -> {(seqid string, atom name): atom index in ``st[0].all()`` order} for the chains
    ``names``: non-hydrogen atoms without altloc (only those chains are walked atom by atom)."""
    out = {}
    start = 0
    for ch in st[0]:
        if ch.name in names:
            tab = {}
            i = start
            for res in ch:
                sid = str(res.seqid)
                for a in res:
                    if a.altloc == "\0" and not a.is_hydrogen():
                        tab[(sid, a.name)] = i
                    i += 1
            out[ch.name] = tab
        start += ch.count_atom_sites()
    return out


def copy_rmsd(st: gemmi.Structure, group: NcsGroup, *, xyz: np.ndarray | None = None) -> dict:
    """All-atom RMSD (Å) of each copy to the reference after superposing their paired atoms.

    Pairs every non-hydrogen atom without altloc of the paired residues by name, superposes the
    copy onto the reference over those atoms (:func:`gemmi.superpose_positions`) and reports its
    RMSD, keyed by the copy's chain name. ``xyz`` (N, 3): coordinates to use instead of the
    structure's (``st[0].all()`` order).
    """
    tabs = _chain_atoms(st, set(group.chains))
    if xyz is None:
        pos = {}
        start = 0
        for ch in st[0]:
            if ch.name in tabs:
                for res in ch:
                    for a in res:
                        pos[start] = a.pos
                        start += 1
            else:
                start += ch.count_atom_sites()
        at = pos.__getitem__
    else:
        def at(i):
            return gemmi.Position(*xyz[i])
    ref = tabs[group.copies[0].chain]
    by_res: dict = {}
    for (sid, an), i in ref.items():
        by_res.setdefault(sid, []).append((an, i))
    out = {}
    for cp in group.copies[1:]:
        tab = tabs[cp.chain]
        p1, p2 = [], []
        for s_ref, s_cp in cp.residue_pairs:
            for an, i in by_res.get(s_ref, ()):
                j = tab.get((s_cp, an))
                if j is not None:
                    p1.append(at(i))
                    p2.append(at(j))
        out[cp.chain] = float(gemmi.superpose_positions(p1, p2).rmsd) if len(p1) >= 3 else float("nan")
    return out


def copy_pairs(k: int, max_all: int = MAX_ALL_PAIRS) -> list:
    """Which copies of a ``k``-copy group are restrained pairwise: every pair ``(i, j)``, ``i < j``,
    while ``k <= max_all``; beyond, each copy with the next in a ring (``k`` pairs instead of
    ``k (k - 1) / 2``: a 60-copy capsid would otherwise need 1,770 pairs per torsion)."""
    if k < 2:
        return []
    if k <= max_all:
        return [(i, j) for i in range(k) for j in range(i + 1, k)]
    return [(i, (i + 1) % k) for i in range(k)]


def ncs_torsion_rows(st: gemmi.Structure, r, groups: list) -> tuple:
    """Torsion pairs restrained between copies.

    Parameters
    ----------
    st : gemmi.Structure
        The model ``r`` was built for (same atoms, ``st[0].all()`` order).
    r : Restraints
        Its restraints; their torsion rows labelled :data:`NCS_TORSIONS` are paired.
    groups : list of NcsGroup
        From :func:`find_ncs_groups`.

    Returns
    -------
    (ndarray (n, 4), ndarray (n, 4), ndarray (n,), ndarray (n,))
        Atom indices of the torsion in copy ``a`` and in copy ``b``, the period of the
        difference (2 for symmetric end groups, else 1) and the weight: ``1/k`` (``k`` copies)
        when every pair is restrained, 1/2 for ring pairs (each copy then sits in two pairs, as
        stiff as ``k - 1`` pairs of weight ``1/k``).
        Rows with a fixed atom, a hydrogen or an alternative conformer are left out, and a pair
        only when both copies have the torsion as a restraint row (so gaps never pair a torsion
        across a chain break).
    """
    cras = list(st[0].all())
    fixed = np.asarray(r.fixed, bool)
    altloc = np.asarray(r.altloc)
    ok_atom = np.array([not c.atom.is_hydrogen() for c in cras]) & ~fixed & (altloc == 0)
    t = r.torsions
    labels = list(t.label)
    rows = {}  # atom quadruple -> label
    for k in range(len(labels)):
        if labels[k] in NCS_TORSIONS:
            q = tuple(int(x) for x in t.idx[k])
            if all(ok_atom[i] for i in q):
                rows[q] = labels[k]
    key_of = [(c.chain.name, str(c.residue.seqid), c.atom.name) for c in cras]
    by_chain: dict = {}
    for q, lab in rows.items():
        by_chain.setdefault(key_of[q[0]][0], []).append((q, lab))
    table = _atom_table(st)
    ia, ib, per, wt = [], [], [], []
    for g in groups:
        # residue maps of every copy onto the reference (seqid -> seqid), the reference's the identity
        to_ref = [{c: a for a, c in cp.residue_pairs} for cp in g.copies]
        k = len(g.copies)
        w = 1.0 / k if k <= MAX_ALL_PAIRS else 0.5
        for x, y in copy_pairs(k):
            cx, cy = g.copies[x].chain, g.copies[y].chain
            ref_to_y = {a: c for a, c in g.copies[y].residue_pairs}
            rmap = {sx: ref_to_y[sa] for sx, sa in to_ref[x].items() if sa in ref_to_y}
            for q, lab in by_chain.get(cx, ()):
                mapped = []
                for i in q:
                    ch, sid, an = key_of[i]
                    sy = rmap.get(sid) if ch == cx else None
                    j = table.get((cy, sy, an)) if sy is not None else None
                    if j is None:
                        break
                    mapped.append(j)
                qy = tuple(mapped)
                if len(qy) == 4 and rows.get(qy) == lab:
                    ia.append(q)
                    ib.append(qy)
                    per.append(2 if (cras[q[2]].residue.name, lab) in SYMMETRIC else 1)
                    wt.append(w)
    return (np.array(ia, np.int32).reshape(-1, 4), np.array(ib, np.int32).reshape(-1, 4),
            np.array(per, np.int32), np.array(wt, np.float64))


@njit(cache=True)
def ncs_torsion_energy_gradient(xyz, ia, ib, period, weight, sigma, limit, g):
    """Top-out torsion NCS energy (module docstring) over the pairs; gradient (1/Å) added into ``g``.

    ``xyz`` (N, 3) Å; ``ia``/``ib`` (n, 4) atom indices of the torsion in the two copies;
    ``period`` (n,) 1 or 2; ``weight`` (n,); ``sigma``, ``limit`` degrees. Pairs with a
    degenerate dihedral are skipped.
    """
    acc = 0.0
    da = np.empty((4, 3))
    db = np.empty((4, 3))
    l2 = limit * limit
    top = l2 / (sigma * sigma)
    for k in range(ia.shape[0]):
        pa, oka = dihedral_gradient(xyz, ia[k, 0], ia[k, 1], ia[k, 2], ia[k, 3], da)
        pb, okb = dihedral_gradient(xyz, ib[k, 0], ib[k, 1], ib[k, 2], ib[k, 3], db)
        if not (oka and okb):
            continue
        d = fold_period((pa - pb) * DEG, period[k])
        e = math.exp(-d * d / l2)
        acc += weight[k] * top * (1.0 - e)
        # dE/d(phi_a) in 1/rad: weight * 2 d / sigma^2 * exp(-d^2/L^2) * (deg per rad)
        f = weight[k] * 2.0 * d / (sigma * sigma) * e * DEG
        for a in range(4):
            i = ia[k, a]
            j = ib[k, a]
            for c in range(3):
                g[i, c] += f * da[a, c]
                g[j, c] -= f * db[a, c]
    return acc


@njit(cache=True)
def ncs_torsion_differences(xyz, ia, ib, period):
    """Wrapped torsion differences (degrees) of each pair; NaN where a dihedral is degenerate."""
    pa, oka = dihedral_angles(xyz, ia)
    pb, okb = dihedral_angles(xyz, ib)
    out = np.full(ia.shape[0], np.nan)
    for k in range(ia.shape[0]):
        if oka[k] and okb[k]:
            out[k] = fold_period((pa[k] - pb[k]) * DEG, period[k])
    return out


class NcsTorsionRestraint:
    """Torsion NCS restraint term of the refinement (``name``, ``energy_gradient``; see module docstring)."""

    name = "ncs"

    def __init__(self, groups: list, ia: np.ndarray, ib: np.ndarray, period: np.ndarray, weight: np.ndarray,
                 sigma: float = SIGMA, limit: float = LIMIT):
        self.groups = groups
        self.ia = np.ascontiguousarray(ia, np.int32)
        self.ib = np.ascontiguousarray(ib, np.int32)
        self.period = np.ascontiguousarray(period, np.int32)
        self.weight = np.ascontiguousarray(weight, np.float64)
        self.sigma = float(sigma)
        self.limit = float(limit)

    def __len__(self) -> int:
        return len(self.ia)

    def energy_gradient(self, xyz: np.ndarray, grad: np.ndarray) -> float:
        """Energy (dimensionless); adds its gradient (1/Å) into ``grad``. No row holds a fixed atom."""
        if not len(self.ia):
            return 0.0
        return float(ncs_torsion_energy_gradient(np.ascontiguousarray(xyz, np.float64), self.ia, self.ib,
                                                 self.period, self.weight, self.sigma, self.limit, grad))

    def differences(self, xyz: np.ndarray) -> np.ndarray:
        """Torsion differences between copies (degrees), one per restrained pair."""
        return ncs_torsion_differences(np.ascontiguousarray(xyz, np.float64), self.ia, self.ib, self.period)


def ncs_torsion_restraint(st: gemmi.Structure, r, groups: list | None = None, *, sigma: float = SIGMA,
                          limit: float = LIMIT) -> NcsTorsionRestraint | None:
    """Torsion NCS restraint for the model ``st`` with restraints ``r`` (same atoms).

    ``groups`` default to :func:`find_ncs_groups` of ``st``. Returns None when the model has no
    copies or no torsion pairs.
    """
    if groups is None:
        groups = find_ncs_groups(st)
    if not groups:
        return None
    ia, ib, per, wt = ncs_torsion_rows(st, r, groups)
    if not len(ia):
        return None
    return NcsTorsionRestraint(groups, ia, ib, per, wt, sigma=sigma, limit=limit)
