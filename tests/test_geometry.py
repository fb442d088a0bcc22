"""Restraint target, analytic gradient and geometry statistics (rerefine.refine.geometry / nonbonded).

Reference figures: finite differences for every gradient term; gemmi's own C++ geometry of its
topology (exactly) for the geometry statistics, with the deposited 7CEC entry's
``_refine_ls_restr`` (phenix, whole entry: bonds 0.0106 Å, angles 1.2017°, chirality 0.0708,
planarity 0.0078) as a loose sanity line for its chain A.
"""

from __future__ import annotations

import math

import gemmi
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


def _gemmi_stats(path, monlib) -> dict:
    """Bond/angle/chirality/planarity RMSD computed by gemmi itself (C++: ``Topo.Bond.calculate``,
    ``Topo.Angle.calculate``, ``Topo.Chirality.calculate``, ``find_best_plane``) from its own
    topology of the model: the independent reference for :func:`geometry_stats`."""
    st = gemmi.read_structure(str(path))
    st.setup_entities()
    lib = gemmi.read_monomer_lib(str(monlib), st[0].get_all_residue_names(), ignore_missing=True)
    topo = gemmi.prepare_topology(st, lib, model_index=0, h_change=gemmi.HydrogenChange.NoChange,
                                  reorder=False, ignore_unknown_links=True)
    bonds = [b.calculate() - b.restr.value for b in topo.bonds]
    angles = [math.degrees(a.calculate()) - a.restr.value for a in topo.angles]
    chirs = []
    for c in topo.chirs:
        v, v0 = c.calculate(), topo.ideal_chiral_abs_volume(c)
        if c.restr.sign == gemmi.ChiralityType.Both:
            chirs.append(abs(v) - v0)
        else:
            chirs.append(v - (-v0 if c.restr.sign == gemmi.ChiralityType.Negative else v0))
    planes = []
    for p in topo.planes:
        if len(p.atoms) < 4:  # three atoms are always planar; geometry_stats leaves them out
            continue
        coeff = gemmi.find_best_plane(p.atoms)
        planes += [gemmi.get_distance_from_plane(a.pos, coeff) for a in p.atoms]

    def rms(v):
        return float(np.sqrt(np.mean(np.square(v))))

    return {"bond_rmsd": rms(bonds), "angle_rmsd": rms(angles), "chirality_rmsd": rms(chirs),
            "planarity_rmsd": rms(planes), "n_bonds": len(bonds), "n_angles": len(angles)}


# bonds/angles gemmi 0.7.5 finds for these models with this library (the data README's check)
COUNTS = {M_7CEC: (4405, 5966), M_5ME2: (4608, 6326), M_3AJO: (1442, 1942), M_RNA: (1844, 2866)}


@pytest.mark.parametrize("model", [M_7CEC, M_5ME2, M_3AJO, M_RNA])
def test_geometry_statistics_equal_gemmis_own(test_data, model):
    st, r = _build(test_data, model)
    s = geometry_stats(r, atom_xyz(st))
    ref = _gemmi_stats(test_data / model, test_data / "monomers")
    assert (s["n_bonds"], s["n_angles"]) == COUNTS[model] == (ref["n_bonds"], ref["n_angles"])
    # same restraints, same formulas, two implementations (numba vs gemmi's C++): measured
    # differences 0 for bonds/angles/chirality and <= 3e-16 Å for planarity (least-squares plane)
    for key in ("bond_rmsd", "angle_rmsd", "chirality_rmsd", "planarity_rmsd"):
        assert s[key] == pytest.approx(ref[key], rel=1e-12, abs=1e-15), key


