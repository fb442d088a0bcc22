"""The model-map fit: atoms' five-Gaussian density, cut at d, correlated with the map inside a mask.

One machinery serves B-factor refinement (:mod:`.adp`), occupancy refinement
(:mod:`.occupancy`) and the density-fit stage of coordinate refinement (:mod:`.realspace`):
:class:`ModelMapFit` gives the misfit ``1 - CC^2`` and its analytic gradient with respect to
every atom's B (Å⁻²), occupancy, or position (Å⁻¹).

Data term (default ``target="ccmask"``): the least-squares misfit, over the molecular mask
of CC_mask (:mod:`.mask`, cctbx's), between the experimental map ``rho_o`` (as it is, not
filtered: CC_mask uses the map as it is) and the scaled model map ``k rho_c + c``, with
``k`` and ``c`` re-fitted at every evaluation. With optimal ``k`` and ``c`` this is
``(1 - CC_mask^2) * sum_m (rho_o - <rho_o>)^2``: CC_mask is scale- and offset-free, so the
refinement maximises CC_mask itself (phenix.map_model_cc's definition, Afonine et al. 2018
Acta Cryst. D74:814), not a proxy. The fitted CC equals :func:`.metrics.compute_metrics`'s
CC_mask within 0.001-0.003 (the box edges differ).

The model map is the exact one cut at d (as :mod:`.modelmap`): each atom is a sum of five
Gaussians (electron scattering factors, International Tables C 4.3.2.2,
``gemmi.Element.c4322``) with its B plus an extra blur ``B_add``, placed on the grid in real
space; in Fourier space the extra blur is removed (``exp(+B_add s^2/4)``) and every term
with ``|s| >= 1/d`` is dropped. ``B_add`` only keeps the placed Gaussians sampled finely
enough that nothing aliases below 1/d. The filter is linear and symmetric, so the gradient
with respect to each B (or occupancy) is the filtered residual map gathered over that atom's
Gaussians: two FFT pairs per evaluation whatever the number of atoms.

Position gradient: ``d G_k / d x_n = -2 ex_k G_k (r_v - x_n)`` for each Gaussian
``G_k = pre_k exp(ex_k |r_v - x_n|^2)``, gathered over the same voxels as the model map.
Fitting the calculated density rather than maximising map values at atom centres is how
real-space refinement in Refmac / servalcat works (Yamashita et al. 2021, Acta Cryst.
D77:1282); unlike the map-value target it accounts for the overlap of neighbouring atoms'
density at low resolution and uses the B factors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gemmi
import numpy as np
from numba import njit, prange
from scipy import fft as sfft

from rerefine.common.errors import InputError
from .mapio import DensityMap, cut_box
from .maptarget import reciprocal_sq, resolution_filter


@njit(cache=True, inline="always")
def _axis_table(lo, hi, g, h, ex, k, out):
    """``out[k, t] = exp(ex * ((lo + t - g) h)^2)`` for ``t = 0 .. hi - lo`` (Å, Å⁻²).

    Three exponentials per axis instead of one per voxel: consecutive squared distances differ by
    ``2 d h + h^2``, so each factor is the previous one times a ratio that itself grows by
    ``exp(2 ex h^2)`` per step (products of at most a few tens of factors: relative error ~1e-15).
    """
    d0 = (lo - g) * h
    e = np.exp(ex * d0 * d0)
    r = np.exp(ex * (2.0 * d0 * h + h * h))
    q = np.exp(2.0 * ex * h * h)
    for t in range(hi - lo + 1):
        out[k, t] = e
        e *= r
        r *= q


@njit(cache=True, inline="always")
def _atom_tables(n, g_atoms, step, a, b, bt_extra, radius, shape, ex_x, ex_y, ex_z, pre, ex):
    """Per-axis 1-D Gaussian factors of atom ``n`` (orthogonal grid: exp(-c r^2) separates).

    Returns the index ranges covered; ``ex_*[k, i]`` holds ``exp(ex_k * (dx_i * h)^2)``
    (voxel index last, so the innermost loop along z runs over contiguous memory).
    """
    four_pi2 = 4.0 * np.pi * np.pi
    gx, gy, gz = g_atoms[n, 0], g_atoms[n, 1], g_atoms[n, 2]
    r = radius[n]
    for k in range(5):
        bt = b[n, k] + bt_extra[n]
        pre[k] = a[n, k] * (4.0 * np.pi / bt) ** 1.5
        ex[k] = -four_pi2 / bt
    x0 = max(int(np.ceil(gx - r / step[0])), 0)
    x1 = min(int(np.floor(gx + r / step[0])), shape[0] - 1)
    y0 = max(int(np.ceil(gy - r / step[1])), 0)
    y1 = min(int(np.floor(gy + r / step[1])), shape[1] - 1)
    z0 = max(int(np.ceil(gz - r / step[2])), 0)
    z1 = min(int(np.floor(gz + r / step[2])), shape[2] - 1)
    for k in range(5):
        _axis_table(x0, x1, gx, step[0], ex[k], k, ex_x)
        _axis_table(y0, y1, gy, step[1], ex[k], k, ex_y)
        _axis_table(z0, z1, gz, step[2], ex[k], k, ex_z)
    return x0, x1, y0, y1, z0, z1


@njit(cache=True, inline="always")
def _row_range(gz, z0, z1, r2, dxy, hz):
    """z indices of a grid row at squared in-plane distance ``dxy`` (Å²) that lie within the sphere."""
    zr = np.sqrt(r2 - dxy) / hz
    return max(z0, int(np.ceil(gz - zr))), min(z1, int(np.floor(gz + zr)))


@njit(cache=True, inline="always")
def _table_size(radius, step):
    """Entries per axis of an atom's tables: the widest sphere's diameter in voxels plus margin."""
    return int(2.0 * radius.max() / step.min()) + 3


@njit(cache=True)
def _splat(shape, step, g_atoms, a, b, bt_extra, radius, out):
    """Add each atom's Gaussians ``a_k (4 pi / Bt)^1.5 exp(-4 pi^2 r^2 / Bt)``, ``Bt = b_k + B``, to ``out``.

    Orthogonal grid with voxel edges ``step`` (Å); ``g_atoms`` fractional grid positions;
    ``a``/``b`` (N, 5) scattering coefficients; ``bt_extra`` (N,) B incl. blur; ``radius``
    (N,) cut-off, Å. Serial because atoms overlap on the grid.
    """
    m = _table_size(radius, step)
    ex_x = np.empty((5, m))
    ex_y = np.empty((5, m))
    ex_z = np.empty((5, m))
    pre = np.empty(5)
    ex = np.empty(5)
    for n in range(g_atoms.shape[0]):
        x0, x1, y0, y1, z0, z1 = _atom_tables(n, g_atoms, step, a, b, bt_extra, radius, shape,
                                              ex_x, ex_y, ex_z, pre, ex)
        r2 = radius[n] * radius[n]
        gx, gy, gz = g_atoms[n, 0], g_atoms[n, 1], g_atoms[n, 2]
        for i in range(x0, x1 + 1):
            dx = (i - gx) * step[0]
            for j in range(y0, y1 + 1):
                dy = (j - gy) * step[1]
                dxy = dx * dx + dy * dy
                if dxy > r2:
                    continue
                p0 = pre[0] * ex_x[0, i - x0] * ex_y[0, j - y0]
                p1 = pre[1] * ex_x[1, i - x0] * ex_y[1, j - y0]
                p2 = pre[2] * ex_x[2, i - x0] * ex_y[2, j - y0]
                p3 = pre[3] * ex_x[3, i - x0] * ex_y[3, j - y0]
                p4 = pre[4] * ex_x[4, i - x0] * ex_y[4, j - y0]
                l0, l1 = _row_range(gz, z0, z1, r2, dxy, step[2])
                row = out[i, j]
                for l in range(l0, l1 + 1):
                    t = l - z0
                    row[l] += (p0 * ex_z[0, t] + p1 * ex_z[1, t] + p2 * ex_z[2, t] + p3 * ex_z[3, t]
                               + p4 * ex_z[4, t])


#: atoms per block of the threaded gathers (one set of scratch tables per block)
GATHER_BLOCK = 64


@njit(cache=True, parallel=True)
def _gather(resid, step, g_atoms, a, b, bt_extra, radius, mode, grad):
    """Per-atom sums over the atom's voxels of ``resid`` times a derivative of its density.

    ``mode`` 0: ``d(density_n)/dB_n``; ``mode`` 1: ``density_n`` itself evaluated with the
    coefficients ``a`` (pass the occupancy-free coefficients to get ``d/d(occupancy)``).
    Orthogonal grid, voxel edges ``step`` (Å). Threaded over blocks of :data:`GATHER_BLOCK` atoms.
    """
    shape = resid.shape
    m = _table_size(radius, step)
    n_atoms = g_atoms.shape[0]
    for blk in prange((n_atoms + GATHER_BLOCK - 1) // GATHER_BLOCK):
        ex_x = np.empty((5, m))
        ex_y = np.empty((5, m))
        ex_z = np.empty((5, m))
        pre = np.empty(5)
        ex = np.empty(5)
        p0 = np.empty(5)
        p1 = np.empty(5)
        c0 = np.empty(5)
        c1 = np.empty(5)
        for n in range(blk * GATHER_BLOCK, min(n_atoms, (blk + 1) * GATHER_BLOCK)):
            x0, x1, y0, y1, z0, z1 = _atom_tables(n, g_atoms, step, a, b, bt_extra, radius, shape,
                                                  ex_x, ex_y, ex_z, pre, ex)
            r2 = radius[n] * radius[n]
            gx, gy, gz = g_atoms[n, 0], g_atoms[n, 1], g_atoms[n, 2]
            # d/dBt [(4pi/Bt)^1.5 exp(-4pi^2 r^2/Bt)] = g (-1.5/Bt + 4pi^2 r^2/Bt^2); with ex = -4pi^2/Bt
            # this is g * (c0 + c1 r^2), c0 = -1.5/Bt, c1 = -ex/Bt; mode 1 uses c0 = 1, c1 = 0
            for k in range(5):
                bt = b[n, k] + bt_extra[n]
                if mode == 0:
                    c0[k] = -1.5 / bt
                    c1[k] = -ex[k] / bt
                else:
                    c0[k] = 1.0
                    c1[k] = 0.0
            acc = 0.0
            for i in range(x0, x1 + 1):
                dx = (i - gx) * step[0]
                for j in range(y0, y1 + 1):
                    dy = (j - gy) * step[1]
                    dxy = dx * dx + dy * dy
                    if dxy > r2:
                        continue
                    # the in-plane factors and the constant part of d2 = dxy + dz^2 per row
                    for k in range(5):
                        t = pre[k] * ex_x[k, i - x0] * ex_y[k, j - y0]
                        p0[k] = t * (c0[k] + c1[k] * dxy)
                        p1[k] = t * c1[k]
                    l0, l1 = _row_range(gz, z0, z1, r2, dxy, step[2])
                    row = resid[i, j]
                    for l in range(l0, l1 + 1):
                        dz = (l - gz) * step[2]
                        dz2 = dz * dz
                        t = l - z0
                        v = (ex_z[0, t] * (p0[0] + p1[0] * dz2) + ex_z[1, t] * (p0[1] + p1[1] * dz2)
                             + ex_z[2, t] * (p0[2] + p1[2] * dz2) + ex_z[3, t] * (p0[3] + p1[3] * dz2)
                             + ex_z[4, t] * (p0[4] + p1[4] * dz2))
                        acc += row[l] * v
            grad[n] = acc


@njit(cache=True, parallel=True)
def _gather_position(resid, step, g_atoms, a, b, bt_extra, radius, grad):
    """``grad[n] = sum_v resid(v) d density_n(v) / d x_n`` (N, 3), over the voxels :func:`_splat` covers.

    ``d G_k / d x_n = -2 ex_k G_k (r_v - x_n)``; orthogonal grid, voxel edges ``step`` (Å).
    Threaded over blocks of :data:`GATHER_BLOCK` atoms.
    """
    shape = resid.shape
    m = _table_size(radius, step)
    n_atoms = g_atoms.shape[0]
    for blk in prange((n_atoms + GATHER_BLOCK - 1) // GATHER_BLOCK):
        ex_x = np.empty((5, m))
        ex_y = np.empty((5, m))
        ex_z = np.empty((5, m))
        pre = np.empty(5)
        ex = np.empty(5)
        for n in range(blk * GATHER_BLOCK, min(n_atoms, (blk + 1) * GATHER_BLOCK)):
            x0, x1, y0, y1, z0, z1 = _atom_tables(n, g_atoms, step, a, b, bt_extra, radius, shape,
                                                  ex_x, ex_y, ex_z, pre, ex)
            r2 = radius[n] * radius[n]
            gx, gy, gz = g_atoms[n, 0], g_atoms[n, 1], g_atoms[n, 2]
            sx = 0.0
            sy = 0.0
            sz = 0.0
            for i in range(x0, x1 + 1):
                dx = (i - gx) * step[0]
                for j in range(y0, y1 + 1):
                    dy = (j - gy) * step[1]
                    dxy = dx * dx + dy * dy
                    if dxy > r2:
                        continue
                    q0 = -2.0 * ex[0] * pre[0] * ex_x[0, i - x0] * ex_y[0, j - y0]
                    q1 = -2.0 * ex[1] * pre[1] * ex_x[1, i - x0] * ex_y[1, j - y0]
                    q2 = -2.0 * ex[2] * pre[2] * ex_x[2, i - x0] * ex_y[2, j - y0]
                    q3 = -2.0 * ex[3] * pre[3] * ex_x[3, i - x0] * ex_y[3, j - y0]
                    q4 = -2.0 * ex[4] * pre[4] * ex_x[4, i - x0] * ex_y[4, j - y0]
                    l0, l1 = _row_range(gz, z0, z1, r2, dxy, step[2])
                    row = resid[i, j]
                    # sum over the row first: sx and sy share the row's weight
                    sr = 0.0
                    for l in range(l0, l1 + 1):
                        t = l - z0
                        v = (q0 * ex_z[0, t] + q1 * ex_z[1, t] + q2 * ex_z[2, t] + q3 * ex_z[3, t]
                             + q4 * ex_z[4, t]) * row[l]
                        sr += v
                        sz += v * (l - gz) * step[2]
                    sx += sr * dx
                    sy += sr * dy
            grad[n, 0] = sx
            grad[n, 1] = sy
            grad[n, 2] = sz


@njit(cache=True)
def _masked_fit(rc, ro_c, idx, ss_obs, dr):
    """Correlation of the model map ``rc`` (flat) at ``idx`` with the centred map values ``ro_c``.

    Returns ``(1 - CC^2, CC, k)`` with ``k`` the least-squares scale, and writes
    ``d(1 - CC^2)/d rc = -2 k (ro_c - k rc_c) / ss_obs`` into ``dr`` at ``idx`` (the offset and
    ``k`` are optimal, so their own variation does not enter: envelope theorem).
    """
    n = idx.size
    s = 0.0
    for t in range(n):
        s += rc[idx[t]]
    mc = s / n
    vcc = 0.0
    vco = 0.0
    for t in range(n):
        c = rc[idx[t]] - mc
        vcc += c * c
        vco += c * ro_c[t]
    if vcc <= 0.0:
        return 1.0, 0.0, 0.0
    k = vco / vcc
    f = -2.0 * k / ss_obs
    for t in range(n):
        dr[idx[t]] = f * (ro_c[t] - k * (rc[idx[t]] - mc))
    cc = vco / np.sqrt(vcc * ss_obs)
    return 1.0 - cc * cc, cc, k


@njit(cache=True)
def _mask_atoms(shape, step, g_atoms, radius, mask):
    """Set ``mask`` True within ``radius`` Å of any atom (orthogonal grid, voxel edges ``step``)."""
    r2 = radius * radius
    for n in range(g_atoms.shape[0]):
        gx, gy, gz = g_atoms[n, 0], g_atoms[n, 1], g_atoms[n, 2]
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
                for l in range(z0, z1 + 1):
                    dz = (l - gz) * step[2]
                    if dx * dx + dy * dy + dz * dz <= r2:
                        mask[i, j, l] = True


def _alias_free_blur(dmap: DensityMap, resolution: float, alias_log: float = 7.0) -> float:
    """Smallest total Gaussian B (Å²) whose image beyond ``1/h - 1/d`` is below exp(-alias_log) (h = voxel)."""
    h = float(np.max(dmap.voxel_size))
    s_alias = 1.0 / h - 1.0 / resolution
    if s_alias <= 0:
        raise ValueError(f"{dmap.name}: voxel {h:.2f} Å too coarse for resolution {resolution} Å")
    return 4.0 * alias_log / (s_alias * s_alias)


#: Fit targets of :class:`ModelMapFit`: ``"ccmask"`` is CC_mask itself (raw map, molecular mask,
#: model map cut sharply at d, as :mod:`.metrics` measures it); ``"sphere"`` a smoother target
#: (map low-pass filtered with a cosine edge, spheres of ``mask_radius`` around the atoms).
TARGETS = ("ccmask", "sphere")


def _molecular_mask_xyz(box: DensityMap, xyz: np.ndarray, elements: list[str]) -> np.ndarray:
    """The CC_mask molecular mask (:func:`.mask.molecular_mask`) from positions and elements."""
    from .mask import VDW_RADII, mask_from_atoms

    return mask_from_atoms(box, xyz, np.array([VDW_RADII.get(e.capitalize(), VDW_RADII["C"]) for e in elements]))


@dataclass
class ModelMapFit:
    """The model-map fit of one model against one map box.

    Build with :meth:`prepare`; then :meth:`evaluate` gives the data term ``1 - CC^2`` and
    its gradient with respect to every atom's B (Å²) or occupancy, :meth:`evaluate_positions`
    the same with respect to the positions (Å).
    """

    box: DensityMap
    rho_o: np.ndarray  # map values in the box, float64 (raw or filtered, see ``target``)
    mask: np.ndarray  # bool, the points the correlation is taken over
    kernel: np.ndarray  # rfft-space resolution cut-off x removal of the extra blur
    grid_atoms: np.ndarray  # (N, 3) fractional grid positions in the box
    step: np.ndarray  # voxel edges, Å (orthogonal grid)
    a0: np.ndarray  # (N, 5) scattering coefficients (occupancy 1)
    b: np.ndarray  # (N, 5)
    b_add: float
    resolution: float
    ss_obs: float  # sum over the mask of (rho_o - mean)^2
    occ: np.ndarray = None  # (N,) occupancies in [0, 1]
    target: str = "ccmask"
    cutoff_log: float = 6.9  # each atom's Gaussians are summed out to exp(-cutoff_log) of their peak
    single: bool = True  # the transforms of evaluate / evaluate_positions in single precision
    n_eval: int = field(default=0)

    def __post_init__(self):
        if self.occ is None:
            self.occ = np.ones(len(self.a0))
        self._mask_idx = np.flatnonzero(self.mask.ravel())
        ro = self.rho_o.ravel()[self._mask_idx]
        self._ro_c = ro - ro.mean()
        self._kernel32 = self.kernel.astype(np.float32)
        self._last = None  # (wrt, B, coefficients, grid positions, misfit, gradient, CC) of the last evaluate
        self._held = None  # (held atoms, their grid positions, total B, model map) of evaluate_positions

    @property
    def a(self) -> np.ndarray:
        """Scattering coefficients times occupancy, (N, 5)."""
        return self.a0 * self.occ[:, None]

    @classmethod
    def prepare(cls, dmap: DensityMap, xyz: np.ndarray, elements: list[str], occupancy: np.ndarray,
                resolution: float, *, target: str = "ccmask", mask_radius: float | None = None,
                padding: float | None = None, alias_log: float = 7.0, cutoff_log: float = 6.9,
                single: bool = True) -> ModelMapFit:
        """Cut the map around ``xyz`` (Å) and build the mask and the model-map kernel.

        ``target="ccmask"`` (default): the raw map inside the molecular mask of
        :mod:`.mask` (cctbx's, the one CC_mask uses), model map cut at ``|s| < 1/d`` as in
        :mod:`.modelmap`; the fitted correlation is then CC_mask. ``target="sphere"``: the
        map low-pass filtered to d (cosine edge) within ``mask_radius`` Å (default
        ``max(2.5, 0.75 d)``) of any atom. ``padding`` (Å) defaults to ``max(6, 2 d)``, the
        box CC_mask is measured in (:func:`.metrics.box_for_cc`). ``alias_log`` and
        ``cutoff_log``: the placed Gaussians get an extra blur whose image beyond the alias
        frequency ``1/h - 1/d`` is below ``exp(-alias_log)`` and are summed out to
        ``exp(-cutoff_log)`` of their peak (7 and 6.9: 0.1 %; a refinement target, where the
        gradient direction is what matters, can take 5 and 4.6 at a third of the cost).
        ``single``: :meth:`evaluate` and :meth:`evaluate_positions` filter the model map and the
        residual in single precision (float32 grids, complex64 transforms, a third of the time;
        misfit and gradients change by ~1e-8 and ~1e-7 relative, below the map's noise; a finite-
        difference check of the gradients needs ``single=False``). :meth:`model_map` and
        :meth:`cc` are always double precision.
        """
        if target not in TARGETS:
            raise ValueError(f"unknown fit target {target!r} (one of {TARGETS})")
        xyz = np.asarray(xyz, float).reshape(-1, 3)
        if mask_radius is None:
            mask_radius = max(2.5, 0.75 * resolution)
        b_add = _alias_free_blur(dmap, resolution, alias_log)
        if padding is None:
            padding = max(6.0, 2.0 * resolution, mask_radius + 3.0 if target == "sphere" else 0.0)
        if not dmap.is_orthogonal:
            raise InputError(f"{dmap.name}: B refinement needs an orthogonal map cell")
        box = cut_box(dmap, xyz, padding)
        # zero-pad the high ends to FFT-friendly sizes (a prime edge such as 79 costs 3x); the
        # padding lies outside every mask, it only widens the periodic margin
        data = np.asarray(box.data, dtype=np.float64)
        fast = tuple(sfft.next_fast_len(int(n), real=True) for n in data.shape)
        data = np.pad(data, [(0, f - n) for f, n in zip(fast, data.shape)])
        s2 = reciprocal_sq(box, data.shape)
        step = np.ascontiguousarray(box.voxel_size, dtype=np.float64)
        g = np.ascontiguousarray(box.grid_coordinates(xyz))
        if target == "ccmask":
            filt = (s2 < 1.0 / resolution ** 2).astype(np.float64)
            rho_o = data
            mask = np.zeros(data.shape, dtype=np.bool_)
            n0, n1, n2 = box.shape
            mask[:n0, :n1, :n2] = _molecular_mask_xyz(box, xyz, elements)
        else:
            filt = resolution_filter(s2, resolution)
            rho_o = sfft.irfftn(sfft.rfftn(data, workers=-1) * filt, s=data.shape, workers=-1)
            mask = np.zeros(data.shape, dtype=np.bool_)
            _mask_atoms(data.shape, step, g, float(mask_radius), mask)
        kernel = filt * np.exp(np.minimum(b_add * s2 / 4.0, 50.0)) * (filt > 0)
        coef = {}
        a = np.empty((len(xyz), 5))
        b = np.empty((len(xyz), 5))
        for i, el in enumerate(elements):
            if el not in coef:
                c = gemmi.Element(el).c4322
                coef[el] = (np.array(c.a), np.array(c.b))
            a[i], b[i] = coef[el]
        obs = rho_o[mask]
        ss = float(((obs - obs.mean()) ** 2).sum())
        return cls(box=box, rho_o=rho_o, mask=mask, kernel=kernel, grid_atoms=g, step=step, a0=a, b=b,
                   b_add=b_add, resolution=float(resolution), ss_obs=ss,
                   occ=np.clip(np.asarray(occupancy, float), 0.0, 1.0).copy(), target=target,
                   cutoff_log=float(cutoff_log), single=bool(single))

    def _radius(self, bt: np.ndarray) -> np.ndarray:
        # the widest Gaussian (b_k max) falls to exp(-c) of its peak at r^2 = c Bt / (4 pi^2)
        return np.sqrt(self.cutoff_log * (self.b.max(axis=1) + bt) / (4.0 * np.pi ** 2))

    def _filtered(self, raw: np.ndarray) -> np.ndarray:
        return sfft.irfftn(sfft.rfftn(raw, workers=-1) * self.kernel, s=raw.shape, workers=-1)

    def _target_filtered(self, raw: np.ndarray) -> np.ndarray:
        """:meth:`_filtered` of the targets: in single precision (float32 grid, complex64 transform)
        when ``single``; the kernels' sums over voxels stay float64 either way."""
        if not self.single:
            return self._filtered(raw)
        f = sfft.rfftn(raw.astype(np.float32), workers=-1)
        f *= self._kernel32
        return sfft.irfftn(f, s=raw.shape, workers=-1)

    def model_map(self, bvals: np.ndarray, occ: np.ndarray | None = None) -> np.ndarray:
        """Model map (cut at d, float64, box grid) for per-atom B ``bvals`` (Å²) and occupancies."""
        bt = np.asarray(bvals, float) + self.b_add
        a = self.a if occ is None else self.a0 * np.asarray(occ, float)[:, None]
        raw = np.zeros(self.rho_o.shape)
        _splat(raw.shape, self.step, self.grid_atoms, a, self.b, bt, self._radius(bt), raw)
        return self._filtered(raw)

    def cc(self, bvals: np.ndarray, occ: np.ndarray | None = None) -> float:
        """Pearson correlation of model map and map inside the mask."""
        rc = self.model_map(bvals, occ).ravel()[self._mask_idx]
        ro = self.rho_o.ravel()[self._mask_idx]
        return float(np.corrcoef(rc, ro)[0, 1])

    def evaluate(self, bvals: np.ndarray, occ: np.ndarray | None = None, wrt: str = "b"
                 ) -> tuple[float, np.ndarray, float]:
        """Misfit ``1 - CC^2`` over the mask and its gradient.

        ``1 - CC^2`` is the least-squares misfit ``sum_m (rho_o - k rho_c - c)^2`` after the
        best scale ``k`` and offset ``c``, divided by ``sum_m (rho_o - <rho_o>)^2``: CC is
        scale- and offset-free, so are ``k`` and ``c`` here (re-fitted at every call).

        Parameters
        ----------
        bvals : numpy.ndarray
            (N,) isotropic B, Å².
        occ : numpy.ndarray, optional
            (N,) occupancies (default: those given to :meth:`prepare`).
        wrt : {"b", "occ"}
            Gradient with respect to B (Å⁻²) or to occupancy.

        Returns
        -------
        misfit, gradient (N,), CC

        A call with the same B, occupancies, positions and ``wrt`` as the previous one returns the
        previous result (the refinements ask for the figures at their start and end twice).
        """
        bvals = np.array(bvals, float)
        a = self.a if occ is None else self.a0 * np.asarray(occ, float)[:, None]
        last = self._last
        if (last is not None and last[0] == wrt and np.array_equal(last[1], bvals) and np.array_equal(last[2], a)
                and np.array_equal(last[3], self.grid_atoms)):
            return last[4], last[5].copy(), last[6]
        out = self._evaluate(bvals, a, wrt)
        self._last = (wrt, bvals, a, self.grid_atoms.copy(), out[0], out[1].copy(), out[2])
        return out

    def _evaluate(self, bvals: np.ndarray, a: np.ndarray, wrt: str) -> tuple[float, np.ndarray, float]:
        self.n_eval += 1
        bt = bvals + self.b_add
        radius = self._radius(bt)
        raw = np.zeros(self.rho_o.shape)
        _splat(raw.shape, self.step, self.grid_atoms, a, self.b, bt, radius, raw)
        rc = self._target_filtered(raw).ravel()
        dr = np.zeros(rc.size)
        misfit, cc, k = _masked_fit(rc, self._ro_c, self._mask_idx, self.ss_obs, dr)
        if k == 0.0:
            return 1.0, np.zeros(len(bt)), 0.0
        back = np.ascontiguousarray(self._target_filtered(dr.reshape(self.rho_o.shape)))
        grad = np.empty(len(bt))
        if wrt == "b":
            _gather(back, self.step, self.grid_atoms, a, self.b, bt, radius, 0, grad)
        else:
            _gather(back, self.step, self.grid_atoms, self.a0, self.b, bt, radius, 1, grad)
        return float(misfit), grad, float(cc)

    @property
    def n_fit(self) -> int:
        """Number of atoms that contribute to the model map (non-zero occupancy)."""
        return int(np.count_nonzero(self.occ > 0))

    def evaluate_positions(self, xyz: np.ndarray, bvals: np.ndarray, moving: np.ndarray | None = None
                           ) -> tuple[float, np.ndarray, float]:
        """Misfit ``1 - CC^2`` over the mask for atoms at ``xyz`` (Å), its gradient (N, 3) in Å⁻¹, and CC.

        The mask, box and scattering coefficients stay those of :meth:`prepare`; only the
        positions change (atoms must stay inside the box, which the padding allows for).
        ``moving`` (bool per atom): only these atoms' gradient is computed (the others' rows are
        zero), and the model map of the other atoms is kept between calls while their positions and
        B stay the same (a local minimisation of a few residues then costs two transforms per call,
        not the whole model's density).
        """
        self.n_eval += 1
        g = np.ascontiguousarray(self.box.grid_coordinates(np.asarray(xyz, float).reshape(-1, 3)))
        bt = np.asarray(bvals, float) + self.b_add
        a = self.a
        radius = self._radius(bt)
        if moving is None:
            raw = np.zeros(self.rho_o.shape)
            _splat(raw.shape, self.step, g, a, self.b, bt, radius, raw)
            sel = np.arange(len(bt))
        else:
            moving = np.asarray(moving, bool)
            sel = np.flatnonzero(moving)
            raw = self._held_map(g, bt, radius, ~moving).copy()
            _splat(raw.shape, self.step, g[sel], a[sel], self.b[sel], bt[sel], radius[sel], raw)
        rc = self._target_filtered(raw).ravel()
        dr = np.zeros(rc.size)
        misfit, cc, k = _masked_fit(rc, self._ro_c, self._mask_idx, self.ss_obs, dr)
        if k == 0.0:
            return 1.0, np.zeros((len(bt), 3)), 0.0
        back = np.ascontiguousarray(self._target_filtered(dr.reshape(self.rho_o.shape)))
        part = np.empty((len(sel), 3))
        _gather_position(back, self.step, np.ascontiguousarray(g[sel]), a[sel], self.b[sel], bt[sel], radius[sel],
                         part)
        grad = np.zeros((len(bt), 3))
        grad[sel] = part
        return float(misfit), grad, float(cc)

    def _held_map(self, g: np.ndarray, bt: np.ndarray, radius: np.ndarray, held: np.ndarray) -> np.ndarray:
        """Unfiltered model map of the atoms ``held`` (grid positions ``g``, total B ``bt``), reused
        while the same atoms sit at the same positions with the same B."""
        key = self._held
        if (key is not None and np.array_equal(key[0], held) and np.array_equal(key[1], g[held])
                and np.array_equal(key[2], bt[held])):
            return key[3]
        raw = np.zeros(self.rho_o.shape)
        _splat(raw.shape, self.step, np.ascontiguousarray(g[held]), self.a[held], self.b[held], bt[held],
               radius[held], raw)
        self._held = (held.copy(), g[held], bt[held], raw)
        return raw
