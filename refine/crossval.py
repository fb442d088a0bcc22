"""Fit figures refinement cannot inflate: CCmask with the input B-factors and half-map cross-validation.

*CCmask with input B* (:func:`cc_mask_with_b`): the CCmask (Afonine et al. 2018, Acta Cryst D74:814;
:mod:`.mapcc`) of the refined coordinates carrying the deposited model's B-factors. B refinement
alone raises the full CCmask (the model map's blur comes to match the map's); with the input B the
figure moves only when the coordinates do, so the coordinates' own gain is visible apart from B's.

*Half-map cross-validation* (:func:`half_map_fit`), in the manner of Brown et al. 2015 (Acta Cryst
D71:136) and servalcat (Yamashita et al. 2021, Acta Cryst D77:1282): the model is refined against
half-map 1 only; its fit to half-map 1 is the *work* figure and its fit to half-map 2, whose noise
it never saw, the *free* figure. Over-fitting to noise raises the work figure and not the free one.
Figures, each against one half-map:

* ``fsc_avg`` — the model-map FSC averaged over resolution shells out to the resolution ``d``,
  weighted by the number of Fourier terms per shell,
  ``FSC_avg = Σ_s N_s FSC(s) / Σ_s N_s`` for ``|s| ≤ 1/d`` (Brown et al. 2015, eq. 3; refmac's and
  servalcat's FSCaverage). FSC(s) as in :mod:`.fsc`; the model map is the model's Fourier image
  at ``d`` (:func:`.modelmap.model_map`); both maps are taken over the box they share (the
  pipeline's box around the model, so the solvent far from the model does not enter);
* ``cc_mask`` — CCmask as above.

Dimensionless; 1 is a perfect fit.
"""

from __future__ import annotations

import gemmi
import numpy as np

from . import fsc as fscmod
from . import mapcc, mask, modelmap
from .mapio import DensityMap


def fsc_shells(dmap: DensityMap, resolution: float) -> int:
    """Shells of one Fourier pixel (as :func:`.fsc.default_shells`) out to ``1/resolution``."""
    n_nyq = fscmod.default_shells(dmap.shape)
    frac = (1.0 / resolution) / fscmod.nyquist_s(dmap)
    return max(4, int(round(n_nyq * min(frac, 1.0))))


def fsc_average(calc: DensityMap, dmap: DensityMap, resolution: float) -> float:
    """Shell-count-weighted mean FSC of two maps on one grid over shells to ``1/resolution``.

    Parameters
    ----------
    calc, dmap : DensityMap
        Model map and experimental (half-)map on the same grid.
    resolution : float
        d, Å: shells from 0 to 1/d Å⁻¹.

    Returns
    -------
    float
        ``Σ N_s FSC(s) / Σ N_s`` (see module doc); NaN when no shell has terms.
    """
    if calc.shape != dmap.shape:
        raise ValueError("fsc_average: maps must share one grid")
    a = fscmod.frequency_matrix(dmap)
    n = fsc_shells(dmap, resolution)
    s_max = min(1.0 / resolution, fscmod.nyquist_s(dmap))
    curve = fscmod.fsc_curve(fscmod.rfft_map(calc.data), fscmod.rfft_map(dmap.data), a, dmap.shape,
                             s_max=s_max, n_shells=n)
    ok = np.isfinite(curve.fsc) & (curve.count > 0)
    if not ok.any():
        return float("nan")
    return float(np.sum(curve.fsc[ok] * curve.count[ok]) / np.sum(curve.count[ok]))


def cc_mask(st: gemmi.Structure, dmap: DensityMap, resolution: float) -> float:
    """CCmask of ``st`` against ``dmap`` at ``resolution`` (the figure of :func:`.metrics.compute_metrics`,
    on the same box, without the other figures)."""
    from .metrics import box_for_cc, check_inputs

    xyz = check_inputs(st, dmap, resolution)
    box = box_for_cc(dmap, xyz, float(resolution))
    calc = modelmap.model_map(st, box, float(resolution))
    return float(mapcc.pearson(box.data, calc.data, mask.molecular_mask(st, box)))


def with_b_of(refined: gemmi.Structure, source: gemmi.Structure) -> gemmi.Structure:
    """A copy of ``refined`` whose atoms carry the B-factors of the same atoms in ``source``.

    Atoms are matched by chain, residue number, insertion code, residue name, atom name and
    altloc; an atom ``source`` lacks keeps its refined B (there are none for a refinement,
    which keeps every atom).
    """
    b = {}
    for ch in source[0]:
        for res in ch:
            for at in res:
                b[(ch.name, res.seqid.num, res.seqid.icode, res.name, at.name, at.altloc)] = at.b_iso
    out = refined.clone()
    for ch in out[0]:
        for res in ch:
            for at in res:
                v = b.get((ch.name, res.seqid.num, res.seqid.icode, res.name, at.name, at.altloc))
                if v is not None:
                    at.b_iso = v
    return out


def cc_mask_with_b(refined: gemmi.Structure, source: gemmi.Structure, dmap: DensityMap,
                   resolution: float) -> float:
    """CCmask of the refined coordinates with the B-factors of ``source`` (the input model)."""
    return cc_mask(with_b_of(refined, source), dmap, resolution)


def half_map_fit(st: gemmi.Structure, half1: DensityMap, half2: DensityMap, resolution: float) -> dict:
    """Fit of a model to each half-map: ``fsc_avg_work``, ``cc_mask_work`` (half-map 1) and
    ``fsc_avg_free``, ``cc_mask_free`` (half-map 2). The half-maps must share one grid (one box)."""
    if half1.shape != half2.shape:
        raise ValueError("half_map_fit: half-maps must share one grid")
    calc = modelmap.model_map(st, half1, float(resolution))
    msk = mask.molecular_mask(st, half1)
    out = {}
    for tag, h in (("work", half1), ("free", half2)):
        out[f"fsc_avg_{tag}"] = fsc_average(calc, h, resolution)
        out[f"cc_mask_{tag}"] = float(mapcc.pearson(h.data, calc.data, msk))
    return out
