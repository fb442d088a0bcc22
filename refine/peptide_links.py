"""Peptide links for refinement: which peptides are bonded, cis or trans, and rebuilding trapped ones.

Moved out of ``realspace`` (one job per module): :func:`refinement_topology` decides the peptide
links robustly against coordinate errors (and never across a gap in the numbering,
:mod:`.chain_breaks`), :func:`rebuild_peptides` replaces peptides trapped far from planar
cis/trans by ideal units (Jones et al. 1991 flips included). ``realspace`` re-exports the
public names.
"""

from __future__ import annotations

import gemmi
import numpy as np
from scipy import optimize


#: Å; consecutive amino acids of a chain whose C(i)-N(i+1) distance is below this are linked
#: by a peptide bond even when gemmi's topology (link only below 1.5 x 1.341 Å) calls it a gap.
#: A 0.5 Å RMS coordinate error stretches C-N bonds to 2.0-2.8 Å (shaken 5ME2: 50 of 562 links
#: lost, their N atoms then drift 1-2 Å); a real chain break (missing residues) leaves C(i) and
#: the next N at least ~3.3 Å apart (they are then 1-5 or more distant).
PEPTIDE_LINK_MAX = 3.0
#: Degrees: without cis-peptide records in the file, a peptide to proline is cis when its input
#: omega is nearer 0 than 180; any other residue only when |omega| < this and CA-CA is below
#: :data:`CIS_CA_CA_MAX` (ideal cis 2.9 Å, trans 3.8 Å). Non-proline cis peptides are rare
#: (about 0.03 % vs 5 % for proline; Jabs et al. 1999, J Mol Biol 286:291), so a noisy omega
#: alone must not make one.
CIS_OMEGA_MAX = 30.0
CIS_CA_CA_MAX = 3.2


def _peptide_pairs(st: gemmi.Structure):
    """Consecutive residue pairs (r1, r2) of each chain that both carry C/N backbone atoms."""
    for ch in st[0]:
        for k in range(1, len(ch)):
            r1, r2 = ch[k - 1], ch[k]
            if r1.find_atom("C", "*") is not None and r2.find_atom("N", "*") is not None:
                yield ch, r1, r2


def refinement_topology(st: gemmi.Structure, monlib_dir):
    """Library restraints of ``st[0]`` with peptide links decided robustly against coordinate errors.

    gemmi decides links from the input coordinates alone: a C-N distance above 2.01 Å is a
    chain break (no peptide bond, angle, plane or omega restraint, and the two atoms then
    repel each other), and omega below 90 deg makes a cis link. On a model with coordinate
    errors both happen by the dozen. Here

    * consecutive amino acids with C(i)-N(i+1) < :data:`PEPTIDE_LINK_MAX` are linked (the
      topology is built on a copy whose N(i+1) is moved next to C(i); the coordinates of the
      model are not changed) when their sequence numbers are consecutive
      (:func:`rerefine.refine.chain_breaks.consecutive`): a gap in the numbering stays a break;
    * cis or trans is taken from the file's cis-peptide records (PDB ``CISPEP``, mmCIF
      ``struct_mon_prot_cis``) when it has any, else from the input geometry with the
      rules of :data:`CIS_OMEGA_MAX` (proline: nearer cis than trans), and the omega
      restraint's ideal value (the only difference between the library's CIS and TRANS
      links) set to 0 or 180 deg accordingly.
    """
    from .chain_breaks import consecutive
    from .restraints import atom_xyz, build_restraints

    topo = st.clone()
    while len(topo) > 1:
        del topo[len(topo) - 1]
    moved = 0
    for _, r1, r2 in _peptide_pairs(topo):
        if not consecutive(r1, r2):
            continue  # a gap in the numbering is a chain break, whatever the distance
        c = r1.find_atom("C", "*")
        for n in r2:
            if n.name != "N":
                continue
            d = c.pos.dist(n.pos)
            if 2.0 < d < PEPTIDE_LINK_MAX:
                u = (n.pos - c.pos) / d
                n.pos = c.pos + u * 1.34
                moved += 1
    r = build_restraints(topo, monlib_dir)
    xyz = atom_xyz(st)
    if moved:
        r.nonbonded.build(xyz)
        r.warnings.append(f"{st.name or 'model'}: {moved} peptide links with C-N 2.0-{PEPTIDE_LINK_MAX:g} Å "
                          "restrained as bonds (gemmi would call them chain breaks)")
    _set_omega_targets(st, r, xyz)
    return r


