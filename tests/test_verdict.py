"""The verdict's gates (reports/verdict.py), each on both sides of its limit.

Figures here are hand-made metric dicts: the rule is pure, so each gate is checked just inside
and just outside its stated margin (the margins' reasons are in the module's docstring).
"""

from __future__ import annotations

import pytest

from rerefine.reports import verdict as V
from rerefine.reports.verdict import decide

VAL = {"rama_favored_pct": 95.0, "rama_outliers": 2, "rama_outliers_pct": 0.4, "rotamer_outliers": 3,
       "rotamer_outliers_pct": 1.0, "cbeta_outliers": 0, "clashscore": 5.0, "cis_nonpro_peptides": 0,
       "twisted_nonpro_peptides": 0, "bond_rmsd_heavy": 0.008, "angle_rmsd_heavy": 1.1}
GEO = {"bond_rmsd": 0.008, "angle_rmsd": 1.1, "nonbonded_overlaps": 20}
BEFORE = {"cc_mask": 0.70, "q_score": 0.50, **GEO, **VAL}


def after(**kw):
    """A refined model whose coordinates' fit rose clearly, with everything else as before."""
    return {"cc_mask": 0.75, "cc_mask_input_b": 0.72, "q_score": 0.50, **GEO, **VAL, **kw}


def test_improved_when_every_gate_passes():
    v = decide(BEFORE, after())
    assert (v.verdict, v.recommended, v.gate) == ("improved", "rerefined", "fit")
    assert [g.name for g in v.gates] == list(V.GATES)
    assert [g.status for g in v.gates] == ["pass", "pass", "unknown", "pass"]  # no half-maps
    assert v.delta_cc_mask == pytest.approx(0.05)


def test_fit_gate_cc_with_input_b():
    # the full CCmask rose by 0.05 (B refinement) but the coordinates with input B did not
    assert decide(BEFORE, after(cc_mask_input_b=0.7049)).verdict == "unchanged"
    assert decide(BEFORE, after(cc_mask_input_b=0.7049)).gate == "fit"
    assert decide(BEFORE, after(cc_mask_input_b=0.7051)).verdict == "improved"
    v = decide(BEFORE, after(cc_mask_input_b=0.6949))
    assert (v.verdict, v.gate) == ("worse", "fit") and "fell" in v.reasons[0]
    assert decide(BEFORE, after(cc_mask_input_b=0.6951)).verdict == "unchanged"


def test_fit_gate_q_score():
    flat = {"cc_mask_input_b": 0.70}
    assert decide(BEFORE, after(**flat, q_score=0.5101)).verdict == "improved"
    assert decide(BEFORE, after(**flat, q_score=0.5099)).verdict == "unchanged"
    assert decide(BEFORE, after(**flat, q_score=0.4899)).verdict == "worse"
    # either figure rising is enough
    assert decide(BEFORE, after(q_score=0.40)).verdict == "improved"


def test_fit_gate_needs_a_figure():
    v = decide({"cc_mask": 0.7}, {"cc_mask": 0.8})
    assert v.verdict is None and v.gate is None
    assert decide({"cc_mask": 0.7, "q_score": 0.5}, {"cc_mask": 0.8, "q_score": float("nan")}).verdict is None


@pytest.mark.parametrize("key, ok, bad", [
    ("rama_outliers", 2, 3),
    ("rama_favored_pct", 94.0, 93.9),
    ("rotamer_outliers_pct", 2.0, 2.01),
    ("clashscore", 6.0, 6.01),
    ("cbeta_outliers", 0, 1),
    ("cis_nonpro_peptides", 0, 1),
    ("twisted_nonpro_peptides", 0, 1),
])
def test_validation_gate(key, ok, bad):
    assert decide(BEFORE, after(**{key: ok})).verdict == "improved"
    v = decide(BEFORE, after(**{key: bad}))
    assert (v.verdict, v.recommended, v.gate) == ("worse", "deposited", "validation")


def test_validation_fewer_outliers_is_fine():
    assert decide(BEFORE, after(rama_outliers=0, clashscore=1.0, rama_favored_pct=99.0)).verdict == "improved"


def test_no_improvement_without_validation():
    b = {k: v for k, v in BEFORE.items() if k not in VAL}
    a = {k: v for k, v in after().items() if k not in VAL}
    v = decide(b, a)
    assert (v.verdict, v.gate) == ("unchanged", "validation") and "not measured" in v.reasons[0]
    # ... but a fall is still worse
    assert decide(b, {**a, "cc_mask_input_b": 0.60}).verdict == "worse"


def test_cross_validation_gate():
    b = {**BEFORE, "fsc_avg_free": 0.60}
    assert decide(b, after(fsc_avg_free=0.5951)).verdict == "improved"
    v = decide(b, after(fsc_avg_free=0.5949))
    assert (v.verdict, v.gate) == ("worse", "cross-validation")
    # a fall of the free figure is worse even when the work fit rose
    assert decide(b, after(fsc_avg_free=0.55, fsc_avg_work=0.70)).verdict == "worse"


@pytest.mark.parametrize("key, ok, bad", [
    ("bond_rmsd", 0.012, 0.0121),          # max(0.008, 0.010) + 0.002
    ("angle_rmsd", 1.3, 1.31),             # max(1.1, 1.0) + 0.2
    ("bond_rmsd_heavy", 0.012, 0.0121),
    ("angle_rmsd_heavy", 1.3, 1.31),
    ("nonbonded_overlaps", 21, 22),        # 20 + max(1, 5 % of 20)
])
def test_geometry_gate(key, ok, bad):
    assert decide(BEFORE, after(**{key: ok})).verdict == "improved"
    v = decide(BEFORE, after(**{key: bad}))
    assert (v.verdict, v.gate) == ("worse", "geometry")


def test_geometry_floors_and_infinities():
    tight = {**BEFORE, "bond_rmsd": 0.003, "angle_rmsd": 0.5}
    assert decide(tight, after(bond_rmsd=0.011, angle_rmsd=1.15)).verdict == "improved"
    assert decide(tight, after(bond_rmsd=0.013)).verdict == "worse"
    # an infinite RMSD after refinement is worse geometry, not an unknown one
    assert decide(BEFORE, after(bond_rmsd=float("inf"))).verdict == "worse"


def test_first_failing_gate_decides_and_all_failures_are_listed():
    v = decide({**BEFORE, "fsc_avg_free": 0.6}, after(angle_rmsd=2.0, clashscore=20.0, fsc_avg_free=0.5))
    assert v.gate == "geometry" and len(v.reasons) == 3
    assert [g.status for g in v.gates] == ["fail", "fail", "fail", "pass"]


def test_full_cc_gain_from_b_alone_is_not_improvement():
    """The case that motivated the gates (7CEC at 0.2.x): full CCmask up by B, validation worse."""
    v = decide(BEFORE, after(cc_mask=0.78, cc_mask_input_b=0.701, rama_outliers=9, rotamer_outliers_pct=4.0))
    assert v.verdict == "worse" and v.gate == "validation"
