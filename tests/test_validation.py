"""Validation (refine/validation) against independent MolProbity figures.

Reference: ``reference/molprobity_reference.json`` of the shared data (cctbx 2025.11
ramalyze/rotalyze/cbetadev/omegalyze, reduce 4.15 + probe 2.21 clashscore) for the three
deposited models and servalcat's re-refined 5ME2/7CEC. Targets are the issue's: per-residue
Ramachandran class agreement ≥ 98 %, rotamer class ≥ 95 % on scored residues, C-beta outlier
and cis/twisted counts equal.
"""

from __future__ import annotations

import json

import gemmi
import numpy as np
import pytest

from realdata import DATA, MONLIB
from rerefine.refine.validation import SUMMARY_KEYS, validate
from rerefine.refine.validation import ramachandran, rotamer
from rerefine.refine.validation.tables import load_table

TOP = str(DATA / "validation" / "top8000")
MODELS = {
    "5me2_deposited": "emd_3488_5me2/5me2.pdb",
    "7cec_A_deposited": "emd_30342_zone_7cec_chainA/390_7cec_A.cif",
    "3ajo_fitted_deposited": "emd_20026_box_3ajo_refined/3ajo_fitted_refined.pdb",
}
ALL_MODELS = list(MODELS) + ["5me2_servalcat", "7cec_A_servalcat"]


@pytest.fixture(scope="module")
def ref(test_data):
    return json.loads((test_data / "reference" / "molprobity_reference.json").read_text())


@pytest.fixture(scope="module")
def reports(test_data):
    out = {}
    for name, path in MODELS.items():
        st = gemmi.read_structure(str(test_data / "maps_models" / path))
        st.setup_entities()
        out[name] = validate(st, MONLIB, top8000_dir=TOP)
    return out


def _rows(rep):
    return {f"{r['chain']}:{r['seq']}{r['icode']}:{r['resname']}": r for r in rep.per_residue}


@pytest.mark.parametrize("name", ALL_MODELS)
def test_rama_tables_classify_reference_angles(ref, name):
    """Our contours and thresholds on the reference's own phi/psi and category, all five models."""
    rama = ref[name]["rama"]
    by_cat = {}
    for k, v in rama.items():
        by_cat.setdefault(v["type"], []).append(v)
    agree = n = 0
    for cat, vals in by_cat.items():
        scores = load_table(TOP, ramachandran.TABLES[cat]).lookup(np.array([[v["phi"], v["psi"]] for v in vals]))
        for v, s in zip(vals, scores):
            n += 1
            agree += ramachandran.classify(cat, s) == v["eval"].lower()
    assert agree / n >= 0.98


@pytest.mark.parametrize("name", ALL_MODELS)
def test_rotamer_grids_classify_reference_chis(ref, name):
    """Our grids and thresholds on the reference's own chi values, all five models."""
    agree = n = 0
    for k, v in ref[name]["rota"].items():
        resname = k.split(":")[2]
        grid, nchi = rotamer.GRIDS[resname]
        chis = [c % 360.0 for c in v["chis"][:nchi]]
        s = float(load_table(TOP, grid).lookup(np.array([chis]))[0])
        n += 1
        agree += rotamer.classify(s) == v["eval"].lower()
    assert n == ref[name]["rota_summary"]["n_scored"]
    assert agree / n >= 0.95


@pytest.mark.parametrize("name", list(MODELS))
def test_per_residue_agreement(ref, reports, name):
    """Full pipeline on the deposited files against the reference, residue by residue."""
    rep = reports[name]
    rows = _rows(rep)
    m = ref[name]
    rama = [rows[k]["rama"] == v["eval"].lower() for k, v in m["rama"].items()]
    assert len(rama) == rep.summary["n_rama"]
    # same angles, same table: scores equal to the reference's printing precision (0.01 %)
    sdiff = [abs(rows[k]["rama_score"] - v["score"]) for k, v in m["rama"].items()]
    assert max(sdiff) <= 0.0051
    assert np.mean(rama) >= 0.98
    rota = [rows[k]["rotamer"] == v["eval"].lower() for k, v in m["rota"].items()]
    assert len(rota) == rep.summary["n_rotamer"]
    assert np.mean(rota) >= 0.95
    # C-beta: the reference prints deviations to 0.001 Å
    dev = np.array([rows[k]["cbeta_dev"] - v["dev"] for k, v in m["cbeta"].items()])
    assert np.abs(dev).max() <= 0.0006
    assert rep.summary["cbeta_outliers"] == m["cbeta_summary"]["n_outliers_ge_0.25"]
    om = m["omega_summary"]
    assert rep.summary["cis_peptides"] == om["cis_pro"] + om["cis_general"]
    assert rep.summary["twisted_peptides"] == om["twisted_pro"] + om["twisted_general"]
    assert rep.summary["chirality_inversions"] == m["geometry"]["n_chiral_inverted"]