def _set_omega_targets(st: gemmi.Structure, r, xyz: np.ndarray) -> None:
    """Ideal omega 0 (cis) or 180 (trans) for each peptide omega restraint; see :func:`refinement_topology`."""
    t = r.torsions
    lab = np.array(t.label)
    om = np.nonzero(lab == "omega")[0]
    if not len(om):
        return
    info = [(c.chain.name, c.residue.seqid.num, c.residue.seqid.icode, c.residue.name) for c in st[0].all()]
    records = {(cp.partner_n.chain_name, cp.partner_n.res_id.seqid.num, cp.partner_n.res_id.seqid.icode)
               for cp in st.cispeps}
    idx = t.idx[om]
    a, b, c, d = xyz[idx[:, 0]], xyz[idx[:, 1]], xyz[idx[:, 2]], xyz[idx[:, 3]]
    b1, b2, b3 = b - a, c - b, d - c
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    m1 = np.cross(n1, b2 / np.maximum(np.linalg.norm(b2, axis=1), 1e-9)[:, None])
    omega = np.degrees(np.arctan2((m1 * n2).sum(1), (n1 * n2).sum(1)))
    caca = np.linalg.norm(d - a, axis=1)
    for k, ti in enumerate(om):
        ch, num, icode, rname = info[int(idx[k, 3])]
        if records:
            cis = (ch, num, icode) in records
        elif rname == "PRO":
            cis = abs(omega[k]) < 90.0
        else:
            cis = abs(omega[k]) < CIS_OMEGA_MAX and caca[k] < CIS_CA_CA_MAX
        t.ideal[ti] = 0.0 if cis else 180.0


#: Degrees: a peptide whose omega is further than this from its target (0 or 180) after a
#: macro-cycle is trapped (planarity and angle restraints hold a half-turned peptide in place)
#: and is rebuilt by :func:`rebuild_peptides`.
TRAPPED_OMEGA = 30.0


def _ideal_peptide(cis: bool) -> dict:
    """Planar ideal peptide unit CA1-C(=O)-N(H)-CA2 in 2-D (Å), from the library's TRANS/CIS link
    (C-N 1.337 Å, CA-C-N 115.9, O-C-N 123.5, C-N-CA 122.1, C-N-H 119.2 deg) and the amino-acid
    dictionaries (CA-C 1.525, C=O 1.231, N-CA 1.458, N-H 0.86 Å)."""
    def at(origin, length, ang_deg, sign):
        a = np.radians(ang_deg)
        return origin + length * np.array([np.cos(a), sign * np.sin(a)])

    c = np.zeros(2)
    n = np.array([1.337, 0.0])
    ca1 = at(c, 1.525, 115.9, 1.0)
    o = at(c, 1.231, 123.5, -1.0)
    side = 1.0 if cis else -1.0  # CA2 on CA1's side of the C-N bond when cis
    ca2 = n + 1.458 * np.array([np.cos(np.radians(180.0 - 122.1)), side * np.sin(np.radians(180.0 - 122.1))])
    h = n + 0.86 * np.array([np.cos(np.radians(180.0 - 119.2)), -side * np.sin(np.radians(180.0 - 119.2))])
    # frame: origin at the CA1-CA2 midpoint, x along CA1 -> CA2, y in the plane
    mid = 0.5 * (ca1 + ca2)
    ex = (ca2 - ca1) / np.linalg.norm(ca2 - ca1)
    ey = np.array([-ex[1], ex[0]])
    return {k: np.array([np.dot(v - mid, ex), np.dot(v - mid, ey)])
            for k, v in (("C", c), ("O", o), ("N", n), ("H", h))}


