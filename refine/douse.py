"""Ordered water placement in the manner of phenix.douse: isolated, spherical map peaks at
hydrogen-bonding distance from the model.

Afonine's cryo-EM workflow (phenix.douse; Afonine et al. 2018, Acta Cryst. D74:531, and the
Phenix documentation of ``phenix.douse``) builds solvent last, on a refined model, at
resolutions where waters are visible (about 3 Å and better). The criteria are those of
crystallographic water pickers (Coot's *Find Waters*, Emsley et al. 2010 Acta Cryst. D66:486;
ARP/wARP, Lamzin & Wilson 1993 Acta Cryst. D49:129; phenix.ordered_solvent):

1. **Peak.** A local maximum (3×3×3 voxels) of the real-space difference map
   ``D = map - k(s) model_map`` of the model *without* its waters (:mod:`.diffmap`), at least
   :data:`PEAK_SD` standard deviations of ``D`` over the box, and with the map itself at least
   :data:`MAP_SD` of its own SD at that point. Using ``D`` removes the model's own density,
   so a peak cannot be a side chain's tail.
2. **Shape.** Sphericity ``λ_min / λ_max`` of the eigenvalues of ``-H``, ``H`` the Hessian of
   ``D`` at the peak (central differences, converted to Å), at least :data:`SPHERICITY_MIN`
   and every eigenvalue positive (a true maximum); the peak position is refined to sub-voxel
   precision by the Newton step ``-H⁻¹ g``.
3. **Distances.** A polar partner (N or O of the model; after the first shell, also an accepted
   water) at :data:`HBOND_MIN`–:data:`HBOND_MAX` Å (2.4–3.4 Å, ARP/wARP's 2.2–3.3 Å and Coot's
   2.4–3.2 Å hydrogen-bond window widened a little for cryo-EM coordinate error); no non-H model
   atom closer than :data:`CLASH_MIN` Å; no other water closer than :data:`WATER_MIN` Å
   (strongest peak first, so there is at most one water per peak).
4. **Existing waters** are kept when ``D`` at their position is at least :data:`KEEP_SD`, no
   model atom is closer than :data:`CLASH_MIN` and they belong to a hydrogen-bonded network
   anchored on the model (:data:`KEEP_HBOND_MIN`-:data:`KEEP_HBOND_MAX` Å); the others are
   removed, each with its reason. Of two kept waters closer than :data:`WATER_MIN` the weaker goes.

Thresholds were chosen on the 1.75 Å EMD-20026 box with its 3AJO-derived model (waters
removed, then placed again; ``benchmarks/bench_douse.py`` gives precision and recall) and
checked on the 3.2 Å EMD-3488/5ME2 pair, where hardly anything passes them.

Neighbour queries use a k-d tree (:class:`scipy.spatial.cKDTree`) and water spacing a cell list
(:func:`.mappeaks.greedy_spacing`), so the time grows with the number of atoms and peaks as
``N log N``, not ``N x peaks``; the peak search and the peak shapes are numba kernels
(:mod:`.mappeaks`).

Length (~500 lines): one job, the waters of a model; judging the model's own waters and placing
new ones share one context (neighbour trees, difference map, map statistics).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import gemmi
import numpy as np
from scipy.spatial import cKDTree

from rerefine.common.errors import InputError

from . import diffmap, interpolate
from .mappeaks import Peaks, blob_volumes, find_peaks, greedy_spacing
from .mapio import DensityMap

log = logging.getLogger(__name__)

#: Å. Douse runs only at this resolution or better (Afonine's "about 3 Å and better").
MAX_RESOLUTION = 3.0
#: Difference-map peak height, SD of D over the box (phenix.ordered_solvent and Coot pick
#: mFo-DFc peaks at 3 SD; on EMD-20026 precision against the deposited waters rises from 0.38 at
#: 3 SD to 0.45 at 4 SD for a recall of 0.36 -> 0.31, measured with benchmarks/bench_douse.py).
PEAK_SD = 4.0
#: Map value at the peak, SD of the map over the box above its mean (Coot's default water level
#: is 1.4 rmsd of a 2mFo-DFc map; a cryo-EM box holds more solvent, so its SD is smaller and
#: the level higher; 2 SD rejects 130 weak-map peaks on EMD-20026, 9 % of the true ones).
MAP_SD = 2.0
#: Smallest ratio of the Hessian eigenvalues at the peak (1 = perfect sphere). Water peaks of
#: EMD-20026 have a median ratio of 0.40 (0.15 at the 5th percentile, one-voxel differences of
#: a 0.65 Å grid are noisy), so the test only rejects clearly elongated or flat peaks.
SPHERICITY_MIN = 0.1
#: Å: hydrogen-bond window to a polar partner (N, O; waters in later shells). 2.4 Å as Coot's
#: find_waters; 3.2 Å as Coot rather than ARP/wARP's 3.3 or the 3.4 of the issue: on EMD-20026
#: peaks 3.2-3.4 Å from their partner matched a deposited water in 7 % of the cases (30 % below).
HBOND_MIN = 2.4
HBOND_MAX = 3.2
#: Å: no non-H model atom closer than this.
CLASH_MIN = 2.2
#: Å: smallest water-water distance.
WATER_MIN = 2.4
#: Difference-map value (SD) at an existing water below which it is removed.
KEEP_SD = 1.5
#: Isolation: the connected region of D >= BLOB_SD (SD) holding the peak must be at most
#: BLOB_MAX Å³ (a water's blob, not unmodelled protein or ligand). Water blobs of EMD-20026
#: measure 5 Å³ (median) at 2 SD; on EMD-20026 the test removes 30 peaks (recall 0.31 -> 0.28
#: together with the sphericity test), on 5ME2/EMD-3488 5 of 26 (unmodelled density).
BLOB_SD = 2.0
BLOB_MAX = 100.0
#: Å: the wider window within which an *existing* water needs a polar partner or another kept
#: water (the limits of Coot's Check/Delete Waters, 2.3-3.5 Å): a deposited solvent network is
#: kept when its density holds, as phenix.douse keeps input waters that still fit.
KEEP_HBOND_MIN = 2.3
KEEP_HBOND_MAX = 3.5
#: Shells of hydration: 1 = waters bonded to the model only; 2 also waters bonded to those
#: (on EMD-20026 the second shell matched deposited waters in 14 % of the cases, the first in
#: 31 %, so one shell by default).
SHELLS = 1
#: Fraction of the box that must be solvent (farther than 3 Å from every model atom) for the
#: map's statistics to describe solvent at all.
MIN_SOLVENT_FRACTION = 0.05
#: Smallest fraction of the map's variance around the model that the (water-free) model map
#: explains, ``1 - var(D)/var(map)``: 0.56 on EMD-20026/3AJO, 0.02 when the map is replaced by
#: smoothed noise of the same grid.
MIN_EXPLAINED = 0.2

POLAR_ELEMENTS = ("N", "O")


@dataclass
class DouseParams:
    """Thresholds of :func:`douse` (defaults: the module constants)."""

    peak_sd: float = PEAK_SD
    map_sd: float = MAP_SD
    sphericity_min: float = SPHERICITY_MIN
    hbond_min: float = HBOND_MIN
    hbond_max: float = HBOND_MAX
    clash_min: float = CLASH_MIN
    water_min: float = WATER_MIN
    keep_sd: float = KEEP_SD
    shells: int = SHELLS
    keep_hbond_min: float = KEEP_HBOND_MIN
    keep_hbond_max: float = KEEP_HBOND_MAX
    max_resolution: float = MAX_RESOLUTION
    blob_sd: float = BLOB_SD
    blob_max: float = BLOB_MAX


@dataclass
class DouseResult:
    """What :func:`douse` did.

    Attributes
    ----------
    structure : gemmi.Structure
        The model with its kept and added waters (a copy; the input is untouched).
    status : str
        ``"ok"``, or ``"skipped: <reason>"`` when nothing was done (the structure is then a
        copy of the input).
    added : list of dict
        New waters: ``chain``, ``seq``, ``xyz`` (Å), ``height_sd`` (D), ``map_sd``,
        ``sphericity``, ``partner`` (``chain/resname seq/atom``), ``distance`` (Å).
    kept, removed : list of dict
        Existing waters (``chain``, ``seq``, ``xyz``, ``height_sd``), the removed ones with ``reason``.
    n_peaks : int
        Local maxima of D above ``peak_sd`` (before shape and distance tests).
    rejected : dict
        Count of peaks failing each test.
    diff_sd, map_sd : float
        SD of the difference map and of the map over the box (map units).
    params : dict
        The thresholds used.
    seconds : float
        Wall time.
    """

    structure: gemmi.Structure
    status: str = "ok"
    added: list = field(default_factory=list)
    kept: list = field(default_factory=list)
    removed: list = field(default_factory=list)
    n_peaks: int = 0
    rejected: dict = field(default_factory=dict)
    diff_sd: float = float("nan")
    map_sd: float = float("nan")
    params: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> dict:
        """JSON-ready figures (everything but the structure)."""
        return {"status": self.status, "n_added": len(self.added), "n_kept": len(self.kept),
                "n_removed": len(self.removed), "added": self.added, "kept": self.kept,
                "removed": self.removed, "n_peaks": self.n_peaks, "rejected": self.rejected,
                "diff_sd": self.diff_sd, "map_sd": self.map_sd, "params": self.params,
                "seconds": round(self.seconds, 3)}


# ---- the step --------------------------------------------------------------------------------

def without_waters(st: gemmi.Structure) -> gemmi.Structure:
    """A copy of ``st`` without its water residues (first model; empty chains dropped)."""
    dry = st.clone()
    for ch in dry[0]:
        for ri in range(len(ch) - 1, -1, -1):
            if ch[ri].is_water():
                del ch[ri]
    dry.remove_empty_chains()
    return dry


def _atom_table(st: gemmi.Structure, *, waters: bool):
    """Non-H atoms (of non-water residues unless ``waters``): positions, polar flag, labels."""
    xyz, polar, label = [], [], []
    for ch in st[0]:
        for res in ch:
            if res.is_water() and not waters:
                continue
            for a in res:
                if a.is_hydrogen():
                    continue
                xyz.append(a.pos.tolist())
                polar.append(a.element.name in POLAR_ELEMENTS)
                label.append(f"{ch.name}/{res.name} {res.seqid.num}{res.seqid.icode.strip()}/{a.name}")
    return np.array(xyz, float).reshape(-1, 3), np.array(polar, bool), label


def _free_chain_name(st: gemmi.Structure) -> str:
    used = {ch.name for ch in st[0]}
    for name in ["W", "S"] + [chr(c) for c in range(ord("A"), ord("Z") + 1)] + [f"W{i}" for i in range(1, 100)]:
        if name not in used:
            return name
    raise InputError(f"{st.name or 'model'}: no free chain name for the waters")


def _nearest(tree: cKDTree | None, xyz: np.ndarray) -> np.ndarray:
    """Distance (Å) from each position to the nearest point of ``tree`` (inf without one)."""
    if tree is None or tree.n == 0 or len(xyz) == 0:
        return np.full(len(xyz), np.inf)
    return np.asarray(tree.query(xyz)[0], float)


def _hbond_partner(tree: cKDTree | None, xyz: np.ndarray, lo: float, hi: float, k: int = 12):
    """Nearest point of ``tree`` at ``lo``-``hi`` Å from each position: (index or -1, distance Å).

    The ``k`` nearest points within ``hi`` are searched (a water has far fewer polar atoms
    within 3.5 Å).
    """
    out_j = np.full(len(xyz), -1, np.int64)
    out_d = np.full(len(xyz), np.inf)
    if tree is None or tree.n == 0 or len(xyz) == 0:
        return out_j, out_d
    k = min(k, tree.n)
    d, j = tree.query(xyz, k=k, distance_upper_bound=hi)
    d, j = np.asarray(d, float).reshape(len(xyz), k), np.asarray(j).reshape(len(xyz), k)
    ok = (d >= lo) & (d <= hi)
    first = np.argmax(ok, axis=1)
    has = ok[np.arange(len(xyz)), first]
    out_j[has] = j[has, first[has]]
    out_d[has] = d[has, first[has]]
    return out_j, out_d


@dataclass
class _Context:
    """What the tests of one douse run share: the water-free model and its difference map."""

    dry: gemmi.Structure
    diff: DensityMap
    dsd: float
    model_tree: cKDTree
    polar_tree: cKDTree | None
    polar_label: list


def douse(st: gemmi.Structure, dmap: DensityMap, resolution: float, params: DouseParams | None = None,
          *, max_resolution: float | None = None) -> DouseResult:
    """Place ordered waters in ``dmap`` around ``st`` (see the module docstring for the rules).

    Parameters
    ----------
    st : gemmi.Structure
        Refined model in the map's frame; its waters are kept or removed, others added.
    dmap : DensityMap
        The map (the sharpened one in the pipeline), orthogonal cell.
    resolution : float
        d_min, Å.
    params : DouseParams, optional
        Thresholds (default: the module constants).
    max_resolution : float, optional
        Å; overrides ``params.max_resolution``. At a worse resolution nothing is done
        (``status`` says so).

    Returns
    -------
    DouseResult
        ``status`` ``"skipped: ..."`` (and the input model unchanged) at a resolution worse than
        the cut-off, for a flat map, when the model explains less than :data:`MIN_EXPLAINED` of
        the map's variance around it (no signal), or when less than
        :data:`MIN_SOLVENT_FRACTION` of the box is solvent.

    Raises
    ------
    InputError
        Non-positive resolution, a non-orthogonal map, or a model of waters only.
    """
    t0 = time.perf_counter()
    p = params or DouseParams()
    if max_resolution is not None:
        p = DouseParams(**{**p.__dict__, "max_resolution": float(max_resolution)})
    name = st.name or "model"
    result = DouseResult(structure=st.clone(), params=dict(p.__dict__))
    if not (resolution and resolution > 0):
        raise InputError(f"{name}: douse needs a positive resolution (got {resolution})")
    if not dmap.is_orthogonal:
        raise InputError(f"{dmap.name}: douse needs an orthogonal map cell")
    ctx = None
    if resolution > p.max_resolution:
        result.status = (f"skipped: resolution {resolution:.2f} Å is worse than the {p.max_resolution:.2f} Å "
                         f"cut-off for ordered waters")
    else:
        ctx = _prepare(st, dmap, resolution, result)
    if ctx is not None:
        kept_xyz = _judge_existing(result.structure, ctx, p, result)
        _place_new(ctx, dmap, kept_xyz, p, result)
        result.structure.setup_entities()
    result.seconds = time.perf_counter() - t0
    return result


def _prepare(st: gemmi.Structure, dmap: DensityMap, resolution: float, result: DouseResult) -> _Context | None:
    """Water-free model, its difference map and neighbour trees; None (status set) when the
    map gives nothing to work with."""
    dry = without_waters(st)
    mxyz, mpolar, mlabel = _atom_table(dry, waters=False)
    if len(mxyz) == 0:
        raise InputError(f"{st.name or 'model'}: douse needs a model with non-water atoms")
    diff, _info = diffmap.difference_map(dry, dmap, resolution)
    dsd = float(diff.data.std(dtype=np.float64))
    msd = float(dmap.data.std(dtype=np.float64))
    result.diff_sd, result.map_sd = dsd, msd
    if not (dsd > 0 and msd > 0):
        result.status = f"skipped: map {dmap.name} is flat around the model"
        return None
    # The model must explain the map: otherwise D is the map itself (noise, or a map of
    # something else) and its peaks say nothing about water.
    explained = 1.0 - (dsd / _box_sd(dmap, diff)) ** 2
    if explained < MIN_EXPLAINED:
        result.status = (f"skipped: the model explains {100 * max(explained, 0):.0f}% of the variance of "
                         f"{dmap.name} around it (< {100 * MIN_EXPLAINED:.0f}%): no signal to place waters in")
        return None
    solvent = _solvent_fraction(diff, mxyz)
    if solvent < MIN_SOLVENT_FRACTION:
        result.status = (f"skipped: no clear solvent region in {dmap.name} around the model "
                         f"({100 * solvent:.1f}% of the box is > 3 Å from the model)")
        return None
    return _Context(dry=dry, diff=diff, dsd=dsd, model_tree=cKDTree(mxyz),
                    polar_tree=cKDTree(mxyz[mpolar]) if mpolar.any() else None,
                    polar_label=[lab for lab, f in zip(mlabel, mpolar) if f])


def _judge_existing(out: gemmi.Structure, ctx: _Context, p: DouseParams, result: DouseResult) -> np.ndarray:
    """Keep the existing waters that still fit, delete the others from ``out``; return the kept
    positions (Å)."""
    waters = []
    for ch in out[0]:
        for res in ch:
            if res.is_water():
                o = next((a for a in res if a.element.name == "O"), None)
                waters.append((ch.name, res.seqid.num, res.seqid.icode.strip(),
                               o.pos.tolist() if o is not None else [np.nan] * 3))
    if not waters:
        return np.zeros((0, 3))
    wxyz = np.array([w[3] for w in waters], float)
    safe = np.nan_to_num(wxyz, nan=1e9)
    hts = interpolate.values_at(ctx.diff, safe, outside=np.nan) / ctx.dsd
    dclash = _nearest(ctx.model_tree, safe)
    reasons = []
    for i in range(len(waters)):
        if not np.all(np.isfinite(wxyz[i])):
            reasons.append("no oxygen atom")
        elif not np.isfinite(hts[i]):
            reasons.append("outside the map")
        elif dclash[i] < p.clash_min:
            reasons.append(f"clash ({dclash[i]:.2f} Å from the model)")
        elif hts[i] < p.keep_sd:
            reasons.append(f"weak density ({hts[i]:.1f} SD < {p.keep_sd:g})")
        else:
            reasons.append(None)
    ok = np.array([r is None for r in reasons], bool)
    # A kept water must belong to a hydrogen-bonded network anchored on the model: a polar
    # model atom, or a kept water so anchored, within the (wider) checking window.
    lo, hi = p.keep_hbond_min, p.keep_hbond_max
    bonded = ok & (_hbond_partner(ctx.polar_tree, safe, lo, hi)[0] >= 0)
    while bonded.any():
        grown = bonded | (ok & (_hbond_partner(cKDTree(wxyz[bonded]), safe, lo, hi)[0] >= 0))
        if grown.sum() == bonded.sum():
            break
        bonded = grown
    for i in np.flatnonzero(ok & ~bonded):
        reasons[i] = f"no polar partner or bonded water at {lo:g}-{hi:g} Å"
    keep = ok & bonded
    order = np.flatnonzero(keep)[np.argsort(-hts[keep], kind="stable")]
    spaced = greedy_spacing(np.ascontiguousarray(wxyz[order]), np.zeros((0, 3)), float(lo))
    for i in order[~spaced]:
        keep[i] = False
        reasons[i] = f"closer than {lo:g} Å to a stronger water"
    for i, (cn, sq, ic, _pos) in enumerate(waters):
        row = {"chain": cn, "seq": sq, "icode": ic,
               "xyz": [round(float(c), 3) for c in wxyz[i]] if np.all(np.isfinite(wxyz[i])) else None,
               "height_sd": round(float(hts[i]), 2) if np.isfinite(hts[i]) else None}
        if keep[i]:
            result.kept.append(row)
        else:
            result.removed.append({**row, "reason": reasons[i]})
    drop = {(w[0], w[1], w[2]) for w, k in zip(waters, keep) if not k}
    for ch in out[0]:
        for ri in range(len(ch) - 1, -1, -1):
            res = ch[ri]
            if res.is_water() and (ch.name, res.seqid.num, res.seqid.icode.strip()) in drop:
                del ch[ri]
    out.remove_empty_chains()
    return wxyz[keep]


def _place_new(ctx: _Context, dmap: DensityMap, kept_xyz: np.ndarray, p: DouseParams, result: DouseResult) -> None:
    """Peaks of D that pass every test become new waters, strongest first, shell by shell."""
    peaks = find_peaks(ctx.diff, p.peak_sd * ctx.dsd, ctx.dsd)
    result.n_peaks = int(len(peaks.xyz))
    rej = {"map_level": 0, "shape": 0, "clash": 0, "not_isolated": 0, "no_partner": 0, "near_water": 0}
    result.rejected = rej
    if not len(peaks.xyz):
        return
    mmean = float(dmap.data.mean(dtype=np.float64))
    mv = (interpolate.values_at(dmap, peaks.xyz, outside=np.nan) - mmean) / result.map_sd
    good = np.ones(len(peaks.xyz), bool)
    for key, bad in (("map_level", lambda: ~(mv >= p.map_sd)),
                     ("shape", lambda: peaks.sphericity < p.sphericity_min),
                     ("clash", lambda: _nearest(ctx.model_tree, peaks.xyz) < p.clash_min),
                     ("not_isolated", lambda: blob_volumes(ctx.diff, p.blob_sd * ctx.dsd, peaks.xyz) > p.blob_max)):
        b = bad()
        rej[key] = int(np.sum(b & good))
        good &= ~b
    pending = np.flatnonzero(good)  # strongest first
    placed = np.asarray(kept_xyz, float).reshape(-1, 3)
    accepted = []  # (peak index, partner label, distance)
    for shell in range(max(p.shells, 1)):
        if len(pending) == 0:
            break
        if shell == 0:
            j, d = _hbond_partner(ctx.polar_tree, peaks.xyz[pending], p.hbond_min, p.hbond_max)
            labels = [ctx.polar_label[k] if k >= 0 else "" for k in j]
        else:
            new_tree = cKDTree(peaks.xyz[[a[0] for a in accepted]]) if accepted else None
            j, d = _hbond_partner(new_tree, peaks.xyz[pending], p.hbond_min, p.hbond_max)
            labels = ["a water of the previous shell"] * len(j)
        has = j >= 0
        batch = pending[has]
        ok = greedy_spacing(np.ascontiguousarray(peaks.xyz[batch]), placed, float(p.water_min))
        rej["near_water"] += int(np.sum(~ok))
        lab_b = [lab for lab, h in zip(labels, has) if h]
        d_b = d[has]
        for c, lab, dist in zip(batch[ok], np.array(lab_b, object)[ok], d_b[ok]):
            accepted.append((int(c), str(lab), float(dist)))
        placed = np.vstack([placed, peaks.xyz[batch[ok]]])
        pending = pending[~has]
        if not ok.any():
            break
    rej["no_partner"] = int(len(pending))
    if accepted:
        _add_waters(result.structure, ctx.dry, peaks, accepted, mv, result)


def _box_sd(dmap: DensityMap, diff: DensityMap) -> float:
    """SD of ``dmap`` over the box of ``diff`` (same grid, a sub-box of it)."""
    lo = np.array(diff.start) - np.array(dmap.start)
    hi = lo + np.array(diff.shape)
    return float(dmap.data[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].std(dtype=np.float64)) or 1.0


def _solvent_fraction(diff: DensityMap, mxyz: np.ndarray, radius: float = 3.0) -> float:
    """Fraction of the box's voxels farther than ``radius`` Å from every model atom (sampled)."""
    n = np.array(diff.shape)
    stride = max(1, int(np.ceil((np.prod(n) / 2.0e5) ** (1 / 3))))
    gi = np.stack(np.meshgrid(*(np.arange(0, k, stride) for k in n), indexing="ij"), -1).reshape(-1, 3)
    pts = diff.origin + gi @ diff.orth_matrix.T
    d, _ = cKDTree(mxyz).query(pts, distance_upper_bound=radius)
    return float(np.mean(~np.isfinite(d)))


