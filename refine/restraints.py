"""Geometry restraints of a model from the CCP4 monomer library, via gemmi's topology.

:func:`build_restraints` reads the dictionaries for the residue names of the model
(``gemmi.read_monomer_lib``), lets gemmi match residues and inter-residue links
(``gemmi.prepare_topology``: peptide ``TRANS``/``CIS``/``PTRANS``..., nucleic ``p``,
disulfides and other known ``struct_conn``/LINK connections) and packs every
restraint into flat numpy arrays that the numba kernels of
:mod:`rerefine.refine.geometry` loop over.

Atom indexing (used everywhere in ``refine``): atom ``i`` is the ``i``-th item of
``list(st[0].all())`` -- chains, residues, atoms in file order, every alternative
conformer its own atom. :func:`atom_xyz` / :func:`set_xyz` convert between the
structure and an ``(N, 3)`` float64 array in that order.

Restraint conventions follow the CCP4 monomer library (Vagin et al. 2004,
Acta Cryst D60:2184) as used by Refmac/phenix: ideal values and esd (sigma) per
restraint, angles and torsions in degrees, chiral volume in Å³ with sign from the
dictionary (``both`` = either hand), planes as a single sigma per plane (Å).
Residues with no dictionary are *fixed*: no restraints, ``fixed`` mask True,
a warning in :attr:`Restraints.warnings`; they still take part in the nonbonded
term and in the metrics.

Length: one job, turning gemmi's topology into restraint arrays (with the residue and link
handling that needs).
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field

import gemmi
import numpy as np

from rerefine.common.errors import InputError

log = logging.getLogger(__name__)

# Residues that never have restraints of their own and need no dictionary warning
# beyond the normal path; they are still looked up in the library (HOH, ions exist there).
_WATER = {"HOH", "WAT", "DOD", "H2O"}


@dataclass
class BondSet:
    """Bond-length restraints: ``idx`` (n, 2) atoms, ``ideal`` Å, ``sigma`` Å."""

    idx: np.ndarray
    ideal: np.ndarray
    sigma: np.ndarray

    def __len__(self) -> int:
        return len(self.ideal)


@dataclass
class AngleSet:
    """Bond-angle restraints: ``idx`` (n, 3) atoms (vertex in the middle), ``ideal``/``sigma`` in degrees."""

    idx: np.ndarray
    ideal: np.ndarray
    sigma: np.ndarray

    def __len__(self) -> int:
        return len(self.ideal)


@dataclass
class TorsionSet:
    """Torsion restraints: ``idx`` (n, 4), ``ideal``/``sigma`` degrees, ``period`` (n,) int.

    The deviation is taken modulo ``360/period`` (period 0 in the library means 1).
    Torsions with ``sigma == 0`` (the library's "not restrained" phi etc.) are kept so the
    count matches gemmi's topology, but carry no weight in the target.
    """

    idx: np.ndarray
    ideal: np.ndarray
    sigma: np.ndarray
    period: np.ndarray
    label: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ideal)


@dataclass
class ChiralSet:
    """Chiral-volume restraints: ``idx`` (n, 4) = centre + 3 ligands; ``ideal`` signed volume Å³.

    Volume ``V = (r1 - c) · ((r2 - c) × (r3 - c))``; ``both[k]`` True when the dictionary
    allows either hand (then ``|V|`` is restrained to ``|ideal|``). ``sigma`` Å³.
    """

    idx: np.ndarray
    ideal: np.ndarray
    sigma: np.ndarray
    both: np.ndarray

    def __len__(self) -> int:
        return len(self.ideal)


@dataclass
class PlaneSet:
    """Planarity restraints: atoms of plane ``k`` are ``atoms[offsets[k]:offsets[k+1]]``; ``sigma`` Å."""

    atoms: np.ndarray
    offsets: np.ndarray
    sigma: np.ndarray

    def __len__(self) -> int:
        return len(self.sigma)


@dataclass
class Restraints:
    """All restraints of one model (first model of a structure), packed for numba kernels.

    Attributes
    ----------
    n_atoms : int
        Atoms in ``list(st[0].all())`` order (the index space of every array here).
    bonds, angles, torsions, chirals, planes :
        Packed restraint sets (see their classes). Inter-residue links applied by gemmi
        (peptide, nucleic, disulfide, ...) are included in these sets.
    links : dict
        ``link_id -> count`` of links applied by gemmi (``TRANS``, ``PTRANS``, ``CIS``,
        ``p``, ``disulf``, ...).
    fixed : ndarray of bool (N,)
        Atoms that must not move: residues with no dictionary. Their gradient rows are
        zeroed by :func:`rerefine.refine.geometry.restraint_energy_gradient`.
    warnings : list of str
        One line per problem handled (unknown residue fixed, missing atoms, ...).
    element : ndarray of str (N,)
        Element symbols (upper case).
    vdw_radius : ndarray (N,)
        van der Waals radius (Å) from the library's ``ener_lib`` energy type.
    hb_type : ndarray of uint8 (N,)
        H-bond class: 0 none, 1 donor, 2 acceptor, 3 both, 4 polar hydrogen, 5 metal ion.
    altloc : ndarray of uint8 (N,)
        ``ord(altloc)`` or 0 when blank; atoms with different non-blank altlocs never interact.
    residue : ndarray of int32 (N,)
        Residue serial (0-based, model order) of each atom.
    nonbonded : NonbondedList
        Neighbour list of the repulsion term, refreshed lazily by the energy function.
    weights : dict
        Relative weight of each term (``bond``, ``angle``, ``torsion``, ``chiral``,
        ``plane``, ``nonbonded``), all 1.0 by default; the refinement may lower e.g. torsions.
    """

    n_atoms: int
    bonds: BondSet
    angles: AngleSet
    torsions: TorsionSet
    chirals: ChiralSet
    planes: PlaneSet
    fixed: np.ndarray
    element: np.ndarray
    vdw_radius: np.ndarray
    hb_type: np.ndarray
    altloc: np.ndarray
    residue: np.ndarray
    links: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    # bond-path partners j > i of each atom (CSR), code 2..5 = 1-2 … 1-5 (nonbonded.topology_partners)
    partner_ptr: np.ndarray | None = None
    partner_idx: np.ndarray | None = None
    partner_code: np.ndarray | None = None
    nonbonded: object = None
    # optional Ramachandran term (ramachandran_restraint.RamachandranRestraint); set by the
    # refinement, not by build_restraints (validation statistics never include it)
    ramachandran: object = None
    # further optional terms with ``name`` and ``energy_gradient(xyz, grad) -> float`` (e.g.
    # chain_breaks.GapKeeper), set by the refinement; assign a new list, never append (copies share it)
    extra_terms: tuple = ()
    # validation watches of the refinement (objects with ``name`` and ``watch(r, xyz) -> int``,
    # e.g. TorsionWatch), called after each accepted cycle
    watches: tuple = ()
    weights: dict = field(default_factory=lambda: {
        "bond": 1.0, "angle": 1.0, "torsion": 1.0, "chiral": 1.0, "plane": 1.0, "nonbonded": 1.0})

    def __post_init__(self):
        # dataclasses.replace() hands the same dict to the copy: give every instance its own
        self.weights = dict(self.weights)

    @property
    def chirality(self) -> ChiralSet:
        """Alias of :attr:`chirals`."""
        return self.chirals

    def counts(self) -> dict:
        """Number of restraints per type (same meaning as gemmi's Topo lists)."""
        return {"bonds": len(self.bonds), "angles": len(self.angles), "torsions": len(self.torsions),
                "chirs": len(self.chirals), "planes": len(self.planes),
                "nonbonded_pairs": 0 if self.nonbonded is None else int(self.nonbonded.n_pairs)}


def with_torsions(r: "Restraints", idx: np.ndarray, ideal: np.ndarray, sigma: np.ndarray, period: np.ndarray,
                  labels: list) -> "Restraints":
    """A shallow copy of ``r`` with torsion restraints appended (``idx`` (n, 4), ``ideal`` and
    ``sigma`` deg, ``period``, ``labels``); ``r`` itself is not changed."""
    from dataclasses import replace

    if not len(idx):
        return r
    t = r.torsions
    tors = TorsionSet(np.concatenate([t.idx, np.asarray(idx).reshape(-1, 4)]).astype(t.idx.dtype),
                      np.concatenate([t.ideal, ideal]), np.concatenate([t.sigma, sigma]),
                      np.concatenate([t.period, period]).astype(t.period.dtype), list(t.label) + list(labels))
    out = replace(r, torsions=tors)
    out.weights = dict(r.weights)
    return out


class TorsionWatch:
    """Validation watch on some torsion rows: after a refinement cycle, every watched row further
    than its ``limit`` (deg) from its ideal gets its weight multiplied by ``factor`` (sigma divided
    by sqrt(factor)), up to ``max_factor`` times its starting weight.

    Used for rotamer chis (:func:`rerefine.refine.rotamer_restraint.rotamer_watch`), peptide omega
    and C-beta torsions (``realspace``): terms whose library sigma lets a strong map pull a
    residue into what validation calls an outlier (twisted peptide at 30 deg off, C-beta
    deviation >= 0.25 Å).
    """

    def __init__(self, name: str, rows: np.ndarray, limit: np.ndarray, sigma0: np.ndarray, factor: float = 4.0,
                 max_factor: float = 16.0):
        self.name = name
        self.rows = np.asarray(rows, dtype=np.int64)
        self.limit = np.broadcast_to(np.asarray(limit, dtype=np.float64), self.rows.shape).copy()
        self.sigma0 = np.array(sigma0, dtype=np.float64)
        self.factor = float(factor)
        self.floor = self.sigma0 / np.sqrt(max_factor)

    def watch(self, r: "Restraints", xyz: np.ndarray) -> int:
        """Raise the weight of the rows of ``r.torsions`` beyond their limit at ``xyz``; returns how many."""
        from .geometry import torsion_devs

        if not len(self.rows):
            return 0
        t = r.torsions
        dev = torsion_devs(np.ascontiguousarray(xyz), t.idx[self.rows], t.ideal[self.rows], t.period[self.rows])
        out = (np.abs(dev) > self.limit) & (t.sigma[self.rows] > self.floor * 1.0001)
        t.sigma[self.rows[out]] = np.maximum(t.sigma[self.rows[out]] / np.sqrt(self.factor), self.floor[out])
        return int(out.sum())


def torsion_watch(r: "Restraints", name: str, labels: tuple, limit: float, factor: float = 4.0,
                  max_factor: float = 16.0) -> TorsionWatch:
    """:class:`TorsionWatch` of the rows of ``r.torsions`` whose label is in ``labels`` (sigma > 0),
    with one ``limit`` (deg) for all."""
    t = r.torsions
    rows = np.array([k for k, lab in enumerate(t.label) if lab in labels and t.sigma[k] > 0], dtype=np.int64)
    return TorsionWatch(name, rows, limit, t.sigma[rows], factor, max_factor)


# --------------------------------------------------------------------------- coordinates

def atom_xyz(st: gemmi.Structure) -> np.ndarray:
    """Coordinates (Å) of all atoms of the first model, ``(N, 3)`` float64, ``st[0].all()`` order."""
    return np.array([(c.atom.pos.x, c.atom.pos.y, c.atom.pos.z) for c in st[0].all()],
                    dtype=np.float64).reshape(-1, 3)


def set_xyz(st: gemmi.Structure, xyz: np.ndarray) -> None:
    """Write ``(N, 3)`` coordinates (Å, ``st[0].all()`` order) back into the first model."""
    xyz = np.asarray(xyz, dtype=np.float64)
    cras = list(st[0].all())
    if xyz.shape != (len(cras), 3):
        raise ValueError(f"set_xyz: expected shape ({len(cras)}, 3), got {xyz.shape}")
    for c, p in zip(cras, xyz.tolist()):
        c.atom.pos = gemmi.Position(p[0], p[1], p[2])


# --------------------------------------------------------------------------- building

_HB_CODE = {"D": 1, "A": 2, "B": 3, "H": 4}
# Fallback vdW radii (Å) by element when no energy type is known (same values as ener_lib).
_VDW_FALLBACK = {"C": 1.7, "N": 1.55, "O": 1.52, "S": 1.8, "P": 1.8, "H": 1.1, "SE": 1.9,
                 "F": 1.47, "CL": 1.75, "BR": 1.85, "I": 1.98}


def _ix(atom: gemmi.Atom) -> int:
    return int(atom.b_iso)


def _check_duplicates(st: gemmi.Structure, name: str) -> None:
    for ch in st[0]:
        for res in ch:
            seen = set()
            for a in res:
                key = (a.name, a.altloc)
                if key in seen:
                    alt = f" altloc {a.altloc}" if a.altloc != "\0" else ""
                    raise InputError(f"{name}: duplicate atom name {a.name}{alt} in residue "
                                     f"{ch.name}/{res.name}{res.seqid.num}{res.seqid.icode.strip()}")
                seen.add(key)


def _drop_all_fixed(fixed, bonds, angles, torsions, chirals, planes):
    def keep(idx):
        return ~fixed[idx].all(axis=1)

    k = keep(bonds.idx)
    bonds = BondSet(bonds.idx[k], bonds.ideal[k], bonds.sigma[k])
    k = keep(angles.idx)
    angles = AngleSet(angles.idx[k], angles.ideal[k], angles.sigma[k])
    k = keep(torsions.idx)
    torsions = TorsionSet(torsions.idx[k], torsions.ideal[k], torsions.sigma[k], torsions.period[k],
                          [lb for lb, kk in zip(torsions.label, k) if kk])
    k = keep(chirals.idx)
    chirals = ChiralSet(chirals.idx[k], chirals.ideal[k], chirals.sigma[k], chirals.both[k])
    atoms, offs, sig = [], [0], []
    for p in range(len(planes)):
        ids = planes.atoms[planes.offsets[p]:planes.offsets[p + 1]]
        if not fixed[ids].all():
            atoms.extend(ids.tolist())
            offs.append(len(atoms))
            sig.append(planes.sigma[p])
    planes = PlaneSet(np.array(atoms, dtype=np.int32), np.array(offs, dtype=np.int64), np.array(sig))
    return bonds, angles, torsions, chirals, planes


def without_fixed_terms(r: Restraints, fixed: np.ndarray) -> Restraints:
    """``r`` with the atoms ``fixed`` (bool, per atom) held fixed as well and the bond, angle,
    torsion, chirality and plane restraints among fixed atoms only dropped (constant terms: they
    would weigh in the geometry statistics of what is refined). A shallow copy; ``r`` is unchanged."""
    from dataclasses import replace

    fixed = np.asarray(r.fixed, bool) | np.asarray(fixed, bool)
    bonds, angles, torsions, chirals, planes = _drop_all_fixed(fixed, r.bonds, r.angles, r.torsions, r.chirals,
                                                               r.planes)
    return replace(r, bonds=bonds, angles=angles, torsions=torsions, chirals=chirals, planes=planes, fixed=fixed)


def _choose_puckers(t: TorsionSet, residue: np.ndarray, xyz: np.ndarray) -> int:
    """Keep one sugar-pucker family of nucleotide torsions per residue.

    The CCP4 dictionaries of nucleotides carry both C2'-endo (``C2e-*``) and C3'-endo
    (``C3e-*``) variants of the ring and chi torsions; restraining both at once is
    contradictory. Per residue the family that fits the input coordinates better keeps
    its sigma, the other gets sigma 0 (kept in the arrays, so counts still match gemmi's
    topology, but without weight). Returns the number of residues decided.
    """
    from .geometry import torsion_devs  # numba kernels: loaded when nucleotides need them

    fam = np.array([2 if lb.startswith("C2e-") else 3 if lb.startswith("C3e-") else 0 for lb in t.label])
    sel = np.nonzero(fam)[0]
    if sel.size == 0:
        return 0
    dev = torsion_devs(xyz, t.idx[sel], t.ideal[sel], t.period[sel])
    chi2 = (dev / np.where(t.sigma[sel] > 0, t.sigma[sel], 1.0)) ** 2
    res = residue[t.idx[sel, 1]]
    decided = 0
    for rid in np.unique(res):
        m = res == rid
        e2 = chi2[m & (fam[sel] == 2)].sum()
        e3 = chi2[m & (fam[sel] == 3)].sum()
        drop = 2 if e3 <= e2 else 3
        t.sigma[sel[m & (fam[sel] == drop)]] = 0.0
        decided += 1
    return decided


def build_restraints(st: gemmi.Structure, monlib_dir: str | os.PathLike, *,
                     nonbonded_buffer: float = 1.0) -> Restraints:
    """Build the restraints of the first model of ``st`` from the monomer library at ``monlib_dir``.

    Hydrogens are kept as they are in the model (``HydrogenChange.NoChange``); atom order
    is not changed. The structure itself is not modified (gemmi works on a clone).

    Parameters
    ----------
    st : gemmi.Structure
        Model (first model used).
    monlib_dir : path
        CCP4 monomer library folder (``list/mon_lib_list.cif``, ``a/ALA.cif``, ...).
    nonbonded_buffer : float
        Skin (Å) of the nonbonded neighbour list; the list is rebuilt once an atom moved
        more than half of it.

    Raises
    ------
    InputError
        Library folder missing, model without atoms, duplicate atom names in a residue.

    Notes
    -----
    * Residues without a dictionary: atoms fixed, a warning; restraints among their own atoms
      are dropped (then counts are below gemmi's), link restraints to neighbours are kept.
    * Residues with missing atoms: restraints that involve the absent atoms are dropped
      (gemmi), a warning lists the residue and missing non-hydrogen atoms.
    """
    from .nonbonded import NonbondedList, topology_partners

    monlib_dir = os.fspath(monlib_dir)
    label = st.name or "model"
    if not os.path.isfile(os.path.join(monlib_dir, "list", "mon_lib_list.cif")):
        raise InputError(f"{monlib_dir}: not a monomer library (no list/mon_lib_list.cif)")
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputError(f"{label}: model has no atoms")
    _check_duplicates(st, label)

    work = st.clone()
    while len(work) > 1:
        del work[len(work) - 1]
    work.setup_entities()
    model = work[0]
    cras = list(model.all())
    n = len(cras)
    # gemmi's topology hands back Atom objects and renumbers serials, so the index rides on
    # b_iso of the (throw-away) clone: a float32 holds integers exactly up to 2**24 atoms.
    if n >= 2 ** 24:
        raise InputError(f"{label}: {n} atoms is more than restraints support (2**24)")
    for i, c in enumerate(cras):
        c.atom.b_iso = float(i)

    resnames = model.get_all_residue_names()
    try:
        monlib = gemmi.read_monomer_lib(monlib_dir, resnames, ignore_missing=True)
    except Exception as exc:  # gemmi RuntimeError with a message
        raise InputError(f"{monlib_dir}: cannot read monomer library ({str(exc).splitlines()[0]})") from None
    warnings: list[str] = []
    missing = sorted(set(resnames) - set(monlib.monomers.keys()))
    for rn in missing:
        warnings.append(f"{label}: no dictionary for residue {rn}: its atoms are kept fixed")

    sink = io.StringIO()  # gemmi writes its topology warnings here; they go to our list
    try:
        topo = gemmi.prepare_topology(work, monlib, model_index=0, h_change=gemmi.HydrogenChange.NoChange,
                                      reorder=False, warnings=sink, ignore_unknown_links=True)
    except Exception as exc:
        raise InputError(f"{label}: topology failed ({str(exc).splitlines()[0]})") from None
    for line in sink.getvalue().splitlines():
        if line.strip():
            warnings.append(f"{label}: gemmi: {line.strip()}")

    # ---- per-atom properties
    element = np.array([c.atom.element.name.upper() for c in cras])
    altloc = np.array([0 if c.atom.altloc == "\0" else ord(c.atom.altloc) for c in cras], dtype=np.uint8)
    residue = np.empty(n, dtype=np.int32)
    fixed = np.zeros(n, dtype=bool)
    vdw = np.array([_VDW_FALLBACK.get(e, 1.8) for e in element], dtype=np.float64)
    hb = np.zeros(n, dtype=np.uint8)
    ener = monlib.ener_lib.atoms
    rserial = 0
    for ch in model:
        for res in ch:
            for a in res:
                residue[_ix(a)] = rserial
            if res.name in missing:
                for a in res:
                    fixed[_ix(a)] = True
            rserial += 1
    # energy types from the final (link/mod-modified) chem comps
    for ci in topo.chain_infos:
        for ri in ci.res_infos:
            res = ri.res
            if res.name in missing:
                continue
            try:
                cc = ri.get_final_chemcomp(res[0].altloc if len(res) else "\0")
            except Exception:
                continue
            types = {a.id: a.chem_type for a in cc.atoms}
            for a in res:
                t = types.get(a.name)
                ea = ener.get(t) if t else None
                if ea is not None:
                    if ea.vdw_radius == ea.vdw_radius:  # not NaN
                        vdw[_ix(a)] = ea.vdw_radius
                    hb[_ix(a)] = _HB_CODE.get(ea.hb_type, 0)
            # residues with missing non-H atoms
            present = {a.name for a in res}
            absent = [a.id for a in cc.atoms if not a.is_hydrogen() and a.id not in present
                      and a.id not in ("OXT", "OP3", "HO5'", "O1P", "OP3")]
            if absent and res.name not in _WATER:
                warnings.append(f"{label}: residue {ci.chain_ref.name}/{res.name}{res.seqid.num}"
                                f"{res.seqid.icode.strip()} misses atoms {' '.join(absent)}: "
                                "restraints on them are dropped")
    # Hydrogens: 1.1 Å instead of the library's 1.2 Å, because with riding/ideal H the library
    # value puts ordinary H···H (2.2-2.4 Å) and C-H···O contacts of well-refined models under repulsion.
    vdw[element == "H"] = 1.1
    # metal ions: single-atom residues of metallic elements
    for i, c in enumerate(cras):
        if c.atom.element.is_metal and len(c.residue) == 1:
            hb[i] = 5

    # ---- restraints
    bi, bv, bs = [], [], []
    for b in topo.bonds:
        a1, a2 = b.atoms
        bi.append((_ix(a1), _ix(a2)))
        bv.append(b.restr.value)
        bs.append(b.restr.esd)
    bonds = BondSet(np.array(bi, dtype=np.int32).reshape(-1, 2), np.array(bv, dtype=np.float64),
                    np.array(bs, dtype=np.float64))

    ai, av, as_ = [], [], []
    for a in topo.angles:
        x = a.atoms
        ai.append((_ix(x[0]), _ix(x[1]), _ix(x[2])))
        av.append(a.restr.value)
        as_.append(a.restr.esd)
    angles = AngleSet(np.array(ai, dtype=np.int32).reshape(-1, 3), np.array(av, dtype=np.float64),
                      np.array(as_, dtype=np.float64))

    ti, tv, ts, tp, tl = [], [], [], [], []
    for t in topo.torsions:
        x = t.atoms
        ti.append((_ix(x[0]), _ix(x[1]), _ix(x[2]), _ix(x[3])))
        tv.append(t.restr.value)
        ts.append(t.restr.esd)
        tp.append(max(int(t.restr.period), 1))
        tl.append(t.restr.label)
    torsions = TorsionSet(np.array(ti, dtype=np.int32).reshape(-1, 4), np.array(tv, dtype=np.float64),
                          np.array(ts, dtype=np.float64), np.array(tp, dtype=np.int32), tl)
    n_pucker = _choose_puckers(torsions, residue, atom_xyz(work))
    if n_pucker:
        log.info("%s: sugar pucker chosen for %d nucleotides", label, n_pucker)

    ci_, cv, cs, cb = [], [], [], []
    for c in topo.chirs:
        x = c.atoms
        ci_.append((_ix(x[0]), _ix(x[1]), _ix(x[2]), _ix(x[3])))
        vol = topo.ideal_chiral_abs_volume(c)
        sign = c.restr.sign
        if sign == gemmi.ChiralityType.Negative:
            vol = -vol
        cv.append(vol)
        cb.append(sign == gemmi.ChiralityType.Both)
        # The library gives no esd for chirality; 0.2 Å³ is Refmac's and phenix's default.
        cs.append(0.2)
    chirals = ChiralSet(np.array(ci_, dtype=np.int32).reshape(-1, 4), np.array(cv, dtype=np.float64),
                        np.array(cs, dtype=np.float64), np.array(cb, dtype=bool))

    pa, po, ps = [], [0], []
    for p in topo.planes:
        idx = [_ix(a) for a in p.atoms]
        if len(idx) < 4:  # three points are always planar: no restraint to apply
            continue
        pa.extend(idx)
        po.append(len(pa))
        ps.append(p.restr.esd)
    planes = PlaneSet(np.array(pa, dtype=np.int32), np.array(po, dtype=np.int64), np.array(ps, dtype=np.float64))

    # gemmi makes ad-hoc restraints for residues without a dictionary (from the model's own
    # geometry); on fixed atoms they are constant, so drop those whose atoms are all fixed
    # (keeps them out of the statistics); links from a fixed to a movable residue stay.
    if fixed.any():
        bonds, angles, torsions, chirals, planes = _drop_all_fixed(fixed, bonds, angles, torsions, chirals, planes)

    links: dict[str, int] = {}
    for ci in topo.chain_infos:
        for ri in ci.res_infos:
            for lk in ri.prev:
                if lk.link_id:
                    links[lk.link_id] = links.get(lk.link_id, 0) + 1
    for lk in topo.extras:
        links[lk.link_id] = links.get(lk.link_id, 0) + 1

    # explicit connections (metal coordination, unknown covalent links) are not nonbonded contacts
    extra_pairs = []
    for conn in work.connections:
        try:
            c1 = model.find_cra(conn.partner1, ignore_segment=True)
            c2 = model.find_cra(conn.partner2, ignore_segment=True)
        except Exception:
            continue
        if c1.atom is not None and c2.atom is not None:
            extra_pairs.append((_ix(c1.atom), _ix(c2.atom)))
    r = Restraints(n_atoms=n, bonds=bonds, angles=angles, torsions=torsions, chirals=chirals, planes=planes,
                   fixed=fixed, element=element, vdw_radius=vdw, hb_type=hb, altloc=altloc, residue=residue,
                   links=links, warnings=warnings)
    # H atoms bonded to N/O are polar (the library's plain "H" type does not say so)
    heavy = {"N", "O"}
    for i, j in bonds.idx:
        for h, o in ((i, j), (j, i)):
            if element[h] == "H" and element[o] in heavy:
                hb[h] = 4
    r.partner_ptr, r.partner_idx, r.partner_code = topology_partners(
        n, bonds.idx, np.array(extra_pairs, dtype=np.int64).reshape(-1, 2))
    r.nonbonded = NonbondedList(r, buffer=nonbonded_buffer)
    r.nonbonded.build(atom_xyz(work))
    for w in warnings:
        log.warning(w)
    return r
