"""Real-space refinement: map target, B-factor fit, coordinate refinement, CLI (issue 6).

Real data only (../shared/data); reference figures are the deposited models (their
coordinates, B factors, CC_mask), cctbx's figures for them, and the geometry limits of the site's
verdict (rerefine.reports.verdict) or, where a test says so, of issue 6.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from rerefine.refine import modelio
from rerefine.common.errors import InputError
from rerefine.reports.verdict import (ANGLE_FLOOR, ANGLE_TOL, BOND_FLOOR, BOND_TOL, OVERLAP_FRACTION,
                                      OVERLAP_MIN)


def _cc_mask(st, dmap, res):
    from rerefine.refine.mapcc import five_cc
    from rerefine.refine.mask import molecular_mask
    from rerefine.refine.modelmap import model_map

    return five_cc(dmap.data, model_map(st, dmap, res).data, molecular_mask(st, dmap))["cc_mask"]


# --------------------------------------------------------------------------- map target

def test_map_target_gradient_matches_finite_differences(p5me2):
    from rerefine.refine.maptarget import MapTarget, scattering_weights

    st, dmap, res = p5me2
    mt = MapTarget.from_map(dmap, res)
    xyz = modelio.atom_positions(st)
    w = scattering_weights(st, res)
    e, g = mt.energy_gradient(xyz, w)
    rng = np.random.default_rng(3)
    h = 1e-4
    for i in rng.choice(len(xyz), 15, replace=False):
        for k in range(3):
            xp = xyz.copy()
            xm = xyz.copy()
            xp[i, k] += h
            xm[i, k] -= h
            fd = (mt.energy_gradient(xp, w)[0] - mt.energy_gradient(xm, w)[0]) / (2 * h)
            assert fd == pytest.approx(g[i, k], rel=1e-5, abs=1e-6)
    # deposited atoms sit in density: mean filtered-map value well above the box mean (0)
    assert mt.values(xyz).mean() > 3.0


def test_map_target_interpolates_grid_values(p3ajo):
    """At grid points the B-spline reproduces the filtered map (Chimera-boxed map, ORIGIN frame)."""
    from rerefine.refine.maptarget import MapTarget, lowpass_map

    st, dmap, res = p3ajo
    mt = MapTarget.from_map(dmap, res)
    rho = lowpass_map(dmap, res)
    idx = np.array([[10, 20, 30], [47, 52, 56], [80, 90, 100]])
    xyz = dmap.origin + idx * dmap.voxel_size
    np.testing.assert_allclose(mt.values(xyz), rho[tuple(idx.T)], atol=1e-6)


def test_map_target_skips_atoms_of_zero_weight(p5me2):
    """Atoms of weight 0 (riding hydrogens) are not interpolated: the map term and its gradient equal
    those from every atom's value, bit for bit; the values used are scipy's cubic B-spline at those
    positions; a non-finite position still makes the term NaN."""
    from scipy import ndimage

    from rerefine.refine.maptarget import MapTarget, scattering_weights

    st, dmap, res = p5me2
    mt = MapTarget.from_map(dmap, res)
    xyz = modelio.atom_positions(st) + np.random.default_rng(7).normal(0, 0.3, (st[0].count_atom_sites(), 3))
    w = scattering_weights(st, res)
    w[np.random.default_rng(8).random(len(w)) < 0.4] = 0.0
    e, g = mt.energy_gradient(xyz, w)
    vals, grads = mt.values_gradients(xyz)
    assert e == -float(np.dot(w, vals))
    np.testing.assert_array_equal(g, -grads * w[:, None])
    on = w != 0
    part, _ = mt.values_gradients(xyz, on)
    assert not part[~on].any()
    # scipy's B-spline of the same coefficients (no prefilter: they already are coefficients);
    # float64 summation order over the 64 neighbours: measured 1.2e-14 sd on every atom, values up to 18
    ref = ndimage.map_coordinates(mt.coef, mt.grid(xyz[on]).T, order=3, prefilter=False, mode="nearest")
    np.testing.assert_allclose(part[on], ref, rtol=0, atol=1e-12)
    bad = xyz.copy()
    bad[np.flatnonzero(~on)[0]] = np.nan
    assert np.isnan(mt.energy_gradient(bad, w)[0])


def test_scattering_weights(p5me2):
    from rerefine.refine.maptarget import scattering_weights

    st, _, res = p5me2
    st = st.clone()
    atoms = [c.atom for c in st[0].all()]
    w = scattering_weights(st, res)
    el = np.array([a.element.name.upper() for a in atoms])
    assert np.allclose(w[el == "C"], 1.0)
    assert w[el == "S"].min() > 1.5  # sulfur scatters about twice as much as carbon
    assert w[el == "FE"].min() > w[el == "S"].max()
    atoms[0].occ = 0.5
    assert scattering_weights(st, res)[0] == pytest.approx(0.5 * w[0])


# --------------------------------------------------------------------------- ADP

def test_adp_gradient_and_recovery(p3ajo):
    """B fit: analytic gradient = finite differences; flat B refined back to the deposited model's fit."""
    from rerefine.refine.adp import refine_adp
    from rerefine.refine.modelfit import ModelMapFit

    st, dmap, res = p3ajo
    st = st.clone()
    atoms = [c.atom for c in st[0].all()]
    xyz = modelio.atom_positions(st)
    # double precision: the finite differences below resolve 1e-9 of the misfit
    fit = ModelMapFit.prepare(dmap, xyz, [a.element.name for a in atoms], np.array([a.occ for a in atoms]), res,
                              single=False)
    b_dep = np.array([a.b_iso for a in atoms])
    m, g, cc_dep = fit.evaluate(b_dep)
    for i in (5, 400, 1200):
        bp = b_dep.copy()
        bm = b_dep.copy()
        bp[i] += 0.01
        bm[i] -= 0.01
        fd = (fit.evaluate(bp)[0] - fit.evaluate(bm)[0]) / 0.02
        assert fd == pytest.approx(g[i], rel=2e-3, abs=1e-9)
    for a in atoms:
        a.b_iso = 50.0
    out = refine_adp(st, dmap, res, fit=fit, max_iter=20)
    assert out.cc_before < cc_dep - 0.05  # flat B fits clearly worse ...
    assert out.cc_after > cc_dep - 0.005  # ... refinement recovers the authors' fit (or better)
    b_new = np.array([a.b_iso for a in atoms])
    assert np.all((b_new >= 1.0) & (b_new <= 500.0))
    # ordered core vs surface: refined B correlate with the deposited ones
    assert np.corrcoef(b_new, b_dep)[0, 1] > 0.5


