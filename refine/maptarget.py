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

from .mapio import DensityMap


def _reciprocal_sq(dmap: DensityMap, shape: tuple[int, int, int]) -> np.ndarray:
    """|s|^2 (Å^-2) of every coefficient of ``rfftn`` on a grid of ``shape`` with the map's voxel axes."""
    m = dmap.orth_matrix  # grid step -> Å
    inv_t = np.linalg.inv(m).T  # frequency in cycles/voxel -> cycles/Å
    fx = np.fft.fftfreq(shape[0])
    fy = np.fft.fftfreq(shape[1])
    fz = np.fft.rfftfreq(shape[2])
    hx, hy, hz = np.meshgrid(fx, fy, fz, indexing="ij", sparse=True)
    s2 = np.zeros((len(fx), len(fy), len(fz)))
    for a in range(3):
        comp = inv_t[a, 0] * hx + inv_t[a, 1] * hy + inv_t[a, 2] * hz
        s2 = s2 + comp * comp
    return s2


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
    data = np.asarray(dmap.data, dtype=np.float64)
    f = sfft.rfftn(data)
    f *= resolution_filter(_reciprocal_sq(dmap, data.shape), resolution, b_sharpen)
    out = sfft.irfftn(f, s=data.shape)
    sd = out.std()
    if not np.isfinite(sd) or sd <= 0:
        sd = 1.0
    return (out - out.mean()) / sd


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
def bspline_value_gradient(coef, grid, values, grads):
    """Tricubic B-spline value and gradient (per grid step) at fractional grid positions.

    ``coef`` are B-spline coefficients (float64, [ix, iy, iz]); ``grid`` (N, 3) fractional
    voxel indices; results go to ``values`` (N,) and ``grads`` (N, 3). Neighbour indices
    are clamped to the box, so positions outside it see a constant extension (zero gradient
    far away) rather than an error.
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

    def values_gradients(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Interpolated map values (sd units) at ``xyz`` (Å) and their Cartesian gradients (sd/Å)."""
        g = self.grid(xyz)
        vals = np.empty(len(g))
        gg = np.empty((len(g), 3))
        bspline_value_gradient(self.coef, g, vals, gg)
        return vals, gg @ self.to_grid  # d/dx = (d g/d x)^T d/dg

    def values(self, xyz: np.ndarray) -> np.ndarray:
        return self.values_gradients(xyz)[0]

    def energy_gradient(self, xyz: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray]:
        """``T_map = -sum_i w_i rho(x_i)`` and its gradient (N, 3) with respect to the positions (Å)."""
        vals, grads = self.values_gradients(xyz)
        e = -float(np.dot(weights, vals))
        return e, -grads * weights[:, None]


# --------------------------------------------------------------------------- density-fit target

@njit(cache=True, inline="always")
def _gauss_tables(gx, gy, gz, step, a, b, bt, radius, shape, tx, ty, tz, pre, ex):
    """Per-axis factors ``t*[k, i] = exp(ex_k (d_i)^2)`` of one atom's five Gaussians (orthogonal grid).

    ``a``, ``b``: (5,) scattering coefficients; ``bt`` extra B (Å²) added to every ``b``.
    Returns the voxel index ranges covered.
    """
    four_pi2 = 4.0 * np.pi * np.pi
    for k in range(5):
        bb = b[k] + bt
        pre[k] = a[k] * (4.0 * np.pi / bb) ** 1.5
        ex[k] = -four_pi2 / bb
    x0 = max(int(np.ceil(gx - radius / step[0])), 0)
    x1 = min(int(np.floor(gx + radius / step[0])), shape[0] - 1)
    y0 = max(int(np.ceil(gy - radius / step[1])), 0)
    y1 = min(int(np.floor(gy + radius / step[1])), shape[1] - 1)
    z0 = max(int(np.ceil(gz - radius / step[2])), 0)
    z1 = min(int(np.floor(gz + radius / step[2])), shape[2] - 1)
    for k in range(5):
        for i in range(x0, x1 + 1):
            d = (i - gx) * step[0]
            tx[k, i - x0] = np.exp(ex[k] * d * d)
        for j in range(y0, y1 + 1):
            d = (j - gy) * step[1]
            ty[k, j - y0] = np.exp(ex[k] * d * d)
        for m in range(z0, z1 + 1):
            d = (m - gz) * step[2]
            tz[k, m - z0] = np.exp(ex[k] * d * d)
    return x0, x1, y0, y1, z0, z1


