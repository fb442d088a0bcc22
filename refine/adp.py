"""Isotropic atomic displacement parameters (B, Å²) refined against a map by fitting the model map.

Following real-space ADP refinement in Phenix (Afonine et al. 2018, Acta Cryst. D74:531,
section 2.4: B factors are refined by fitting a model-calculated map to the experimental
map, grouped per residue first, then individually, with restraints between bonded atoms).

Data term: the model-map fit of :mod:`.modelfit` (``1 - CC_mask^2`` by default, i.e. CC_mask
itself), with its analytic gradient with respect to every B.

Restraint (default ``restraint="relative"``): bonded atoms should have similar B,
``sum (B_i - B_j)^2 / (sigma^2 (B_i + B_j)/2)`` with ``sigma`` = 5 (:data:`SIGMA`): the
isotropic ADP similarity restraint of phenix.refine (Afonine et al. 2012, Acta Cryst.
D68:352) with its ``average_power`` 1 and without its distance factor. Ordered parts (low B)
are held tighter than mobile ones: one unit of restraint energy is a difference of
``sigma sqrt(<B>)`` Å² (25 Å² between atoms near 25 Å², 50 Å² near 100 Å²); the data term is
weighted so that halving the starting misfit is worth one unit per atom. Why relative rather
than a flat ``(ΔB/10 Å²)^2`` (``restraint="flat"``): a flat width holds mobile parts (high B) as
tightly as ordered ones and keeps their B from following the map; without any restraint B runs
to both bounds. The comparison on the three test pairs is ``benchmarks/bench_adp.py``.
B stays in [:data:`B_MIN`, :data:`B_MAX`] Å².

Priors to the input model's B (the deposited ones), both on ``d_i = ln B_i - ln B_ref,i`` less
their mean over the refined atoms (one overall factor is free: the map's blur decides the
overall B): a weak symmetric one (:func:`log_prior`, width :data:`PRIOR_SIGMA`) that keeps the
pattern where the map says nothing, and a one-sided one on the upper tail (:func:`tail_prior`,
width :data:`TAIL_SIGMA`, weight ``(B / TAIL_B)^2``). Why the tail term: CC_mask is blind to an
offset, so an atom whose density is below the mask's average is best explained by no density
at all, and the fit raises its B without limit; once B is several hundred Å² the atom's
density is spread over its neighbours and the map no longer tells its B apart. The symmetric
prior cannot hold it (at its width, B five times the scaled reference costs 0.3 units) and
those atoms end at :data:`B_MAX`. The tail term leaves moderate B to the map (weight 0.1 at
100 Å²) and above the deposited pattern's scaled value makes the pattern decide where B is
high. Deposited B without a pattern (one value for most atoms) get neither prior's pattern:
the tail term is then off (:func:`informative_reference`).

The result is never worse than the input: if the fitted CC_mask ends below the starting one,
the input B are kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import gemmi
import numpy as np
from scipy import optimize
from scipy.spatial import cKDTree

from .mapio import DensityMap
from .modelfit import ModelMapFit

log = logging.getLogger(__name__)

B_MIN = 1.0
B_MAX = 500.0
#: Width (in ln B) of the weak prior of every B to the input model's (:func:`log_prior`): keeps B
#: where the map says little (weak or no density) near what the depositors refined, and keeps atoms
#: off the lower bound (without it the fit parks hundreds of atoms of 5ME2 at B_MIN); too wide to
#: hold the upper tail, which :func:`tail_prior` does. The width comes from
#: benchmarks/bench_refine_validation.py.
PRIOR_SIGMA = 3.0
#: Å²: the prior's reference is the input B clipped to this range (:func:`prior_reference`)...
PRIOR_B_MIN = 5.0
PRIOR_B_MAX = 300.0
#: ...or, for input B without spread, at least this.
PRIOR_B_FLAT = 30.0
#: Width (in ln B) of the one-sided prior on B above the input's scaled pattern (:func:`tail_prior`):
#: of 0.5 and 0.7, the one with which the default refinement of 7CEC (3.9 Å, the shared pair with
#: the weakest density) leaves no atom at :data:`B_MAX` (benchmarks/bench_refine_validation.py).
TAIL_SIGMA = 0.5
#: Å²: B at which the tail prior has its full weight (weight ``(B / TAIL_B)^2``); the prior's
#: reference ceiling :data:`PRIOR_B_MAX`, above which no input B is believed.
TAIL_B = 300.0
#: Default width of each similarity restraint form (:func:`similarity`).
SIGMA = {"relative": 5.0, "flat": 10.0, "log": 0.3}


def bonded_pairs(xyz: np.ndarray, cutoff: float = 2.1) -> np.ndarray:
    """Pairs of atoms closer than ``cutoff`` Å (a stand-in for the bond list), shape (M, 2)."""
    tree = cKDTree(np.asarray(xyz, float).reshape(-1, 3))
    return tree.query_pairs(cutoff, output_type="ndarray").astype(np.int64).reshape(-1, 2)


@dataclass
class AdpResult:
    """Outcome of :func:`refine_adp`."""

    b: np.ndarray
    cc_before: float
    cc_after: float
    evaluations: int
    stages: list = field(default_factory=list)


RESTRAINTS = ("relative", "flat", "log")


def similarity(bvals: np.ndarray, pairs: np.ndarray, sigma: float, kind: str = "relative"
               ) -> tuple[float, np.ndarray]:
    """ADP similarity restraint between bonded atoms: energy and gradient (Å⁻²).

    ``"relative"`` (Phenix's isotropic ADP restraint with ``average_power`` 1, no distance
    term; Afonine et al. 2012 Acta Cryst D68:352): ``sum (B_i - B_j)^2 / (sigma^2 (B_i + B_j)/2)``,
    so a pair at mean B 25 Å² may differ by ``5 sigma`` Å², one at 100 Å² by ``10 sigma``;
    ``"flat"``: ``sum (B_i - B_j)^2 / sigma^2``; ``"log"``: ``sum (ln B_i - ln B_j)^2 / sigma^2``.
    """
    i, j = pairs[:, 0], pairs[:, 1]
    bi, bj = bvals[i], bvals[j]
    d = bi - bj
    s2 = sigma * sigma
    g = np.zeros_like(bvals)
    if kind == "flat":
        e = float(np.dot(d, d)) / s2
        gi, gj = 2.0 * d / s2, -2.0 * d / s2
    elif kind == "relative":
        m = 0.5 * (bi + bj)
        e = float(np.sum(d * d / m)) / s2
        q = d * d / (2.0 * m * m)
        gi = (2.0 * d / m - q) / s2
        gj = (-2.0 * d / m - q) / s2
    elif kind == "log":
        dl = np.log(bi) - np.log(bj)
        e = float(np.dot(dl, dl)) / s2
        gi, gj = 2.0 * dl / (s2 * bi), -2.0 * dl / (s2 * bj)
    else:
        raise ValueError(f"unknown restraint {kind!r} (one of {RESTRAINTS})")
    np.add.at(g, i, gi)
    np.add.at(g, j, gj)
    return e, g


def prior_reference(b_input: np.ndarray) -> np.ndarray:
    """Reference B (Å²) of the prior (:func:`log_prior`) from the input model's B.

    The input B clipped to [:data:`PRIOR_B_MIN`, :data:`PRIOR_B_MAX`]; when they carry no
    information (no spread above 1 Å², e.g. one B for the whole model, or zeros) every atom gets
    the larger of their median and :data:`PRIOR_B_FLAT`.
    """
    b = np.asarray(b_input, float)
    b = np.where(np.isfinite(b), b, np.nan)
    med = float(np.nanmedian(b)) if np.isfinite(b).any() else PRIOR_B_FLAT
    if not np.isfinite(b).any() or float(np.nanstd(b)) < 1.0:
        return np.full(len(b), max(med, PRIOR_B_FLAT))
    return np.clip(np.where(np.isfinite(b), b, med), PRIOR_B_MIN, PRIOR_B_MAX)


def informative_reference(b_input: np.ndarray) -> bool:
    """Whether the input B carry a pattern: False when at least half the atoms share one value
    (one B for the whole model, or for all but a few ligands, as many EM models deposit)."""
    b = np.asarray(b_input, float)
    b = b[np.isfinite(b)]
    if len(b) == 0:
        return False
    _, counts = np.unique(np.round(b, 2), return_counts=True)
    return bool(counts.max() < 0.5 * len(b)) and float(np.std(b)) >= 1.0


def tail_prior(bvals: np.ndarray, b_ref: np.ndarray, sigma: float, free: np.ndarray | None = None,
               b_full: float = TAIL_B) -> tuple[float, np.ndarray]:
    """One-sided prior on B above the reference pattern, stronger at high B, and its gradient (Å⁻²).

    ``sum_i w_i max(d_i - <d>, 0)^2 / sigma^2`` with ``d_i = ln B_i - ln B_ref,i``, ``<d>`` their
    mean over the ``free`` atoms (all by default; the overall factor stays free, as in
    :func:`log_prior`) and ``w_i = (B_i / b_full)^2``: an atom may fall below its scaled
    reference freely and rise above it freely where B is moderate (weight 0.11 at 100 Å² with
    ``b_full`` 300), but high B must follow the pattern: at 500 Å², 40 % above the scaled
    reference costs ``2.8 * 0.34^2 / 0.25 = 1.3`` units with ``sigma`` 0.5. Unlike
    :func:`log_prior` the mean's derivative does not drop out (the clipped deviations do not sum
    to zero) and is included.
    """
    bvals = np.asarray(bvals, float)
    dl = np.log(bvals) - np.log(b_ref)
    sel = np.ones(len(dl), bool) if free is None else np.asarray(free, bool)
    dc = dl - dl[sel].mean()
    p = np.where(sel, np.maximum(dc, 0.0), 0.0)
    w = (bvals / b_full) ** 2
    s2 = sigma * sigma
    wp = w * p
    # d/d ln B_j of sum w p^2: 2 w_j p_j - (2/N) sum_i w_i p_i (through <d>), plus the weight's own term
    g_log = 2.0 * (wp - np.where(sel, wp[sel].mean(), 0.0))
    return float(np.dot(wp, p)) / s2, (g_log / bvals + 2.0 * bvals * p * p / b_full ** 2) / s2


def deposited_correlation(b: np.ndarray, b_dep: np.ndarray, map_values: np.ndarray,
                          weak_fraction: float = 0.25) -> dict:
    """Pearson r of refined ``b`` with the deposited ``b_dep`` over all atoms and over the atoms in
    weak density: the ``weak_fraction`` of atoms with the lowest map value at their centre
    (``map_values``, e.g. :func:`.interpolate.values_at`). None where either B has no spread."""
    b, b_dep, v = (np.asarray(x, float) for x in (b, b_dep, map_values))
    weak = v <= np.nanquantile(v, weak_fraction) if np.isfinite(v).any() else np.zeros(len(v), bool)

    def r(m):
        return float(np.corrcoef(b[m], b_dep[m])[0, 1]) if m.sum() > 2 and np.std(b[m]) > 0 and np.std(b_dep[m]) > 0 \
            else None
    return {"all": r(np.ones(len(b), bool)), "weak": r(weak), "weak_atoms": int(weak.sum())}


def log_prior(bvals: np.ndarray, b_ref: np.ndarray, sigma: float, free: np.ndarray | None = None
              ) -> tuple[float, np.ndarray]:
    """Weak prior of each B to its reference up to one overall factor, and its gradient:
    ``sum_i (d_i - <d>)^2 / sigma^2`` with ``d_i = ln B_i - ln B_ref,i`` and ``<d>`` their mean
    over the ``free`` atoms (all by default).

    The overall factor is free because the map's own blur decides the overall B, not the
    depositors' refinement (5ME2's deposited B average 25 Å², the fit to EMD-3488 wants about
    twice); what the prior keeps is the *pattern* of the deposited B where the map is silent.
    In the log it rises steeply towards the lower bound: an atom at 1 Å² among atoms at their
    reference 30 Å² costs ``11.6 / sigma^2``. (The mean's own derivative drops out: the
    deviations from the mean sum to zero.)
    """
    dl = np.log(bvals) - np.log(b_ref)
    sel = np.ones(len(dl), bool) if free is None else free
    dc = np.where(sel, dl - dl[sel].mean(), 0.0)
    s2 = sigma * sigma
    return float(np.dot(dc, dc)) / s2, 2.0 * dc / (s2 * bvals)


def distribution(b: np.ndarray) -> dict:
    """Summary of a B distribution (Å²): percentiles and how many atoms sit at either bound."""
    b = np.asarray(b, float)
    q = np.percentile(b, [0, 5, 25, 50, 75, 95, 100]) if len(b) else [np.nan] * 7
    return {"min": float(q[0]), "p5": float(q[1]), "p25": float(q[2]), "median": float(q[3]), "p75": float(q[4]),
            "p95": float(q[5]), "max": float(q[6]), "mean": float(b.mean()) if len(b) else float("nan"),
            "at_min": int(np.sum(b <= B_MIN * 1.001)), "at_max": int(np.sum(b >= B_MAX * 0.999))}


def refine_adp(st: gemmi.Structure, dmap: DensityMap, resolution: float, *, xyz: np.ndarray | None = None,
               pairs: np.ndarray | None = None, fixed: np.ndarray | None = None, group: bool | str = "auto",
               individual: bool = True, sigma: float | None = None, restraint: str = "relative",
               data_weight: float | None = None, max_iter: int = 40, fit: ModelMapFit | None = None,
               target: str = "ccmask", b_prior: np.ndarray | None = None,
               prior_sigma: float | None = PRIOR_SIGMA, tail_sigma: float | None = TAIL_SIGMA) -> AdpResult:
    """Refine isotropic B (Å²) of the atoms of ``st[0]`` against ``dmap``; writes them into ``st``.

    Stages: one B per residue (all its atoms move together), then one per atom with the
    bonded-atom similarity restraint. L-BFGS-B keeps B in [B_MIN, B_MAX] Å².
    The refined CC_mask of the fit is never below the starting one (else the input B are kept).

    Parameters
    ----------
    st : gemmi.Structure
        Model; atoms in ``st[0].all()`` order. B values are updated in place.
    dmap : DensityMap
        Experimental map.
    resolution : float
        Å.
    xyz : numpy.ndarray, optional
        Positions to use instead of those in ``st``.
    pairs : numpy.ndarray, optional
        (M, 2) bonded atom indices for the similarity restraint (default: pairs < 2.1 Å).
    fixed : numpy.ndarray, optional
        Boolean mask of atoms whose B stays as it is.
    group : bool or "auto"
        Run the per-residue stage first. ``"auto"`` (default): only when the input B do not
        vary within residues (flat or per-residue B, as many deposited EM models have); B that
        already vary per atom (a previous macro-cycle) go straight to the per-atom stage. On
        the three test pairs the per-atom stage alone reaches the same CC_mask (within 0.001)
        with 20 % fewer evaluations, so the group stage is a safeguard, not a gain.
    sigma : float, optional
        Width of the similarity restraint (see :func:`similarity`; default
        :data:`SIGMA` for the chosen ``restraint``).
    restraint : {"relative", "flat", "log"}
        Form of the similarity restraint (:func:`similarity`).
    data_weight : float, optional
        Multiplier of the data term ``(1 - CC^2)``; default: number of atoms x 2 / (1 - CC0^2),
        i.e. a misfit change of half its starting value is worth one unit per atom.
    target : {"ccmask", "sphere"}
        Fit target (:class:`ModelMapFit`); ignored when ``fit`` is given.
    b_prior : numpy.ndarray, optional
        Reference B (Å², per atom) of the weak prior :func:`log_prior`; default
        :func:`prior_reference` of the B in ``st`` (give the input model's B when ``st`` already
        carries refined ones, as the refinement's later cycles do).
    prior_sigma : float or None
        Width of the prior in ln B (:data:`PRIOR_SIGMA`); None or 0 switches it off.
    tail_sigma : float or None
        Width of the upper-tail prior :func:`tail_prior` in ln B (:data:`TAIL_SIGMA`); None or 0
        switches it off; off too when ``prior_sigma`` is, and when the reference B carry no
        pattern (:func:`informative_reference`).
    """
    atoms = [cra.atom for cra in st[0].all()]
    n = len(atoms)
    if xyz is None:
        xyz = np.array([a.pos.tolist() for a in atoms], float).reshape(-1, 3)
    if sigma is None:
        sigma = SIGMA[restraint]
    b0 = np.array([a.b_iso for a in atoms], float)
    b0 = np.clip(np.where(np.isfinite(b0), b0, 30.0), B_MIN, B_MAX)
    if fit is None:
        fit = ModelMapFit.prepare(dmap, xyz, [a.element.name for a in atoms],
                                  np.array([a.occ for a in atoms]), resolution, target=target)
    if pairs is None:
        pairs = bonded_pairs(xyz)
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    free = np.ones(n, bool) if fixed is None else ~np.asarray(fixed, bool)
    misfit0, _, cc0 = fit.evaluate(b0)
    if data_weight is None:
        data_weight = 2.0 * n / max(misfit0, 1e-6)
    result = AdpResult(b=b0.copy(), cc_before=cc0, cc_after=cc0, evaluations=0)
    bcur = b0.copy()

    b_ref_input = b0 if b_prior is None else np.asarray(b_prior, float)
    b_ref = prior_reference(b_ref_input)
    use_tail = bool(prior_sigma and tail_sigma) and informative_reference(b_ref_input[free])

    def total(bvals):
        m, g, _ = fit.evaluate(bvals)
        e_s, g_s = similarity(bvals, pairs, sigma, restraint)
        if prior_sigma:
            e_p, g_p = log_prior(bvals, b_ref, prior_sigma, free)
            e_s, g_s = e_s + e_p, g_s + g_p
        if use_tail:
            e_t, g_t = tail_prior(bvals, b_ref, tail_sigma, free)
            e_s, g_s = e_s + e_t, g_s + g_t
        return data_weight * m + e_s, data_weight * g + g_s

    # residue index of each atom
    res_of = np.empty(n, np.int64)
    k = 0
    r = 0
    for ch in st[0]:
        for res in ch:
            for _ in res:
                res_of[k] = r
                k += 1
            r += 1
    ngroups = r
    if group == "auto":
        cnt_all = np.bincount(res_of, minlength=ngroups).astype(float)
        mean_all = np.bincount(res_of, weights=b0, minlength=ngroups) / np.maximum(cnt_all, 1)
        group = bool(np.max(np.abs(b0 - mean_all[res_of])) < 1.0)
    if group:
        # start each group at the mean B of its free atoms
        cnt = np.bincount(res_of[free], minlength=ngroups).astype(float)
        gmean = np.bincount(res_of[free], weights=bcur[free], minlength=ngroups) / np.maximum(cnt, 1)

        def fg(p):
            bb = bcur.copy()
            bb[free] = p[res_of[free]]
            e, g = total(bb)
            return e, np.bincount(res_of[free], weights=g[free], minlength=ngroups)

        sol = optimize.minimize(fg, gmean, jac=True, method="L-BFGS-B",
                                bounds=[(B_MIN, B_MAX)] * ngroups, options={"maxiter": max_iter})
        if np.all(np.isfinite(sol.x)):
            bcur[free] = sol.x[res_of[free]]
        result.stages.append({"stage": "group", "iterations": int(sol.nit), "cc": fit.evaluate(bcur)[2]})
    if individual:
        def fi(p):
            bb = bcur.copy()
            bb[free] = p
            e, g = total(bb)
            return e, g[free]

        sol = optimize.minimize(fi, bcur[free], jac=True, method="L-BFGS-B",
                                bounds=[(B_MIN, B_MAX)] * int(free.sum()), options={"maxiter": max_iter})
        if np.all(np.isfinite(sol.x)):
            bcur[free] = sol.x
        result.stages.append({"stage": "individual", "iterations": int(sol.nit), "cc": fit.evaluate(bcur)[2]})
    cc1 = fit.evaluate(bcur)[2]
    if not np.isfinite(cc1) or cc1 < cc0:
        log.warning("B refinement lowered CC (%.4f -> %.4f); keeping input B", cc0, cc1)
        bcur, cc1 = b0, cc0
    for a, bv in zip(atoms, bcur):
        a.b_iso = float(bv)
    result.b = bcur
    result.cc_after = cc1
    result.evaluations = fit.n_eval
    return result