def _add_waters(out: gemmi.Structure, dry: gemmi.Structure, peaks: Peaks, accepted, mv, result) -> None:
    """Append accepted peaks as HOH residues in a new chain; B from the model's non-H median."""
    bs = [a.b_iso for cra in dry[0].all() for a in (cra.atom,) if not a.is_hydrogen()]
    b0 = float(np.median(bs)) if bs else 30.0
    chain = gemmi.Chain(_free_chain_name(out))
    for k, (c, lab, d) in enumerate(accepted, start=1):
        res = gemmi.Residue()
        res.name = "HOH"
        res.seqid = gemmi.SeqId(k, " ")
        res.het_flag = "H"
        res.entity_type = gemmi.EntityType.Water
        atom = gemmi.Atom()
        atom.name = "O"
        atom.element = gemmi.Element("O")
        atom.pos = gemmi.Position(*peaks.xyz[c])
        atom.occ = 1.0
        atom.b_iso = b0
        res.add_atom(atom)
        chain.add_residue(res)
        result.added.append({"chain": chain.name, "seq": k, "xyz": [round(float(v), 3) for v in peaks.xyz[c]],
                             "height_sd": round(float(peaks.height_sd[c]), 2),
                             "map_sd": round(float(mv[c]), 2),
                             "sphericity": round(float(peaks.sphericity[c]), 3),
                             "partner": lab, "distance": round(float(d), 2)})
    out[0].add_chain(chain)


def refine_water_b(st: gemmi.Structure, dmap: DensityMap, resolution: float, *, max_iter: int = 20):
    """Refine the B of the waters only (every other atom fixed) with :func:`.adp.refine_adp`.

    A short individual-B stage against ``dmap`` (the pipeline's deposited box), writing the B
    into ``st``; returns the :class:`.adp.AdpResult`, or None when ``st`` has no waters.
    """
    from . import adp

    water = np.array([cra.residue.is_water() for cra in st[0].all()], bool)
    if not water.any():
        return None
    return adp.refine_adp(st, dmap, resolution, fixed=~water, group=False, max_iter=max_iter)