def peptide_units(st: gemmi.Structure, r) -> np.ndarray:
    """(n, 8) rows ``omega restraint, CA1, C, O, N, H (-1 if absent), CA2, cis`` of every
    restrained peptide whose atoms have no alternative conformers."""
    t = r.torsions
    lab = np.array(t.label)
    names = [c.atom.name for c in st[0].all()]
    look = {}
    for i, (res, nm) in enumerate(zip(r.residue.tolist(), names)):
        if r.altloc[i] == 0:
            look[(res, nm)] = i
    rows = []
    for k in np.nonzero(lab == "omega")[0]:
        ca1, c1, n2, ca2 = (int(v) for v in t.idx[k])
        if r.altloc[[ca1, c1, n2, ca2]].any() or r.fixed[[ca1, c1, n2, ca2]].any():
            continue
        if names[ca1] != "CA" or names[c1] != "C" or names[n2] != "N" or names[ca2] != "CA":
            continue
        o1 = look.get((int(r.residue[c1]), "O"))
        if o1 is None:
            continue
        h2 = look.get((int(r.residue[n2]), "H"), -1)
        rows.append((k, ca1, c1, o1, n2, h2, ca2, int(abs(t.ideal[k]) < 90.0)))
    return np.array(rows, dtype=np.int64).reshape(-1, 8)


