"""Isotropic atomic displacement parameters (B, Å²) refined against a map by fitting the model map.

Following real-space ADP refinement in Phenix (Afonine et al. 2018, Acta Cryst. D74:531,
section 2.4: B factors are refined by fitting a model-calculated map to the experimental
map, grouped per residue first, then individually, with restraints between bonded atoms),
the data term is the least-squares misfit, inside the model mask, between the
experimental map ``rho_o`` (low-pass filtered to the resolution d) and the scaled model
map ``k rho_c + c`` where ``k`` and ``c`` are re-fitted at every evaluation. With optimal
``k`` and ``c`` this is ``(1 - CC_mask^2) * sum_m (rho_o - <rho_o>)^2``, so lowering it
raises the masked correlation.

The model map is the exact one cut at d: each atom is a sum of five Gaussians (electron
scattering factors, International Tables C 4.3.2.2, ``gemmi.Element.c4322``) with its
B plus an extra blur ``B_add``, placed on the grid in real space; in Fourier space the
extra blur is removed (``exp(+B_add s^2/4)``) and the same low-pass filter as the data
is applied. ``B_add`` only keeps the placed Gaussians sampled finely enough that nothing
aliases below 1/d. The filter is linear and symmetric, so the gradient with respect to
each B is the filtered residual map gathered over that atom's Gaussians: two FFT pairs
per evaluation whatever the number of atoms.

Restraint: bonded atoms (pairs closer than 2.1 Å unless a bond list is given) should have
similar B, ``sum (B_i - B_j)^2 / sigma^2`` (Phenix's ADP similarity restraint, there
scaled by distance; here flat).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import gemmi
import numpy as np
from numba import njit, prange
from scipy import fft as sfft
from scipy import optimize
from scipy.spatial import cKDTree

from .errors import InputError
from .mapio import DensityMap, cut_box
from .maptarget import _reciprocal_sq, resolution_filter

log = logging.getLogger(__name__)

B_MIN = 1.0
B_MAX = 500.0


@njit(cache=True, inline="always")
def _atom_tables(n, g_atoms, step, a, b, bt_extra, radius, shape, ex_x, ex_y, ex_z, pre, ex):
    """Per-axis 1-D Gaussian factors of atom ``n`` (orthogonal grid: exp(-c r^2) separates).

    Returns the index ranges covered; ``ex_*[k, i]`` holds ``exp(ex_k * (dx_i * h)^2)``.
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
        for i in range(x0, x1 + 1):
            d = (i - gx) * step[0]
            ex_x[k, i - x0] = np.exp(ex[k] * d * d)
        for j in range(y0, y1 + 1):
            d = (j - gy) * step[1]
            ex_y[k, j - y0] = np.exp(ex[k] * d * d)
        for l in range(z0, z1 + 1):
            d = (l - gz) * step[2]
            ex_z[k, l - z0] = np.exp(ex[k] * d * d)
    return x0, x1, y0, y1, z0, z1


@njit(cache=True)
def _splat(shape, step, g_atoms, a, b, bt_extra, radius, out):
    """Add each atom's Gaussians ``a_k (4 pi / Bt)^1.5 exp(-4 pi^2 r^2 / Bt)``, ``Bt = b_k + B``, to ``out``.

    Orthogonal grid with voxel edges ``step`` (Å); ``g_atoms`` fractional grid positions;
    ``a``/``b`` (N, 5) scattering coefficients; ``bt_extra`` (N,) B incl. blur; ``radius``
    (N,) cut-off, Å. Serial because atoms overlap on the grid.
    """
    m = int(2.0 * radius.max() / step.min()) + 3
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
                for l in range(z0, z1 + 1):
                    dz = (l - gz) * step[2]
                    if dxy + dz * dz > r2:
                        continue
                    v = 0.0
                    for k in range(5):
                        v += pre[k] * ex_x[k, i - x0] * ex_y[k, j - y0] * ex_z[k, l - z0]
                    out[i, j, l] += v


