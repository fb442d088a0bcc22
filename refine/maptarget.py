"""The map term of real-space refinement: map values at atom centres and their gradient.

Real-space coordinate refinement in Phenix (Afonine et al. 2018, Acta Cryst. D74:531,
"Real-space refinement in PHENIX for cryo-EM and crystallography", section 2.3) maximises
the sum of map values at the atomic centres,

    T_map = - sum_i w_i * rho(x_i),

where ``rho`` is the experimental map (optionally sharpened), normalised and low-pass
filtered to the resolution so the target is smooth on the scale of the data, and ``w_i``
weighs each atom by how much it scatters. We interpolate ``rho`` with a cubic B-spline
(tricubic, C2-continuous, so L-BFGS sees a smooth target and exact analytic gradients):
the map is prefiltered once into B-spline coefficients (Unser 1999, IEEE Signal Proc.
Mag. 16:22; :func:`scipy.ndimage.spline_filter`) and evaluated at each atom from the
4x4x4 neighbouring coefficients.

Per-atom weights are ``occupancy * peak(element) / peak(C)``, where ``peak`` is the
height of the element's electron-scattering density (International Tables C 4.3.2.2
five-Gaussian fit, ``gemmi.Element.c4322``) blurred to the resolution: heavier atoms pull
harder, partially occupied atoms less. Hydrogens get zero weight by default: at cryo-EM
resolutions their density is not resolved from the parent atom's and pulling them into it
only shortens X-H bonds; they follow through the restraints.
"""

from __future__ import annotations

from dataclasses import dataclass

import gemmi
import numpy as np
from numba import njit, prange
from scipy import fft as sfft
from scipy import ndimage

from .fsc import fft_workers
from .mapio import DensityMap


