"""Occupancies of alternative conformations refined against a map by fitting the model map.

Method (real-space occupancy refinement as in phenix.real_space_refine, Afonine et al. 2018,
Acta Cryst. D74:531, section 2.4: occupancies are refined, like B factors, by fitting the
model-calculated map to the experimental map): every residue that has alternative
conformations (atoms with an altloc) gets one occupancy per conformer, shared by that
conformer's atoms. The data term is the one of the B refinement (:class:`.modelfit.ModelMapFit`,
target ``1 - CC_mask^2`` with the model map cut at the resolution, the scale and offset
of the model map re-fitted at every evaluation; its gradient with respect to each atom's
occupancy is the filtered residual map gathered over the atom's density).

Constraints (as Phenix's constrained occupancy groups): the conformer occupancies of a
residue sum to their starting total (usually 1) and each lies in [0, 1]; atoms without
altloc keep their occupancy; B factors and positions are not changed. Minimised with
SLSQP (scipy), which keeps the linear equalities and bounds exactly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import gemmi
import numpy as np
from scipy import optimize

from .modelfit import ModelMapFit
from .mapio import DensityMap

log = logging.getLogger(__name__)


@dataclass
class ConformerGroups:
    """The conformer groups of a model (atoms in ``st[0].all()`` order).

    ``group_of[i]`` is the group of atom ``i`` (-1: no altloc); group ``g`` belongs to
    residue ``residue_of[g]`` and has altloc ``altloc[g]``; ``label[g]`` names it.
    """

    group_of: np.ndarray
    residue_of: np.ndarray
    altloc: list
    label: list

    @property
    def n_groups(self) -> int:
        return len(self.residue_of)


def conformer_groups(st: gemmi.Structure) -> ConformerGroups:
    """One group per (residue, altloc) of the first model of ``st``."""
    group_of = []
    residue_of, altloc, label = [], [], []
    r = 0
    for ch in st[0]:
        for res in ch:
            seen: dict[str, int] = {}
            for atom in res:
                alt = atom.altloc
                if alt in ("\0", " ", ""):
                    group_of.append(-1)
                    continue
                if alt not in seen:
                    seen[alt] = len(residue_of)
                    residue_of.append(r)
                    altloc.append(alt)
                    label.append(f"{ch.name}/{res.name}{res.seqid}/{alt}")
                group_of.append(seen[alt])
            r += 1
    return ConformerGroups(np.array(group_of, np.int64), np.array(residue_of, np.int64), altloc, label)


def add_rotamer_conformer(st: gemmi.Structure, chain: str, seqnum: int, chi1_turn: float,
                          occupancies: tuple[float, float] = (0.5, 0.5)) -> gemmi.Structure:
    """Copy of ``st`` where one residue's side chain has two conformers.

    Conformer A is the side chain as it is (CB onwards, altloc ``A``); conformer B is the same
    atoms turned by ``chi1_turn`` degrees about the CA-CB bond (chi1 changed by that much,
    CB itself stays). Backbone atoms (N, CA, C, O) keep no altloc. Used to build test models
    with alternative conformations from real ones.
    """
    st = st.clone()
    res = next((r for r in st[0][chain] if r.seqid.num == seqnum), None)
    if res is None or not res.find_atom("CA", "*") or not res.find_atom("CB", "*"):
        raise ValueError(f"{chain}/{seqnum}: no residue with CA and CB")
    ca = np.array(res.find_atom("CA", "*").pos.tolist())
    cb = np.array(res.find_atom("CB", "*").pos.tolist())
    k = (cb - ca) / np.linalg.norm(cb - ca)
    ang = np.radians(chi1_turn)
    copies = []
    for atom in res:
        if atom.name in ("N", "CA", "C", "O"):
            continue
        atom.altloc = "A"
        atom.occ = occupancies[0]
        c = atom.clone()
        c.altloc = "B"
        c.occ = occupancies[1]
        v = np.array(atom.pos.tolist()) - cb
        # Rodrigues rotation about the CA-CB axis through CB
        v = v * np.cos(ang) + np.cross(k, v) * np.sin(ang) + k * np.dot(k, v) * (1 - np.cos(ang))
        c.pos = gemmi.Position(*(cb + v))
        copies.append(c)
    for c in copies:
        res.add_atom(c)
    return st


def has_altlocs(st: gemmi.Structure) -> bool:
    """True when any atom of the first model has an alternative-location label."""
    return any(cra.atom.altloc not in ("\0", " ", "") for cra in st[0].all())


@dataclass
class OccupancyResult:
    """Outcome of :func:`refine_occupancy`.

    ``groups``: one row per conformer group (``label``, ``before``, ``after``);
    ``cc_before``/``cc_after``: the fitted correlation (CC_mask of the fit box).
    """

    groups: list = field(default_factory=list)
    cc_before: float = float("nan")
    cc_after: float = float("nan")
    evaluations: int = 0
    status: str = "ok"


def refine_occupancy(st: gemmi.Structure, dmap: DensityMap, resolution: float, *,
                     xyz: np.ndarray | None = None, fit: ModelMapFit | None = None,
                     max_iter: int = 50) -> OccupancyResult:
    """Refine the occupancies of alternative conformers of ``st[0]`` against ``dmap``, in place.

    Parameters
    ----------
    st : gemmi.Structure
        Model; the occupancies of atoms with an altloc are updated in place, all else is kept.
        A model without altlocs is returned untouched (``status`` says so).
    dmap : DensityMap
        Experimental map (orthogonal cell).
    resolution : float
        Å; the model map is cut at it.
    xyz : numpy.ndarray, optional
        (N, 3) positions, Å, instead of those in ``st``.
    fit : ModelMapFit, optional
        A prepared fit of the same atoms (its occupancies are the starting values).
    max_iter : int
        SLSQP iterations.

    Returns
    -------
    OccupancyResult
        Per group the occupancy before and after; each residue's conformer occupancies sum to
        their starting total (each conformer's start clipped to [0, 1]) and each lies in [0, 1].
        If the fit would end worse than it started, the input occupancies are kept.
    """
    groups = conformer_groups(st)
    out = OccupancyResult()
    if groups.n_groups == 0:
        out.status = "no alternative conformations"
        return out
    atoms = [cra.atom for cra in st[0].all()]
    if xyz is None:
        xyz = np.array([a.pos.tolist() for a in atoms], float).reshape(-1, 3)
    occ0 = np.array([a.occ for a in atoms], float)
    bvals = np.array([a.b_iso for a in atoms], float)
    if fit is None:
        fit = ModelMapFit.prepare(dmap, xyz, [a.element.name for a in atoms], occ0, resolution)
    ng = groups.n_groups
    gi = groups.group_of
    member = gi >= 0
    # a conformer's occupancy is the mean over its atoms (normally they are all equal)
    cnt = np.bincount(gi[member], minlength=ng).astype(float)
    q0 = np.clip(np.bincount(gi[member], weights=occ0[member], minlength=ng) / np.maximum(cnt, 1), 0.0, 1.0)
    residues = np.unique(groups.residue_of)
    totals = {r: float(q0[groups.residue_of == r].sum()) for r in residues}
    base = np.clip(occ0, 0.0, 1.0)

    def occ_of(q):
        o = base.copy()
        o[member] = q[gi[member]]
        return o

    m0, _, cc0 = fit.evaluate(bvals, occ_of(q0), wrt="occ")
    # SLSQP stops on absolute changes of the objective: scale the misfit so that its starting
    # value is worth one unit per atom in a conformer (changes of one side chain are ~1e-4 of it)
    scale = float(member.sum()) / max(m0, 1e-9)

    def f(q):
        m, g, _ = fit.evaluate(bvals, occ_of(q), wrt="occ")
        return scale * m, scale * np.bincount(gi[member], weights=g[member], minlength=ng)

    cons = []
    for r in residues:
        sel = (groups.residue_of == r).astype(float)
        cons.append({"type": "eq", "fun": (lambda q, s=sel, t=totals[r]: float(np.dot(s, q)) - t),
                     "jac": (lambda q, s=sel: s)})
    sol = optimize.minimize(f, q0, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * ng, constraints=cons,
                            options={"maxiter": max_iter, "ftol": 1e-9})
    q = np.clip(sol.x, 0.0, 1.0) if np.all(np.isfinite(sol.x)) else q0
    # restore the sums exactly (SLSQP meets them to its tolerance); spread any rounding on the
    # conformers that are not at a bound
    for r in residues:
        sel = groups.residue_of == r
        diff = totals[r] - q[sel].sum()
        room = (q[sel] > 0) & (q[sel] < 1)
        if abs(diff) > 0 and room.any():
            qs = q[sel]
            qs[room] += diff / room.sum()
            q[sel] = np.clip(qs, 0.0, 1.0)
    m1, _, cc1 = fit.evaluate(bvals, occ_of(q), wrt="occ")
    if not np.isfinite(m1) or m1 > m0:
        log.warning("occupancy refinement did not improve the fit (%.5f -> %.5f); input kept", m0, m1)
        q, cc1 = q0, cc0
        out.status = "kept input: no improvement"
    occ = occ_of(q)
    for a, o, mem in zip(atoms, occ, member):
        if mem:
            a.occ = float(o)
    out.groups = [{"label": groups.label[g], "before": float(q0[g]), "after": float(q[g])} for g in range(ng)]
    out.cc_before, out.cc_after = float(cc0), float(cc1)
    out.evaluations = int(sol.nfev)
    return out