@njit(cache=True, parallel=True)
def _gather_db(resid, step, g_atoms, a, b, bt_extra, radius, grad):
    """grad[n] = sum over the atom's voxels of ``resid * d(density_n)/dB_n`` (orthogonal grid)."""
    shape = resid.shape
    m = int(2.0 * radius.max() / step.min()) + 3
    for n in prange(g_atoms.shape[0]):
        ex_x = np.empty((5, m))
        ex_y = np.empty((5, m))
        ex_z = np.empty((5, m))
        pre = np.empty(5)
        ex = np.empty(5)
        x0, x1, y0, y1, z0, z1 = _atom_tables(n, g_atoms, step, a, b, bt_extra, radius, shape,
                                              ex_x, ex_y, ex_z, pre, ex)
        r2 = radius[n] * radius[n]
        gx, gy, gz = g_atoms[n, 0], g_atoms[n, 1], g_atoms[n, 2]
        # d/dBt [(4pi/Bt)^1.5 exp(-4pi^2 r^2/Bt)] = g (-1.5/Bt + 4pi^2 r^2/Bt^2); with ex = -4pi^2/Bt
        # this is g * (c0 + c1 r^2), c0 = -1.5/Bt, c1 = -ex/Bt
        c0 = np.empty(5)
        c1 = np.empty(5)
        for k in range(5):
            bt = b[n, k] + bt_extra[n]
            c0[k] = -1.5 / bt
            c1[k] = -ex[k] / bt
        acc = 0.0
        for i in range(x0, x1 + 1):
            dx = (i - gx) * step[0]
            for j in range(y0, y1 + 1):
                dy = (j - gy) * step[1]
                dxy = dx * dx + dy * dy
                if dxy > r2:
                    continue
                for l in range(z0, z1 + 1):
                    rv = resid[i, j, l]
                    if rv == 0.0:
                        continue
                    dz = (l - gz) * step[2]
                    d2 = dxy + dz * dz
                    if d2 > r2:
                        continue
                    v = 0.0
                    for k in range(5):
                        gk = pre[k] * ex_x[k, i - x0] * ex_y[k, j - y0] * ex_z[k, l - z0]
                        v += gk * (c0[k] + c1[k] * d2)
                    acc += rv * v
        grad[n] = acc


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


def _alias_free_blur(dmap: DensityMap, resolution: float) -> float:
    """Smallest total Gaussian B (Å²) whose image beyond ``1/h - 1/d`` is below exp(-7) (h = voxel)."""
    h = float(np.max(dmap.voxel_size))
    s_alias = 1.0 / h - 1.0 / resolution
    if s_alias <= 0:
        raise ValueError(f"{dmap.name}: voxel {h:.2f} Å too coarse for resolution {resolution} Å")
    return 28.0 / (s_alias * s_alias)