@pytest.mark.parametrize("name", list(MODELS))
def test_clashscore_agreement(ref, reports, name):
    """Clashscore within 15 % of reduce+probe's (±1.5 below 10), the issue's target."""
    mine = reports[name].summary["clashscore"]
    theirs = ref[name]["clash_summary"]["clashscore"]
    tol = 1.5 if theirs < 10 else 0.15 * theirs
    assert abs(mine - theirs) <= tol, (mine, theirs)
    # hydrogens as reduce adds them: the same atom count for 5ME2 (8886), within 0.3 % otherwise
    n_ref = ref[name]["clash_summary"]["n_atoms_probe"]
    assert abs(reports[name].summary["n_atoms_clash"] - n_ref) <= 0.003 * n_ref


@pytest.mark.parametrize("name", list(MODELS))
def test_clash_overlaps_match_probe(ref, reports, name):
    """Clashes found by both: our dot overlaps against probe's (mean within 0.05 Å, each within 0.3 Å).

    Measured: mean difference +0.015 (5ME2), +0.016 (7CEC), +0.043 Å (3AJO, 6 pairs, all N/O);
    largest single difference 0.24 Å (7CEC, a hydrogen that reduce orients differently).
    Pairs of the same atoms are compared; reduce names some methyl hydrogens differently.
    """
    mine = {frozenset((c["a"], c["b"])): c["overlap"] for c in reports[name].clashes}
    theirs = {frozenset((c["a"], c["b"])): -c["overlap"] for c in ref[name]["clashes"]}
    common = set(mine) & set(theirs)
    assert len(common) >= 0.4 * len(theirs)
    diff = np.array([mine[k] - theirs[k] for k in common])
    assert abs(diff.mean()) <= 0.05
    assert np.abs(diff).max() <= 0.3


@pytest.mark.parametrize("name", list(MODELS))
def test_clashing_residue_pairs_match_probe(ref, reports, name):
    """Which residues clash with which: ≥ 80 % of probe's residue pairs found, ≥ 80 % of ours in probe's.

    Measured (found / ours in probe's): 5ME2 31/35, 31/36; 7CEC 103/117, 103/124; 3AJO 6/6, 6/7.
    Residue pairs, not atom pairs: reduce names some hydrogens (methyls, HEM) differently.
    """
    def pairs(clashes):
        return {frozenset((c["a"].split("/")[0], c["b"].split("/")[0])) for c in clashes}

    mine, theirs = pairs(reports[name].clashes), pairs(ref[name]["clashes"])
    assert len(mine & theirs) >= 0.8 * len(theirs)
    assert len(mine & theirs) >= 0.8 * len(mine)


def test_summary_keys(reports):
    for rep in reports.values():
        assert set(SUMMARY_KEYS) <= set(rep.summary)
        d = rep.to_dict()
        row = d["per_residue"][0]
        for k in ("chain", "seq", "icode", "resname", "rama", "rotamer", "cbeta_dev"):
            assert k in row


def _moved(st, sigma, seed=0):
    from rerefine.refine.restraints import atom_xyz, set_xyz

    out = st.clone()
    xyz = atom_xyz(out)
    set_xyz(out, xyz + np.random.default_rng(seed).normal(0.0, sigma, xyz.shape))
    return out


def _counting_builds(monkeypatch):
    from rerefine.refine import restraints

    calls = []
    real = restraints.build_restraints

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(restraints, "build_restraints", counted)
    return calls


def test_validate_pair_shares_restraints_and_matches_two_validations(test_data, monkeypatch):
    """A deposited model and a moved copy (0.05 Å per axis: no link changes) share one restraint
    build, and both reports equal :func:`validate` of each model alone, to the last digit."""
    from rerefine.refine.validation import validate_pair

    st = gemmi.read_structure(str(test_data / "maps_models" / MODELS["5me2_deposited"]))
    st.setup_entities()
    moved = _moved(st, 0.05)
    alone = [validate(st, MONLIB, top8000_dir=TOP), validate(moved, MONLIB, top8000_dir=TOP)]
    calls = _counting_builds(monkeypatch)
    pair = validate_pair(st, moved, MONLIB, top8000_dir=TOP)
    assert len(calls) == 1
    assert alone[1].summary != alone[0].summary  # the moved copy is a different model
    for a, p in zip(alone, pair):
        assert a.to_dict() == p.to_dict()


def test_validate_pair_rebuilds_when_a_link_changes(test_data, monkeypatch):
    """A peptide bond pulled apart by 3 Å (gemmi's topology then sees a chain gap, not a TRANS
    link): the second model's restraints are built anew, and its report equals :func:`validate`
    of it alone (sharing would have kept the stretched peptide bond in the bond RMSD)."""
    from rerefine.refine.validation import validate_pair

    st = gemmi.read_structure(str(test_data / "maps_models" / MODELS["5me2_deposited"]))
    st.setup_entities()
    gap = st.clone()
    res = gap[0][0][40]
    for a in res:
        a.pos = gemmi.Position(a.pos.x + 3.0, a.pos.y, a.pos.z)
    alone = validate(gap, MONLIB, top8000_dir=TOP)
    calls = _counting_builds(monkeypatch)
    pair = validate_pair(st, gap, MONLIB, top8000_dir=TOP)
    assert len(calls) == 2
    assert pair[1].to_dict() == alone.to_dict()
