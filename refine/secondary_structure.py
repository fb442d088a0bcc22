"""Secondary-structure restraints: backbone O...N hydrogen-bond distances of helices and sheets.

Which pairs
    * From the model's own annotation when it has any (mmCIF ``struct_conf`` /
      ``struct_sheet_range``, PDB ``HELIX`` / ``SHEET``, read by gemmi as ``Structure.helices`` /
      ``Structure.sheets``): in a helix, O(i)...N(i+n) for every i with i and i+n inside it, n = 4
      for alpha (class 1), 3 for 3-10 (class 5), 5 for pi (class 3) helices; in a sheet, the
      bridge hydrogen bonds (below) between residues of its strands, since the annotation gives
      the register of one pair per strand pair only.
    * Without any annotation, from a DSSP-like assignment of the model itself (Kabsch & Sander
      1983, Biopolymers 22:2577): the electrostatic energy
      ``E = 0.084 * 332 (1/r_ON + 1/r_CH - 1/r_OH - 1/r_CN)`` kcal/mol of every backbone C=O...H-N
      pair, the amide H placed 1 Å from N opposite the preceding C=O, a hydrogen bond where
      ``E < -0.5`` kcal/mol; alpha helices are two consecutive 4-turns (the turn bonds of both
      are restrained), sheet pairs are the bonds that make a parallel or antiparallel bridge.
    * Never to a proline N (no amide H), never across a chain break (residues not numbered as
      neighbours, :func:`rerefine.refine.chain_breaks.consecutive`) inside a helix, and, as
      Phenix's ``remove_outliers``, never a pair farther than :data:`OUTLIER_CUTOFF` in the input.

Form
    ``sum ((|d - d0| - slack)_+ / sigma)^2`` on the O-N distance ``d`` (the form and units of
    the library bond restraints), ``d0`` = :data:`IDEAL` 2.9 Å, sigma :data:`SIGMA` 0.05 Å,
    slack :data:`SLACK` 0: the defaults of Phenix's secondary-structure restraints
    (``mmtbx.secondary_structure``: ``n_o_distance_ideal = 2.9``, ``sigma = 0.05``,
    ``slack = 0``, outliers beyond 3.5 Å removed; Headd et al. 2012, Acta Cryst. D68:381).
    Hydrogen-bond angles are not restrained (Phenix's optional angle restraints are not done).

Use
    Off by default (``realspace.refine_model(secondary_structure=False)``), because where the
    issue asked for it, at 3.5-4.5 Å, it made no independent figure better
    (``benchmarks/bench_refine_validation.py --ss``): on 7CEC / EMD-30342 (3.9 Å) Ramachandran
    favoured 95.0 -> 94.6 %, rotamer outliers 4 -> 5, CC_mask with the deposited B 0.806 -> 0.805,
    shaken-model recovery 0.276 -> 0.274 Å; on 5ME2 against EMD-3488 low-pass filtered to 4.5 Å
    Ramachandran outliers 0 -> 2, CC_mask with the deposited B 0.827 -> 0.823. They only help a
    0.5 Å-shaken start (5ME2 at 4.5 Å: 0.363 -> 0.344 Å from the deposited model), which is not
    what the service refines: deposited models, whose helices and strands the Ramachandran term
    and the reference-position restraint already hold.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .chain_breaks import consecutive
from .geometry import flat_bottom_range

#: Å, ideal O...N distance (Phenix ``n_o_distance_ideal``).
IDEAL = 2.9
#: Å, sigma of the distance restraint (Phenix ``sigma``).
SIGMA = 0.05
#: Å, half-width of the flat bottom (Phenix ``slack``).
SLACK = 0.0
#: Å, pairs farther apart than this in the input are not restrained (Phenix ``remove_outliers``).
OUTLIER_CUTOFF = 3.5
#: kcal/mol, Kabsch-Sander hydrogen-bond threshold.
HBOND_ENERGY = -0.5
#: residue step of the helix hydrogen bond by gemmi helix class (1 alpha, 5 3-10, 3 pi)
HELIX_STEP = {1: 4, 5: 3, 3: 5}


@njit(cache=True)
def hbond_energy_gradient(xyz, pairs, ideal, sigma, slack, g):
    """``sum ((|d - d0| - slack)_+ / sigma)^2`` over atom pairs ``pairs`` (n, 2) of ``xyz`` (N, 3) Å;
    the gradient (1/Å) is added into ``g`` (N, 3). Dimensionless."""
    return flat_bottom_range(xyz, pairs, ideal, sigma, slack, 1.0, g, 0, pairs.shape[0])


def backbone(st) -> list[dict]:
    """Per protein residue of ``st[0]`` (chain order): chain name, gemmi residue, and the indices
    (``st[0].all()`` order) of its N, CA, C, O (first conformer); residues without all four skipped."""
    out = []
    i = 0
    for ch in st[0]:
        for res in ch:
            at = {}
            for a in res:
                if a.name in ("N", "CA", "C", "O") and a.name not in at and a.altloc in ("\0", "A"):
                    at[a.name] = i
                i += 1
            if len(at) == 4:
                out.append({"chain": ch.name, "res": res, **at})
    return out


def _linked(a: dict, b: dict, xyz: np.ndarray) -> bool:
    """``b`` follows ``a`` in one chain with a peptide bond (numbered as neighbours, C-N < 2 Å)."""
    return (a["chain"] == b["chain"] and consecutive(a["res"], b["res"])
            and float(np.linalg.norm(xyz[a["C"]] - xyz[b["N"]])) < 2.0)


def kabsch_sander(bb: list[dict], xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kabsch-Sander energies (kcal/mol) of C=O of residue ``i`` to N-H of residue ``j`` (indices into
    ``bb``) for the pairs with N-O <= 5.2 Å, ``|i - j| >= 2`` or other chains, and an amide H on ``j``
    (not proline, not a chain start); capped at -9.9 as in DSSP. Returns ``(i, j, E)``."""
    n = len(bb)
    none = (np.zeros(0, int), np.zeros(0, int), np.zeros(0))
    if n < 2:
        return none
    N = xyz[[b["N"] for b in bb]]
    C = xyz[[b["C"] for b in bb]]
    O = xyz[[b["O"] for b in bb]]
    H = np.full((n, 3), np.nan)
    for j in range(1, n):
        if bb[j]["res"].name != "PRO" and _linked(bb[j - 1], bb[j], xyz):
            v = C[j - 1] - O[j - 1]
            H[j] = N[j] + v / np.linalg.norm(v)
    from scipy.spatial import cKDTree

    pairs = cKDTree(O).query_ball_tree(cKDTree(N), 5.2)
    ii, jj = [], []
    for i, js in enumerate(pairs):
        for j in js:
            if abs(i - j) >= 2 or bb[i]["chain"] != bb[j]["chain"]:
                ii.append(i)
                jj.append(j)
    if not ii:
        return none
    ii, jj = np.array(ii), np.array(jj)
    ok = np.isfinite(H[jj, 0])
    ii, jj = ii[ok], jj[ok]

    def dist(a, b):
        return np.linalg.norm(a - b, axis=1)

    en = 0.084 * 332.0 * (1 / dist(O[ii], N[jj]) + 1 / dist(C[ii], H[jj]) - 1 / dist(O[ii], H[jj])
                          - 1 / dist(C[ii], N[jj]))
    return ii, jj, np.maximum(en, -9.9)


