"""Automatic sharpening of cryo-EM maps: B_iso estimate, adjusted-surface-area search, half-map and model modes.

Overall B_iso (Wilson-like)
    The map is Fourier transformed once; the mean intensity ``<|F|²>`` in shells of ``|s|`` is divided
    by the mean squared X-ray scattering factor of an average protein atom (IT92 coefficients,
    composition C5 N1.35 O1.5 S0.04 per residue) and ``ln`` of that is fitted by least squares
    as ``c - B s²/2`` over 10 Å ≥ d ≥ 1.1 d_min (equal weight per shell; the shells just inside
    d_min are left out because the depositors' low-pass filter rolls the amplitudes off there,
    see ``FIT_D_MIN_RATIO``). This is the crystallographic
    Wilson plot (Wilson 1942, Nature 150:152) restricted to the cryo-EM range; like phenix
    (``get_b_iso``: absolute scaling against protein scattering) it measures the fall-off in excess
    of that of atoms at rest, so an unblurred atomic model map has B_iso near its atoms' mean B.

Global automatic sharpening (Terwilliger, Sobolev, Afonine & Adams 2018, Acta Cryst D74:545;
phenix.auto_sharpen / cctbx ``segment_and_split_map``)
    Candidate maps are made with the ``b_iso_to_d_cut`` form of sharpening: every coefficient is
    multiplied by ``exp(b_sharpen s²/4 / (1 + exp(k (d_min - d))))`` with ``k = 10 Å⁻¹``: full
    sharpening at d > d_min, none past d_min, so noise beyond the resolution is not amplified.
    ``b_sharpen = B_iso(map) - B_target`` and B_target is searched on 21 points from
    ``min(B_iso, -100)`` to ``max(B_iso, 300)`` Å². Each candidate is scored by
    the *adjusted surface area*: the map is contoured at the level enclosing
    ``fraction_occupied (0.2) × (1 - solvent fraction)`` of the box; of the connected regions above
    the contour (6-connectivity), the largest are taken until they hold ``sa_percent`` (30 %) of that
    volume; ``sa_ratio`` = (voxels added by growing those regions by one voxel) / (their voxels);
    ``adjusted_sa = sa_ratio - region_weight × n_regions / target_voxels`` with
    ``region_weight`` set as phenix's ``region_weight_method=delta_ratio`` does: the change of
    ``sa_ratio`` between the ends of the search range equals ``region_weight`` times the change of
    normalized regions. The score curve over B is smoothed (1-2-1) before its maximum is taken.
    The unsharpened map competes too.
    Scoring maps keep only terms with d > d_min (phenix keeps d > 0.833 d_min), so that a map and
    a blurred copy of it lead to the same choice.
    The search scales one transform shell-wise (no transform of the full map per trial): a box of
    at most ``max_score_voxels`` voxels around the density is transformed once, and every trial is a
    multiplication plus one small inverse transform. The solvent fraction of that box is estimated
    from a smoothed local-variance map split in two classes (Otsu 1979).

Half-map mode
    The FSC between the half-maps gives per-shell weights ``sqrt(2 FSC/(1 + FSC))`` (Rosenthal &
    Henderson 2003, J. Mol. Biol. 333:721) applied to the full map; the weighted map is then sharpened
    as above.

Model-based mode (the idea of LocScale, Jakobi, Wilmanns & Sachse 2017, eLife 6:e27131, applied globally)
    The map's radially averaged amplitudes are scaled shell by shell to those of the model map
    (``rerefine.refine.modelmap.model_map`` when present), with the same logistic fall-off at d_min
    and the overall scale kept at the map's low-resolution (d > 8 Å) level.

Target B_iso. The default method (``target="target_b"``, phenix's ``target_b_iso_to_d_cut`` /
``region_weight_method=b_iso``) sharpens or blurs to ``B_iso = 5.9 d_min²`` Å² (the empirical
``target_b_iso_ratio`` of cctbx ``segment_and_split_map``), solving for b_sharpen on the radial
profile and correcting on the actual coefficients. The adjusted-surface-area search
(``target="adjusted_sa"``) has no fixed target; its score can have near-equal maxima far apart in
B, which is why it is an option, not the default (figures: ``benchmarks/bench_sharpen.py``).

Length: one job, global sharpening; its modes (target B, surface-area search, half-map and model
scaling) share one transform, one radial profile and one scoring box.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import gemmi
import numpy as np
import scipy.ndimage as ndi
from numba import njit

from . import fsc as fscmod
from rerefine.common.errors import InputError
from .mapio import DensityMap

log = logging.getLogger(__name__)

#: phenix's documented rule of thumb for a well-sharpened map: B_iso ≈ 5.9 d_min² Å² is not used by the
#: search; it is the figure our benchmark compares the chosen B_iso against (see :func:`target_b_iso`).
TARGET_B_RATIO = 5.9
K_SHARPEN = 10.0  # Å⁻¹, steepness of the fall-off at d_min (phenix k_sharpen default)
D_MAX_WILSON = 10.0  # Å, low-resolution end of the B_iso fit
# High-resolution end of the B_iso fit, as a multiple of d_min. The last shells before d_min are
# where the half-map FSC falls to 0.143 and where the depositors' post-processing low-pass filter
# (RELION/cryoSPARC filter at the FSC resolution with a soft edge) rolls the amplitudes off; a
# straight-line fit that reaches into that roll-off reads the filter as atomic B (EMD-30342's zone:
# flat to 4.5 Å then -2.7 in ln P by 3.9 Å; B_iso 114 Å² with the roll-off, 71 Å² without).
FIT_D_MIN_RATIO = 1.1
_COMPOSITION = {"C": 5.0, "N": 1.35, "O": 1.5, "S": 0.04}


def target_b_iso(resolution: float) -> float:
    """Expected B_iso (Å²) of a well-sharpened map at ``resolution`` Å: ``5.9 × d_min²``."""
    return TARGET_B_RATIO * resolution * resolution


# --------------------------------------------------------------------------- validation


def check_inputs(dmap: DensityMap, resolution: float) -> None:
    """Raise :class:`InputError` for a map without signal or a resolution past Nyquist."""
    if not (resolution and math.isfinite(resolution) and resolution > 0):
        raise InputError(f"{dmap.name}: resolution must be a positive number of Å (got {resolution})")
    nyq = 2.0 * float(np.max(dmap.voxel_size))
    if resolution < nyq * (1.0 - 1e-6):
        raise InputError(
            f"{dmap.name}: resolution {resolution:.3g} Å is finer than the Nyquist limit "
            f"{nyq:.3g} Å of the grid (2 × voxel size)")
    d = dmap.data
    if not np.all(np.isfinite(d)):
        raise InputError(f"{dmap.name}: map holds NaN or infinite values")
    if float(d.std(dtype=np.float64)) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        raise InputError(f"{dmap.name}: map has no signal (constant values)")
    if min(dmap.shape) < 8:
        raise InputError(f"{dmap.name}: map {dmap.shape} too small to sharpen (needs ≥ 8 voxels per edge)")


def check_half_maps(dmap: DensityMap, h1: DensityMap, h2: DensityMap) -> None:
    """Half-maps must share the full map's grid, voxel size and origin."""
    for h in (h1, h2):
        if h.shape != dmap.shape:
            raise InputError(f"{h.name}: half-map grid {h.shape} differs from {dmap.name} grid {dmap.shape}")
        if not np.allclose(h.voxel_size, dmap.voxel_size, rtol=1e-4):
            raise InputError(f"{h.name}: half-map voxel size {np.round(h.voxel_size, 4).tolist()} differs "
                             f"from {dmap.name} {np.round(dmap.voxel_size, 4).tolist()}")
        if not np.allclose(h.origin, dmap.origin, atol=0.5 * float(np.min(dmap.voxel_size))):
            raise InputError(f"{h.name}: half-map origin {np.round(h.origin, 2).tolist()} differs "
                             f"from {dmap.name} {np.round(dmap.origin, 2).tolist()}")
        if float(h.data.std()) <= 0:
            raise InputError(f"{h.name}: half-map has no signal (constant values)")