@dataclass
class ModelMapFit:
    """The model-map fit of one model against one (boxed, filtered) map, for B refinement.

    Build with :meth:`prepare`; then :meth:`evaluate` gives the data term and its gradient
    for any B vector.
    """

    box: DensityMap
    rho_o: np.ndarray  # filtered map in the box, float64
    mask: np.ndarray  # bool, model mask
    kernel: np.ndarray  # rfft-space filter x deblur
    grid_atoms: np.ndarray  # (N, 3) fractional grid positions in the box
    step: np.ndarray  # voxel edges, Å (orthogonal grid)
    a: np.ndarray  # (N, 5) scattering coefficients x occupancy
    b: np.ndarray  # (N, 5)
    b_add: float
    resolution: float
    ss_obs: float  # sum over the mask of (rho_o - mean)^2
    n_eval: int = field(default=0)

    @classmethod
    def prepare(cls, dmap: DensityMap, xyz: np.ndarray, elements: list[str], occupancy: np.ndarray,
                resolution: float, *, mask_radius: float | None = None, padding: float | None = None
                ) -> ModelMapFit:
        """Cut the map around ``xyz`` (Å), filter it to ``resolution`` and build the mask.

        ``mask_radius`` (Å) defaults to ``max(2.5, 0.75 d)``; ``padding`` to the splat radius
        so no atom's density wraps around the box in the FFT.
        """
        xyz = np.asarray(xyz, float).reshape(-1, 3)
        if mask_radius is None:
            mask_radius = max(2.5, 0.75 * resolution)
        b_add = _alias_free_blur(dmap, resolution)
        if padding is None:
            padding = mask_radius + 3.0
        if not dmap.is_orthogonal:
            raise InputError(f"{dmap.name}: B refinement needs an orthogonal map cell")
        box = cut_box(dmap, xyz, padding)
        data = np.asarray(box.data, dtype=np.float64)
        s2 = _reciprocal_sq(box, data.shape)
        filt = resolution_filter(s2, resolution)
        rho_o = sfft.irfftn(sfft.rfftn(data, workers=-1) * filt, s=data.shape, workers=-1)
        kernel = filt * np.exp(np.minimum(b_add * s2 / 4.0, 50.0)) * (filt > 0)
        step = np.ascontiguousarray(box.voxel_size, dtype=np.float64)
        g = np.ascontiguousarray(box.grid_coordinates(xyz))
        mask = np.zeros(data.shape, dtype=np.bool_)
        _mask_atoms(data.shape, step, g, float(mask_radius), mask)
        coef = {}
        a = np.empty((len(xyz), 5))
        b = np.empty((len(xyz), 5))
        for i, el in enumerate(elements):
            if el not in coef:
                c = gemmi.Element(el).c4322
                coef[el] = (np.array(c.a), np.array(c.b))
            a[i], b[i] = coef[el]
        a *= np.clip(np.asarray(occupancy, float), 0.0, 1.0)[:, None]
        obs = rho_o[mask]
        ss = float(((obs - obs.mean()) ** 2).sum())
        return cls(box=box, rho_o=rho_o, mask=mask, kernel=kernel, grid_atoms=g, step=step,
                   a=a, b=b, b_add=b_add, resolution=float(resolution), ss_obs=ss)

    def _radius(self, bt: np.ndarray) -> np.ndarray:
        # the widest Gaussian (b_k max) falls to exp(-6.9) of its peak at r^2 = 6.9 Bt / (4 pi^2)
        return np.sqrt(6.9 * (self.b.max(axis=1) + bt) / (4.0 * np.pi ** 2))

    def model_map(self, bvals: np.ndarray) -> np.ndarray:
        """Model map (filtered at d, float64, box grid) for per-atom B ``bvals`` (Å²)."""
        bt = np.asarray(bvals, float) + self.b_add
        raw = np.zeros(self.rho_o.shape)
        _splat(raw.shape, self.step, self.grid_atoms, self.a, self.b, bt, self._radius(bt), raw)
        return sfft.irfftn(sfft.rfftn(raw, workers=-1) * self.kernel, s=raw.shape, workers=-1)

    def cc(self, bvals: np.ndarray) -> float:
        """Pearson correlation of model and filtered map inside the mask."""
        rc = self.model_map(bvals)[self.mask]
        ro = self.rho_o[self.mask]
        return float(np.corrcoef(rc, ro)[0, 1])

    def evaluate(self, bvals: np.ndarray) -> tuple[float, np.ndarray, float]:
        """``(1 - CC^2)`` over the mask (least-squares misfit after the best scale and offset) and d/dB.

        Returns the misfit, its gradient (N,) in Å⁻², and the CC.
        """
        self.n_eval += 1
        bt = np.asarray(bvals, float) + self.b_add
        radius = self._radius(bt)
        raw = np.zeros(self.rho_o.shape)
        _splat(raw.shape, self.step, self.grid_atoms, self.a, self.b, bt, radius, raw)
        rc_full = sfft.irfftn(sfft.rfftn(raw, workers=-1) * self.kernel, s=raw.shape, workers=-1)
        rc = rc_full[self.mask]
        ro = self.rho_o[self.mask]
        rc_c = rc - rc.mean()
        ro_c = ro - ro.mean()
        var_c = float(np.dot(rc_c, rc_c))
        if var_c <= 0:
            return 1.0, np.zeros(len(bt)), 0.0
        k = float(np.dot(rc_c, ro_c)) / var_c
        res = ro_c - k * rc_c
        misfit = float(np.dot(res, res)) / self.ss_obs
        # d misfit / d rho_c(v) = -2 k res(v) / ss on the mask (k, c optimal: envelope theorem)
        dr = np.zeros(self.rho_o.shape)
        dr[self.mask] = -2.0 * k * res / self.ss_obs
        back = sfft.irfftn(sfft.rfftn(dr, workers=-1) * self.kernel, s=dr.shape, workers=-1)
        grad = np.empty(len(bt))
        _gather_db(np.ascontiguousarray(back), self.step, self.grid_atoms, self.a, self.b, bt, radius, grad)
        cc = float(np.dot(rc_c, ro_c)) / np.sqrt(var_c * float(np.dot(ro_c, ro_c)))
        return misfit, grad, cc


def bonded_pairs(xyz: np.ndarray, cutoff: float = 2.1) -> np.ndarray:
    """Pairs of atoms closer than ``cutoff`` Å (a stand-in for the bond list), shape (M, 2)."""
    tree = cKDTree(np.asarray(xyz, float).reshape(-1, 3))
    return tree.query_pairs(cutoff, output_type="ndarray").astype(np.int64).reshape(-1, 2)


@dataclass
class AdpResult:
    """Outcome of :func:`refine_adp`."""

    b: np.ndarray
    cc_before: float
    cc_after: float
    evaluations: int
    stages: list = field(default_factory=list)


def _similarity(bvals: np.ndarray, pairs: np.ndarray, sigma: float) -> tuple[float, np.ndarray]:
    d = bvals[pairs[:, 0]] - bvals[pairs[:, 1]]
    e = float(np.dot(d, d)) / sigma ** 2
    g = np.zeros_like(bvals)
    np.add.at(g, pairs[:, 0], 2.0 * d / sigma ** 2)
    np.add.at(g, pairs[:, 1], -2.0 * d / sigma ** 2)
    return e, g