@njit(cache=True)
def splat_atoms(shape, step, grid, a, b, bt, radius, out):
    """Add the five-Gaussian density of every atom (B = ``b_k + bt[n]``) to ``out`` (serial: no races)."""
    nmax = int(2.0 * radius.max() / step.min()) + 3
    tx = np.empty((5, nmax))
    ty = np.empty((5, nmax))
    tz = np.empty((5, nmax))
    pre = np.empty(5)
    ex = np.empty(5)
    for n in range(grid.shape[0]):
        if a[n, 0] == 0.0 and a[n, 1] == 0.0:
            continue
        x0, x1, y0, y1, z0, z1 = _gauss_tables(grid[n, 0], grid[n, 1], grid[n, 2], step, a[n], b[n], bt[n],
                                               radius[n], shape, tx, ty, tz, pre, ex)
        for i in range(x0, x1 + 1):
            for j in range(y0, y1 + 1):
                for m in range(z0, z1 + 1):
                    v = 0.0
                    for k in range(5):
                        v += pre[k] * tx[k, i - x0] * ty[k, j - y0] * tz[k, m - z0]
                    out[i, j, m] += v


@njit(cache=True, parallel=True)
def gather_position_gradient(back, step, grid, a, b, bt, radius, grad):
    """``grad[n] = sum_v back(v) d rho_n(v) / d x_n`` (Å⁻¹ units of ``back``) for every atom.

    ``d G_k / d x_n = -2 ex_k G_k (r_v - x_n)`` for ``G_k = pre_k exp(ex_k |r_v - x_n|^2)``.
    """
    shape = back.shape
    nmax = int(2.0 * radius.max() / step.min()) + 3
    for n in prange(grid.shape[0]):
        grad[n, 0] = 0.0
        grad[n, 1] = 0.0
        grad[n, 2] = 0.0
        if a[n, 0] == 0.0 and a[n, 1] == 0.0:
            continue
        tx = np.empty((5, nmax))
        ty = np.empty((5, nmax))
        tz = np.empty((5, nmax))
        pre = np.empty(5)
        ex = np.empty(5)
        gx, gy, gz = grid[n, 0], grid[n, 1], grid[n, 2]
        x0, x1, y0, y1, z0, z1 = _gauss_tables(gx, gy, gz, step, a[n], b[n], bt[n], radius[n], shape,
                                               tx, ty, tz, pre, ex)
        sx = 0.0
        sy = 0.0
        sz = 0.0
        for i in range(x0, x1 + 1):
            dx = (i - gx) * step[0]
            for j in range(y0, y1 + 1):
                dy = (j - gy) * step[1]
                for m in range(z0, z1 + 1):
                    dz = (m - gz) * step[2]
                    bv = back[i, j, m]
                    if bv == 0.0:
                        continue
                    g = 0.0
                    for k in range(5):
                        g += -2.0 * ex[k] * pre[k] * tx[k, i - x0] * ty[k, j - y0] * tz[k, m - z0]
                    g *= bv
                    sx += g * dx
                    sy += g * dy
                    sz += g * dz
        grad[n, 0] = sx
        grad[n, 1] = sy
        grad[n, 2] = sz


#: The density-fit model map: each atom's Gaussians get an extra blur whose image beyond the
#: alias frequency ``1/h - 1/d`` is below ``exp(-ALIAS_LOG)``, and are summed out to
#: ``exp(-CUTOFF_LOG)`` of their peak. 5 and 4.6 (0.7 % and 1 %) instead of the 7 and 6.9 of
#: the B-factor fit make the target 3x cheaper; for a refinement target (not a reported
#: figure) the gradient direction is what matters.
ALIAS_LOG = 5.0
CUTOFF_LOG = 4.6