# --------------------------------------------------------------------------- B_iso


def _mean_sq_form_factor(s: np.ndarray) -> np.ndarray:
    stol2 = (np.asarray(s, float) ** 2) / 4.0
    tot = np.zeros_like(stol2)
    for el, n in _COMPOSITION.items():
        coef = gemmi.Element(el).it92
        f = np.array([coef.calculate_sf(float(x)) for x in stol2])
        tot += n * f * f
    return tot


def b_iso_from_profile(profile: fscmod.ShellProfile, resolution: float, d_max: float = D_MAX_WILSON) -> float:
    """B_iso (Å²) from a radial profile: fit of ln(<|F|²>/Σf²) = c - B s²/2 over d_max ≥ d ≥ 1.1 d_min.

    The fit stops at :data:`FIT_D_MIN_RATIO` × ``resolution`` so that a post-processing low-pass
    filter at the map's resolution is not read as atomic B (see the constant). For maps coarser than
    5 Å the range starts at 2 d_min instead of ``d_max``, so that it still spans enough shells.
    """
    s = profile.s_mid
    d_max = max(d_max, 2.0 * resolution)
    d_end = resolution * FIT_D_MIN_RATIO
    ok = (s >= 1.0 / d_max) & (s <= 1.0 / d_end) & (profile.count > 0)
    ok &= np.isfinite(profile.power) & (profile.power > 0)
    if np.count_nonzero(ok) < 3:
        raise InputError(f"too few Fourier shells with signal between {d_max:.1f} Å and {d_end:.2f} Å "
                         "to estimate B_iso (box too small or map empty)")
    x = s[ok] ** 2
    y = np.log(profile.power[ok] / _mean_sq_form_factor(s[ok]))
    slope = np.polyfit(x, y, 1)[0]
    return float(-2.0 * slope)


