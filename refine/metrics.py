"""All model-to-map fit measures of one model and one map, per model, chain and residue.

What is computed (each module states its definition and reference):

* CC_mask, CC_box, CC_volume, CC_peaks (:mod:`.mapcc`, phenix.map_model_cc / cctbx
  ``five_cc``) of the map against the model map at the resolution (:mod:`.modelmap`)
  inside the molecular mask (:mod:`.mask`); per chain and per residue the CC inside
  spheres of the resolution-dependent atom radius (:func:`.mapcc.atom_radius`).
* Q-score (:mod:`.qscore`, Pintilie et al. 2020 / MapQ), per non-hydrogen atom, averaged
  per residue, chain and model; the expected Q at the resolution (MapQ's lines).
* Atom inclusion (:mod:`.inclusion`, EMDB validation analysis): fraction of non-hydrogen
  atoms (and of backbone atoms) above the contour level.

Per chain means every residue with that chain id (polymer, ligands and waters together;
phenix.map_model_cc lists a PDB file's separate HETATM blocks of one chain id apart).

Treatment of awkward input (documented, tested):

* resolution missing or <= 0: :class:`InputError`;
* no atom over the map: :class:`InputError`; atoms partly outside: they count as not
  included, get no Q (NaN, left out of the means) and their CC spheres are clipped;
* zero-occupancy atoms: add nothing to the model map but are part of the molecular mask
  (as in cctbx) and are scored by Q and atom inclusion (both depend on positions only);
* unknown elements (gemmi element ``X``): :class:`InputError`;
* non-finite map values: :class:`InputError`.

For speed the CC family works on a box cut from the map around the model (padding
``max(6, 2 d_min)`` Å) when that box holds less than 70 % of the map's voxels; CC_box,
CC_volume and CC_peaks then refer to that box (for maps already boxed around the model,
such as EMDB-VA-style cut-outs, nothing is cut and they are cctbx's figures). Q-score and
atom inclusion always use the whole map (MapQ's reference Gaussian comes from whole-map
statistics).
"""

from __future__ import annotations

import logging
import math
import time

import gemmi
import numpy as np

from . import mapcc, mapio, mask, modelmap
from rerefine.common.errors import InputError
from .mapio import DensityMap

log = logging.getLogger(__name__)

#: Keys of the dictionary returned by :func:`compute_metrics` (issue 4, part 6).
KEYS = ("cc_mask", "cc_box", "cc_peaks", "cc_volume", "q_score", "q_score_expected",
        "atom_inclusion", "atom_inclusion_backbone", "per_chain", "per_residue", "resolution",
        "q_sigma", "contour", "contour_source", "seconds")

BOX_FRACTION = 0.7


def _nanmean(a) -> float:
    a = np.asarray(a, float)
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def check_inputs(st: gemmi.Structure, dmap: DensityMap, resolution) -> np.ndarray:
    """Validate a model/map/resolution triple; return all atom positions (Å).

    Raises :class:`InputError` with a one-line cause for a missing or non-positive
    resolution, unknown elements, non-finite map values, or a model off the map.
    """
    name = st.name or "model"
    if resolution is None:
        raise InputError(f"{name}: no resolution given and the model states none")
    try:
        resolution = float(resolution)
    except (TypeError, ValueError):
        raise InputError(f"{name}: resolution {resolution!r} is not a number") from None
    if not (resolution > 0 and math.isfinite(resolution)):
        raise InputError(f"{name}: resolution must be a positive number of Å (got {resolution})")
    modelmap.check_elements(st, name)
    # A sum propagates NaN/inf without a full-size temporary array.
    if not np.isfinite(np.sum(dmap.data, dtype=np.float64)):
        raise InputError(f"{dmap.name}: map holds NaN or infinite values")
    xyz = np.array([cra.atom.pos.tolist() for cra in st[0].all()], float).reshape(-1, 3)
    if len(xyz) == 0:
        raise InputError(f"{name}: model has no atoms")
    frac = mapio.fraction_inside(dmap, xyz)
    if frac == 0.0:
        raise InputError(f"{name} lies entirely outside the map {dmap.name}")
    if frac < 1.0:
        log.warning("%s: %.1f%% of the atoms lie outside the map %s", name, 100 * (1 - frac), dmap.name)
    return xyz