# --------------------------------------------------------------------------- coordinates

def test_restraint_selection_drops_phi_psi_and_ring_torsions(p5me2, monlib):
    from rerefine.refine.realspace import refinement_restraints
    from rerefine.refine.restraints import build_restraints

    st, _, _ = p5me2
    r = build_restraints(st, monlib)
    rr = refinement_restraints(r)
    lab = np.array(r.torsions.label)
    assert np.all(rr.torsions.sigma[(lab == "phi") | (lab == "psi")] == 0)
    assert np.all(rr.torsions.sigma[lab == "omega"] == r.torsions.sigma[lab == "omega"])
    # proline ring torsions (central bond inside the pyrrolidine ring) are off
    pro = [k for k in range(len(lab)) if r.torsions.sigma[k] > 0
           and all(list(st[0].all())[int(a)].residue.name == "PRO" for a in r.torsions.idx[k])
           and lab[k] != "omega"]
    assert pro and all(rr.torsions.sigma[k] == 0 for k in pro if lab[k].startswith("sp3"))
    assert r.torsions.sigma is not rr.torsions.sigma  # input untouched


def _shaken(st, seed=42, rms=0.5):
    from rerefine.refine.restraints import atom_xyz, set_xyz

    x0 = atom_xyz(st)
    sh = st.clone()
    xs = x0 + np.random.default_rng(seed).normal(0.0, rms / np.sqrt(3.0), x0.shape)
    set_xyz(sh, xs)
    for c in sh[0].all():
        c.atom.b_iso = 50.0
    return sh, x0, xs


def test_peptide_links_survive_coordinate_errors(p3ajo, monlib):
    """3AJO shaken by 0.5 Å RMS: gemmi alone turns 18 of 171 peptide links into chain breaks and
    makes 2 false cis peptides; the refinement topology keeps the deposited model's links
    (reference: gemmi on the deposited model, 168 TRANS + 2 PTRANS + 1 PCIS, the cis-Pro 161)."""
    from rerefine.refine.realspace import refinement_topology
    from rerefine.refine.restraints import build_restraints

    st, _, _ = p3ajo
    sh, _, _ = _shaken(st)
    dep = build_restraints(st, monlib)
    assert dep.links == {"TRANS": 168, "PTRANS": 2, "PCIS": 1}
    assert build_restraints(sh, monlib).links.get("gap", 0) >= 10  # what gemmi alone makes of it
    r = refinement_topology(sh, monlib)
    assert "gap" not in r.links
    assert sum(r.links.values()) == 171
    lab = np.array(r.torsions.label)
    om = lab == "omega"
    cras = list(st[0].all())
    cis_res = {cras[int(i)].residue.seqid.num for i in r.torsions.idx[om & (r.torsions.ideal == 0.0), 3]}
    assert cis_res == {161}
    assert r.bonds.idx.shape[0] == dep.bonds.idx.shape[0]


