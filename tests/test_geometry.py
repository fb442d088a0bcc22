"""Restraint target, analytic gradient and geometry statistics (rerefine.refine.geometry / nonbonded).

Reference figures: finite differences for every gradient term; the deposited 7CEC entry's
``_refine_ls_restr`` (phenix, whole entry: bonds 0.0106 Å, angles 1.2017°, chirality 0.0708,
planarity 0.0078) for the geometry statistics of its chain A.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from rerefine.refine.geometry import TERMS, energy_terms, geometry_stats, restraint_energy_gradient
from rerefine.refine.modelio import read_model
from rerefine.refine.restraints import atom_xyz, build_restraints

M_3AJO = "maps_models/emd_20026_box_3ajo_refined/3ajo_fitted_refined.pdb"
M_7CEC = "maps_models/emd_30342_zone_7cec_chainA/390_7cec_A.cif"
M_5ME2 = "maps_models/emd_3488_5me2/5me2.pdb"
M_RNA = "maps_models/models_only/6v5b_drna.pdb"


def _build(test_data, rel):
    st = read_model(test_data / rel)
    return st, build_restraints(st, test_data / "monomers")


@pytest.fixture(scope="module")
def ajo(test_data):
    return _build(test_data, M_3AJO)


@pytest.mark.parametrize("model", [M_3AJO, M_RNA])
@pytest.mark.parametrize("term", TERMS)
def test_gradient_matches_finite_differences(test_data, model, term):
    st, r = _build(test_data, model)
    rng = np.random.default_rng(7)
    xyz = atom_xyz(st) + rng.normal(0, 0.15, (r.n_atoms, 3))
    for k in r.weights:
        r.weights[k] = 1.0 if k == term else 0.0
    grad = np.empty_like(xyz)
    e0 = energy_terms(r, xyz, grad)[term]
    assert e0 > 0
    # probe the atoms with the largest gradient plus random ones
    atoms = np.unique(np.concatenate([np.argsort(-np.abs(grad).sum(1))[:10],
                                      rng.choice(r.n_atoms, 10, replace=False)]))
    h = 1e-5
    num = np.empty((atoms.size, 3))
    for a_i, a in enumerate(atoms):
        for d in range(3):
            xp = xyz.copy()
            xp[a, d] += h
            xm = xyz.copy()
            xm[a, d] -= h
            num[a_i, d] = (energy_terms(r, xp)[term] - energy_terms(r, xm)[term]) / (2 * h)
    scale = np.abs(grad).max()
    np.testing.assert_allclose(grad[atoms], num, atol=1e-5 * scale + 1e-6, rtol=1e-5)


def test_total_is_sum_of_terms_and_weights_scale(ajo):
    st, r = ajo
    xyz = atom_xyz(st)
    terms = energy_terms(r, xyz)
    e, g = restraint_energy_gradient(r, xyz)
    assert e == pytest.approx(sum(terms.values()), rel=1e-12)
    r.weights["bond"] = 2.0
    try:
        e2, _ = restraint_energy_gradient(r, xyz)
    finally:
        r.weights["bond"] = 1.0
    assert e2 == pytest.approx(e + terms["bond"], rel=1e-10)


def test_deposited_7cec_statistics_match_its_refine_ls_restr(test_data):
    st, r = _build(test_data, M_7CEC)
    s = geometry_stats(r, atom_xyz(st))
    # Same definitions as phenix; phenix used the cctbx library, we the CCP4 library, so the
    # chirality and planarity (library-independent in practice) must agree closely while bonds
    # and angles may differ by the libraries' ideal values.
    assert s["chirality_rmsd"] == pytest.approx(0.0708, abs=0.015)
    assert s["planarity_rmsd"] == pytest.approx(0.0078, abs=0.0015)
    assert 0.0106 - 0.002 < s["bond_rmsd"] < 0.0106 + 0.006
    assert 1.2017 - 0.2 < s["angle_rmsd"] < 1.2017 + 0.6
    assert s["n_bonds"] == 4405 and s["n_angles"] == 5966


@pytest.mark.parametrize("model", [M_5ME2, M_3AJO, M_RNA])
def test_deposited_models_have_plausible_geometry(test_data, model):
    st, r = _build(test_data, model)
    s = geometry_stats(r, atom_xyz(st))
    assert 0.005 < s["bond_rmsd"] < 0.02
    assert 0.5 < s["angle_rmsd"] < 2.0
    assert s["planarity_rmsd"] < 0.015
    assert s["chirality_rmsd"] < 0.15
    assert s["nonbonded_overlaps"] <= 2  # refined deposited models: (almost) no heavy-atom clashes


def test_nonbonded_overlap_count_and_repulsion(ajo):
    st, r = ajo
    xyz = atom_xyz(st)
    base = geometry_stats(r, xyz)["nonbonded_overlaps"]
    e_base = energy_terms(r, xyz)["nonbonded"]
    # put a water oxygen 2.0 Å from a Cα (far from bonded): one new clash, higher repulsion
    cras = list(st[0].all())
    ca = next(i for i, c in enumerate(cras) if c.atom.name == "CA" and c.residue.seqid.num == 50)
    wat = next(i for i, c in enumerate(cras) if c.residue.name == "HOH")
    moved = xyz.copy()
    moved[wat] = xyz[ca] + np.array([2.0, 0.0, 0.0])
    s = geometry_stats(r, moved)
    assert s["nonbonded_overlaps"] >= base + 1
    e, g = restraint_energy_gradient(r, moved)
    assert energy_terms(r, moved)["nonbonded"] > e_base
    # the repulsion pushes the water away from the Cα (+x)
    assert g[wat, 0] < 0


def test_neighbour_list_lazy_update_is_exact(test_data):
    st, r = _build(test_data, M_3AJO)
    xyz = atom_xyz(st)
    energy_terms(r, xyz)
    builds = r.nonbonded.n_builds
    rng = np.random.default_rng(3)
    small = xyz + rng.uniform(-0.25, 0.25, xyz.shape)  # every atom < buffer/2 = 0.5 Å
    e_lazy = energy_terms(r, small)["nonbonded"]
    assert r.nonbonded.n_builds == builds
    _, fresh = _build(test_data, M_3AJO)
    assert energy_terms(fresh, small)["nonbonded"] == pytest.approx(e_lazy, rel=1e-12)
    big = small.copy()
    big[5] += 0.8
    energy_terms(r, big)
    assert r.nonbonded.n_builds == builds + 1


def test_minimising_restraints_idealises_a_shaken_model(ajo):
    """Geometry regularisation with L-BFGS: the gradients drive a 0.3 Å-shaken model back to ideal geometry."""
    st, r = ajo
    xyz0 = atom_xyz(st) + np.random.default_rng(11).normal(0, 0.3, (r.n_atoms, 3))
    before = geometry_stats(r, xyz0)

    def f(x):
        e, g = restraint_energy_gradient(r, x.reshape(-1, 3))
        return e, g.ravel()

    res = minimize(f, xyz0.ravel(), jac=True, method="L-BFGS-B", options={"maxiter": 400})
    after = geometry_stats(r, res.x.reshape(-1, 3))
    assert before["bond_rmsd"] > 0.2 and before["angle_rmsd"] > 10
    assert after["bond_rmsd"] < 0.01
    assert after["angle_rmsd"] < 1.5
    assert after["planarity_rmsd"] < 0.01
    assert after["chirality_rmsd"] < 0.2