def reciprocal_sq(dmap: DensityMap, shape: tuple[int, int, int]) -> np.ndarray:
    """|s|^2 (Å^-2) of every coefficient of ``rfftn`` on a grid of ``shape`` with the map's voxel axes."""
    out = np.empty((shape[0], shape[1], shape[2] // 2 + 1))
    for i, plane in enumerate(reciprocal_sq_planes(dmap, shape)):
        out[i] = plane
    return out


def reciprocal_sq_planes(dmap: DensityMap, shape: tuple[int, int, int]):
    """:func:`reciprocal_sq` one plane of the first axis at a time (a generator of 2-D arrays)."""
    m = dmap.orth_matrix  # grid step -> Å
    inv_t = np.linalg.inv(m).T  # frequency in cycles/voxel -> cycles/Å
    fy = np.fft.fftfreq(shape[1])[:, None]
    fz = np.fft.rfftfreq(shape[2])[None, :]
    for fx in np.fft.fftfreq(shape[0]):
        s2 = np.zeros((len(fy), fz.shape[1]))
        for a in range(3):
            comp = inv_t[a, 0] * fx + inv_t[a, 1] * fy + inv_t[a, 2] * fz
            s2 = s2 + comp * comp
        yield s2


def resolution_filter(s2: np.ndarray, resolution: float, b_sharpen: float = 0.0) -> np.ndarray:
    """Low-pass filter to ``resolution`` (Å) with a cosine edge from 0.9/d to 1/d, times ``exp(B s^2/4)``.

    The edge avoids the ringing of a sharp cut; ``b_sharpen`` > 0 sharpens, < 0 blurs
    (B in Å^2, ``s = 1/d``).
    """
    s = np.sqrt(s2)
    s_hi = 1.0 / resolution
    s_lo = 0.9 * s_hi
    filt = np.where(s <= s_lo, 1.0, 0.0)
    edge = (s > s_lo) & (s < s_hi)
    filt = np.where(edge, 0.5 * (1.0 + np.cos(np.pi * (s - s_lo) / (s_hi - s_lo))), filt)
    if b_sharpen:
        filt = filt * np.exp(np.clip(b_sharpen * s2 / 4.0, -50.0, 50.0))
    return filt


def lowpass_map(dmap: DensityMap, resolution: float, *, b_sharpen: float = 0.0) -> np.ndarray:
    """The map low-pass filtered to ``resolution`` (optionally sharpened), normalised to mean 0, sd 1.

    Returns float64 ``[ix, iy, iz]``. Normalisation uses the whole box (mean and standard
    deviation of the filtered values), so map values are in units of the box sd.
    """
    shape = dmap.data.shape
    f = sfft.rfftn(np.asarray(dmap.data, dtype=np.float64), workers=fft_workers())
    # plane by plane and in place: no box-size temporaries beyond the transform and the result
    for i, s2 in enumerate(reciprocal_sq_planes(dmap, shape)):
        f[i] *= resolution_filter(s2, resolution, b_sharpen)
    out = sfft.irfftn(f, s=shape, overwrite_x=True, workers=fft_workers())
    del f
    out -= out.mean()
    sd = float(np.sqrt(np.vdot(out.ravel(), out.ravel()) / max(out.size, 1)))
    if not np.isfinite(sd) or sd <= 0:
        sd = 1.0
    out /= sd
    return out


def scattering_weights(st_or_atoms, resolution: float, *, hydrogens: float = 0.0) -> np.ndarray:
    """Map-term weight of each atom: occupancy x peak density of its element at ``resolution`` / that of C.

    Parameters
    ----------
    st_or_atoms : gemmi.Structure or iterable of gemmi.Atom
        Atoms in the order of ``st[0].all()``.
    resolution : float
        Å; the element densities are blurred with ``B = 4 d^2`` (about the blur of a map
        cut at ``d``), so at low resolution weights approach the ratio of total scattering.
    hydrogens : float
        Weight given to hydrogen and deuterium atoms (default 0: they ride on the restraints).
    """
    if isinstance(st_or_atoms, gemmi.Structure):
        atoms = [cra.atom for cra in st_or_atoms[0].all()]
    else:
        atoms = list(st_or_atoms)
    b_blur = 4.0 * resolution * resolution
    cache: dict[str, float] = {}

    def peak(el: gemmi.Element) -> float:
        key = el.name
        if key not in cache:
            c = el.c4322
            cache[key] = float(sum(a * (4.0 * np.pi / (b + b_blur)) ** 1.5 for a, b in zip(c.a, c.b)))
        return cache[key]

    ref = peak(gemmi.Element("C"))
    w = np.empty(len(atoms))
    for i, a in enumerate(atoms):
        if a.is_hydrogen():
            w[i] = hydrogens * a.occ
        else:
            w[i] = max(a.occ, 0.0) * peak(a.element) / ref
    return w


@njit(cache=True, inline="always")
def _bspline_weights(t):
    """Cubic B-spline weights for offsets -1, 0, 1, 2 and their derivatives, 0 <= t < 1."""
    u = 1.0 - t
    t2 = t * t
    t3 = t2 * t
    w0 = u * u * u / 6.0
    w1 = (3.0 * t3 - 6.0 * t2 + 4.0) / 6.0
    w2 = (-3.0 * t3 + 3.0 * t2 + 3.0 * t + 1.0) / 6.0
    w3 = t3 / 6.0
    d0 = -0.5 * u * u
    d1 = 0.5 * (3.0 * t2 - 4.0 * t)
    d2 = 0.5 * (-3.0 * t2 + 2.0 * t + 1.0)
    d3 = 0.5 * t2
    return w0, w1, w2, w3, d0, d1, d2, d3


@njit(cache=True, inline="always")
def _clamp(i, n):
    if i < 0:
        return 0
    if i >= n:
        return n - 1
    return i


@njit(cache=True, parallel=True)
def bspline_value_gradient(coef, grid, values, grads, active):
    """Tricubic B-spline value and gradient (per grid step) at fractional grid positions.

    ``coef`` are B-spline coefficients (float64, [ix, iy, iz]); ``grid`` (N, 3) fractional
    voxel indices; results go to ``values`` (N,) and ``grads`` (N, 3). Neighbour indices
    are clamped to the box, so positions outside it see a constant extension (zero gradient
    far away) rather than an error. Positions where ``active`` (N,) bool is False are not
    interpolated: value and gradient 0 (NaN for a non-finite position, as for any other).
    """
    nx, ny, nz = coef.shape
    n = grid.shape[0]
    for a in prange(n):
        gx = grid[a, 0]
        gy = grid[a, 1]
        gz = grid[a, 2]
        if not (np.isfinite(gx) and np.isfinite(gy) and np.isfinite(gz)):
            values[a] = np.nan
            grads[a, 0] = np.nan
            grads[a, 1] = np.nan
            grads[a, 2] = np.nan
            continue
        if not active[a]:
            values[a] = 0.0
            grads[a, 0] = 0.0
            grads[a, 1] = 0.0
            grads[a, 2] = 0.0
            continue
        # keep far-away atoms from overflowing the integer cast
        gx = min(max(gx, -4.0), nx + 3.0)
        gy = min(max(gy, -4.0), ny + 3.0)
        gz = min(max(gz, -4.0), nz + 3.0)
        ix = int(np.floor(gx))
        iy = int(np.floor(gy))
        iz = int(np.floor(gz))
        wx = _bspline_weights(gx - ix)
        wy = _bspline_weights(gy - iy)
        wz = _bspline_weights(gz - iz)
        v = 0.0
        dx = 0.0
        dy = 0.0
        dz = 0.0
        for i in range(4):
            ci = _clamp(ix - 1 + i, nx)
            for j in range(4):
                cj = _clamp(iy - 1 + j, ny)
                wyz_v = 0.0
                wyz_dz = 0.0
                # inner sum along z first: value and d/dz
                for k in range(4):
                    ck = _clamp(iz - 1 + k, nz)
                    c = coef[ci, cj, ck]
                    wyz_v += c * wz[k]
                    wyz_dz += c * wz[4 + k]
                v += wx[i] * wy[j] * wyz_v
                dx += wx[4 + i] * wy[j] * wyz_v
                dy += wx[i] * wy[4 + j] * wyz_v
                dz += wx[i] * wy[j] * wyz_dz
        values[a] = v
        grads[a, 0] = dx
        grads[a, 1] = dy
        grads[a, 2] = dz


@dataclass
class MapTarget:
    """A map prepared for coordinate refinement: B-spline coefficients of the filtered, normalised map.

    Attributes
    ----------
    coef : numpy.ndarray
        Cubic B-spline coefficients (float64, ``[ix, iy, iz]``) of :func:`lowpass_map`.
    origin : numpy.ndarray
        Å, position of grid point (0, 0, 0).
    to_grid : numpy.ndarray
        (3, 3) matrix taking Å offsets to fractional grid steps.
    resolution : float
        Å, the low-pass limit used.
    """

    coef: np.ndarray
    origin: np.ndarray
    to_grid: np.ndarray
    resolution: float

    @classmethod
    def from_map(cls, dmap: DensityMap, resolution: float, *, b_sharpen: float = 0.0) -> MapTarget:
        """Filter to ``resolution`` (Å), normalise and prefilter ``dmap`` for tricubic interpolation."""
        rho = lowpass_map(dmap, resolution, b_sharpen=b_sharpen)
        # 'mirror' boundary for the prefilter; the kernel clamps indices, which differs only
        # within two voxels of the box edge.
        coef = ndimage.spline_filter(rho, order=3, mode="mirror", output=np.float64)
        return cls(coef=np.ascontiguousarray(coef), origin=np.asarray(dmap.origin, float),
                   to_grid=np.linalg.inv(dmap.orth_matrix), resolution=float(resolution))

    def grid(self, xyz: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((np.asarray(xyz, float).reshape(-1, 3) - self.origin) @ self.to_grid.T)

    def values_gradients(self, xyz: np.ndarray, active: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray]:
        """Interpolated map values (sd units) at ``xyz`` (Å) and their Cartesian gradients (sd/Å);
        with ``active`` (N,) bool, only at those atoms (0 at the others)."""
        g = self.grid(xyz)
        vals = np.empty(len(g))
        gg = np.empty((len(g), 3))
        if active is None:
            active = np.ones(len(g), dtype=np.bool_)
        bspline_value_gradient(self.coef, g, vals, gg, np.ascontiguousarray(active, dtype=np.bool_))
        return vals, gg @ self.to_grid  # d/dx = (d g/d x)^T d/dg

    def values(self, xyz: np.ndarray) -> np.ndarray:
        return self.values_gradients(xyz)[0]

    def energy_gradient(self, xyz: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray]:
        """``T_map = -sum_i w_i rho(x_i)`` and its gradient (N, 3) with respect to the positions (Å).

        Atoms of weight 0 (riding hydrogens, zero occupancy) add nothing, so the map is not
        interpolated at them."""
        vals, grads = self.values_gradients(xyz, weights != 0)
        e = -float(np.dot(weights, vals))
        return e, -grads * weights[:, None]