class DensityFitTarget:
    """Model-map fit as a coordinate target: ``T = N_fit (1 - CC^2)`` inside a fixed model mask.

    The model map is the five-Gaussian electron density of the atoms (International Tables
    C 4.3.2.2, ``gemmi.Element.c4322``) with their B, filtered to the resolution like the data;
    the data term is the least-squares misfit of ``k rho_c + c`` to the filtered map inside the
    mask, with the best ``k, c`` at every call, i.e. ``1 - CC_mask^2`` (the quantity Phenix
    reports as CC_mask, Afonine et al. 2018, Acta Cryst. D74:814; fitting the calculated density
    rather than maximising map values at atom centres is how real-space refinement in Refmac /
    servalcat works, Yamashita et al. 2021, Acta Cryst. D77:1282). Unlike the map-value target
    it accounts for the overlap of neighbouring atoms' density at low resolution, and it uses
    the B factors: better B sharpen the prediction and so the next coordinate fit.

    The misfit is multiplied by ``N_fit`` (number of fitted atoms) so that its size is
    per-atom like the restraint target. Two FFT pairs per evaluation (forward model map,
    back-projected residual) plus one splat and one gather over the atoms.
    """

    def __init__(self, dmap: DensityMap, xyz: np.ndarray, elements, occupancy: np.ndarray, resolution: float,
                 *, mask_radius: float | None = None, b_sharpen: float = 0.0, structure=None):
        from dataclasses import replace

        from .mapio import cut_box

        xyz = np.asarray(xyz, float).reshape(-1, 3)
        if not dmap.is_orthogonal:
            raise ValueError(f"{dmap.name}: the density-fit target needs an orthogonal map cell")
        if mask_radius is None:
            mask_radius = max(2.5, 0.75 * resolution)
        h = float(np.max(dmap.voxel_size))
        s_alias = 1.0 / h - 1.0 / resolution
        if s_alias <= 0:
            raise ValueError(f"{dmap.name}: voxel {h:.2f} Å too coarse for resolution {resolution} Å")
        # extra blur so that the placed Gaussians do not alias below 1/d; removed in Fourier space
        self.b_add = 4.0 * ALIAS_LOG / (s_alias * s_alias)
        box = cut_box(dmap, xyz, mask_radius + 4.0)
        data = np.asarray(box.data, dtype=np.float64)
        # zero-pad to FFT-friendly sizes (a prime edge such as 79 makes every FFT 3x slower);
        # the padding lies beyond the 4 Å margin around the mask
        fast = [sfft.next_fast_len(n, real=True) for n in data.shape]
        data = np.pad(data, [(0, f - n) for f, n in zip(fast, data.shape)])
        box = replace(box, data=data.astype(np.float32))
        s2 = _reciprocal_sq(box, data.shape)
        if structure is None:
            filt = resolution_filter(s2, resolution, b_sharpen)
            self.rho_o = sfft.irfftn(sfft.rfftn(data) * filt, s=data.shape)
            cut = resolution_filter(s2, resolution)
        else:
            # CC_mask as reported (:mod:`.metrics`): raw map, model map cut sharply at 1/d
            self.rho_o = data
            cut = (s2 < 1.0 / resolution ** 2).astype(np.float64)
        self.kernel = cut * np.exp(np.minimum(self.b_add * s2 / 4.0, 50.0))
        self.box = box
        self.step = np.ascontiguousarray(box.voxel_size, dtype=np.float64)
        self.origin = np.asarray(box.origin, float)
        self.shape = data.shape
        g = np.ascontiguousarray(box.grid_coordinates(xyz))
        if structure is None:
            self.mask = np.zeros(data.shape, dtype=np.bool_)
            _mask_spheres(data.shape, self.step, g, float(mask_radius), self.mask)
        else:
            from .mask import molecular_mask

            self.mask = np.ascontiguousarray(molecular_mask(structure, box))
        a = np.empty((len(xyz), 5))
        b = np.empty((len(xyz), 5))
        coef = {}
        for i, el in enumerate(elements):
            if el not in coef:
                c = gemmi.Element(el).c4322
                coef[el] = (np.array(c.a), np.array(c.b))
            a[i], b[i] = coef[el]
        self.a = a * np.clip(np.asarray(occupancy, float), 0.0, 1.0)[:, None]
        self.b = b
        obs = self.rho_o[self.mask]
        self.ro_c = obs - obs.mean()
        self.ss_obs = float(np.dot(self.ro_c, self.ro_c))
        self.n_fit = int(np.count_nonzero(self.a[:, 0]))
        self.bvals = np.full(len(xyz), 30.0)

    def set_b(self, bvals: np.ndarray) -> None:
        """Isotropic B (Å²) of the atoms used for the model map."""
        self.bvals = np.clip(np.asarray(bvals, float), 1.0, 500.0)

    def _grid(self, xyz):
        return np.ascontiguousarray((np.asarray(xyz, float).reshape(-1, 3) - self.origin) / self.step)

    def _radius(self, bt):
        # the widest Gaussian falls to exp(-CUTOFF_LOG) of its peak at this distance
        return np.sqrt(CUTOFF_LOG * (self.b.max(axis=1) + bt) / (4.0 * np.pi ** 2))

    def energy_gradient(self, xyz: np.ndarray, scale: float = 1.0) -> tuple[float, np.ndarray, float]:
        """``scale * N_fit * (1 - CC^2)``, its gradient (N, 3) with respect to the positions (Å), and CC."""
        g = self._grid(xyz)
        bt = self.bvals + self.b_add
        radius = self._radius(bt)
        raw = np.zeros(self.shape)
        splat_atoms(self.shape, self.step, g, self.a, self.b, bt, radius, raw)
        rc_full = sfft.irfftn(sfft.rfftn(raw) * self.kernel, s=self.shape)
        rc = rc_full[self.mask]
        rc_c = rc - rc.mean()
        var_c = float(np.dot(rc_c, rc_c))
        if var_c <= 0:
            return scale * self.n_fit, np.zeros((len(g), 3)), 0.0
        cross = float(np.dot(rc_c, self.ro_c))
        k = cross / var_c
        res = self.ro_c - k * rc_c
        misfit = float(np.dot(res, res)) / self.ss_obs
        f = scale * self.n_fit
        dr = np.zeros(self.shape)
        dr[self.mask] = -2.0 * k * res / self.ss_obs * f
        back = np.ascontiguousarray(sfft.irfftn(sfft.rfftn(dr) * self.kernel, s=self.shape))
        grad = np.empty((len(g), 3))
        gather_position_gradient(back, self.step, g, self.a, self.b, bt, radius, grad)
        cc = cross / np.sqrt(var_c * self.ss_obs)
        return f * misfit, grad, cc


@njit(cache=True)
def _mask_spheres(shape, step, grid, radius, mask):
    """Set ``mask`` True within ``radius`` Å of any atom."""
    r2 = radius * radius
    for n in range(grid.shape[0]):
        gx, gy, gz = grid[n, 0], grid[n, 1], grid[n, 2]
        x0 = max(int(np.ceil(gx - radius / step[0])), 0)
        x1 = min(int(np.floor(gx + radius / step[0])), shape[0] - 1)
        y0 = max(int(np.ceil(gy - radius / step[1])), 0)
        y1 = min(int(np.floor(gy + radius / step[1])), shape[1] - 1)
        z0 = max(int(np.ceil(gz - radius / step[2])), 0)
        z1 = min(int(np.floor(gz + radius / step[2])), shape[2] - 1)
        for i in range(x0, x1 + 1):
            dx = (i - gx) * step[0]
            for j in range(y0, y1 + 1):
                dy = (j - gy) * step[1]
                for m in range(z0, z1 + 1):
                    dz = (m - gz) * step[2]
                    if dx * dx + dy * dy + dz * dz <= r2:
                        mask[i, j, m] = True
