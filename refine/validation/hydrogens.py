"""Hydrogens for all-atom contact analysis: placement and orientation of rotatable groups.

Placement: riding hydrogens from the CCP4 monomer library through gemmi's topology
(``HydrogenChange.ReAddButWater``: existing hydrogens are replaced, waters get none, residues
without a dictionary keep what they have), at the library's electron-cloud X-H distances
(C-H 0.97 Å, N-H 0.86 Å, O-H 0.82 Å), the distances phenix.clashscore uses by default.
Histidines are given the neutral N-epsilon tautomer (HE2, no HD1), as reduce does when it
does not optimise flips (MolProbity's clashscore runs reduce without flips); ND1 is then an
H-bond acceptor.

Orientation (a reduced form of reduce's optimisation, Word et al. 1999): every rotatable
hydrogen group -- hydroxyl and thiol H (Ser, Thr, Tyr, Cys, ligands), NH3+ (Lys, N termini)
and the Met methyl -- is turned about its X-Y bond in 5° steps to the orientation with the
best contact score: H-bond overlaps of polar H with acceptors (waters included) count for
it, van der Waals overlaps against it (10x beyond 0.4 Å). Groups are set one after the
other, twice over. Other methyls stay staggered, as reduce leaves them.
"""

from __future__ import annotations

import io
import os

import gemmi
import numpy as np
from scipy.spatial import cKDTree

from rerefine.common.errors import InputError

ROTOR_STEP = 5.0
_CUTOFF = 4.5


def add_hydrogens(st: gemmi.Structure, monlib_dir: str | os.PathLike) -> gemmi.Structure:
    """A copy of the first model of ``st`` with riding hydrogens (see module docstring)."""
    return hydrogenated(st, monlib_dir)[0]


def hydrogenated(st: gemmi.Structure, monlib_dir: str | os.PathLike) -> tuple[gemmi.Structure, tuple]:
    """:func:`add_hydrogens`' model and its topology key.

    The key holds everything the restraints of the model with hydrogens
    (:func:`rerefine.refine.restraints.build_restraints`) depend on besides coordinates: the
    model's name, and per residue in model order its chain, name, number and insertion code,
    its atoms (name, altloc, element) and the links gemmi's topology made to the previous
    residue (their link ids: ``TRANS``/``CIS``/``PTRANS``/``PCIS``, ... chosen from the
    coordinates), plus the other links gemmi applied and the model's connections (disulfides,
    metal and other covalent links). Two models
    with equal keys get the same restraints; only the neighbour list follows the coordinates.
    """
    work = st.clone()
    while len(work) > 1:
        del work[len(work) - 1]
    work.setup_entities()
    model = work[0]
    resnames = model.get_all_residue_names()
    label = st.name or "model"
    try:
        monlib = gemmi.read_monomer_lib(os.fspath(monlib_dir), resnames, ignore_missing=True)
    except Exception as exc:
        raise InputError(f"{monlib_dir}: cannot read monomer library ({str(exc).splitlines()[0]})") from None
    try:
        topo = gemmi.prepare_topology(work, monlib, model_index=0, h_change=gemmi.HydrogenChange.ReAddButWater,
                                      reorder=False, warnings=io.StringIO(), ignore_unknown_links=True)
    except Exception as exc:
        raise InputError(f"{label}: cannot add hydrogens ({str(exc).splitlines()[0]})") from None
    links = [tuple(lk.link_id for lk in ri.prev) for ci in topo.chain_infos for ri in ci.res_infos]
    extras = [(lk.link_id, lk.res1.name, str(lk.res1.seqid), lk.res2.name, str(lk.res2.seqid), lk.alt1, lk.alt2,
               str(lk.asu)) for lk in topo.extras]
    connections = [(c.link_id, str(c.type), str(c.partner1), c.partner1.altloc, str(c.partner2), c.partner2.altloc,
                    str(c.asu)) for c in work.connections]
    del topo
    for ch in work[0]:
        for res in ch:
            if res.name == "HIS":
                for k in range(len(res) - 1, -1, -1):
                    if res[k].name == "HD1":
                        del res[k]
    residues = [(ch.name, res.name, res.seqid.num, res.seqid.icode,
                 tuple((a.name, a.altloc, a.element.name) for a in res)) for ch in model for res in ch]
    return work, (work.name, tuple(residues), tuple(links), tuple(extras), tuple(connections))


def his_acceptors(st: gemmi.Structure, hb_type: np.ndarray) -> None:
    """Mark ND1 of histidines without HD1 as H-bond acceptors (``hb_type`` 2), in place."""
    i = 0
    for ch in st[0]:
        for res in ch:
            nd1 = None
            has_hd1 = False
            for a in res:
                if res.name == "HIS" and a.name == "ND1":
                    nd1 = i
                if a.name == "HD1":
                    has_hd1 = True
                i += 1
            if nd1 is not None and not has_hd1:
                hb_type[nd1] = 2