def test_trapped_peptide_is_rebuilt(p3ajo, monlib):
    """A peptide of 3AJO twisted to omega ~ 90 deg (C and O turned 100 deg about CA-CA, N left) is
    a local minimum of the restraints; the rebuild puts C, O back within 0.3 Å of the deposited
    positions and omega within 15 deg of trans. Reference: the deposited coordinates."""
    from rerefine.refine.geometry import restraint_energy_gradient
    from rerefine.refine.maptarget import MapTarget, scattering_weights
    from rerefine.refine.realspace import omega_angles as _omega, peptide_units, rebuild_peptides, refinement_restraints, \
        refinement_topology
    from rerefine.refine.restraints import atom_xyz

    st, dmap, res = p3ajo
    r = refinement_restraints(refinement_topology(st, monlib))
    units = peptide_units(st, r)
    x0 = atom_xyz(st)
    cras = list(st[0].all())
    u = next(k for k, row in enumerate(units) if cras[int(row[1])].residue.seqid.num == 60)
    _, ca1, c1, o1, n2, h2, ca2, cis = (int(v) for v in units[u])
    axis = (x0[ca2] - x0[ca1]) / np.linalg.norm(x0[ca2] - x0[ca1])
    th = np.radians(100.0)
    x = x0.copy()
    for i in (c1, o1):  # Rodrigues rotation about the CA-CA axis through CA1
        v = x0[i] - x0[ca1]
        x[i] = x0[ca1] + v * np.cos(th) + np.cross(axis, v) * np.sin(th) + axis * np.dot(axis, v) * (1 - np.cos(th))
    assert abs(_omega(x, units[u:u + 1, [1, 2, 4, 6]])[0]) < 150.0
    mt = MapTarget.from_map(dmap, res)
    w = scattering_weights(st, res) * 5.0

    def eg(xx):
        em, gm = mt.energy_gradient(xx, w)
        er, gr = restraint_energy_gradient(r, xx)
        return em + er, gm + gr

    free = ~np.asarray(r.fixed, bool)
    out, changed = rebuild_peptides(x, units.copy(), lambda xx: eg(xx)[0], energy_gradient=eg,
                                    residue=r.residue, free=free)
    assert u in changed
    assert np.linalg.norm(out[c1] - x0[c1]) < 0.3 and np.linalg.norm(out[o1] - x0[o1]) < 0.3
    om = _omega(out, units[u:u + 1, [1, 2, 4, 6]])[0]
    assert abs(abs(om) - 180.0) < 15.0


def test_density_fit_position_gradient(p3ajo):
    """Model-map fit as a coordinate target (:meth:`ModelMapFit.evaluate_positions`, with the
    cheaper cut-offs of the density-fit stage): analytic position gradient = finite differences, also
    when only a few atoms move (``moving``); the deposited model fits better (higher CC) than a 0.5 Å shaken copy."""
    from rerefine.refine.modelfit import ModelMapFit
    from rerefine.refine.fit_stage import FIT_ALIAS_LOG, FIT_CUTOFF_LOG

    st, dmap, res = p3ajo
    cras = list(st[0].all())
    x0 = modelio.atom_positions(st)
    t = ModelMapFit.prepare(dmap, x0, [c.atom.element.name for c in cras], np.array([c.atom.occ for c in cras]),
                            res, target="sphere", alias_log=FIT_ALIAS_LOG, cutoff_log=FIT_CUTOFF_LOG,
                            single=False)  # double precision: finite differences of 1e-4 Å need it
    b = np.array([c.atom.b_iso for c in cras])
    e, g, cc = t.evaluate_positions(x0, b)
    h = 1e-4
    for i in (10, 700, 1500):
        for k in range(3):
            xp, xm = x0.copy(), x0.copy()
            xp[i, k] += h
            xm[i, k] -= h
            fd = (t.evaluate_positions(xp, b)[0] - t.evaluate_positions(xm, b)[0]) / (2 * h)
            assert fd == pytest.approx(g[i, k], rel=1e-4, abs=1e-9)
    # a few moving atoms (the map of the others held between calls): the same misfit, their rows of
    # the same gradient, and finite differences of atom 700 through the held map agree with them
    mv = np.zeros(len(x0), bool)
    mv[695:706] = True
    em, gm, _ = t.evaluate_positions(x0, b, mv)
    assert em == pytest.approx(e, rel=1e-12)
    assert np.allclose(gm[mv], g[mv], rtol=1e-9, atol=1e-12) and not gm[~mv].any()
    for k in range(3):
        xp, xm = x0.copy(), x0.copy()
        xp[700, k] += h
        xm[700, k] -= h
        fd = (t.evaluate_positions(xp, b, mv)[0] - t.evaluate_positions(xm, b, mv)[0]) / (2 * h)
        assert fd == pytest.approx(g[700, k], rel=1e-4, abs=1e-9)
    _, _, xs = _shaken(st)
    assert cc > t.evaluate_positions(xs, b)[2] + 0.05


