"""Real-space difference map: experimental map minus the scaled model map.

Afonine's cryo-EM analogue of the crystallographic mFo-DFc map (Afonine, ACA 2024 account
of Phenix real-space refinement): ``D = map - k(s) * model_map`` inside the box, with the
model map computed at the map's resolution (:mod:`.modelmap`) and the scale ``k`` fitted
by least squares in resolution shells of the box's Fourier coefficients:

``k_shell = Re(sum F_map conj(F_model)) / sum |F_model|^2``

(equal-count shells in ``s^2`` up to ``1/d_min``). Terms beyond ``1/d_min`` (where the model
map is zero) and the F000 term are removed from ``D``, so the difference map has the
map's resolution and zero mean. Its peaks are reported in units of its standard
deviation over the box, with the nearest atom.
"""

from __future__ import annotations

from dataclasses import replace

import gemmi
import numpy as np
import scipy.fft
from scipy import ndimage
from scipy.spatial import cKDTree

from . import mapio, modelmap
from .mapio import DensityMap

_FFT_WORKERS = 2


def _shell_scale(fo: np.ndarray, fc: np.ndarray, s2: np.ndarray, s2_max: float, n_shells: int):
    """Per-coefficient scale from least squares in equal-count shells of s^2 (below s2_max)."""
    inside = (s2 < s2_max) & (s2 > 0)
    vals = s2[inside]
    n_shells = max(1, min(n_shells, vals.size // 200))
    edges = np.quantile(vals, np.linspace(0, 1, n_shells + 1))
    edges[0], edges[-1] = 0.0, s2_max
    which = np.clip(np.searchsorted(edges, s2, side="right") - 1, 0, n_shells - 1)
    num = np.bincount(which[inside], weights=(fo[inside] * np.conj(fc[inside])).real, minlength=n_shells)
    den = np.bincount(which[inside], weights=(np.abs(fc[inside]) ** 2), minlength=n_shells)
    k = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    return k, which, inside, edges


def difference_map(st: gemmi.Structure, dmap: DensityMap, resolution: float, *, n_shells: int = 20,
                   box_padding: float | None = None) -> tuple[DensityMap, dict]:
    """Experimental minus shell-scaled model map, at ``resolution``, on a box around the model.

    Parameters
    ----------
    st : gemmi.Structure
        Model in the map's frame.
    dmap : DensityMap
        Experimental map.
    resolution : float
        d_min, Å.
    n_shells : int
        Resolution shells for the scale (fewer when the box has few coefficients).
    box_padding : float, optional
        Padding around the model, Å (default ``max(6, 2 d_min)``); the box never exceeds the map.

    Returns
    -------
    (DensityMap, dict)
        The difference map (same frame as ``dmap``) and ``{"sd", "shell_d_min", "shell_scale"}``
        (shell edges as d in Å, fitted scales).
    """
    xyz = np.array([cra.atom.pos.tolist() for cra in st[0].all()], float).reshape(-1, 3)
    pad = max(6.0, 2.0 * resolution) if box_padding is None else box_padding
    box = mapio.cut_box(dmap, xyz, padding=pad) if dmap.is_orthogonal else dmap
    calc = modelmap.model_map(st, box, resolution)
    n = box.shape
    fo = scipy.fft.rfftn(box.data, workers=_FFT_WORKERS)
    fc = scipy.fft.rfftn(calc.data, workers=_FFT_WORKERS)
    del calc
    ext = box.extent
    kx = np.fft.fftfreq(n[0], 1.0 / n[0]) / ext[0]
    ky = np.fft.fftfreq(n[1], 1.0 / n[1]) / ext[1]
    kz = np.arange(n[2] // 2 + 1) / ext[2]
    s2 = kx[:, None, None] ** 2 + ky[None, :, None] ** 2 + kz[None, None, :] ** 2
    k, which, inside, edges = _shell_scale(fo, fc, s2, 1.0 / resolution ** 2, n_shells)
    diff_f = np.where(inside, fo - k[which] * fc, 0)
    del fo, fc
    diff = scipy.fft.irfftn(diff_f, s=n, workers=_FFT_WORKERS).astype(np.float32)
    del diff_f
    out = replace(box, data=diff, name=f"difference map of {st.name or 'model'}")
    info = {
        "sd": float(diff.std(dtype=np.float64)),
        "shell_d_min": [float(1 / np.sqrt(e)) for e in edges[1:]],
        "shell_scale": [float(x) for x in k],
    }
    return out, info


def difference_peaks(diff: DensityMap, st: gemmi.Structure, *, n_peaks: int = 20, min_sd: float = 3.0) -> dict:
    """Strongest positive and negative local extrema of a difference map.

    A peak is a voxel that is the maximum (minimum) of its 3×3×3 neighbourhood with
    ``|value| >= min_sd`` standard deviations of the map. Each peak: ``xyz`` (Å),
    ``height_sd``, ``nearest_atom`` (``chain/resname seq icode/atom``) and ``distance`` (Å).
    """
    data = diff.data
    sd = float(data.std(dtype=np.float64)) or 1.0
    atoms = [(cra.chain.name, cra.residue.name, cra.residue.seqid, cra.atom.name) for cra in st[0].all()]
    xyz = np.array([cra.atom.pos.tolist() for cra in st[0].all()], float).reshape(-1, 3)
    tree = cKDTree(xyz) if len(xyz) else None
    res = {}
    for sign, key in ((1.0, "positive_peaks"), (-1.0, "negative_peaks")):
        v = sign * data
        loc = (v == ndimage.maximum_filter(v, size=3, mode="nearest")) & (v >= min_sd * sd)
        idx = np.argwhere(loc)
        heights = v[loc]
        order = np.argsort(-heights)[:n_peaks]
        peaks = []
        for i in order:
            pos = diff.origin + diff.orth_matrix @ idx[i]
            row = {"xyz": [round(float(c), 3) for c in pos], "height_sd": float(sign * heights[i] / sd)}
            if tree is not None:
                dist, j = tree.query(pos)
                ch, rn, sid, an = atoms[int(j)]
                row["nearest_atom"] = f"{ch}/{rn} {sid.num}{sid.icode.strip()}/{an}"
                row["distance"] = float(dist)
            peaks.append(row)
        res[key] = peaks
    res["sd"] = sd
    return res
