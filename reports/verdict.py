"""The verdict on a re-refinement: improved, unchanged or worse, decided by four gates.

Why gates: the full CCmask rises with B-factor refinement alone (B sharpens or blurs the model
map until it matches the map's own blur), so a verdict on the full CCmask rewards refined B
even when the coordinates got no better and the model's validation got worse (7CEC did:
CCmask up, Ramachandran and rotamer outliers up). In the manner of PDB-REDO (Joosten et al.
2014, IUCrJ 1:213: the re-refined model replaces the deposited one only when it fits better
*and* is not worse in validation) the verdict asks four questions, each a *gate*:

1. **geometry** — heavy-atom restraint RMSDs within the limits below;
2. **validation** — no MolProbity-class figure got worse beyond its tolerance:

   * Ramachandran outliers: no net new ones (count after ≤ before);
   * Ramachandran favoured: not down by more than :data:`RAMA_FAVORED_DROP` (1) percentage point;
   * rotamer outliers: not up by more than :data:`ROTAMER_OUTLIER_RISE` (1) percentage point;
   * clashscore: not up by more than :data:`CLASHSCORE_RISE` (1);
   * C-beta deviation outliers (≥ 0.25 Å): no new ones;
   * cis and twisted non-proline peptides: no new ones;

3. **cross-validation** (only where the entry has both half-maps) — the free figure, the
   model-map FSC averaged over shells to the resolution against half-map 2 of the model
   refined against half-map 1 (Brown et al. 2015, Acta Cryst D71:136), did not fall by more
   than :data:`FREE_MARGIN` against the deposited model's;
4. **fit of the coordinates** — the coordinates' own fit rose: CCmask of the refined
   coordinates *with the input B-factors* (``cc_mask_input_b``) rose by at least
   :data:`FIT_CC_MARGIN` over the deposited model's CCmask, or the Q-score (which ignores B;
   Pintilie et al. 2020) rose by at least :data:`FIT_Q_MARGIN`.

Outcome:

* **worse** — the geometry, validation or cross-validation gate fails, or the coordinates' own
  fit *fell* (CCmask with input B or Q-score down by its margin, and neither up by its margin);
* **improved** — every gate passes and the coordinates' own fit rose; the validation must have
  been measured before and after (without it no improvement can be claimed);
* **unchanged** — nothing failed but the coordinates' fit did not rise by a margin (or the
  validation was not measured).

The deciding gate is recorded (:attr:`Verdict.gate`) and shown on the entry page.

Margins and their reasons:

* :data:`FIT_CC_MARGIN` 0.005: our CCmask agrees with cctbx's (mmtbx map_model_cc) within 0.0011
  on the three shared pairs (``reference/cctbx_reference.json``; 5ME2 −0.0011, 7CEC −0.0004,
  3AJO −0.0007): a change below ~4× that is not resolved by the metric;
* :data:`FIT_Q_MARGIN` 0.01: our Q-score matches MapQ's own published chain figure for 7CEC
  within 0.007 (0.457 vs 0.4506, ``tests/test_qscore.py``);
* :data:`FREE_MARGIN` 0.005: the free FSC average is a correlation computed like CCmask from
  the same model maps; the same resolution of the figure applies;
* geometry (unchanged from 0.2): bond RMSD after ≤ max(before, 0.010 Å) + 0.002 Å, angle RMSD
  after ≤ max(before, 1.0°) + 0.2°, non-bonded overlaps after ≤ before + max(1, 5 %). The floors
  are the targets of the automatic weight of real-space refinement (Afonine et al. 2018, Acta
  Cryst D74:531). The heavy-atom RMSDs of the validation (``bond_rmsd_heavy``,
  ``angle_rmsd_heavy``) are held to the same limits when present;
* validation tolerances: the issue's (1 point of Ramachandran favoured, 1 point of rotamer
  outliers, 1 of clashscore); counts of outliers may not grow at all.

The deposited model stays the **recommended** one unless the verdict is *improved*. A run with
neither a CCmask-with-input-B nor a Q-score before and after has no verdict (``None``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from rerefine.reports.numbers import finite_float

#: Margin of :func:`got_worse` (a later pipeline version's CCmask after refinement lower by it).
CC_MARGIN = 0.01
FIT_CC_MARGIN = 0.005
FIT_Q_MARGIN = 0.01
FREE_MARGIN = 0.005
BOND_FLOOR, BOND_TOL = 0.010, 0.002  # Å
ANGLE_FLOOR, ANGLE_TOL = 1.0, 0.2  # degrees
OVERLAP_FRACTION, OVERLAP_MIN = 0.05, 1.0
RAMA_FAVORED_DROP = 1.0  # percentage points
ROTAMER_OUTLIER_RISE = 1.0  # percentage points
CLASHSCORE_RISE = 1.0

#: Validation figures the gate reads (flat keys of the metric dicts).
VALIDATION_KEYS = ("rama_favored_pct", "rama_outliers", "rama_outliers_pct", "rotamer_outliers",
                   "rotamer_outliers_pct", "cbeta_outliers", "clashscore", "cis_nonpro_peptides",
                   "twisted_nonpro_peptides", "bond_rmsd_heavy", "angle_rmsd_heavy")

#: Gate names in the order they are asked.
GATES = ("geometry", "validation", "cross-validation", "fit")

#: Order of verdicts, worst first; used to decide whether a later version did worse.
RANK = {"worse": 0, "unchanged": 1, "improved": 2}


@dataclass(frozen=True)
class Gate:
    """One gate's outcome: ``status`` is ``pass``, ``fail``, ``flat`` (fit only: did not rise) or
    ``unknown`` (figures missing, e.g. no half-maps); ``detail`` says why, in one line."""

    name: str
    status: str
    detail: str


@dataclass(frozen=True)
class Verdict:
    """Outcome of :func:`decide`."""

    verdict: str | None
    recommended: str  # "rerefined" or "deposited"
    delta_cc_mask: float | None
    reasons: list[str] = field(default_factory=list)
    gate: str | None = None  # the gate that decided (a name from GATES), None without a verdict
    gates: list[Gate] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """One line: the deciding gate and why (stored with the run, shown on the entry page)."""
        return "; ".join(self.reasons)


def _num(d: Mapping | None, key: str) -> float | None:
    """``d[key]`` as a float for the verdict rules: missing or NaN is unknown (None), but an
    infinite value is kept, so that an infinite RMSD after refinement counts as worse instead of
    being skipped."""
    return finite_float((d or {}).get(key), keep_infinite=True)


def _pair(before, after, key, key_after=None):
    return _num(before, key), _num(after, key_after or key)


def geometry_problems(before: Mapping | None, after: Mapping | None) -> list[str]:
    """The geometry limits (see module doc) that ``after`` breaks against ``before``."""
    out = []
    for key, floor, tol, unit, fmt in (("bond_rmsd", BOND_FLOOR, BOND_TOL, " Å", ".3f"),
                                       ("bond_rmsd_heavy", BOND_FLOOR, BOND_TOL, " Å", ".3f"),
                                       ("angle_rmsd", ANGLE_FLOOR, ANGLE_TOL, "°", ".2f"),
                                       ("angle_rmsd_heavy", ANGLE_FLOOR, ANGLE_TOL, "°", ".2f")):
        v0, v1 = _pair(before, after, key)
        if v0 is not None and v1 is not None and v1 > max(v0, floor) + tol:
            label = key.replace("_rmsd", " RMSD").replace("_heavy", " (heavy atoms)").replace("_", " ")
            out.append(f"{label} {v0:{fmt}} -> {v1:{fmt}}{unit}")
    o0, o1 = _pair(before, after, "nonbonded_overlaps")
    if o0 is not None and o1 is not None and o1 > o0 + max(OVERLAP_MIN, OVERLAP_FRACTION * o0):
        out.append(f"non-bonded overlaps {o0:g} -> {o1:g}")
    return out


def validation_measured(before: Mapping | None, after: Mapping | None) -> bool:
    """Whether the validation gate has figures: Ramachandran and clashscore known on both sides."""
    return all(None not in _pair(before, after, k) for k in ("rama_favored_pct", "clashscore"))


def validation_problems(before: Mapping | None, after: Mapping | None) -> list[str]:
    """The validation tolerances (see module doc) that ``after`` breaks against ``before``;
    a figure unknown on either side is not judged."""
    out = []

    def more(key, label, allowed=0.0, fmt="g"):
        v0, v1 = _pair(before, after, key)
        if v0 is not None and v1 is not None and v1 > v0 + allowed:
            out.append(f"{label} {v0:{fmt}} -> {v1:{fmt}}")

    more("rama_outliers", "Ramachandran outliers")
    f0, f1 = _pair(before, after, "rama_favored_pct")
    if f0 is not None and f1 is not None and f1 < f0 - RAMA_FAVORED_DROP:
        out.append(f"Ramachandran favoured {f0:.1f} -> {f1:.1f} %")
    more("rotamer_outliers_pct", "rotamer outliers (%)", ROTAMER_OUTLIER_RISE, ".1f")
    more("clashscore", "clashscore", CLASHSCORE_RISE, ".1f")
    more("cbeta_outliers", "C-beta outliers")
    more("cis_nonpro_peptides", "cis non-proline peptides")
    more("twisted_nonpro_peptides", "twisted non-proline peptides")
    return out


def fit_change(before: Mapping | None, after: Mapping | None):
    """Changes of the coordinates' own fit: (ΔCCmask with input B, ΔQ-score), None where unknown.

    The deposited model's "CCmask with input B" is its CCmask (its B are the input B);
    ``before["cc_mask_input_b"]`` is used when given.
    """
    c0 = _num(before, "cc_mask_input_b")
    if c0 is None:
        c0 = _num(before, "cc_mask")
    c1 = _num(after, "cc_mask_input_b")
    q0, q1 = _pair(before, after, "q_score")
    dc = c1 - c0 if c0 is not None and c1 is not None else None
    dq = q1 - q0 if q0 is not None and q1 is not None else None
    return dc, dq


def _fit_gate(before, after) -> Gate | None:
    dc, dq = fit_change(before, after)
    if dc is None and dq is None:
        return None
    parts = []
    if dc is not None:
        parts.append(f"CCmask with input B {dc:+.3f}")
    if dq is not None:
        parts.append(f"Q-score {dq:+.3f}")
    text = ", ".join(parts)
    rose = (dc is not None and dc >= FIT_CC_MARGIN) or (dq is not None and dq >= FIT_Q_MARGIN)
    fell = (dc is not None and dc <= -FIT_CC_MARGIN) or (dq is not None and dq <= -FIT_Q_MARGIN)
    if rose:
        return Gate("fit", "pass", f"coordinates' fit rose ({text})")
    if fell:
        return Gate("fit", "fail", f"coordinates' fit fell ({text})")
    return Gate("fit", "flat", f"coordinates' fit did not rise by the margins {FIT_CC_MARGIN}/{FIT_Q_MARGIN} "
                               f"({text})")


def _free_gate(before, after) -> Gate:
    f0, f1 = _pair(before, after, "fsc_avg_free")
    if f0 is None or f1 is None:
        return Gate("cross-validation", "unknown", "no half-map cross-validation (the entry has no half-maps)")
    d = f1 - f0
    if d < -FREE_MARGIN:
        return Gate("cross-validation", "fail", f"free FSC average fell {f0:.3f} -> {f1:.3f}")
    return Gate("cross-validation", "pass", f"free FSC average {f0:.3f} -> {f1:.3f}")


def decide(before: Mapping | None, after: Mapping | None) -> Verdict:
    """Verdict of a run from its metrics before (deposited) and after re-refinement.

    Parameters
    ----------
    before, after : mapping
        Flat metric dicts. Read: ``cc_mask`` (both), ``cc_mask_input_b`` (after: the refined
        coordinates with the input B), ``q_score``, ``fsc_avg_free`` (deposited model, and the
        model refined against half-map 1, against half-map 2), the validation figures
        :data:`VALIDATION_KEYS` and ``bond_rmsd`` (Å), ``angle_rmsd`` (°),
        ``nonbonded_overlaps``. A figure missing on either side is not judged.

    Returns
    -------
    Verdict
        ``verdict`` (``improved``/``unchanged``/``worse``/None), ``gate`` (the deciding gate),
        ``gates`` (every gate's outcome) and ``reasons`` (the deciding gate's detail first).
    """
    c0, c1 = _pair(before, after, "cc_mask")
    delta = c1 - c0 if c0 is not None and c1 is not None else None
    fit = _fit_gate(before, after)
    if fit is None:
        return Verdict(None, "deposited", delta, ["neither CCmask with input B nor Q-score known before and after"])
    geo = geometry_problems(before, after)
    gates = [Gate("geometry", "fail" if geo else "pass", "geometry worse: " + "; ".join(geo) if geo
                  else "restraint RMSDs within the limits")]
    if validation_measured(before, after):
        val = validation_problems(before, after)
        gates.append(Gate("validation", "fail" if val else "pass",
                          "validation worse: " + "; ".join(val) if val else "no validation figure worse"))
    else:
        gates.append(Gate("validation", "unknown", "validation not measured before and after"))
    gates.append(_free_gate(before, after))
    gates.append(fit)
    failed = [g for g in gates if g.status == "fail"]
    if failed:
        return Verdict("worse", "deposited", delta, [g.detail for g in failed], failed[0].name, gates)
    if fit.status == "flat":
        return Verdict("unchanged", "deposited", delta, [fit.detail], "fit", gates)
    if gates[1].status == "unknown":
        return Verdict("unchanged", "deposited", delta, [gates[1].detail + "; " + fit.detail], "validation", gates)
    return Verdict("improved", "rerefined", delta, [fit.detail + "; every other gate passed"], "fit", gates)


def got_worse(a: Mapping, b: Mapping, margin: float = CC_MARGIN) -> list[str]:
    """Why an entry did worse under version B than under version A (empty: it did not).

    ``a`` and ``b`` are result rows with ``cc_mask_after`` and ``verdict`` (as
    :func:`rerefine.reports.queries.compare_versions` gives them). B did worse when its
    CCmask after re-refinement is lower than A's by at least ``margin``, or its verdict
    ranks lower (improved > unchanged > worse).
    """
    why = []
    ca, cb = _num(a, "cc_mask_after"), _num(b, "cc_mask_after")
    if ca is not None and cb is not None and cb <= ca - margin:
        why.append(f"CCmask after {ca:.3f} -> {cb:.3f}")
    va, vb = a.get("verdict"), b.get("verdict")
    if va in RANK and vb in RANK and RANK[vb] < RANK[va]:
        why.append(f"verdict {va} -> {vb}")
    return why