def test_rerefinement_stays_near_deposited_and_moves_towards_later_model(p5me2, monlib, test_data):
    """5ME2/EMD-3488: the reference-position restraint keeps the re-refined model near the input.

    Without it the map-value target moved the deposited model 0.81 Å RMS (backbone 0.71).
    Reference figures: the deposited coordinates, and 5NI1 (the same authors' later model in the
    same map, CC_mask 0.87 vs 0.74 for 5ME2; RMSD 1.47 Å to 5ME2 over 4467 matched atoms):
    what the refinement moves must move towards 5NI1 (measured 1.466 -> 1.43 Å; 1.42 with B and the
    density-fit stage).
    """
    from rerefine.refine.realspace import refine_model
    from rerefine.refine.restraints import atom_xyz

    st, dmap, res = p5me2
    other = modelio.read_model(test_data / "maps_models" / "emd_3488_5me2" / "5ni1_updated.cif")
    pos = {(c.chain.name, c.residue.seqid.num, c.atom.name): c.atom.pos.tolist() for c in other[0].all()}
    keys = [(c.chain.name, c.residue.seqid.num, c.atom.name) for c in st[0].all()]
    idx = np.array([i for i, k in enumerate(keys) if k in pos])
    ref = np.array([pos[keys[i]] for i in idx])
    x0 = atom_xyz(st)
    out = refine_model(st, dmap, res, monlib, adp=False)
    x1 = atom_xyz(out.structure)
    assert out.status == "ok"
    assert out.rmsd_moved < 0.3  # measured 0.14 Å
    before = np.sqrt(((x0[idx] - ref) ** 2).sum(1).mean())
    after = np.sqrt(((x1[idx] - ref) ** 2).sum(1).mean())
    assert before == pytest.approx(1.466, abs=0.01)
    assert after < before - 0.02


@pytest.fixture(scope="module")
def shaken_recovery(p3ajo, monlib):
    """3AJO/EMD-20026 shaken (0.5 Å RMS, seed 42, flat B 50 Å²) and refined with the defaults:
    ``(deposited structure, shaken coordinates, refinement result, deposited CC_mask)``."""
    from rerefine.refine.realspace import refine_model
    from rerefine.refine.restraints import atom_xyz, set_xyz

    st, dmap, res = p3ajo
    x0 = atom_xyz(st)
    shaken = st.clone()
    rng = np.random.default_rng(42)
    xs = x0 + rng.normal(0.0, 0.5 / np.sqrt(3.0), x0.shape)
    set_xyz(shaken, xs)
    for c in shaken[0].all():
        c.atom.b_iso = 50.0
    return shaken, xs, refine_model(shaken, dmap, res, monlib, adp=True), _cc_mask(st, dmap, res)


@pytest.mark.slow
def test_recovery_of_shaken_model_angles(shaken_recovery):
    """Issue 6's angle figure for the shaken recovery: heavy-atom angle RMSD <= 2 deg.

    2 deg is twice the 1.0 deg Phenix's real-space refinement aims at (Afonine et al. 2018, Acta
    Cryst. D74:531; weight_control.TARGET_ANGLE_RMSD) and above the 1.3 deg the density-fit stage
    may reach. Measured 1.71 deg.
    """
    _, _, out, _ = shaken_recovery
    assert out.geometry_after["angle_rmsd"] <= 2.0


@pytest.mark.slow
def test_recovery_of_shaken_model(p3ajo, shaken_recovery):
    """Shake 3AJO/EMD-20026 (0.5 Å RMS, flat B) and refine: issue 6 recovery figures.

    Issue 6: the RMSD to the deposited model at least halves, CC_mask within 0.02 of the
    deposited model's, bonds <= 0.02 Å, angles <= 2 deg. Measured (benchmarks/bench_refine.py):
    RMSD 0.50 -> 0.21 Å (0.255 before the peptide links were made robust to coordinate errors:
    gemmi alone turned 18 links into chain breaks), CC_mask 0.86 vs the deposited 0.818.
    """
    from rerefine.refine.restraints import atom_xyz

    st, dmap, res = p3ajo
    x0 = atom_xyz(st)
    shaken, xs, out, cc_dep = shaken_recovery
    assert out.status == "ok"
    x1 = atom_xyz(out.structure)
    rmsd0 = np.sqrt(((xs - x0) ** 2).sum(1).mean())
    rmsd1 = np.sqrt(((x1 - x0) ** 2).sum(1).mean())
    assert rmsd1 <= 0.5 * rmsd0
    assert _cc_mask(out.structure, dmap, res) > cc_dep - 0.02
    assert out.geometry_after["bond_rmsd"] <= 0.02
    # angles <= 2 deg: test_recovery_of_shaken_model_angles
    # the shaken input is untouched
    np.testing.assert_allclose(atom_xyz(shaken), xs)


