"""Ramachandran restraint (refine/ramachandran_restraint.py): data, interpolation, gradient, scope."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rerefine.refine import modelio
from rerefine.refine.ramachandran_restraint import (CATEGORIES, DENSITY_SCALE, landscape_value, landscapes,
                                                    potential_table, ramachandran_restraint)
from rerefine.refine.realspace import refinement_topology
from rerefine.refine.restraints import atom_xyz


#: molprobity_reference.json's Ramachandran types, in CATEGORIES order
REF_TYPES = ("general", "glycine", "trans-proline", "cis-proline", "pre-proline", "isoleucine or valine")

M_3AJO = "maps_models/emd_20026_box_3ajo_refined/3ajo_fitted_refined.pdb"
M_7CEC = "maps_models/emd_30342_zone_7cec_chainA/390_7cec_A.cif"


def test_landscapes_are_read_from_the_top8000_files(test_data):
    """The grids are the Top8000 folder's (RR_TOP8000, the validation's): values of the files' own lines."""
    comb, dens = landscapes(test_data / "validation" / "top8000")
    assert comb.shape == (4, 180, 180) and dens.shape == (6, 180, 180)
    # ala.rama.combined.data: "-0.311 -179 -179", "17.100 -63 -41" (phi -63 -> i 58, psi -41 -> j 69)
    assert comb[0, 0, 0] == pytest.approx(-0.311) and comb[0, 58, 69] == pytest.approx(17.100)
    # rama8000-general-noGPIVpreP.data: "-179.0 -179.0 0.005560270487425575", "-179.0 -177.0 0.0045712..."
    assert dens[0, 0, 0] == pytest.approx(0.005560270487425575, rel=1e-12)
    assert dens[0, 0, 1] == pytest.approx(0.0045712337244581255, rel=1e-12)
    assert np.isfinite(comb).all() and (dens >= 0).all()


def test_missing_top8000_folder_is_a_one_line_error(tmp_path):
    from rerefine.common.errors import InputError

    with pytest.raises(InputError, match="RR_TOP8000"):
        landscapes(tmp_path)


def test_interpolation_hits_grid_points_and_wraps(test_data):
    t = landscapes()[0]
    # the file's own lines: ala.rama.combined.data "17.100 -63 -41", "-0.311 -179 -179"
    assert landscape_value(t, 0, -63.0, -41.0)[0] == pytest.approx(17.100, abs=1e-5)
    assert landscape_value(t, 0, -179.0, -179.0)[0] == pytest.approx(-0.311, abs=1e-5)
    # periodic: 180 deg and -180 deg are the same angle
    for phi, psi in ((180.0, 30.0), (-60.0, 180.0), (179.9, -179.9)):
        a = landscape_value(t, 0, phi, psi)
        b = landscape_value(t, 0, phi - 360.0 if phi > 0 else phi + 360.0, psi)
        np.testing.assert_allclose(a, b, atol=1e-9)
    # analytic d/dphi, d/dpsi of the interpolant
    h = 1e-4
    t = potential_table()
    for c in range(len(CATEGORIES)):
        for phi, psi in ((-63.3, -41.7), (-118.1, 130.2), (70.5, 20.9)):
            v, gp, gs = landscape_value(t, c, phi, psi)
            np_ = (landscape_value(t, c, phi + h, psi)[0] - landscape_value(t, c, phi - h, psi)[0]) / (2 * h)
            ns = (landscape_value(t, c, phi, psi + h)[0] - landscape_value(t, c, phi, psi - h)[0]) / (2 * h)
            assert gp == pytest.approx(np_, abs=1e-5) and gs == pytest.approx(ns, abs=1e-5)