def rotors(element: np.ndarray, bond_idx: np.ndarray) -> list[tuple[int, int, list[int]]]:
    """Rotatable hydrogen groups ``(axis atom Y, pivot X, [H...])`` from the bond graph.

    X-H groups with X bonded to exactly one heavy atom Y: O or S with one H, N with three H,
    and a C with three H bonded to S (Met methyl).
    """
    n = element.shape[0]
    nbrs: list[list[int]] = [[] for _ in range(n)]
    for i, j in np.asarray(bond_idx).reshape(-1, 2).tolist():
        nbrs[i].append(j)
        nbrs[j].append(i)
    is_h = (element == "H") | (element == "D")
    out = []
    for x in range(n):
        e = element[x]
        if is_h[x] or e not in ("O", "S", "N", "C"):
            continue
        hs = [k for k in nbrs[x] if is_h[k]]
        heavy = [k for k in nbrs[x] if not is_h[k]]
        if len(heavy) != 1 or not hs:
            continue
        y = heavy[0]
        if (e in ("O", "S") and len(hs) == 1) or (e == "N" and len(hs) == 3) or \
                (e == "C" and len(hs) == 3 and element[y] == "S"):
            out.append((y, x, hs))
    return out


def _rotate(points: np.ndarray, origin: np.ndarray, axis: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """``points`` (k, 3) turned about ``axis`` through ``origin`` by each angle (rad): (A, k, 3)."""
    u = axis / np.linalg.norm(axis)
    v = points - origin
    c = np.cos(angles)[:, None, None]
    s = np.sin(angles)[:, None, None]
    cross = np.cross(u, v)[None]
    dot = (v @ u)[None, :, None] * u[None, None, :]
    return origin + v[None] * c + cross * s + dot * (1.0 - c)


def optimize_rotors(xyz: np.ndarray, element: np.ndarray, bond_idx: np.ndarray, rad: np.ndarray,
                    hb_type: np.ndarray, water: np.ndarray, altloc: np.ndarray, partner_ptr, partner_idx,
                    partner_code, *, passes: int = 2, groups: list | None = None) -> np.ndarray:
    """Coordinates with every rotatable H group turned to its best-scoring orientation.

    ``rad``: contact radii (Å); ``hb_type``: 2/3 acceptor, 4 polar H; ``water``: water atoms
    (acceptors for polar H). Pairs 1-2 … 1-5 apart (``partner_*``, CSR of pairs j > i) do
    not score. ``groups``: :func:`rotors` of ``element`` and ``bond_idx`` when already known.
    Returns a new (N, 3) array.
    """
    xyz = np.array(xyz, dtype=np.float64)
    if groups is None:
        groups = rotors(element, bond_idx)
    if not groups:
        return xyz
    tree = cKDTree(xyz)
    angles = np.deg2rad(np.arange(0.0, 360.0, ROTOR_STEP))
    acceptor = (hb_type == 2) | (hb_type == 3) | water
    polar_h = hb_type == 4

    def related(i: int, j: int) -> bool:
        a, b = (i, j) if i < j else (j, i)
        lo, hi = partner_ptr[a], partner_ptr[a + 1]
        k = lo + np.searchsorted(partner_idx[lo:hi], b)
        return k < hi and partner_idx[k] == b

    setups = []
    for y, x, hs in groups:
        near = np.array(tree.query_ball_point(xyz[x], _CUTOFF), dtype=np.int64)
        cand = [k for k in near.tolist() if k != x and k not in hs and
                not (altloc[k] and altloc[x] and altloc[k] != altloc[x])]
        per_h = []
        for h in hs:
            per_h.append(np.array([k for k in cand if not related(h, k)], dtype=np.int64))
        setups.append((y, x, hs, per_h))
    for _ in range(passes):
        for y, x, hs, per_h in setups:
            h0 = xyz[hs]
            trial = _rotate(h0, xyz[x], xyz[x] - xyz[y], angles)  # (A, k, 3)
            score = np.zeros(angles.shape[0])
            for t, h in enumerate(hs):
                nb = per_h[t]
                if nb.size == 0:
                    continue
                d = np.linalg.norm(trial[:, t, None, :] - xyz[nb][None], axis=2)  # (A, m)
                ov = rad[h] + rad[nb][None] - d
                hb = polar_h[h] & acceptor[nb]
                bad = np.where(ov > 0.4, 0.4 + 10.0 * (ov - 0.4), ov)
                score += np.where(hb[None], np.clip(ov, 0.0, 0.8) * 4.0, -np.clip(bad, 0.0, None)).sum(axis=1)
            best = int(np.argmax(score))
            if score[best] > score[0] + 1e-9:
                xyz[hs] = trial[best]
    return xyz