def test_deposited_7cec_statistics_near_its_refine_ls_restr(test_data):
    """Sanity line only: phenix used the cctbx library (other ideal values), we the CCP4 one."""
    st, r = _build(test_data, M_7CEC)
    s = geometry_stats(r, atom_xyz(st))
    # the deposited entry's _refine_ls_restr: bonds 0.0106 Å, angles 1.2017°, chirality 0.0708,
    # planarity 0.0078 (whole entry); ours on chain A: 0.0147, 1.64, 0.0786, 0.0077
    assert s["chirality_rmsd"] == pytest.approx(0.0708, abs=0.015)
    assert s["planarity_rmsd"] == pytest.approx(0.0078, abs=0.0015)
    assert 0.0106 - 0.002 < s["bond_rmsd"] < 0.0106 + 0.006
    assert 1.2017 - 0.2 < s["angle_rmsd"] < 1.2017 + 0.6


@pytest.mark.parametrize("model", [M_5ME2, M_3AJO, M_RNA])
def test_deposited_models_have_few_heavy_atom_clashes(test_data, model):
    st, r = _build(test_data, model)
    # refined deposited models: (almost) no heavy-atom clashes (measured 0 on all three)
    assert geometry_stats(r, atom_xyz(st))["nonbonded_overlaps"] <= 2


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


@pytest.mark.parametrize("per_atom", [None, 1])
def test_one_pass_pair_search_equals_the_counted_one(test_data, monkeypatch, per_atom):
    """The serial pair search (one pass into buffers sized ahead, grown when short: forced by a
    buffer of 1 pair per atom) gives the threaded two-pass search's pairs in the same order."""
    import rerefine.refine.nonbonded as nb

    if per_atom is not None:
        monkeypatch.setattr(nb, "PAIR_BUFFER_PER_ATOM", per_atom)
    st, r = _build(test_data, M_5ME2)
    xyz = atom_xyz(st) + np.random.default_rng(5).normal(0, 0.1, (r.n_atoms, 3))
    r.nonbonded.build(xyz, parallel=False)  # first build: buffers sized by PAIR_BUFFER_PER_ATOM alone
    ser = (r.nonbonded.pi.copy(), r.nonbonded.pj.copy(), r.nonbonded.kind.copy(), r.nonbonded.d0.copy())
    r.nonbonded.build(xyz, parallel=True)
    par = (r.nonbonded.pi, r.nonbonded.pj, r.nonbonded.kind, r.nonbonded.d0)
    assert len(par[0]) > 10000
    for a, b in zip(par, ser):
        np.testing.assert_array_equal(a, b)


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


@pytest.mark.parametrize("model", [M_5ME2, M_7CEC, M_RNA])
def test_parallel_kernels_equal_the_serial_ones(test_data, model):
    """The threaded restraint pass and non-bonded pair search (used from 20,000 atoms on, see
    rerefine.refine.threads) forced on real models: same pairs, same energies and gradient as the
    serial drivers (up to summation order: each thread sums its own chunk)."""
    import numba

    st, r = _build(test_data, model)
    xyz = atom_xyz(st) + np.random.default_rng(5).normal(0, 0.1, (r.n_atoms, 3))
    old = numba.get_num_threads()
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)  # every thread numba has (2 on CI's machine)
    try:
        r.nonbonded.build(xyz, parallel=True)
        par_pairs = sorted(zip(r.nonbonded.pi.tolist(), r.nonbonded.pj.tolist(), r.nonbonded.d0.tolist()))
        e_par, g_par = restraint_energy_gradient(r, xyz, parallel=True)
        t_par = energy_terms(r, xyz, parallel=True)
    finally:
        numba.set_num_threads(old)
    r.nonbonded.build(xyz, parallel=False)
    ser_pairs = sorted(zip(r.nonbonded.pi.tolist(), r.nonbonded.pj.tolist(), r.nonbonded.d0.tolist()))
    e_ser, g_ser = restraint_energy_gradient(r, xyz, parallel=False)
    t_ser = energy_terms(r, xyz, parallel=False)
    assert len(par_pairs) > 1000 and par_pairs == ser_pairs
    assert e_par == pytest.approx(e_ser, rel=1e-12)
    assert t_par == pytest.approx(t_ser, rel=1e-12)
    np.testing.assert_allclose(g_par, g_ser, rtol=1e-10, atol=1e-12 * np.abs(g_ser).max())