def refine_adp(st: gemmi.Structure, dmap: DensityMap, resolution: float, *, xyz: np.ndarray | None = None,
               pairs: np.ndarray | None = None, fixed: np.ndarray | None = None, group: bool = True,
               individual: bool = True, sigma: float = 10.0, data_weight: float | None = None,
               max_iter: int = 40, fit: ModelMapFit | None = None) -> AdpResult:
    """Refine isotropic B (Å²) of the atoms of ``st[0]`` against ``dmap``; writes them into ``st``.

    Stages: one B per residue (all its atoms move together), then one per atom with the
    bonded-atom similarity restraint. L-BFGS-B keeps B in [1, 500] Å².

    Parameters
    ----------
    st : gemmi.Structure
        Model; atoms in ``st[0].all()`` order. B values are updated in place.
    dmap : DensityMap
        Experimental map.
    resolution : float
        Å.
    xyz : numpy.ndarray, optional
        Positions to use instead of those in ``st``.
    pairs : numpy.ndarray, optional
        (M, 2) bonded atom indices for the similarity restraint (default: pairs < 2.1 Å).
    fixed : numpy.ndarray, optional
        Boolean mask of atoms whose B stays as it is.
    sigma : float
        Å², allowed B difference between bonded atoms.
    data_weight : float, optional
        Multiplier of the data term ``(1 - CC^2)``; default: number of atoms x 2 / (1 - CC0^2),
        i.e. a misfit change of half its starting value is worth one unit per atom.
    """
    atoms = [cra.atom for cra in st[0].all()]
    n = len(atoms)
    if xyz is None:
        xyz = np.array([a.pos.tolist() for a in atoms], float).reshape(-1, 3)
    b0 = np.array([a.b_iso for a in atoms], float)
    b0 = np.clip(np.where(np.isfinite(b0), b0, 30.0), B_MIN, B_MAX)
    if fit is None:
        fit = ModelMapFit.prepare(dmap, xyz, [a.element.name for a in atoms],
                                  np.array([a.occ for a in atoms]), resolution)
    if pairs is None:
        pairs = bonded_pairs(xyz)
    free = np.ones(n, bool) if fixed is None else ~np.asarray(fixed, bool)
    misfit0, _, cc0 = fit.evaluate(b0)
    if data_weight is None:
        data_weight = 2.0 * n / max(misfit0, 1e-6)
    result = AdpResult(b=b0.copy(), cc_before=cc0, cc_after=cc0, evaluations=0)
    bcur = b0.copy()

    def total(bvals):
        m, g, _ = fit.evaluate(bvals)
        e_s, g_s = _similarity(bvals, pairs, sigma)
        return data_weight * m + e_s, data_weight * g + g_s

    if group:
        # residue index of each atom; fixed atoms form no group
        res_of = np.empty(n, np.int64)
        k = 0
        r = 0
        for ch in st[0]:
            for res in ch:
                for _ in res:
                    res_of[k] = r
                    k += 1
                r += 1
        ngroups = r
        # start each group at the mean B of its free atoms
        cnt = np.bincount(res_of[free], minlength=ngroups).astype(float)
        gmean = np.bincount(res_of[free], weights=bcur[free], minlength=ngroups) / np.maximum(cnt, 1)

        def fg(p):
            bb = bcur.copy()
            bb[free] = p[res_of[free]]
            e, g = total(bb)
            return e, np.bincount(res_of[free], weights=g[free], minlength=ngroups)

        sol = optimize.minimize(fg, gmean, jac=True, method="L-BFGS-B",
                                bounds=[(B_MIN, B_MAX)] * ngroups, options={"maxiter": max_iter})
        if np.all(np.isfinite(sol.x)):
            bcur[free] = sol.x[res_of[free]]
        result.stages.append({"stage": "group", "iterations": int(sol.nit), "cc": fit.evaluate(bcur)[2]})
    if individual:
        def fi(p):
            bb = bcur.copy()
            bb[free] = p
            e, g = total(bb)
            return e, g[free]

        sol = optimize.minimize(fi, bcur[free], jac=True, method="L-BFGS-B",
                                bounds=[(B_MIN, B_MAX)] * int(free.sum()), options={"maxiter": max_iter})
        if np.all(np.isfinite(sol.x)):
            bcur[free] = sol.x
        result.stages.append({"stage": "individual", "iterations": int(sol.nit), "cc": fit.evaluate(bcur)[2]})
    cc1 = fit.evaluate(bcur)[2]
    if not np.isfinite(cc1) or cc1 < cc0 - 1e-4:
        log.warning("B refinement lowered CC (%.4f -> %.4f); keeping input B", cc0, cc1)
        bcur, cc1 = b0, cc0
    for a, bv in zip(atoms, bcur):
        a.b_iso = float(bv)
    result.b = bcur
    result.cc_after = cc1
    result.evaluations = fit.n_eval
    return result