@pytest.mark.slow
def test_rerefinement_keeps_fit_and_geometry(p5me2, monlib):
    """5ME2/EMD-3488: CC_mask not lower than the deposited model's - 0.005; geometry no worse than
    the site's verdict allows (rerefine.reports.verdict: bonds max(before, 0.010) + 0.002 Å, angles
    max(before, 1.0) + 0.2°, overlaps + max(1, 5 %))."""
    from rerefine.refine.realspace import refine_model

    st, dmap, res = p5me2
    cc0 = _cc_mask(st, dmap, res)
    out = refine_model(st, dmap, res, monlib, adp=False)
    assert out.status == "ok"
    assert _cc_mask(out.structure, dmap, res) >= cc0 - 0.005
    gb, ga = out.geometry_before, out.geometry_after
    assert ga["bond_rmsd"] <= max(gb["bond_rmsd"], BOND_FLOOR) + BOND_TOL
    assert ga["angle_rmsd"] <= max(gb["angle_rmsd"], ANGLE_FLOOR) + ANGLE_TOL
    # the deposited model has no Probe-style clash; the map pull must not create any
    # (without the clash guard this refinement made 129)
    assert ga["nonbonded_overlaps"] <= gb["nonbonded_overlaps"] + max(
        OVERLAP_MIN, OVERLAP_FRACTION * gb["nonbonded_overlaps"])
    # names, order and count of atoms preserved
    before = [(c.chain.name, c.residue.seqid.num, c.atom.name) for c in st[0].all()]
    after = [(c.chain.name, c.residue.seqid.num, c.atom.name) for c in out.structure[0].all()]
    assert before == after


def test_unknown_residue_stays_fixed(p3ajo, monlib):
    from rerefine.refine.realspace import refine_model
    from rerefine.refine.restraints import atom_xyz

    st, dmap, res = p3ajo
    st = st.clone()
    # keep the test quick: residues 5-40 of chain A plus one renamed (dictionary-less) residue
    ch = st[0][0]
    for i in range(len(ch) - 1, -1, -1):
        if not 5 <= ch[i].seqid.num <= 40:
            del ch[i]
    ch[10].name = "ZZQ"
    x0 = atom_xyz(st)
    fixed = np.array([c.residue.name == "ZZQ" for c in st[0].all()])
    out = refine_model(st, dmap, res, monlib, adp=False, cycles=1, max_iter=40)
    x1 = atom_xyz(out.structure)
    assert np.array_equal(x1[fixed], x0[fixed])
    assert np.abs(x1[~fixed] - x0[~fixed]).max() > 0.01
    assert any("ZZQ" in w for w in out.warnings)


def test_divergence_keeps_input(p3ajo, monlib):
    from rerefine.refine.realspace import refine_model
    from rerefine.refine.restraints import atom_xyz

    st, dmap, res = p3ajo
    st = st.clone()
    ch = st[0][0]
    for i in range(len(ch) - 1, -1, -1):
        if not 5 <= ch[i].seqid.num <= 20:
            del ch[i]
    bad = dmap.with_data(np.full(dmap.shape, np.nan, dtype=np.float32))
    out = refine_model(st, bad, res, monlib, adp=False, cycles=1, max_iter=20)
    assert out.status.startswith("diverged")
    np.testing.assert_array_equal(atom_xyz(out.structure), atom_xyz(st))


def test_bad_inputs(p3ajo, p5me2, monlib):
    from rerefine.refine.realspace import refine_model

    st, dmap, res = p3ajo
    with pytest.raises(InputError, match="resolution"):
        refine_model(st, dmap, 0.0, monlib)
    # 5ME2 lies outside the EMD-20026 box: clear message, not a crash
    with pytest.raises(InputError, match="inside map"):
        refine_model(p5me2[0], dmap, res, monlib)
    dup = st.clone()
    res0 = dup[0][0][3]
    res0[1].name = res0[0].name
    with pytest.raises(InputError, match="duplicate atom"):
        refine_model(dup, dmap, res, monlib)
    zero = st.clone()
    for c in zero[0].all():
        c.atom.occ = 0.0
    with pytest.raises(InputError, match="zero occupancy"):
        refine_model(zero, dmap, res, monlib)


# --------------------------------------------------------------------------- CLI