def box_for_cc(dmap: DensityMap, xyz: np.ndarray, resolution: float) -> DensityMap:
    """The map itself, or a box around the model when that saves more than 30 % of the voxels."""
    if not dmap.is_orthogonal:
        return dmap
    box = mapio.cut_box(dmap, xyz, padding=max(6.0, 2.0 * resolution))
    if np.prod(box.shape) < BOX_FRACTION * np.prod(dmap.shape):
        return box
    return dmap


def q_reference(data: np.ndarray) -> tuple[float, float]:
    """MapQ's reference-Gaussian height and offset from whole-map statistics.

    Same definition as :func:`rerefine.refine.qscore.reference_gaussian` (maxD = min(mean +
    10 SD, max), minD = max(mean - SD, min), A = maxD - minD, B = minD), computed slab by
    slab in float64 so that no full-size float64 copy of the map is made.
    """
    n = data.size
    s1 = s2 = 0.0
    lo, hi = np.inf, -np.inf
    for slab in data:
        s1 += float(np.sum(slab, dtype=np.float64))
        s2 += float(np.sum(np.square(slab, dtype=np.float64)))
        lo = min(lo, float(slab.min()))
        hi = max(hi, float(slab.max()))
    mean = s1 / n
    sd = math.sqrt(max(s2 / n - mean * mean, 0.0))
    max_d = min(mean + 10.0 * sd, hi)
    min_d = max(mean - sd, lo)
    return max_d - min_d, min_d


def _groups(st: gemmi.Structure):
    """Atom indices (``st[0].all()`` order) per residue and per chain name, plus residue rows."""
    residues, rows = [], []
    chains: dict[str, list[np.ndarray]] = {}
    i = 0
    for ch in st[0]:
        for res in ch:
            idx = np.arange(i, i + len(res))
            residues.append(idx)
            chains.setdefault(ch.name, []).append(idx)
            rows.append({"chain": ch.name, "seq": int(res.seqid.num), "icode": res.seqid.icode.strip(),
                         "resname": res.name})
            i += len(res)
    chain_groups = {k: np.concatenate(v) for k, v in chains.items()}
    return residues, rows, chain_groups


def _molecule_kind(st: gemmi.Structure) -> str:
    n_nuc = n_prot = 0
    for ch in st[0]:
        for res in ch:
            info = gemmi.find_tabulated_residue(res.name)
            if info is None:
                continue
            if info.is_amino_acid():
                n_prot += 1
            elif info.is_nucleic_acid():
                n_nuc += 1
    return "nucleic" if n_nuc > n_prot else "protein"


def cc_metrics(st: gemmi.Structure, dmap: DensityMap, resolution: float, *, xyz: np.ndarray | None = None,
               groups: tuple | None = None):
    """CC family plus per-residue and per-chain CC on ``dmap`` (already boxed as wanted).

    ``xyz`` (the atom positions, Å, ``st[0].all()`` order) and ``groups`` (the residue and chain
    atom groups, as :func:`compute_metrics` makes them) are computed from ``st`` when not given.
    """
    calc = modelmap.model_map(st, dmap, resolution)
    msk = mask.molecular_mask(st, dmap)
    five = mapcc.five_cc(dmap.data, calc.data, msk)
    del msk
    bs = [cra.atom.b_iso for cra in st[0].all()]
    radius = mapcc.atom_radius(resolution, float(np.mean(bs)))
    residues, rows, chain_groups = _groups(st) if groups is None else groups
    if xyz is None:
        xyz = np.array([cra.atom.pos.tolist() for cra in st[0].all()], float).reshape(-1, 3)
    g = dmap.grid_coordinates(xyz)
    res_cc = mapcc.group_cc(dmap.data, calc.data, g, residues, dmap.voxel_size, radius)
    names = list(chain_groups)
    chain_cc = mapcc.group_cc(dmap.data, calc.data, g, [chain_groups[k] for k in names],
                              dmap.voxel_size, radius)
    return five, radius, res_cc, dict(zip(names, chain_cc)), rows


