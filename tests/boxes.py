"""Blank map boxes for tests and benchmarks: an empty orthogonal grid placed in model coordinates.

Used where a map's grid is needed without its values (a model map on a grid of one's choosing).
"""

from __future__ import annotations

import gemmi
import numpy as np

from rerefine.refine import mapio


def blank_box(origin, shape, voxel: float, name: str = "box") -> mapio.DensityMap:
    """A zero map of ``shape`` voxels of ``voxel`` Å (cubic), its first voxel at ``origin`` (Å)."""
    shape = tuple(int(n) for n in shape)
    return mapio.DensityMap(data=np.zeros(shape, np.float32),
                            cell=gemmi.UnitCell(*(n * voxel for n in shape), 90, 90, 90),
                            sampling=shape, origin_shift=np.asarray(origin, float), name=name)


def box_around(xyz: np.ndarray, voxel: float, pad: float = 8.0, name: str = "box") -> mapio.DensityMap:
    """A zero map covering the points ``xyz`` (N, 3; Å) with ``pad`` Å on every side."""
    lo = xyz.min(0) - pad
    shape = np.ceil((xyz.max(0) + pad - lo) / voxel)
    return blank_box(lo, shape, voxel, name)