@pytest.mark.slow
def test_cli_refine(pairs, monlib, tmp_path, capsys):
    from rerefine.flows.cli import main

    model, mp, res = pairs["emd_20026_box_3ajo_refined"]
    out = tmp_path / "refined.cif"
    rc = main(["refine", str(model), str(mp), "--resolution", str(res), "-o", str(out), "--monlib",
               str(monlib), "--json", "-", "--cycles", "2"])
    assert rc == 0
    rep = json.loads(capsys.readouterr().out)
    # the deposited model's figures: cctbx's CC_mask/CC_box (reference/cctbx_reference.json,
    # agreement 0.01 as in test_metrics_cli), gemmi's geometry (0.00802 Å, 1.383°, test_geometry)
    ref = json.loads((monlib.parent / "reference" / "cctbx_reference.json").read_text())["emd_20026_box_3ajo_refined"]
    assert rep["before"]["cc_mask"] == pytest.approx(ref["cc_mask"], abs=0.01)
    assert rep["before"]["cc_box"] == pytest.approx(ref["cc_box"], abs=0.01)
    assert rep["before"]["bond_rmsd"] == pytest.approx(0.008019, abs=1e-6)
    assert rep["before"]["angle_rmsd"] == pytest.approx(1.3834, abs=1e-4)
    assert rep["before"]["nonbonded_overlaps"] == 0
    for key in ("cc_mask", "cc_box", "q_score", "atom_inclusion", "bond_rmsd", "angle_rmsd",
                "chirality_rmsd", "planarity_rmsd"):
        assert np.isfinite(rep["after"][key]), key
    assert rep["after"]["bond_rmsd"] <= max(rep["before"]["bond_rmsd"], BOND_FLOOR) + BOND_TOL
    assert rep["after"]["angle_rmsd"] <= max(rep["before"]["angle_rmsd"], ANGLE_FLOOR) + ANGLE_TOL
    # validation summary of the deposited model: MolProbity-class figures of the same file
    # (reference/molprobity_reference.json, cctbx 2025.11 + reduce + probe): 0 Ramachandran
    # outliers, 98.24 % favoured, 0 rotamer and C-beta outliers; clashscore within the 15 %
    # agreement the validation tests hold (tests/test_validation.py), +-1.5 below 10
    mp = json.loads((monlib.parent / "reference" / "molprobity_reference.json").read_text())["3ajo_fitted_deposited"]
    assert rep["before"]["rama_outliers"] == mp["rama_summary"]["n_outliers"]
    assert rep["before"]["rama_favored_pct"] == pytest.approx(mp["rama_summary"]["favored_pct"], abs=0.01)
    assert rep["before"]["rotamer_outliers"] == mp["rota_summary"]["n_outliers"]
    assert rep["before"]["cbeta_outliers"] == mp["cbeta_summary"]["n_outliers_ge_0.25"]
    assert rep["before"]["clashscore"] == pytest.approx(mp["clash_summary"]["clashscore"], abs=1.5)
    from rerefine.refine.validation import SUMMARY_KEYS
    assert all(np.isfinite(rep["after"][k]) for k in SUMMARY_KEYS)
    assert rep["weight"] > 0 and rep["cycles"] >= 2 and rep["seconds"] > 0
    # deposited 3AJO-in-EMD-20026: CC_mask (cctbx-style) 0.818; refinement must not lower it
    assert rep["after"]["cc_mask"] >= rep["before"]["cc_mask"] - 0.005
    st_in = modelio.read_model(model)
    st_out = modelio.read_model(out)
    assert [(c.chain.name, c.residue.name, c.residue.seqid.num, c.atom.name) for c in st_in[0].all()] == \
        [(c.chain.name, c.residue.name, c.residue.seqid.num, c.atom.name) for c in st_out[0].all()]
    assert "rerefine" in out.read_text()
    # B distributions before/after (issue 16): the input's as gemmi reads the file; none at a bound after
    import gemmi

    b_in = [a.b_iso for ch in gemmi.read_structure(str(model))[0] for res in ch for a in res if not a.is_hydrogen()]
    assert rep["before"]["b"]["max"] == pytest.approx(max(b_in), abs=1e-3)
    assert rep["before"]["b"]["median"] == pytest.approx(float(np.median(b_in)), abs=1e-3)
    assert rep["after"]["b"]["at_min"] == 0 and rep["after"]["b"]["at_max"] == 0


def test_cli_refine_bad_resolution(pairs, monlib, tmp_path, capsys):
    from rerefine.flows.cli import main

    model, mp, _ = pairs["emd_20026_box_3ajo_refined"]
    rc = main(["refine", str(model), str(mp), "--resolution", "-2", "-o", str(tmp_path / "x.cif"),
               "--monlib", str(monlib)])
    assert rc == 1
    assert "resolution" in capsys.readouterr().err


