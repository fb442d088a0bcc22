"""The verdict on a re-refinement: improved, unchanged or worse — one documented rule.

In the manner of PDB-REDO (Joosten et al. 2014, IUCrJ 1:213: the re-refined model
replaces the deposited one only when it is better by the fit criterion *and* not worse
in geometry), a run's verdict compares the metrics after re-refinement with those of
the deposited model:

* **improved** — CCmask (Afonine et al. 2018, Acta Cryst D74:814; the correlation
  inside the molecular mask, which uses every model parameter) rose by at least
  :data:`CC_MARGIN` (0.01) *and* the geometry is no worse;
* **worse** — CCmask fell by at least :data:`CC_MARGIN`, *or* the geometry got worse
  (whatever CCmask did: a better fit bought with distorted geometry is over-fitting);
* **unchanged** — everything else (|ΔCCmask| < 0.01 with geometry no worse).

"Geometry no worse" means, for every criterion whose value is known before and after:

* bond-length RMSD after ≤ max(before, 0.010 Å) + 0.002 Å,
* bond-angle RMSD after ≤ max(before, 1.0°) + 0.2°,
* non-bonded overlaps after ≤ before + max(1, 5 % of before).

The floors (0.010 Å, 1.0°) are the targets of the automatic weight of real-space
refinement (Afonine et al. 2018, Acta Cryst D74:531): a deposited model restrained
tighter than that is not made "worse" by reaching the usual target; the small
tolerances keep rounding noise from deciding. The margin 0.01 is the agreement we
demand of our CCmask with cctbx's, i.e. smaller changes are within the metric's own
reproducibility.

The deposited model stays the **recommended** one unless the verdict is *improved*.
A run without CCmask before and after has no verdict (``None``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

CC_MARGIN = 0.01
BOND_FLOOR, BOND_TOL = 0.010, 0.002  # Å
ANGLE_FLOOR, ANGLE_TOL = 1.0, 0.2  # degrees
OVERLAP_FRACTION, OVERLAP_MIN = 0.05, 1.0

#: Order of verdicts, worst first; used to decide whether a later version did worse.
RANK = {"worse": 0, "unchanged": 1, "improved": 2}


@dataclass(frozen=True)
class Verdict:
    """Outcome of :func:`decide`."""

    verdict: str | None
    recommended: str  # "rerefined" or "deposited"
    delta_cc_mask: float | None
    reasons: list[str] = field(default_factory=list)


def finite_float(v) -> float | None:
    """``v`` as a finite float, or None (missing, not a number, NaN or infinite)."""
    if v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _num(d: Mapping | None, key: str) -> float | None:
    """``d[key]`` as a float for the verdict rules: missing or NaN is unknown (None), but unlike
    :func:`finite_float` an infinite value is kept, so that an infinite RMSD after refinement
    counts as worse instead of being skipped."""
    v = (d or {}).get(key)
    if v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def geometry_problems(before: Mapping | None, after: Mapping | None) -> list[str]:
    """The geometry criteria (see module doc) that ``after`` fails against ``before``."""
    out = []
    b0, b1 = _num(before, "bond_rmsd"), _num(after, "bond_rmsd")
    if b0 is not None and b1 is not None and b1 > max(b0, BOND_FLOOR) + BOND_TOL:
        out.append(f"bond RMSD {b0:.3f} -> {b1:.3f} Å")
    a0, a1 = _num(before, "angle_rmsd"), _num(after, "angle_rmsd")
    if a0 is not None and a1 is not None and a1 > max(a0, ANGLE_FLOOR) + ANGLE_TOL:
        out.append(f"angle RMSD {a0:.2f} -> {a1:.2f}°")
    o0, o1 = _num(before, "nonbonded_overlaps"), _num(after, "nonbonded_overlaps")
    if o0 is not None and o1 is not None and o1 > o0 + max(OVERLAP_MIN, OVERLAP_FRACTION * o0):
        out.append(f"non-bonded overlaps {o0:g} -> {o1:g}")
    return out


def decide(before: Mapping | None, after: Mapping | None, margin: float = CC_MARGIN) -> Verdict:
    """Verdict of a run from its metrics before (deposited) and after re-refinement.

    Parameters
    ----------
    before, after : mapping
        Metric dicts with at least ``cc_mask``; ``bond_rmsd`` (Å), ``angle_rmsd`` (°)
        and ``nonbonded_overlaps`` are used when present on both sides.
    margin : float
        Smallest CCmask change that counts (default :data:`CC_MARGIN`).
    """
    c0, c1 = _num(before, "cc_mask"), _num(after, "cc_mask")
    if c0 is None or c1 is None:
        return Verdict(None, "deposited", None, ["CCmask not known before and after"])
    delta = c1 - c0
    problems = geometry_problems(before, after)
    if problems:
        return Verdict("worse", "deposited", delta, ["geometry worse: " + "; ".join(problems)])
    if delta <= -margin:
        return Verdict("worse", "deposited", delta, [f"CCmask fell by {-delta:.3f}"])
    if delta >= margin:
        return Verdict("improved", "rerefined", delta, [f"CCmask rose by {delta:.3f}"])
    return Verdict("unchanged", "deposited", delta, [f"|ΔCCmask| = {abs(delta):.3f} < {margin}"])


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
