"""The validation run: every check on one model, gathered into a :class:`ValidationReport`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import gemmi

from rerefine.common.errors import InputError
from . import cbeta, clashscore, hydrogens, peptides, ramachandran, rotamer
from .residues import is_amino_acid, protein_residues
from .tables import CREDIT, default_top8000_dir

#: The summary keys every report carries (``rerefine validate --json``, ``refine --json`` before/after).
SUMMARY_KEYS = ("rama_favored_pct", "rama_outliers", "rama_outliers_pct", "rotamer_outliers",
                "rotamer_outliers_pct", "cbeta_outliers", "clashscore", "cis_peptides", "twisted_peptides",
                "bond_rmsd_heavy", "angle_rmsd_heavy")

_WATER = {"HOH", "WAT", "DOD", "H2O"}


@dataclass
class ValidationReport:
    """Result of :func:`validate`.

    Attributes
    ----------
    summary : dict
        :data:`SUMMARY_KEYS` plus ``bond_rmsd``/``angle_rmsd`` (all atoms, hydrogens as
        validated), ``rama_allowed_pct``, ``rotamer_favored_pct``, counts ``n_rama``,
        ``n_rotamer``, ``n_cbeta``, ``n_clashes``, ``n_atoms_clash``, ``cis_proline``,
        ``cis_general``, ``twisted_proline``, ``twisted_general``, ``chirality_inversions``,
        ``hydrogens_added``. Percentages in %, distances in Å, angles in degrees;
        None where nothing could be scored (e.g. no protein, no monomer library).
    per_residue : list of dict
        One row per residue of the first model except waters: ``chain``, ``seq``, ``icode``,
        ``resname``, ``rama``/``rotamer`` (``favored``/``allowed``/``outlier`` or None),
        ``cbeta_dev`` (Å), ``phi``, ``psi``, ``omega`` (deg), ``rama_category``,
        ``rama_score``/``rotamer_score`` (percentile, %), ``rotamer_name``, ``chis`` (deg),
        ``peptide`` (``cis``/``twisted``/``trans``), ``clash_count``.
    clashes : list of dict
        ``a``, ``b`` (``CHAIN:SEQ:RESNAME/ATOM``), ``overlap`` (Å, positive), largest first.
    warnings : list of str
    """

    summary: dict
    per_residue: list
    clashes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """Summary keys at the top level, then ``per_residue``, ``clashes``, ``warnings``, ``credit``."""
        return {**self.summary, "per_residue": self.per_residue, "clashes": self.clashes,
                "warnings": self.warnings, "credit": CREDIT}


def _pct(n: int, d: int) -> float | None:
    return 100.0 * n / d if d else None


def validate_pair(first: gemmi.Structure, second: gemmi.Structure,
                  monlib_dir: str | os.PathLike | None = None, *,
                  top8000_dir: str | os.PathLike | None = None) -> tuple[ValidationReport, ValidationReport]:
    """:func:`validate` of two models (with hydrogens), e.g. a deposited and a re-refined one.

    When the two models with hydrogens have the same topology key
    (:func:`rerefine.refine.validation.hydrogens.hydrogenated`: the same atoms in the same
    order and the same links), the restraints built for the first are used for the second,
    with the second's own neighbour list; the reports are the same as two :func:`validate`
    calls. Otherwise (e.g. waters added, atoms moved between residues, a peptide changed
    between cis and trans) the second's restraints are built anew.

    Returns
    -------
    (ValidationReport, ValidationReport)
        The first's and the second's.
    """
    shared: dict = {}
    return (_validate(first, monlib_dir, True, top8000_dir, shared),
            _validate(second, monlib_dir, True, top8000_dir, shared))


def validate(st: gemmi.Structure, monlib_dir: str | os.PathLike | None = None, *, add_hydrogens: bool = True,
             top8000_dir: str | os.PathLike | None = None) -> ValidationReport:
    """Validate the first model of ``st`` the way MolProbity does.

    Parameters
    ----------
    st : gemmi.Structure
        The model (not modified).
    monlib_dir : path or None
        CCP4 monomer library. Needed for hydrogens, the clashscore, RMSDs and the full
        chirality check; without it those summary values are None (CA chirality only).
    add_hydrogens : bool
        Replace/add riding hydrogens from the library before the clashscore (MolProbity's
        default). False: use the model's own atoms as they are (a model without hydrogens
        then gives a heavy-atom clashscore that is not comparable with MolProbity's).
    top8000_dir : path or None
        Top8000 folder (``ramachandran/``, ``rotamer/``); None:
        :func:`rerefine.refine.validation.tables.default_top8000_dir`.

    Returns
    -------
    ValidationReport

    Raises
    ------
    InputError
        Model without atoms, unreadable monomer library or Top8000 folder.
    """
    return _validate(st, monlib_dir, add_hydrogens, top8000_dir, None)


def _validate(st, monlib_dir, add_hydrogens: bool, top8000_dir, shared: dict | None) -> ValidationReport:
    """:func:`validate`; ``shared`` (a dict, or None) carries the restraints from one model with
    hydrogens to the next with the same topology key (:func:`validate_pair`)."""
    label = st.name or "model"
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputError(f"{label}: model has no atoms")
    top = Path(top8000_dir) if top8000_dir is not None else default_top8000_dir()
    if not (top / "ramachandran").is_dir() or not (top / "rotamer").is_dir():
        raise InputError(f"{top}: not a Top8000 folder (no ramachandran/ and rotamer/; set RR_TOP8000)")
    top = str(top)
    warnings: list[str] = []
    model = st[0]
    res = protein_residues(model)
    rama_rows = ramachandran.evaluate(res, top)
    rota_rows = rotamer.evaluate(res, top)
    cb_rows = cbeta.evaluate(res)
    om_rows = peptides.evaluate(res)
    if not res:
        warnings.append(f"{label}: no amino-acid residues: Ramachandran, rotamer and C-beta checks not made")

    # ---- hydrogens, restraints, clashes, RMSDs
    summary_geo = {"bond_rmsd": None, "angle_rmsd": None, "bond_rmsd_heavy": None, "angle_rmsd_heavy": None,
                   "clashscore": None, "n_clashes": None, "n_atoms_clash": None, "chirality_inversions": None,
                   "hydrogens_added": False}
    clash_list: list[dict] = []
    clash_by_res: dict[tuple, int] = {}
    if monlib_dir is not None:
        from ..geometry import bond_angle_rmsds
        from ..restraints import atom_xyz, build_restraints

        key = None
        if add_hydrogens:
            work, key = hydrogens.hydrogenated(st, monlib_dir)
        else:
            work = st.clone()
            while len(work) > 1:
                del work[len(work) - 1]
        xyz = atom_xyz(work)
        reuse = shared is not None and key is not None and shared.get("key") == key
        if reuse:
            r = _same_topology(shared, xyz)
        else:
            r = build_restraints(work, monlib_dir)
        warnings.extend(r.warnings)
        if shared is not None and key is not None and not reuse:
            shared.clear()
            # without its neighbour list (the next model builds its own at its coordinates)
            shared.update(key=key, restraints=replace(r, nonbonded=None), hb_type=r.hb_type.copy(),
                          buffer=r.nonbonded.buffer)
        counted = shared["counted"] if reuse else clashscore.counted_atoms(work)
        if add_hydrogens:
            hydrogens.his_acceptors(work, r.hb_type)
        # the contact radii and the rotatable H groups follow the atoms and the restraints alone:
        # the same for the same key
        rad = shared["radii"] if reuse else clashscore.contact_radii(r, work)
        if add_hydrogens:
            groups = shared["rotors"] if reuse else hydrogens.rotors(r.element, r.bonds.idx)
            xyz = hydrogens.optimize_rotors(xyz, r.element, r.bonds.idx, rad, r.hb_type,
                                            ~counted, r.altloc, r.partner_ptr, r.partner_idx, r.partner_code,
                                            groups=groups)
            if shared is not None and key is not None and not reuse:
                shared.update(counted=counted, radii=rad, rotors=groups)
        allg = bond_angle_rmsds(r, xyz)
        heavy = bond_angle_rmsds(r, xyz, heavy_only=True)
        inv = peptides.restraint_inversions(r.chirals.idx, r.chirals.ideal, r.chirals.both, xyz)
        cras = list(work[0].all())
        ci, cj, ov = clashscore.clashes(r, xyz, clashscore.occupancies(work), counted, rad)
        n_counted = int(counted.sum())
        for a, b, o in zip(ci.tolist(), cj.tolist(), ov.tolist()):
            clash_list.append({"a": clashscore.atom_label(cras[a]), "b": clashscore.atom_label(cras[b]),
                               "overlap": round(o, 3)})
            for t in {_res_key(cras[a]), _res_key(cras[b])}:
                clash_by_res[t] = clash_by_res.get(t, 0) + 1
        summary_geo.update({
            "bond_rmsd": allg["bond_rmsd"], "angle_rmsd": allg["angle_rmsd"],
            "bond_rmsd_heavy": heavy["bond_rmsd"], "angle_rmsd_heavy": heavy["angle_rmsd"],
            "clashscore": 1000.0 * len(clash_list) / n_counted if n_counted else None,
            "n_clashes": len(clash_list), "n_atoms_clash": n_counted,
            "chirality_inversions": int(inv.size), "hydrogens_added": bool(add_hydrogens),
        })
    else:
        summary_geo["chirality_inversions"] = len(peptides.ca_inversions(res))

    # ---- per residue
    prot = {(r.chain, r.seq, r.icode): k for k, r in enumerate(res)}
    rows = []
    for ch in model:
        for rr in ch:
            if rr.name in _WATER:
                continue
            key = (ch.name, int(rr.seqid.num), rr.seqid.icode.strip())
            row = {"chain": key[0], "seq": key[1], "icode": key[2], "resname": rr.name,
                   "rama": None, "rotamer": None, "cbeta_dev": None, "phi": None, "psi": None, "omega": None,
                   "rama_category": None, "rama_score": None, "rotamer_score": None, "rotamer_name": None,
                   "chis": None, "peptide": None, "clash_count": clash_by_res.get(key, 0)}
            k = prot.get(key)
            if k is not None and is_amino_acid(rr.name):
                row.update(rama_rows[k])
                row.update(rota_rows[k])
                row.update(cb_rows[k])
                row.update(om_rows[k])
            rows.append(row)

    n_rama = sum(1 for x in rama_rows if x["rama"] is not None)
    n_fav = sum(1 for x in rama_rows if x["rama"] == "favored")
    n_ral = sum(1 for x in rama_rows if x["rama"] == "allowed")
    n_rout = sum(1 for x in rama_rows if x["rama"] == "outlier")
    n_rot = sum(1 for x in rota_rows if x["rotamer"] is not None)
    n_rotout = sum(1 for x in rota_rows if x["rotamer"] == "outlier")
    n_rotfav = sum(1 for x in rota_rows if x["rotamer"] == "favored")
    devs = [x["cbeta_dev"] for x in cb_rows if x["cbeta_dev"] is not None]
    is_pro = [r.resname == "PRO" for r in res]
    pep = [x["peptide"] for x in om_rows]
    cis_pro = sum(1 for p, q in zip(pep, is_pro) if p == "cis" and q)
    cis_gen = sum(1 for p, q in zip(pep, is_pro) if p == "cis" and not q)
    tw_pro = sum(1 for p, q in zip(pep, is_pro) if p == "twisted" and q)
    tw_gen = sum(1 for p, q in zip(pep, is_pro) if p == "twisted" and not q)
    summary = {
        "rama_favored_pct": _pct(n_fav, n_rama),
        "rama_outliers": n_rout,
        "rama_outliers_pct": _pct(n_rout, n_rama),
        "rotamer_outliers": n_rotout,
        "rotamer_outliers_pct": _pct(n_rotout, n_rot),
        "cbeta_outliers": sum(1 for d in devs if d >= cbeta.OUTLIER),
        "clashscore": summary_geo["clashscore"],
        "cis_peptides": cis_pro + cis_gen,
        "twisted_peptides": tw_pro + tw_gen,
        "bond_rmsd_heavy": summary_geo["bond_rmsd_heavy"],
        "angle_rmsd_heavy": summary_geo["angle_rmsd_heavy"],
        "bond_rmsd": summary_geo["bond_rmsd"],
        "angle_rmsd": summary_geo["angle_rmsd"],
        "rama_allowed_pct": _pct(n_ral, n_rama),
        "rotamer_favored_pct": _pct(n_rotfav, n_rot),
        "n_rama": n_rama,
        "n_rotamer": n_rot,
        "n_cbeta": len(devs),
        "n_clashes": summary_geo["n_clashes"],
        "n_atoms_clash": summary_geo["n_atoms_clash"],
        "cis_proline": cis_pro,
        "cis_general": cis_gen,
        "twisted_proline": tw_pro,
        "twisted_general": tw_gen,
        "chirality_inversions": summary_geo["chirality_inversions"],
        "hydrogens_added": summary_geo["hydrogens_added"],
    }
    return ValidationReport(summary=summary, per_residue=rows, clashes=clash_list, warnings=warnings)


def _same_topology(shared: dict, xyz) -> object:
    """The restraints in ``shared`` for a model with the same topology key at coordinates
    ``xyz``: the same restraint sets and per-atom arrays (H-bond types as built, before any
    change made for the earlier model), a neighbour list built at ``xyz``."""
    from ..nonbonded import NonbondedList

    r0 = shared["restraints"]
    r = replace(r0, hb_type=shared["hb_type"].copy(), warnings=list(r0.warnings))
    r.nonbonded = NonbondedList(r, buffer=shared["buffer"])
    r.nonbonded.build(xyz)
    return r


def _res_key(cra) -> tuple:
    return (cra.chain.name, int(cra.residue.seqid.num), cra.residue.seqid.icode.strip())


__all__ = ["validate", "validate_pair", "ValidationReport", "SUMMARY_KEYS"]