def compute_metrics(st: gemmi.Structure, dmap: DensityMap, resolution: float, *, contour: float | None = None,
                    contour_source: str | None = None, q_sigma: float = 0.6) -> dict:
    """Every fit measure of ``st`` against ``dmap`` at ``resolution``.

    Parameters
    ----------
    st : gemmi.Structure
        Model (first model used), in the frame of the map.
    dmap : DensityMap
        Experimental map.
    resolution : float
        Map resolution d_min, Å.
    contour : float, optional
        Contour level for atom inclusion (map units). Without it, the level enclosing
        17 Å³ per non-H atom (:func:`rerefine.refine.inclusion.default_contour`).
    contour_source : str, optional
        Where ``contour`` came from (e.g. ``"emdb"``); default ``"user"`` when a contour is
        given.
    q_sigma : float
        Width of the Q-score reference Gaussian, Å (0.6 MapQ; 0.4 EMDB convention).

    Returns
    -------
    dict
        The keys in :data:`KEYS`; numbers are plain floats (NaN where undefined).
        ``per_chain``: chain id -> {``cc``, ``q_score``}; ``per_residue``: one row per
        residue of the model (ligands and waters included) with ``chain``, ``seq``,
        ``icode``, ``resname``, ``cc``, ``q_score``, ``atom_inclusion``.
    """
    from . import inclusion, qscore  # sibling modules; imported here to keep this one light

    t0 = time.perf_counter()
    xyz = check_inputs(st, dmap, resolution)
    resolution = float(resolution)
    box = box_for_cc(dmap, xyz, resolution)
    groups = _groups(st)
    five, radius, res_cc, chain_cc, rows = cc_metrics(st, box, resolution, xyz=xyz, groups=groups)
    del box

    heavy = np.array([not cra.atom.is_hydrogen() for cra in st[0].all()], bool)
    xyz_h = xyz[heavy]
    q = np.full(len(xyz), np.nan)
    inc = np.zeros(len(xyz), bool)
    backbone = np.zeros(len(xyz), bool)
    if len(xyz_h):
        q[heavy] = qscore.atom_q_scores(dmap, xyz_h, sigma=q_sigma, ref=q_reference(dmap.data))
        if contour is None:
            contour = inclusion.default_contour(dmap, xyz_h)
            contour_source = "default: level enclosing 17 Å³ per non-H atom"
        else:
            contour = float(contour)
            contour_source = contour_source or "user"
        inc[heavy] = inclusion.atoms_above(dmap, xyz_h, contour)
        backbone[heavy] = inclusion.backbone_mask(st)
    residues, _, chain_groups = groups
    per_residue = []
    for row, idx, cc in zip(rows, residues, res_cc):
        hidx = idx[heavy[idx]]
        per_residue.append({**row, "cc": float(cc),
                            "q_score": _nanmean(q[hidx]),
                            "atom_inclusion": float(inc[hidx].mean()) if len(hidx) else float("nan")})
    per_chain = {}
    for name, idx in chain_groups.items():
        per_chain[name] = {"cc": float(chain_cc[name]), "q_score": _nanmean(q[idx[heavy[idx]]])}
    try:
        q_expected = qscore.expected_q(resolution, _molecule_kind(st), q_sigma)
    except ValueError:  # no published line for this sigma
        q_expected = float("nan")
    bb = backbone & heavy
    out = {
        "cc_mask": float(five["cc_mask"]),
        "cc_box": float(five["cc_box"]),
        "cc_peaks": float(five["cc_peaks"]),
        "cc_volume": float(five["cc_volume"]),
        "q_score": _nanmean(q[heavy]),
        "q_score_expected": float(q_expected),
        "atom_inclusion": float(inc[heavy].mean()) if heavy.any() else float("nan"),
        "atom_inclusion_backbone": float(inc[bb].mean()) if bb.any() else float("nan"),
        "per_chain": per_chain,
        "per_residue": per_residue,
        "resolution": resolution,
        "q_sigma": float(q_sigma),
        "contour": float(contour) if contour is not None else float("nan"),
        "contour_source": contour_source,
        "seconds": 0.0,
    }
    log.debug("atom radius for per-residue CC: %.2f Å", radius)
    out["seconds"] = float(time.perf_counter() - t0)
    return out
