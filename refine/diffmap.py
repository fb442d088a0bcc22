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
from scipy.spatial import cKDTree

from . import mapio, modelmap
from .mapio import DensityMap

_FFT_WORKERS = 2


def _shell_edges(s2_planes, s2_max: float, n_shells: int) -> np.ndarray:
    """Edges in s^2 of equal-count shells of the coefficients with ``0 < s^2 < s2_max``."""
    vals = np.concatenate([p[(p < s2_max) & (p > 0)] for p in s2_planes])
    n_shells = max(1, min(n_shells, vals.size // 200))
    edges = np.quantile(vals, np.linspace(0, 1, n_shells + 1))
    edges[0], edges[-1] = 0.0, s2_max
    return edges


def _shells(s2: np.ndarray, edges: np.ndarray, s2_max: float):
    """Shell index of each coefficient and which take part (``0 < s^2 < s2_max``)."""
    inside = (s2 < s2_max) & (s2 > 0)
    which = np.clip(np.searchsorted(edges, s2, side="right") - 1, 0, len(edges) - 2)
    return which, inside


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
    fo = scipy.fft.rfftn(box.data, workers=_FFT_WORKERS)  # complex64, like the float32 maps
    fc = scipy.fft.rfftn(calc.data, workers=_FFT_WORKERS)
    del calc
    ext = box.extent
    kx = np.fft.fftfreq(n[0], 1.0 / n[0]) / ext[0]
    ky = np.fft.fftfreq(n[1], 1.0 / n[1]) / ext[1]
    kz = np.arange(n[2] // 2 + 1) / ext[2]
    plane = ky[:, None] ** 2 + kz[None, :] ** 2
    s2_max = 1.0 / resolution ** 2
    # Plane by plane along x (no box-size float64 or complex128 temporaries): the shells' edges,
    # the least-squares sums per shell, then D's coefficients written over fo.
    edges = _shell_edges((plane + x * x for x in kx), s2_max, n_shells)
    n_sh = len(edges) - 1
    num, den = np.zeros(n_sh), np.zeros(n_sh)
    for i, x in enumerate(kx):
        which, inside = _shells(plane + x * x, edges, s2_max)
        o, c, w = fo[i][inside], fc[i][inside], which[inside]
        num += np.bincount(w, weights=(o * np.conj(c)).real.astype(np.float64), minlength=n_sh)
        den += np.bincount(w, weights=(np.abs(c) ** 2).astype(np.float64), minlength=n_sh)
    k = np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
    for i, x in enumerate(kx):
        which, inside = _shells(plane + x * x, edges, s2_max)
        fo[i] = np.where(inside, fo[i] - k[which] * fc[i], 0)
    del fc
    diff = scipy.fft.irfftn(fo, s=n, workers=_FFT_WORKERS, overwrite_x=True).astype(np.float32, copy=False)
    del fo
    out = replace(box, data=diff, name=f"difference map of {st.name or 'model'}")
    info = {
        "sd": mapio.mean_sd(diff)[1],
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
    sd = mapio.mean_sd(data)[1] or 1.0
    atoms = [(cra.chain.name, cra.residue.name, cra.residue.seqid, cra.atom.name) for cra in st[0].all()]
    xyz = np.array([cra.atom.pos.tolist() for cra in st[0].all()], float).reshape(-1, 3)
    tree = cKDTree(xyz) if len(xyz) else None
    res = {}
    for sign, key in ((1.0, "positive_peaks"), (-1.0, "negative_peaks")):
        idx, heights = local_maxima(sign * data, min_sd * sd)
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


def local_maxima(v: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Voxels of a 3-D array that are at least ``threshold`` and the maximum of their 3×3×3
    neighbourhood (the box edge repeated beyond it: ``scipy.ndimage.maximum_filter(v, size=3,
    mode="nearest") == v``), in C order, and their values.

    Only the voxels at or above ``threshold`` are examined (their 26 neighbours gathered), so the
    cost follows the number of such voxels rather than the box, and no box-size array is made
    besides the threshold mask.
    """
    idx = np.argwhere(v >= threshold)
    heights = v[tuple(idx.T)]
    if not len(idx):
        return idx, heights
    hi = np.array(v.shape) - 1
    keep = np.ones(len(idx), bool)
    for off in np.ndindex(3, 3, 3):
        if off == (1, 1, 1):
            continue
        nb = np.clip(idx + (np.array(off) - 1), 0, hi)
        keep &= v[tuple(nb.T)] <= heights
    return idx[keep], heights[keep]