def estimate_b_iso(dmap: DensityMap, resolution: float, d_max: float = D_MAX_WILSON) -> float:
    """Overall B_iso of a map (Å²), defined in the module docstring."""
    check_inputs(dmap, resolution)
    prof = fscmod.map_profile(dmap)
    return b_iso_from_profile(prof, resolution, d_max)


def blur(dmap: DensityMap, b: float) -> DensityMap:
    """The map multiplied in Fourier space by ``exp(-b s²/4)`` (b > 0 blurs, b < 0 sharpens), Å²."""
    c = fscmod.rfft_map(dmap.data)
    a = fscmod.frequency_matrix(dmap)
    step, table = _table(lambda s: np.exp(-b * s * s / 4.0), float(np.linalg.norm(a.sum(axis=1)) * max(dmap.shape)))
    fscmod.scale_radial(c, a, step, table)
    return dmap.with_data(fscmod.irfft_map(c, dmap.shape))


def _table(func, s_max: float, n: int = 4096):
    step = s_max / (n - 1)
    s = np.arange(n) * step
    return step, np.asarray(func(s), dtype=np.float64)


def sharpen_log_factor(s: np.ndarray, b_sharpen: float, resolution: float, k_sharpen: float = K_SHARPEN) -> np.ndarray:
    """ln of the ``b_iso_to_d_cut`` sharpening factor at |s| (Å⁻¹); k_sharpen = 0 sharpens all data."""
    s = np.asarray(s, float)
    lin = b_sharpen * s * s / 4.0
    if not k_sharpen or b_sharpen < 0:
        # blurring is applied to all data, sharpening only up to d_min (phenix k_sharpen semantics)
        return lin
    with np.errstate(divide="ignore"):
        d = np.where(s > 0, 1.0 / np.maximum(s, 1e-12), 1e6)
    v = np.clip(k_sharpen * (resolution - d), -20.0, 20.0)
    return lin / (1.0 + np.exp(v))


# --------------------------------------------------------------------------- scoring