def test_landscape_separates_molprobity_classes(test_data):
    """On the five models of molprobity_reference.json (cctbx ramalyze, not our code), the
    potential ranks residues as MolProbity classes them: in each category nearly every Favored
    residue scores above every Outlier, and every Favored one above every Outlier where the
    category has outliers at all (measured: general, Gly, trans-Pro, pre-Pro 100 %; cis-Pro and
    Ile/Val have no outliers in the file)."""
    ref = json.loads((test_data / "reference" / "molprobity_reference.json").read_text())
    t = potential_table(DENSITY_SCALE)
    vals: dict = {}
    for key, model in ref.items():
        if key.startswith("_"):
            continue
        for row in model["rama"].values():
            if row["phi"] is None or row["psi"] is None:
                continue
            c = REF_TYPES.index(row["type"])
            vals.setdefault((c, row["eval"]), []).append(landscape_value(t, c, row["phi"], row["psi"])[0])
    checked = 0
    for c in range(len(CATEGORIES)):
        if (c, "OUTLIER") not in vals:
            continue
        fav = np.array(vals[(c, "Favored")])
        assert fav.min() > max(vals[(c, "OUTLIER")]), CATEGORIES[c]
        allowed = np.array(vals.get((c, "Allowed"), [np.inf]))
        assert np.median(allowed) < np.median(fav), CATEGORIES[c]
        checked += 1
    assert checked >= 4


def _topo(test_data, path):
    st = modelio.read_model(test_data / path)
    return st, refinement_topology(st, test_data / "monomers")


def test_gradient_matches_finite_differences(test_data):
    st, r = _topo(test_data, M_3AJO)
    rr = ramachandran_restraint(st, r)
    rng = np.random.default_rng(3)
    xyz = atom_xyz(st) + rng.normal(0.0, 0.15, (r.n_atoms, 3))
    g = np.zeros_like(xyz)
    e = rr.energy_gradient(xyz, g)
    assert np.isfinite(e) and np.abs(g).max() > 0
    h = 1e-5
    atoms = np.unique(np.concatenate([np.argsort(-np.abs(g).sum(1))[:10], rr.idx[rng.choice(len(rr), 5)].ravel()]))
    for a in atoms:
        for d in range(3):
            xp, xm = xyz.copy(), xyz.copy()
            xp[a, d] += h
            xm[a, d] -= h
            num = (rr.energy_gradient(xp, np.zeros_like(xyz)) - rr.energy_gradient(xm, np.zeros_like(xyz))) / (2 * h)
            assert g[a, d] == pytest.approx(num, abs=1e-5 * np.abs(g).max() + 1e-6)


def test_scope_categories_and_chain_breaks(test_data):
    """Residues with both peptide neighbours get a term, in the right category; 3AJO has 170
    (as many as cctbx scores, molprobity_reference.json); the ends of a chain break get none."""
    st, r = _topo(test_data, M_3AJO)
    rr = ramachandran_restraint(st, r)
    ref = json.loads((test_data / "reference" / "molprobity_reference.json").read_text())
    assert len(rr) == ref["3ajo_fitted_deposited"]["rama_summary"]["n"]
    # categories as cctbx assigns them (cis-Pro included), residue for residue
    keys = [f"{ch.name}:{res.seqid.num}:{res.name}" for ch in st[0] for res in ch]
    rama = ref["3ajo_fitted_deposited"]["rama"]
    assert [REF_TYPES[c] for c in rr.category] == [rama[keys[rid]]["type"] for rid in rr.residue]
    # cut the chain: delete one residue in the middle; its neighbours lose phi or psi
    st2 = st.clone()
    ch = st2[0][0]
    k = 50
    before, after = ch[k - 1].seqid.num, ch[k + 1].seqid.num
    del ch[k]
    st2.setup_entities()
    r2 = refinement_topology(st2, test_data / "monomers")
    rr2 = ramachandran_restraint(st2, r2)
    nums = [res.seqid.num for c in st2[0] for res in c]
    kept = {nums[i] for i in rr2.residue}
    assert before not in kept and after not in kept
    assert len(rr2) == len(rr) - 3


def test_term_lowers_target_and_weight_zero_switches_off(test_data):
    """-w V: a residue moved from its deposited (favoured) phi/psi costs energy; w = 0 is no term."""
    st, r = _topo(test_data, M_7CEC)
    rr = ramachandran_restraint(st, r, weight=2.0)
    xyz = atom_xyz(st)
    g = np.zeros_like(xyz)
    e = rr.energy_gradient(xyz, g)
    assert e < 0  # deposited 7CEC: 89 % favoured, so the sum of V is positive
    zero = ramachandran_restraint(st, r, weight=0.0)
    g0 = np.zeros_like(xyz)
    assert zero.energy_gradient(xyz, g0) == 0.0 and not g0.any()
    # the gradient is a descent direction: a small step against it lowers the energy
    e2 = rr.energy_gradient(xyz - 1e-4 * g / np.abs(g).max(), np.zeros_like(xyz))
    assert e2 < e