def hbonds(bb: list[dict], xyz: np.ndarray) -> set:
    """``(i, j)``: C=O of residue ``i`` is hydrogen-bonded to N-H of ``j`` (Kabsch-Sander ``E < -0.5``)."""
    ii, jj, e = kabsch_sander(bb, xyz)
    ok = e < HBOND_ENERGY
    return set(zip(ii[ok].tolist(), jj[ok].tolist()))


def _helix_turn_pairs(hb: set, bb, xyz) -> set:
    """(i, i+4) of DSSP alpha helices: 4-turns at i-1 and i (both turns' bonds)."""
    n = len(bb)
    turn = np.zeros(n, bool)
    for i in range(n - 4):
        turn[i] = (i, i + 4) in hb and all(_linked(bb[k], bb[k + 1], xyz) for k in range(i, i + 4))
    out = set()
    for i in range(1, n):
        if turn[i] and turn[i - 1]:
            out |= {(i - 1, i + 3), (i, i + 4)}
    return out


def _bridge_pairs(hb: set, bb, xyz) -> set:
    """Hydrogen bonds (acceptor residue, donor residue) making DSSP bridges between residues ``i``, ``j``
    (``|i - j| > 2`` or other chains): parallel ``[i-1 -> j, j -> i+1]`` or ``[j-1 -> i, i -> j+1]``,
    antiparallel ``[i -> j, j -> i]`` or ``[i-1 -> j+1, j-1 -> i+1]``; ``a -> b`` = C=O of a to N-H of b."""
    n = len(bb)
    out = set()
    nxt = [k + 1 < n and _linked(bb[k], bb[k + 1], xyz) for k in range(n)]  # k and k+1 linked
    cand = hb | {(j, i) for i, j in hb}
    for i, j in cand:
        for a in (i - 1, i, i + 1):
            for b in (j - 1, j, j + 1):
                if not (0 <= a < n and 0 <= b < n and a < b):
                    continue
                if bb[a]["chain"] == bb[b]["chain"] and b - a <= 2:
                    continue
                if not (0 < a < n - 1 and 0 < b < n - 1 and nxt[a - 1] and nxt[a] and nxt[b - 1] and nxt[b]):
                    continue
                for bridge in (((a - 1, b), (b, a + 1)), ((b - 1, a), (a, b + 1)),  # parallel
                               ((a, b), (b, a)), ((a - 1, b + 1), (b - 1, a + 1))):  # antiparallel
                    if bridge[0] in hb and bridge[1] in hb:
                        out |= set(bridge)
    return out