def omega_angles(xyz: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Dihedral angles (deg) of rows ``idx`` (n, 4)."""
    a, b, c, d = xyz[idx[:, 0]], xyz[idx[:, 1]], xyz[idx[:, 2]], xyz[idx[:, 3]]
    b1, b2, b3 = b - a, c - b, d - c
    n1, n2 = np.cross(b1, b2), np.cross(b2, b3)
    m1 = np.cross(n1, b2 / np.maximum(np.linalg.norm(b2, axis=1), 1e-9)[:, None])
    return np.degrees(np.arctan2((m1 * n2).sum(1), (n1 * n2).sum(1)))


def rebuild_peptides(xyz: np.ndarray, units: np.ndarray, energy, *, tolerance: float = TRAPPED_OMEGA,
                     steps: int = 24, omega_ideal: np.ndarray | None = None,
                     switchable: np.ndarray | None = None, residue_names=None, energy_gradient=None,
                     residue: np.ndarray | None = None, free: np.ndarray | None = None,
                     relax_top: int = 2, relax_iter: int = 30) -> tuple[np.ndarray, list]:
    """Replace trapped peptides by an ideal planar unit at the best rotation about CA(i)-CA(i+1).

    A peptide whose omega is more than ``tolerance`` from its target (0 or 180 deg) sits in a
    local minimum: bringing it back means passing through non-planar states that the
    planarity and angle restraints forbid. With both CA fixed the ideal peptide unit
    (C, O, N, H) has one degree of freedom, the rotation about the CA-CA axis; ``steps``
    rotations are scored with ``energy(xyz)`` (map + restraints) and the best one is kept when
    it is lower than the current one. The scan covers the full turn, so a peptide whose
    carbonyl points the wrong way (a flip, Jones et al. 1991, Acta Cryst A47:110) is
    corrected in the same move. An ideal unit dropped into a relaxed neighbourhood strains the
    backbone angles around it, so with ``energy_gradient(xyz) -> (E, dE/dxyz)``, ``residue``
    (residue serial per atom) and ``free`` (refined atoms) the ``relax_top`` best rotations of
    each isomer are first relaxed (L-BFGS, ``relax_iter`` steps, the free atoms of the two
    residues only) and compared relaxed. Returns the new coordinates and the unit rows changed.

    Cis or trans: where ``switchable`` (peptides whose isomer came from the input geometry,
    not from cis-peptide records) both ideal units are scanned, each scored with its own omega
    target (``omega_ideal``, the restraint array, updated in place together with
    ``units[:, 7]``), and cis carries the prior penalty ``-2 ln p`` (:data:`CIS_PRIOR`,
    ``residue_names[u]`` is the residue after the peptide): a
    switchable cis peptide is re-examined even when it is not trapped.
    """
    xyz = xyz.copy()
    om = omega_angles(xyz, units[:, [1, 2, 4, 6]])
    target = np.where(units[:, 7] == 1, 0.0, 180.0)
    dev = np.abs((om - target + 180.0) % 360.0 - 180.0)
    templates = {0: _ideal_peptide(False), 1: _ideal_peptide(True)}
    changed = []
    if switchable is None or omega_ideal is None:
        switchable = np.zeros(len(units), bool)
    todo = (dev > tolerance) | (switchable & (units[:, 7] == 1))
    if not np.any(todo):
        return xyz, changed
    e_cur = energy(xyz)
    for u in np.nonzero(todo)[0]:
        k, ca1, c1, o1, n2, h2, ca2, cis = (int(v) for v in units[u])
        isomers = (0, 1) if switchable[u] else (cis,)
        prior = {0: 0.0, 1: 0.0}
        if switchable[u]:
            p = CIS_PRIOR["PRO"] if residue_names is not None and residue_names[u] == "PRO" else CIS_PRIOR["other"]
            prior[1] = -2.0 * np.log(p)
            prior[0] = -2.0 * np.log(1.0 - p)
            e_cur = energy(xyz) + prior[cis]
        axis = xyz[ca2] - xyz[ca1]
        ex = axis / np.linalg.norm(axis)
        ref = np.array([1.0, 0.0, 0.0]) if abs(ex[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        e1 = np.cross(ex, ref)
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(ex, e1)
        mid = 0.5 * (xyz[ca1] + xyz[ca2])
        ids = [c1, o1, n2] + ([h2] if h2 >= 0 else [])
        keys = ["C", "O", "N"] + (["H"] if h2 >= 0 else [])
        best = (e_cur, None, cis)
        trial = xyz.copy()
        if energy_gradient is not None:
            local = np.isin(residue, (residue[ca1], residue[ca2]))
            if free is not None:
                local &= free
            local_ids = np.nonzero(local)[0]
        for iso in isomers:
            tpl = templates[iso]
            if switchable[u]:
                omega_ideal[k] = 0.0 if iso else 180.0
            scored = []
            for th in np.linspace(0.0, 2.0 * np.pi, steps, endpoint=False):
                ey = np.cos(th) * e1 + np.sin(th) * e2
                for i, kname in zip(ids, keys):
                    a, b = tpl[kname]
                    trial[i] = mid + a * ex + b * ey
                scored.append((energy(trial) + prior[iso], trial.copy()))
            scored.sort(key=lambda t: t[0])
            if energy_gradient is None:
                cands = scored[:1]
            else:
                cands = []
                for _, x in scored[:relax_top]:
                    def fg(p, x=x):
                        xx = x.copy()
                        xx[local_ids] = p.reshape(-1, 3)
                        e, g = energy_gradient(xx)
                        return e, g[local_ids].ravel()
                    sol = optimize.minimize(fg, x[local_ids].ravel(), jac=True, method="L-BFGS-B",
                                            options={"maxiter": relax_iter})
                    x = x.copy()
                    x[local_ids] = sol.x.reshape(-1, 3)
                    cands.append((float(sol.fun) + prior[iso], x))
            for e, x in cands:
                if e < best[0]:
                    best = (e, x, iso)
        if switchable[u]:
            omega_ideal[k] = 0.0 if best[2] else 180.0
            units[u, 7] = best[2]
        if best[1] is not None:
            xyz = best[1]
            e_cur = best[0] - prior[best[2]]
            changed.append(int(u))
    return xyz, changed


#: Prior probability of a cis peptide before proline and before any other residue (Jabs et al.
#: 1999, J Mol Biol 286:291: 5.2 % and 0.03 % of peptides in the PDB), used as ``-2 ln p`` in
#: the cis/trans choice of :func:`rebuild_peptides` (the target is on a -2 log-likelihood scale).
CIS_PRIOR = {"PRO": 0.052, "other": 0.0003}