@njit(cache=True)
def _region_surfaces(labels, nlab):
    """For each region label, the number of unlabelled voxels 6-adjacent to it (one-voxel growth)."""
    nx, ny, nz = labels.shape
    out = np.zeros(nlab + 1, dtype=np.int64)
    seen = np.zeros(6, dtype=np.int64)
    for i in range(nx):
        for j in range(ny):
            for k in range(nz):
                if labels[i, j, k] != 0:
                    continue
                m = 0
                for q in range(6):
                    if q == 0:
                        if i == 0:
                            continue
                        v = labels[i - 1, j, k]
                    elif q == 1:
                        if i == nx - 1:
                            continue
                        v = labels[i + 1, j, k]
                    elif q == 2:
                        if j == 0:
                            continue
                        v = labels[i, j - 1, k]
                    elif q == 3:
                        if j == ny - 1:
                            continue
                        v = labels[i, j + 1, k]
                    elif q == 4:
                        if k == 0:
                            continue
                        v = labels[i, j, k - 1]
                    else:
                        if k == nz - 1:
                            continue
                        v = labels[i, j, k + 1]
                    if v == 0:
                        continue
                    dup = False
                    for r in range(m):
                        if seen[r] == v:
                            dup = True
                            break
                    if not dup:
                        seen[m] = v
                        m += 1
                        out[v] += 1
    return out


@dataclass
class ScoreParams:
    """Parameters of the adjusted-surface-area score (phenix defaults)."""

    fraction_occupied: float = 0.20
    sa_percent: float = 30.0
    region_weight: float = 40.0
    max_regions_to_test: int = 30


def adjusted_surface_area(data: np.ndarray, solvent_fraction: float, p: ScoreParams) -> tuple[float, float, float]:
    """``(adjusted_sa, sa_ratio, normalized_regions)`` of a map (definition in the module docstring)."""
    n = data.size
    target = n * p.fraction_occupied * (1.0 - solvent_fraction)
    kth = max(1, min(n - 1, int(target)))
    flat = data.ravel()
    threshold = np.partition(flat, n - kth)[n - kth]
    labels, nlab = ndi.label(data >= threshold)
    if nlab < 1:
        return 0.0, 0.0, 0.0
    vol = np.bincount(labels.ravel(), minlength=nlab + 1)
    surf = _region_surfaces(labels.astype(np.int32), nlab)
    order = np.argsort(vol[1:])[::-1] + 1
    target_sum = p.sa_percent * 0.01 * target
    sum_v = 0.0
    sum_new = 0.0
    for lab in order[: p.max_regions_to_test + 1]:
        sum_v += vol[lab]
        sum_new += surf[lab]
        if sum_v >= target_sum:
            break
    sa_ratio = sum_new / max(1.0, sum_v)
    normalized_regions = nlab / max(1.0, target)
    return float(sa_ratio - p.region_weight * normalized_regions), float(sa_ratio), float(normalized_regions)


def estimate_solvent_fraction(data: np.ndarray, voxel: float, resolution: float) -> float:
    """Solvent fraction of a box: Otsu split of the log local variance smoothed over ~2 d_min; in [0.2, 0.9]."""
    x = data.astype(np.float32) - np.float32(data.mean())
    sigma = max(1.0, 1.0 * resolution / voxel)
    lv = ndi.gaussian_filter(x * x, sigma=sigma, mode="constant")
    v = np.log(np.maximum(lv, lv.max() * 1e-8)).ravel()
    hist, edges = np.histogram(v, bins=256)
    mids = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * mids)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    t = mids[int(np.argmax(between))]
    solvent = float(np.mean(v < t))
    return float(min(0.9, max(0.2, solvent)))


# --------------------------------------------------------------------------- scoring box


@dataclass
class _ScoringBox:
    coeffs: np.ndarray  # half-space transform of the (tapered) box
    s2: np.ndarray  # |s|² of every coefficient
    shape: tuple
    solvent_fraction: float


