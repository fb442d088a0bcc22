"""Trilinear interpolation of a density map at arbitrary positions (value, and value + gradient).

Trilinear interpolation is the convention of the reference tools whose metrics we reproduce:
UCSF Chimera's ``Volume.interpolated_values`` (used by MapQ for Q-scores) and the EMDB validation
analysis (atom inclusion) both interpolate linearly along each grid axis between the eight
surrounding voxels.

Kernels work on fractional voxel indices (``DensityMap.grid_coordinates``) of an array indexed
``[ix, iy, iz]``. A position is *inside* when ``0 <= g <= n - 1`` on every axis (the region spanned
by voxel centres); outside it the kernels return the caller's ``fill`` value (gradient 0), because
the map says nothing there.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .mapio import DensityMap


@njit(cache=True, inline="always")
def _corner(g, n):
    """Lower corner index, upper index and fraction along one axis; ok False when outside."""
    if not (g >= 0.0 and g <= n - 1.0):  # also catches NaN
        return 0, 0, 0.0, False
    i0 = int(np.floor(g))
    if i0 >= n - 1:
        # exactly on the last plane: use the last cell with fraction 1 (or a 1-voxel axis)
        i0 = max(n - 2, 0)
    i1 = min(i0 + 1, n - 1)
    return i0, i1, g - i0, True


@njit(cache=True)
def trilinear_point(data, gx, gy, gz, fill):
    """Value of ``data`` (float array ``[ix, iy, iz]``) at fractional voxel index (gx, gy, gz)."""
    nx, ny, nz = data.shape
    x0, x1, tx, okx = _corner(gx, nx)
    y0, y1, ty, oky = _corner(gy, ny)
    z0, z1, tz, okz = _corner(gz, nz)
    if not (okx and oky and okz):
        return fill
    c00 = data[x0, y0, z0] * (1.0 - tx) + data[x1, y0, z0] * tx
    c10 = data[x0, y1, z0] * (1.0 - tx) + data[x1, y1, z0] * tx
    c01 = data[x0, y0, z1] * (1.0 - tx) + data[x1, y0, z1] * tx
    c11 = data[x0, y1, z1] * (1.0 - tx) + data[x1, y1, z1] * tx
    c0 = c00 * (1.0 - ty) + c10 * ty
    c1 = c01 * (1.0 - ty) + c11 * ty
    return c0 * (1.0 - tz) + c1 * tz


@njit(cache=True, parallel=True)
def trilinear(data, grid, fill):
    """Values of ``data`` at fractional voxel indices ``grid`` (N, 3); ``fill`` outside the map."""
    n = grid.shape[0]
    out = np.empty(n, dtype=np.float64)
    for i in prange(n):
        out[i] = trilinear_point(data, grid[i, 0], grid[i, 1], grid[i, 2], fill)
    return out


@njit(cache=True)
def trilinear_gradient_point(data, gx, gy, gz, fill, grad):
    """Value at (gx, gy, gz); writes d value / d grid index (per voxel step) into ``grad`` (3,).

    The gradient is the exact derivative of the trilinear interpolant (piecewise constant
    across voxel faces). Outside the map: returns ``fill`` and a zero gradient.
    """
    nx, ny, nz = data.shape
    x0, x1, tx, okx = _corner(gx, nx)
    y0, y1, ty, oky = _corner(gy, ny)
    z0, z1, tz, okz = _corner(gz, nz)
    if not (okx and oky and okz):
        grad[0] = 0.0
        grad[1] = 0.0
        grad[2] = 0.0
        return fill
    v000 = data[x0, y0, z0]
    v100 = data[x1, y0, z0]
    v010 = data[x0, y1, z0]
    v110 = data[x1, y1, z0]
    v001 = data[x0, y0, z1]
    v101 = data[x1, y0, z1]
    v011 = data[x0, y1, z1]
    v111 = data[x1, y1, z1]
    ux, uy, uz = 1.0 - tx, 1.0 - ty, 1.0 - tz
    c00 = v000 * ux + v100 * tx
    c10 = v010 * ux + v110 * tx
    c01 = v001 * ux + v101 * tx
    c11 = v011 * ux + v111 * tx
    c0 = c00 * uy + c10 * ty
    c1 = c01 * uy + c11 * ty
    # a 1-voxel axis has x1 == x0 and no slope along it
    sx = 1.0 if x1 != x0 else 0.0
    sy = 1.0 if y1 != y0 else 0.0
    sz = 1.0 if z1 != z0 else 0.0
    dx0 = (v100 - v000) * uy + (v110 - v010) * ty
    dx1 = (v101 - v001) * uy + (v111 - v011) * ty
    grad[0] = sx * (dx0 * uz + dx1 * tz)
    grad[1] = sy * ((c10 - c00) * uz + (c11 - c01) * tz)
    grad[2] = sz * (c1 - c0)
    return c0 * uz + c1 * tz


@njit(cache=True, parallel=True)
def trilinear_with_gradient(data, grid, fill):
    """Values (N,) and gradients (N, 3) per voxel step at fractional voxel indices ``grid``."""
    n = grid.shape[0]
    out = np.empty(n, dtype=np.float64)
    grad = np.zeros((n, 3), dtype=np.float64)
    for i in prange(n):
        out[i] = trilinear_gradient_point(data, grid[i, 0], grid[i, 1], grid[i, 2], fill, grad[i])
    return out, grad


def values_at(dmap: DensityMap, xyz: np.ndarray, outside: float = np.nan) -> np.ndarray:
    """Trilinearly interpolated map values at Cartesian positions ``xyz`` (Å, shape (N, 3)).

    Parameters
    ----------
    dmap : DensityMap
        The map; its origin (including a Chimera ``ORIGIN`` offset) places it in the model frame.
    xyz : array_like
        Positions, Å.
    outside : float
        Value returned for positions outside the map box (default NaN).

    Returns
    -------
    numpy.ndarray
        float64 values (map units, e.g. e/Å³), shape (N,).
    """
    grid = np.ascontiguousarray(dmap.grid_coordinates(xyz))
    return trilinear(dmap.data, grid, float(outside))


def values_and_gradients_at(dmap: DensityMap, xyz: np.ndarray, outside: float = np.nan):
    """Interpolated values (N,) and Cartesian gradients (N, 3), map units per Å, at ``xyz`` (Å).

    The gradient of the trilinear interpolant with respect to the Cartesian position, i.e. the
    derivative used when a refinement target sums interpolated map values at atom centres.
    Positions outside the map get ``outside`` and a zero gradient.
    """
    grid = np.ascontiguousarray(dmap.grid_coordinates(xyz))
    vals, ggrid = trilinear_with_gradient(dmap.data, grid, float(outside))
    # g = inv(orth) (x - origin)  =>  dv/dx = inv(orth)^T dv/dg
    inv = np.linalg.inv(dmap.orth_matrix)
    return vals, ggrid @ inv