def _annotated(st, bb, xyz, hb) -> set:
    """(acceptor, donor) residue pairs from the helix and sheet records of ``st``."""
    where = {(b["chain"], b["res"].seqid.num, b["res"].seqid.icode): k for k, b in enumerate(bb)}

    def find(addr):
        return where.get((addr.chain_name, addr.res_id.seqid.num, addr.res_id.seqid.icode))

    out = set()
    for h in st.helices:
        step = HELIX_STEP.get(int(h.pdb_helix_class.value), 0)
        a, b = find(h.start), find(h.end)
        if not step or a is None or b is None:
            continue
        for i in range(a, b - step + 1):
            if all(_linked(bb[k], bb[k + 1], xyz) for k in range(i, i + step)):
                out.add((i, i + step))
    for sh in st.sheets:
        members = set()
        for s in sh.strands:
            a, b = find(s.start), find(s.end)
            if a is not None and b is not None:
                members |= set(range(a, b + 1))
        out |= {(i, j) for i, j in _bridge_pairs(hb, bb, xyz) if i in members and j in members}
    return out


def hbond_pairs(st, xyz: np.ndarray, *, annotation: bool | None = None):
    """Backbone hydrogen bonds to restrain in the first model of ``st``.

    Parameters
    ----------
    st : gemmi.Structure
        The model (its ``helices`` / ``sheets`` records are the annotation).
    xyz : ndarray (N, 3)
        Coordinates (Å, ``st[0].all()`` order) the outlier cut-off and the DSSP-like assignment use.
    annotation : bool, optional
        True: the file's annotation only; False: the DSSP-like assignment only; None (default):
        the annotation when the model has any helix or sheet record, else the assignment.

    Returns
    -------
    pairs : ndarray (n, 2) of int32
        Atom indices (O of the acceptor residue, N of the donor residue).
    source : str
        ``"annotation"`` or ``"dssp"``.
    labels : list of str
        ``chain:seq O -> chain:seq N`` per pair.
    """
    bb = backbone(st)
    hb = hbonds(bb, xyz)
    use_ann = (len(st.helices) + len(st.sheets) > 0) if annotation is None else annotation
    if use_ann:
        res_pairs = _annotated(st, bb, xyz, hb)
    else:
        res_pairs = _helix_turn_pairs(hb, bb, xyz) | _bridge_pairs(hb, bb, xyz)
    rows, labels = [], []
    for i, j in sorted(res_pairs):
        if bb[j]["res"].name == "PRO":
            continue
        o, nn = bb[i]["O"], bb[j]["N"]
        if float(np.linalg.norm(xyz[o] - xyz[nn])) > OUTLIER_CUTOFF:
            continue
        rows.append((o, nn))
        labels.append(f"{bb[i]['chain']}:{bb[i]['res'].seqid.num} O -> {bb[j]['chain']}:{bb[j]['res'].seqid.num} N")
    return (np.array(rows, dtype=np.int32).reshape(-1, 2), "annotation" if use_ann else "dssp", labels)


class HBondRestraint:
    """The secondary-structure term for the refinement target (a ``Restraints.extra_terms`` entry)."""

    name = "secondary_structure"

    def __init__(self, pairs: np.ndarray, fixed: np.ndarray, *, ideal: float = IDEAL, sigma: float = SIGMA,
                 slack: float = SLACK, source: str = "", labels=()):
        self.pairs = np.ascontiguousarray(pairs, dtype=np.int32).reshape(-1, 2)
        self.ideal = np.full(len(self.pairs), float(ideal))
        self.sigma = np.full(len(self.pairs), float(sigma))
        self.slack = float(slack)
        self.fixed = np.asarray(fixed, bool)
        self.source = source
        self.labels = list(labels)

    def __len__(self) -> int:
        return len(self.pairs)

    def energy_gradient(self, xyz: np.ndarray, grad: np.ndarray) -> float:
        """Energy (dimensionless); adds the gradient (1/Å) into ``grad``, none on fixed atoms."""
        if not len(self.pairs):
            return 0.0
        g = np.zeros_like(grad)
        e = hbond_energy_gradient(np.ascontiguousarray(xyz, dtype=np.float64), self.pairs, self.ideal,
                                  self.sigma, self.slack, g)
        g[self.fixed] = 0.0
        grad += g
        return float(e)


def secondary_structure_terms(st, r, xyz: np.ndarray) -> tuple:
    """``(HBondRestraint,)`` for the model's backbone hydrogen bonds, ``()`` when it has none.
    ``r``: the refinement's restraints (their ``fixed`` atoms get no gradient)."""
    pairs, source, labels = hbond_pairs(st, xyz)
    if not len(pairs):
        return ()
    return (HBondRestraint(pairs, r.fixed, source=source, labels=labels),)
