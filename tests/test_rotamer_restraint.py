"""Rotamer restraints (refine/rotamer_restraint.py): data, rotamer assignment against cctbx, rows."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rerefine.refine import modelio
from rerefine.refine.realspace import refinement_topology
from rerefine.refine.restraints import atom_xyz
from rerefine.refine.rotamer_restraint import (CHI_ATOMS, SIGMA_MIN, central_values, nearest_rotamer,
                                               rotamer_rows, with_rotamer_restraints)

MODELS = {"5me2_deposited": "maps_models/emd_3488_5me2/5me2.pdb",
          "7cec_A_deposited": "maps_models/emd_30342_zone_7cec_chainA/390_7cec_A.cif"}


def test_central_values_are_read_from_the_top8000_files(test_data):
    """The rotamer centres come from the Top8000 folder the validation reads (every rotameric residue)."""
    table = central_values(test_data / "validation" / "top8000")
    assert set(table) == set(CHI_ATOMS) and all(table[res] for res in CHI_ATOMS)
    thr = {name: (freq, mean, esd) for name, freq, mean, esd in table["THR"]}
    # THR.csv: "THR,p,36195,48.14,61,7.7,..."
    assert thr["p"][0] == pytest.approx(48.14) and thr["p"][1][0] == 61.0 and thr["p"][2][0] == 7.7


@pytest.mark.parametrize("key", sorted(MODELS))
def test_rotamer_names_agree_with_cctbx(test_data, key):
    """The rotamer a side chain is restrained to is the one cctbx's rotalyze names
    (molprobity_reference.json, Favored residues): measured 370 of 372 (5ME2), 316 of 319
    (7CEC); at least 98 %, i.e. no more than ~2 disagreements in 100."""
    st = modelio.read_model(test_data / MODELS[key])
    r = refinement_topology(st, test_data / "monomers")
    *_, done = rotamer_rows(st, r, atom_xyz(st))
    keys = [f"{ch.name}:{res.seqid.num}:{res.name}" for ch in st[0] for res in ch]
    rota = json.loads((test_data / "reference" / "molprobity_reference.json").read_text())[key]["rota"]
    pairs = [(name, rota[keys[rid]]["rotamer"]) for rid, name in done
             if keys[rid] in rota and rota[keys[rid]]["eval"] == "Favored"]
    assert len(pairs) > 250
    agree = sum(a == b for a, b in pairs)
    assert agree / len(pairs) >= 0.98


def test_rows_and_symmetric_chi(test_data):
    st = modelio.read_model(test_data / MODELS["5me2_deposited"])
    r = refinement_topology(st, test_data / "monomers")
    xyz = atom_xyz(st)
    idx, ideal, sigma, period, labels, done = rotamer_rows(st, r, xyz)
    assert len(idx) == len(ideal) == len(sigma) == len(period) == len(labels) > 0
    assert (sigma >= SIGMA_MIN).all()
    names = [c.atom.name for c in st[0].all()]
    resn = [c.residue.name for c in st[0].all()]
    for k in range(len(idx)):
        rn = resn[idx[k, 1]]
        chi = int(labels[k][-1])
        assert tuple(names[i] for i in idx[k]) == CHI_ATOMS[rn][chi - 1]
        assert period[k] == (2 if (rn, chi) in {("PHE", 2), ("TYR", 2), ("ASP", 2), ("GLU", 3)} else 1)
    # a Phe chi2 of 90 and -90 is the same rotamer
    a = nearest_rotamer("PHE", np.array([-65.0, 95.0]))
    b = nearest_rotamer("PHE", np.array([-65.0, -85.0]))
    assert a[0] == b[0] == "m-80" and a[1] == pytest.approx(b[1], abs=1e-9)  # PHE.csv: m-80 chi2 -81
    # the restraints of r are not changed; the copy has the rows appended
    n0 = len(r.torsions)
    r2, done2 = with_rotamer_restraints(st, r, xyz)
    assert len(r.torsions) == n0 and len(r2.torsions) == n0 + len(idx) and done2 == done


def test_side_chain_outside_every_rotamer_is_not_restrained(test_data):
    """A chi turned far from every rotamer centre (chi1 of a Thr to 0 deg: eclipsed) gets no row."""
    st = modelio.read_model(test_data / MODELS["5me2_deposited"])
    r = refinement_topology(st, test_data / "monomers")
    xyz = atom_xyz(st)
    *_, done = rotamer_rows(st, r, xyz)
    cras = list(st[0].all())
    rid = next(rid for rid, _ in done if cras[int(np.nonzero(r.residue == rid)[0][0])].residue.name == "THR")
    at = {cras[i].atom.name: i for i in np.nonzero(r.residue == rid)[0]}
    # rotate OG1, CG2 (and their H) about CA-CB so that chi1 = N-CA-CB-OG1 becomes 0
    from rerefine.refine.geometry import dihedral_gradient

    chi = np.degrees(dihedral_gradient(xyz, at["N"], at["CA"], at["CB"], at["OG1"], np.empty((4, 3)))[0])
    axis = xyz[at["CB"]] - xyz[at["CA"]]
    axis /= np.linalg.norm(axis)
    th = np.radians(-chi)
    moved = xyz.copy()
    for nm, i in at.items():
        if nm in ("OG1", "CG2", "HG1", "HG21", "HG22", "HG23"):
            v = xyz[i] - xyz[at["CB"]]
            v = (v * np.cos(th) + np.cross(axis, v) * np.sin(th) + axis * np.dot(axis, v) * (1 - np.cos(th)))
            moved[i] = xyz[at["CB"]] + v
    *_, done_moved = rotamer_rows(st, r, moved)
    assert rid not in {d for d, _ in done_moved}
    assert len(done_moved) == len(done) - 1


def test_watch_raises_the_weight_of_chis_leaving_their_rotamer(test_data):
    """A chi pulled more than WATCH_DEV esd from its centre has its sigma halved (weight x4) per
    call, down to sigma0/4 (x16); chis inside are untouched."""
    from rerefine.refine.rotamer_restraint import WATCH_DEV, rotamer_watch

    st = modelio.read_model(test_data / MODELS["5me2_deposited"])
    r = refinement_topology(st, test_data / "monomers")
    xyz = atom_xyz(st)
    r2, done = with_rotamer_restraints(st, r, xyz)
    w = rotamer_watch(r2)
    assert len(w.rows) == sum(1 for lab in r2.torsions.label if lab.startswith("rotamer_chi"))
    from rerefine.refine.geometry import torsion_devs

    t = r2.torsions
    dev0 = torsion_devs(xyz, t.idx[w.rows], t.ideal[w.rows], t.period[w.rows])
    expected = int(np.sum(np.abs(dev0) > WATCH_DEV * w.sigma0))
    assert w.watch(r2, xyz) == expected  # the deposited model: only chis already > 2 esd out
    sig1 = t.sigma[w.rows].copy()
    out = np.abs(dev0) > WATCH_DEV * w.sigma0
    np.testing.assert_allclose(sig1[out], w.sigma0[out] / 2)
    np.testing.assert_array_equal(sig1[~out], w.sigma0[~out])
    for _ in range(3):
        w.watch(r2, xyz)
    np.testing.assert_allclose(t.sigma[w.rows][out], w.sigma0[out] / 4)
    assert w.watch(r2, xyz) == 0  # at the floor: nothing left to raise
