"""Model maps: the Fourier image of an atomic model at the resolution of a map.

Definition (Afonine et al. 2018, Acta Cryst D74:814; Afonine, ACA 2024 account of
real-space refinement): "FT the exact model map, remove the terms beyond d_min, FT
back". Every atom contributes its electron scattering factor (Peng 1996 five-Gaussian
parametrisation, International Tables Vol. C Table 4.3.2.2 -- the same table that
cctbx's ``scattering_table=electron`` uses), smeared by its isotropic B or its
anisotropic U (ANISOU) and weighted by its occupancy. Hydrogens present in the model
contribute (as in phenix.map_model_cc). Formally charged atoms (``O1-``, ``N1+``)
use the neutral element's form factor. Only Fourier terms with ``d > d_min`` are kept.

How it is computed
------------------
1. The experimental box is padded on every side (``padding`` Å, default
   ``max(8, 2 d_min)``) so that the periodicity implied by the FFT cannot fold the
   image of one edge of the model onto the opposite edge of the box.
2. gemmi's ``DensityCalculatorE`` puts the exact (real-space) model density, with an
   extra isotropic blur ``B_blur`` (Å²), on a grid of the padded cell; the grid is the
   experimental one, or a finer one when the voxel is coarser than ``d_min/3``.
3. One FFT; coefficients are multiplied by ``exp(+B_blur s²/4)`` (removing the blur
   exactly), those with ``|s| >= 1/d_min`` are zeroed, and the rest are transformed
   back on the experimental grid; the padding is cut away.

``B_blur`` is the smallest value for which aliasing of the sampled density into the
kept terms is below about ``exp(-11.5) = 1e-5`` of the atom's scattering:
``(B_min + B_blur) s_a²/4 - B_blur s_c²/4 >= 11.5`` with ``s_c = 1/d_min`` and
``s_a = 1/h - s_c`` (h = sampling step, Å).

Units: the values are gemmi's electron-density units for the E table (proportional to
the electrostatic potential); correlations and scaled difference maps do not depend
on them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace

import gemmi
import numpy as np
import scipy.fft

from rerefine.common.errors import InputError
from .mapio import DensityMap

log = logging.getLogger(__name__)

#: Target aliasing suppression exponent (see module docstring).
_ALIAS_EXPONENT = 11.5
_FFT_WORKERS = 2


def check_elements(st: gemmi.Structure, name: str = "model") -> None:
    """Raise :class:`InputError` if the model has atoms whose element gemmi does not know.

    Unknown elements (``X``) have neither a form factor nor a van der Waals radius, so no
    model map or molecular mask can be made for them.
    """
    bad = []
    for cra in st[0].all():
        if cra.atom.element.atomic_number == 0 or cra.atom.element.name in ("X", ""):
            bad.append(f"{cra.chain.name}/{cra.residue.name}{cra.residue.seqid}/{cra.atom.name}")
            if len(bad) >= 5:
                break
    if bad:
        raise InputError(f"{name}: atoms with unknown element: {', '.join(bad)}")


def _padded_geometry(dmap: DensityMap, d_min: float, padding: float | None):
    """Pad voxels per side, padded shape (experimental grid) and fine shape (sampling grid)."""
    if not dmap.is_orthogonal:
        raise InputError(f"{dmap.name}: model maps need an orthogonal map cell")
    h = dmap.voxel_size
    if padding is None:
        padding = max(8.0, 2.0 * d_min)
    p = np.ceil(padding / h).astype(int)
    n = np.array(dmap.shape)
    npad = np.array([scipy.fft.next_fast_len(int(x), real=True) for x in n + 2 * p])
    cell = npad * h
    # Sample at least at d_min/3 so that a modest blur removes aliasing.
    h_fine = np.minimum(h, d_min / 3.0)
    nfine = np.array([max(int(npad[i]), scipy.fft.next_fast_len(int(math.ceil(cell[i] / h_fine[i])), real=True))
                      for i in range(3)])
    return p, npad, nfine, cell


def _blur_for(b_min: float, d_min: float, h_fine: float) -> float:
    s_c = 1.0 / d_min
    s_a = 1.0 / h_fine - s_c
    denom = s_a * s_a - s_c * s_c
    if denom <= 0:  # cannot happen with h_fine <= d_min/3, kept for safety
        return 0.0
    return max(0.0, (4.0 * _ALIAS_EXPONENT - b_min * s_a * s_a) / denom)


def model_density_coefficients(st: gemmi.Structure, dmap: DensityMap, d_min: float, *,
                               padding: float | None = None):
    """Fourier coefficients of the model at ``d_min`` on the padded experimental box.

    Returns
    -------
    coef : numpy.ndarray complex64, shape ``(Nx, Ny, Nz//2+1)``
        rFFT-layout coefficients on the padded experimental grid (zero beyond 1/d_min),
        normalised so that ``irfftn(coef, s=padded_shape)`` gives the map.
    pad : numpy.ndarray of int
        Padding in voxels on the low side of every axis.
    padded_shape : tuple of int
    """
    if d_min is None or not d_min > 0:
        raise InputError(f"{dmap.name}: resolution must be a positive number of Å (got {d_min})")
    check_elements(st, st.name or "model")
    p, npad, nfine, cell = _padded_geometry(dmap, d_min, padding)
    h = dmap.voxel_size
    h_fine = cell / nfine
    model = st[0].clone()
    bs = [cra.atom.b_iso for cra in model.all()]
    b_min = float(min(bs)) if bs else 0.0
    blur = _blur_for(max(b_min, 0.0), d_min, float(h_fine.max()))
    # Model coordinates relative to the corner of the padded box.
    corner = dmap.origin - p * h
    model.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(*(-corner))))
    dc = gemmi.DensityCalculatorE()
    dc.d_min = 0.0  # keep the grid size we set below
    dc.blur = blur
    dc.grid.unit_cell = gemmi.UnitCell(*cell, 90, 90, 90)
    dc.grid.spacegroup = gemmi.find_spacegroup_by_name("P1")
    dc.grid.set_size(*(int(x) for x in nfine))
    dc.put_model_density_on_grid(model)
    rho = np.array(dc.grid, copy=False)
    spec = scipy.fft.rfftn(rho, workers=_FFT_WORKERS)
    del rho, dc
    # Coefficients kept: |s| < 1/d_min, moved from the fine to the experimental grid.
    kx = np.fft.fftfreq(npad[0], 1.0 / npad[0]).astype(np.int64)
    ky = np.fft.fftfreq(npad[1], 1.0 / npad[1]).astype(np.int64)
    kz = np.arange(npad[2] // 2 + 1, dtype=np.int64)
    if np.array_equal(npad, nfine):
        coef = spec  # same grid: filter in place
    else:
        coef = spec[np.ix_(np.mod(kx, nfine[0]), np.mod(ky, nfine[1]), kz)]
    del spec
    # The Nyquist planes of even-sized axes are ambiguous between grids; they are dropped
    # (they lie beyond 1/d_min whenever the voxel is finer than d_min/2).
    sy2 = np.where((npad[1] % 2 == 0) & (ky == npad[1] // 2), np.inf, (ky / cell[1]) ** 2)
    sz2 = np.where((npad[2] % 2 == 0) & (kz == npad[2] // 2), np.inf, (kz / cell[2]) ** 2)
    plane = sy2[:, None] + sz2[None, :]
    norm = np.prod(npad) / np.prod(nfine)
    inv_d2 = 1.0 / (d_min * d_min)
    # Plane by plane: no full-size float64 temporaries (memory stays ~ one complex grid).
    for i, k in enumerate(kx):
        if npad[0] % 2 == 0 and k == npad[0] // 2:
            coef[i] = 0
            continue
        s2 = plane + (k / cell[0]) ** 2
        f = np.where(s2 < inv_d2, np.exp(blur * np.minimum(s2, inv_d2) / 4.0) * norm, 0.0)
        coef[i] *= f.astype(np.float32)
    return coef.astype(np.complex64, copy=False), p, tuple(int(x) for x in npad)


def model_map(st: gemmi.Structure, dmap: DensityMap, d_min: float, *,
              padding: float | None = None) -> DensityMap:
    """The model's Fourier image at ``d_min`` on the grid (and box) of ``dmap``.

    Parameters
    ----------
    st : gemmi.Structure
        Model in the same Cartesian frame as ``dmap`` (first model used).
    dmap : DensityMap
        Experimental map (or a box cut from it); only its grid and frame are used.
    d_min : float
        Resolution, Å; Fourier terms with ``d <= d_min`` are removed.
    padding : float, optional
        Extra box around ``dmap`` (Å) used during the FFT; default ``max(8, 2 d_min)``.

    Returns
    -------
    DensityMap
        Same frame as ``dmap``, float32.

    Raises
    ------
    InputError
        Non-positive resolution, non-orthogonal cell, unknown elements.
    """
    coef, p, npad = model_density_coefficients(st, dmap, d_min, padding=padding)
    full = scipy.fft.irfftn(coef, s=npad, workers=_FFT_WORKERS, overwrite_x=True)
    del coef
    n = dmap.shape
    out = np.ascontiguousarray(full[p[0]:p[0] + n[0], p[1]:p[1] + n[1], p[2]:p[2] + n[2]], dtype=np.float32)
    del full
    return replace(dmap, data=out, name=f"model map of {st.name or 'model'} at {d_min:g} Å")