def _scoring_box(data: np.ndarray, dmap: DensityMap, resolution: float, max_voxels: int,
                 radial_table=None) -> _ScoringBox:
    """Transform once the part of the map used to score trials (the whole map when small enough)."""
    shape = np.array(data.shape)
    if np.prod(shape) > max_voxels:
        edge = int(round(max_voxels ** (1.0 / 3.0)))
        size = np.minimum(shape, edge)
        # centre on the density: centroid of the top 2 % of a smoothed copy
        sm = ndi.uniform_filter(data, size=3)
        thr = np.quantile(sm[::2, ::2, ::2], 0.98)
        idx = np.argwhere(sm >= thr)
        centre = idx.mean(axis=0) if len(idx) else shape / 2
        lo = np.clip(np.round(centre - size / 2).astype(int), 0, shape - size)
        box = np.array(data[lo[0]:lo[0] + size[0], lo[1]:lo[1] + size[1], lo[2]:lo[2] + size[2]], dtype=np.float32)
        # A cut box is not periodic: taper its edges to the edge mean to keep edge streaks out of the transform.
        width = max(2, int(round(resolution / float(np.min(dmap.voxel_size)))))
        edge_mean = float(np.mean([box[0].mean(), box[-1].mean(), box[:, 0].mean(), box[:, -1].mean(),
                                   box[:, :, 0].mean(), box[:, :, -1].mean()]))
        w = np.ones(box.shape, np.float32)
        for ax, n in enumerate(box.shape):
            r = np.ones(n, np.float32)
            ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(width) + 0.5) / width)
            r[:width] = ramp
            r[n - width:] = ramp[::-1]
            sh = [1, 1, 1]
            sh[ax] = n
            w *= r.reshape(sh)
        box = (box - edge_mean) * w + edge_mean
        sub = DensityMap(box, dmap.cell, dmap.sampling)
    else:
        box = np.asarray(data, dtype=np.float32)
        sub = dmap
    c = fscmod.rfft_map(box)
    a = fscmod.frequency_matrix(sub, box.shape)
    if radial_table is not None:
        fscmod.scale_radial(c, a, *radial_table)
    s2 = fscmod.s_squared(c.shape, a)
    solvent = estimate_solvent_fraction(box, float(np.min(dmap.voxel_size)), resolution)
    return _ScoringBox(c, s2, tuple(box.shape), solvent)


# --------------------------------------------------------------------------- the search


@dataclass
class SharpenResult:
    """What :func:`auto_sharpen` did. B values in Å², positive ``b_sharpen`` = sharpened."""

    map: DensityMap
    method: str
    b_iso_before: float
    b_iso_after: float
    b_sharpen: float
    score_before: float
    score_after: float
    target: str
    solvent_fraction: float
    region_weight: float
    seconds: float = 0.0
    trials: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        out = {
            "method": self.method,
            "b_iso_before": self.b_iso_before,
            "b_iso_after": self.b_iso_after,
            "b_sharpen": self.b_sharpen,
            "score_before": self.score_before,
            "score_after": self.score_after,
            "target": self.target,
            "solvent_fraction": self.solvent_fraction,
            "region_weight": self.region_weight,
            "seconds": self.seconds,
        }
        out.update(self.extra)
        return out


def _trial_map(box: _ScoringBox, log_factor: np.ndarray) -> np.ndarray:
    c = box.coeffs * np.exp(log_factor).astype(np.float32)
    return fscmod.irfft_map(c, box.shape)


def _score(data: np.ndarray, box: _ScoringBox, p: ScoreParams):
    res = adjusted_surface_area(data, box.solvent_fraction, p)
    return res[0], res