def test_refine_model_refines_occupancies_of_alternative_conformers(p5me2, monlib):
    """A two-conformer Trp (B37: deposited side chain A, copy turned 120° in chi1 as B, 0.5 each)
    refined against the real EMD-3488 map: the conformer in density ends >= 0.8, the other <= 0.2,
    their sum stays 1, and geometry stays within the issue's limits."""
    from rerefine.refine.occupancy import add_rotamer_conformer
    from rerefine.refine.realspace import refine_model

    st, dmap, res = p5me2
    two = add_rotamer_conformer(st, "B", 37, 120.0)
    r = refine_model(two, dmap, res, monlib, adp=False, cycles=1, rebuild=False)
    assert r.status == "ok" and r.occupancy is not None
    res37 = next(x for x in r.structure[0]["B"] if x.seqid.num == 37)
    occ = {a.altloc: a.occ for a in res37 if a.name == "CG"}
    assert occ["A"] >= 0.8 and occ["B"] <= 0.2
    assert occ["A"] + occ["B"] == pytest.approx(1.0, abs=1e-3)
    assert r.geometry_after["bond_rmsd"] <= 0.02 and r.geometry_after["angle_rmsd"] <= 2.0


def test_cli_refine_free_follows_the_map_further(pairs, monlib, tmp_path, capsys):
    """--free drops the restraint to the input positions: atoms move further than by default,
    with geometry still within the issue's limits and CC_mask not lower."""
    from rerefine.flows.cli import main

    model, mp, res = pairs["emd_20026_box_3ajo_refined"]
    moved = {}
    for flag in ([], ["--free"]):
        rc = main(["refine", str(model), str(mp), "--resolution", str(res), "-o", str(tmp_path / "r.cif"),
                   "--monlib", str(monlib), "--json", "-", "--no-adp", "--cycles", "2", *flag])
        assert rc == 0
        rep = json.loads(capsys.readouterr().out)
        assert rep["reference_restraint"] is (not flag)
        assert rep["after"]["bond_rmsd"] <= 0.02 and rep["after"]["angle_rmsd"] <= 2.0
        assert rep["after"]["cc_mask"] >= rep["before"]["cc_mask"] - 0.005
        moved[bool(flag)] = rep["rmsd_moved"]
    assert moved[True] > moved[False]


def test_fit_map_keeps_b_factors_on_the_deposited_map(p3ajo, monlib):
    """Coordinates against the auto-sharpened map, B and the density-fit cycles against the
    deposited map (``fit_map``, what the nightly pipeline does): CC_mask on the deposited map
    0.818 -> 0.865 measured (0.848 when the B are fitted to the sharpened map instead)."""
    from rerefine.refine import sharpen
    from rerefine.refine.realspace import refine_model

    st, dmap, res = p3ajo
    sharp = sharpen.auto_sharpen(dmap, res).map
    r = refine_model(st, sharp, res, monlib, fit_map=dmap)
    assert r.status == "ok" and r.adp is not None
    # threshold read off an earlier run on this same pair (measured 0.865; the pairs here also tuned
    # the refinement's parameters): 0.01 below it, and well above the deposited model's 0.818
    assert _cc_mask(r.structure, dmap, res) >= 0.855
    assert r.geometry_after["bond_rmsd"] <= 0.02 and r.geometry_after["angle_rmsd"] <= 2.0


def _gapped(st, k: int, renumber: int, stretch: float):
    """3AJO with residues after chain position ``k`` moved ``stretch`` Å along C(k)->N(k+1) and
    renumbered by ``+renumber`` (a gap in the numbering when > 0)."""
    g = st.clone()
    ch = g[0][0]
    c = ch[k].find_atom("C", "*").pos
    n = ch[k + 1].find_atom("N", "*").pos
    u = (n - c) / c.dist(n)
    for j in range(k + 1, len(ch)):
        for a in ch[j]:
            a.pos = a.pos + u * stretch
        ch[j].seqid.num += renumber
    g.setup_entities()
    return g, ch[k].seqid.num