def auto_sharpen(dmap: DensityMap, resolution: float, *, half_maps: tuple | None = None, model=None,
                 target: str = "target_b", search_b_min: float = -100.0, search_b_max: float = 300.0,
                 search_b_n: int = 21, k_sharpen: float = K_SHARPEN, d_min_ratio: float = 1.0,
                 max_score_voxels: int = 96 ** 3, params: ScoreParams | None = None) -> SharpenResult:
    """Sharpen ``dmap`` automatically (global B search; half-map FSC weighting or model scaling when given).

    Parameters
    ----------
    dmap : DensityMap
        The map; the result keeps its grid, cell and origin.
    resolution : float
        d_min, Å.
    half_maps : (DensityMap, DensityMap), optional
        Half-maps on the same grid: FSC weighting first.
    model : gemmi.Structure, optional
        Scale the radial amplitude profile to the model map's instead of searching B.
    target : {"target_b", "adjusted_sa"}
        ``target_b`` (default): sharpen (or blur) to B_iso = 5.9 d_min² (phenix
        ``region_weight_method=b_iso`` / ``target_b_iso_to_d_cut``); ``adjusted_sa``: the B search
        maximising the adjusted surface area.

    Returns
    -------
    SharpenResult

    Raises
    ------
    InputError
        No signal, resolution finer than Nyquist, mismatched half-maps.
    """
    t0 = time.perf_counter()
    if target not in ("adjusted_sa", "target_b"):
        raise InputError(f"unknown sharpening target {target!r} (adjusted_sa or target_b)")
    check_inputs(dmap, resolution)
    p = params or ScoreParams()
    shape = dmap.shape
    a = fscmod.frequency_matrix(dmap)
    s_nyq = fscmod.nyquist_s(dmap)
    n_sh = fscmod.default_shells(shape)
    s_corner = float(np.linalg.norm(np.abs(a) @ (np.array(shape) / 2.0))) * 1.01
    coeffs = fscmod.rfft_map(dmap.data)
    prof0 = fscmod.radial_profile(coeffs, a, shape, s_max=s_nyq, n_shells=n_sh)
    s_res = 1.0 / resolution
    d_low = max(D_MAX_WILSON, 2.0 * resolution)
    band = (prof0.s_mid >= 1.0 / d_low) & (prof0.s_mid <= s_res)
    if not np.any(np.nan_to_num(prof0.power[band]) > 0):
        raise InputError(f"{dmap.name}: map has no signal between {d_low:g} and {resolution} Å")
    b_before = b_iso_from_profile(prof0, resolution)
    extra: dict = {"resolution": resolution, "target_b_iso": target_b_iso(resolution)}
    method = target

    pre_table = None  # radial weights applied before the search (FSC weighting)
    if half_maps is not None:
        h1, h2 = half_maps
        check_half_maps(dmap, h1, h2)
        c1 = fscmod.rfft_map(h1.data)
        c2 = fscmod.rfft_map(h2.data)
        curve = fscmod.fsc_curve(c1, c2, a, shape, s_max=s_nyq, n_shells=n_sh)
        del c1, c2
        w = fscmod.fsc_weight(curve.fsc)
        # weights known at shell middles; s = 0 keeps weight 1 (the map mean)
        table = np.concatenate([[1.0], w])
        svals = np.concatenate([[0.0], curve.s_mid])
        fine_step, fine = _table(lambda s: np.interp(s, svals, table), s_corner)
        pre_table = (fine_step, fine)
        fscmod.scale_radial(coeffs, a, fine_step, fine)
        extra["fsc_resolution_0143"] = curve.resolution_at(0.143)
        method = "half_map_fsc+" + method

    # B_iso of the map the search starts from (after FSC weighting, when any)
    prof = fscmod.radial_profile(coeffs, a, shape, s_max=s_nyq, n_shells=n_sh) if pre_table else prof0
    b_start = b_iso_from_profile(prof, resolution) if pre_table else b_before

    box = _scoring_box(dmap.data, dmap, resolution, max_score_voxels, pre_table)
    cut = 1.0 / (resolution * d_min_ratio)
    # scoring maps are limited to d_min × d_min_ratio (as phenix's map coefficients are)
    lowpass = np.where(box.s2 <= cut * cut, 0.0, -np.inf).astype(np.float32)
    s_box = np.sqrt(box.s2)

    def log_factor(bs, k=k_sharpen):
        return sharpen_log_factor(s_box, bs, resolution, k).astype(np.float32) + lowpass

    trials = []
    score_null, _ = _score(_trial_map(box, log_factor(0.0)), box, p)
    region_weight = p.region_weight
    if model is not None:
        model_table, info = _model_scaling(dmap, model, resolution, coeffs, a, prof, s_corner, k_sharpen)
        extra.update(info)
        lt = np.log(np.maximum(model_table[1], 1e-30))
        lf_box = np.interp(s_box, np.arange(len(lt)) * model_table[0], lt).astype(np.float32) + lowpass
        best_score, _ = _score(_trial_map(box, lf_box), box, p)
        final_table = model_table
        b_sharp = float("nan")
        method = ("half_map_fsc+" if pre_table else "") + "model_scaling"
    else:
        # the grid of target B_iso is absolute (not centred on the map's own B_iso), so a map and a
        # blurred copy of it are scored on the same candidate maps and reach the same choice
        b_lo, b_hi = search_b_min, search_b_max
        if target == "adjusted_sa":
            # phenix region_weight_method=delta_ratio: the change of sa_ratio over the search range equals
            # region_weight times the change of normalized regions, so neither term dominates the search.
            _, (_, sa_lo, nr_lo) = _score(_trial_map(box, log_factor(b_start - b_lo)), box, p)
            _, (_, sa_hi, nr_hi) = _score(_trial_map(box, log_factor(b_start - b_hi)), box, p)
            if abs(nr_lo - nr_hi) > 1e-12 and abs(sa_lo - sa_hi) > 1e-12:
                region_weight = abs(sa_lo - sa_hi) / abs(nr_lo - nr_hi)
                p = ScoreParams(p.fraction_occupied, p.sa_percent, region_weight, p.max_regions_to_test)
                score_null, _ = _score(_trial_map(box, log_factor(0.0)), box, p)
        if target == "target_b":
            b_goal = target_b_iso(resolution)
            b_sharp = b_sharpen_for(prof, resolution, b_start, b_goal, k_sharpen)
            # The shell-middle model misses the spread of |s| inside a shell; correct on the real
            # coefficients (profile of scaled coefficients, no transform) with two secant-free steps.
            for _ in range(2):
                tab = _table(lambda s, bs=b_sharp: np.exp(sharpen_log_factor(s, bs, resolution, k_sharpen)),
                             s_corner)
                pr = fscmod.radial_profile(coeffs, a, shape, s_max=s_nyq, n_shells=n_sh, table=tab)
                b_sharp += b_iso_from_profile(pr, resolution) - b_goal
            best_score, _ = _score(_trial_map(box, log_factor(b_sharp)), box, p)
            trials.append((target_b_iso(resolution), float(best_score)))
        else:
            grid = np.linspace(b_lo, b_hi, search_b_n)
            scores = []
            for bt in grid:
                sc, _ = _score(_trial_map(box, log_factor(b_start - bt)), box, p)
                trials.append((float(bt), float(sc)))
                scores.append(sc)
            # The score of one map is noisy in B (regions merge and split); a 1-2-1 running mean over
            # neighbouring B values picks the middle of the best plateau rather than a lucky spike.
            sm = np.convolve(np.pad(np.asarray(scores), 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
            i = int(np.argmax(sm))
            best_bt, best_score = float(grid[i]), float(scores[i])
            if best_score <= score_null and pre_table is None:
                b_sharp = 0.0
                best_score = score_null
                method = "no_sharpening"
            else:
                b_sharp = b_start - best_bt
        final_table = _table(lambda s: np.exp(sharpen_log_factor(s, b_sharp, resolution, k_sharpen)), s_corner)

    solvent = box.solvent_fraction
    del box
    fscmod.scale_radial(coeffs, a, *final_table)
    prof_after = fscmod.radial_profile(coeffs, a, shape, s_max=s_nyq, n_shells=n_sh)
    b_after = b_iso_from_profile(prof_after, resolution)
    out = fscmod.irfft_map(coeffs, shape)
    del coeffs
    if model is not None:
        b_sharp = b_start - b_after
    result = SharpenResult(
        map=dmap.with_data(out), method=method, b_iso_before=b_before, b_iso_after=b_after,
        b_sharpen=float(b_sharp), score_before=float(score_null), score_after=float(best_score), target=target,
        solvent_fraction=float(solvent), region_weight=float(region_weight), trials=trials,
        extra=extra)
    result.seconds = time.perf_counter() - t0
    return result


def _b_after(prof: fscmod.ShellProfile, resolution: float, b_sharpen: float, k_sharpen: float) -> float:
    lf = sharpen_log_factor(prof.s_mid, b_sharpen, resolution, k_sharpen)
    scaled = fscmod.ShellProfile(prof.s_lo, prof.s_hi, prof.power * np.exp(2.0 * lf), prof.count)
    return b_iso_from_profile(scaled, resolution)


def b_sharpen_for(prof: fscmod.ShellProfile, resolution: float, b_start: float, b_target: float,
                  k_sharpen: float = K_SHARPEN) -> float:
    """The b_sharpen (Å²) whose ``b_iso_to_d_cut`` factor brings the profile's B_iso to ``b_target``.

    Found by bisection on the profile itself (B_iso after scaling is monotone in b_sharpen), so the
    partial sharpening near d_min is accounted for without any transform.
    """
    lo, hi = b_start - b_target - 400.0, b_start - b_target + 400.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _b_after(prof, resolution, mid, k_sharpen) > b_target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --------------------------------------------------------------------------- model mode


def model_map_for(st, dmap: DensityMap, resolution: float) -> np.ndarray:
    """Model map on ``dmap``'s grid: ``rerefine.refine.modelmap.model_map`` (owned elsewhere)."""
    try:
        from .modelmap import model_map  # noqa: PLC0415 - optional sibling module
    except ImportError as exc:
        raise InputError("model-based sharpening needs rerefine.refine.modelmap, which is not installed") from exc
    mm = model_map(st, dmap, resolution)
    return np.asarray(getattr(mm, "data", mm), dtype=np.float32)


def _model_scaling(dmap, st, resolution, coeffs, a, prof_map, s_corner, k_sharpen):
    """Radial factor table scaling the map's shell amplitudes to the model map's (see module docstring)."""
    mm = model_map_for(st, dmap, resolution)
    cm = fscmod.rfft_map(mm)
    prof_model = fscmod.radial_profile(cm, a, dmap.shape, s_max=prof_map.s_hi[-1], n_shells=len(prof_map.s_mid))
    del cm
    s = prof_map.s_mid
    ok = (prof_map.power > 0) & (prof_model.power > 0) & np.isfinite(prof_map.power) & np.isfinite(prof_model.power)
    ratio = np.full_like(s, np.nan)
    ratio[ok] = 0.5 * np.log(prof_model.power[ok] / prof_map.power[ok])
    low = ok & (s > 0) & (s <= 1.0 / 8.0)
    if not np.any(low):
        low = ok & (s > 0)
    k0 = float(np.nanmean(ratio[low]))
    rel = np.where(ok, ratio - k0, np.nan)
    # smooth over three shells (in log space) and hold the last value past d_min
    good = np.isfinite(rel)
    rel = np.interp(s, s[good], rel[good])
    rel = np.convolve(np.pad(rel, 1, mode="edge"), np.ones(3) / 3.0, mode="valid")
    s_res = 1.0 / resolution
    rel = np.where(s <= s_res, rel, np.interp(s_res, s, rel))

    def f(x):
        lr = np.interp(x, s, rel)
        with np.errstate(divide="ignore"):
            d = np.where(x > 0, 1.0 / np.maximum(x, 1e-12), 1e6)
        lg = 1.0 / (1.0 + np.exp(np.clip(k_sharpen * (resolution - d), -20, 20)))
        return np.exp(lr * lg)

    return _table(f, s_corner), {"model_scale_log_k0": k0}