def test_numbering_gap_is_never_closed(p3ajo, monlib):
    """Issue 16: a gap in the numbering is a chain break whatever the C-N distance, and refinement
    keeps its ends at least as far apart as the input had them (on an unseen entry ends at
    3.39 Å were pulled to 2.98 Å). Same stretch without the gap: linked as before."""
    from rerefine.refine.chain_breaks import gap_pairs
    from rerefine.refine.realspace import refine_model, refinement_topology
    from rerefine.refine.restraints import atom_xyz

    st, dmap, res = p3ajo
    k = 60
    linked, _ = _gapped(st, k, 0, 1.2)
    assert sum(refinement_topology(linked, monlib).links.values()) == 171
    gapped, num = _gapped(st, k, 2, 1.2)
    r = refinement_topology(gapped, monlib)
    assert sum(v for key, v in r.links.items() if key != "gap") == 170
    pairs, dmin = gap_pairs(gapped, r, atom_xyz(gapped))
    cras = list(gapped[0].all())
    assert [(cras[i].residue.seqid.num, cras[i].atom.name, cras[j].residue.seqid.num, cras[j].atom.name)
            for i, j in pairs] == [(num, "C", num + 3, "N")]
    d_in = float(dmin[0])
    assert 2.4 < d_in < 2.7
    out = refine_model(gapped, dmap, res, monlib, adp=False, cycles=2)
    x = atom_xyz(out.structure)
    i, j = pairs[0]
    # the map (built from the unstretched model) pulls the ends towards 1.33 Å; the gap keeper's
    # sigma 0.03 Å lets it in by a few hundredths at most
    assert np.linalg.norm(x[i] - x[j]) > d_in - 0.05


def test_model_without_hydrogens_is_refined_with_riding_hydrogens(p3ajo, monlib):
    """Issue 16: hydrogens take part in the repulsion (the all-atom clashscore counts them) and
    are removed again: the refined model has exactly the input's atoms, in order."""
    from rerefine.refine.realspace import refine_model
    from rerefine.refine.riding_hydrogens import add_hydrogens, has_hydrogens, strip_added

    st, dmap, res = p3ajo
    assert not has_hydrogens(st)
    h = add_hydrogens(st, monlib)
    added = sum(1 for c in h[0].all() if c.atom.serial == -1)
    n0 = st[0].count_atom_sites()
    # every added atom is a hydrogen; the 3AJO protomer (170 residues) gets about 8 per residue
    assert added == h[0].count_atom_sites() - n0 and added > 1200
    assert all(c.atom.is_hydrogen() for c in h[0].all() if c.atom.serial == -1)
    assert strip_added(h) == added and h[0].count_atom_sites() == n0
    out = refine_model(st, dmap, res, monlib, adp=False, cycles=1)
    assert out.status == "ok"
    assert [(c.residue.seqid.num, c.atom.name, c.atom.altloc) for c in out.structure[0].all()] == \
        [(c.residue.seqid.num, c.atom.name, c.atom.altloc) for c in st[0].all()]


def test_metal_sites_keep_their_recorded_distances(p5me2, monlib):
    """Issue 16: 5ME2's haem Fe-NE2(His) LINK records (2.66, 2.74, 2.65, 2.75 Å) become distance
    restraints (sigma 0.02 Å); without them refinement moved the distances to 2.36-2.84 Å."""
    from rerefine.refine.metal_restraint import metal_bond_rows
    from rerefine.refine.realspace import refine_model
    from rerefine.refine.restraints import atom_xyz

    st, dmap, res = p5me2
    idx, ideal, sigma, labels = metal_bond_rows(st, atom_xyz(st))
    cras = list(st[0].all())
    assert sorted(ideal.tolist()) == [2.65, 2.66, 2.74, 2.75] and (sigma == 0.02).all()
    assert {(cras[i].atom.name, cras[j].atom.name) for i, j in idx} == {("NE2", "FE")}
    out = refine_model(st, dmap, res, monlib, adp=False, cycles=2)
    # the output keeps the input's atom order (hydrogens added for refinement are removed)
    x = atom_xyz(out.structure)
    d = np.linalg.norm(x[idx[:, 0]] - x[idx[:, 1]], axis=1)
    assert np.all(np.abs(d - ideal) <= 0.08), d


def test_refinement_reads_the_top8000_folder_it_is_given(p3ajo, monlib, tmp_path):
    """The Ramachandran and rotamer terms read the Top8000 folder passed in (the pipeline passes
    the one its settings name, as to the validation), not only ``RR_TOP8000``: an empty folder is a
    one-line error that names the setting."""
    from rerefine.common.errors import InputError
    from rerefine.refine.realspace import refine_model

    st, dmap, res = p3ajo
    with pytest.raises(InputError, match="RR_TOP8000"):
        refine_model(st, dmap, res, monlib, adp=False, cycles=1, top8000_dir=tmp_path)


def test_lowpass_map_threaded_transform_equals_one_thread(p3ajo, monkeypatch):
    """The filtered map with two FFT threads (RR_FFT_WORKERS=2: scipy.fft splits the 1-D
    transforms between threads) is bit for bit the one-thread result."""
    from rerefine.refine.maptarget import lowpass_map

    _, dmap, res = p3ajo
    monkeypatch.setenv("RR_FFT_WORKERS", "1")
    one = lowpass_map(dmap, res)
    monkeypatch.setenv("RR_FFT_WORKERS", "2")
    two = lowpass_map(dmap, res)
    assert np.array_equal(one, two)
