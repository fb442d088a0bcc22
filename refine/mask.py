"""The molecular mask used by CCmask: the bulk-solvent mask of cctbx.

Definition (Jiang & Brünger 1994, J. Mol. Biol. 243:100; as implemented by cctbx's
``mmtbx.masks`` / ``cctbx.masks.around_atoms`` and used by
``mmtbx.maps.correlation.five_cc`` for CC_mask, Afonine et al. 2018 Acta Cryst D74:814):

1. Every grid point closer than ``r_vdw + r_solvent`` to an atom is *not* solvent;
   points closer than ``r_vdw`` to an atom are *molecule*, the others in that shell are
   *boundary*. ``r_solvent = 1.11`` Å, ``r_vdw`` per element (cctbx's
   ``eltbx.van_der_waals_radii`` table: Bondi 1964, Fokine et al. 2003 for C N O S P).
2. Shrink: a boundary point becomes solvent when a solvent point (from step 1) lies
   closer than ``r_shrink = 0.9`` Å; otherwise it becomes molecule.

Every atom takes part, hydrogens and zero-occupancy atoms included (as in cctbx).
Differences from cctbx: the box is not treated as periodic (a mask never wraps from
one face of the box to the opposite face), and grid points outside the box are not
looked at during shrinking.
"""

from __future__ import annotations

import gemmi
import numpy as np
from numba import njit

from rerefine.common.errors import InputError
from .mapio import DensityMap

SOLVENT_RADIUS = 1.11
SHRINK_RADIUS = 0.9

#: van der Waals radii, Å, as tabulated in cctbx/eltbx/van_der_waals_radii.py
#: (values taken by the element symbol; D as H).
VDW_RADII = {
    "H": 1.20, "D": 1.20, "He": 1.40, "Li": 1.82, "Be": 0.63, "B": 1.75, "C": 1.775,
    "N": 1.50, "O": 1.45, "F": 1.47, "Ne": 1.54, "Na": 2.27, "Mg": 1.73, "Al": 1.50,
    "Si": 2.10, "P": 1.90, "S": 1.80, "Cl": 1.75, "Ar": 1.88, "K": 2.75, "Ca": 1.95,
    "Sc": 1.32, "Ti": 1.95, "V": 1.06, "Cr": 1.13, "Mn": 1.19, "Fe": 1.26, "Co": 1.13,
    "Ni": 1.63, "Cu": 1.40, "Zn": 1.39, "Ga": 1.87, "Ge": 1.48, "As": 0.83, "Se": 1.90,
    "Br": 1.85, "Kr": 2.02, "Rb": 2.65, "Sr": 2.02, "Y": 1.61, "Zr": 1.42, "Nb": 1.33,
    "Mo": 1.75, "Tc": 2.00, "Ru": 1.20, "Rh": 1.22, "Pd": 1.63, "Ag": 1.72, "Cd": 1.58,
    "In": 1.93, "Sn": 2.17, "Sb": 1.12, "Te": 1.26, "I": 1.98, "Xe": 2.16, "Cs": 3.01,
    "Ba": 2.41, "La": 1.83, "Ce": 1.86, "Pr": 1.62, "Nd": 1.79, "Pm": 1.76, "Sm": 1.74,
    "Eu": 1.96, "Gd": 1.69, "Tb": 1.66, "Dy": 1.63, "Ho": 1.61, "Er": 1.59, "Tm": 1.57,
    "Yb": 1.54, "Lu": 1.53, "Hf": 1.40, "Ta": 1.22, "W": 1.26, "Re": 1.30, "Os": 1.58,
    "Ir": 1.22, "Pt": 1.72, "Au": 1.66, "Hg": 1.55, "Tl": 1.96, "Pb": 2.02, "Bi": 1.73,
    "Po": 1.21, "At": 1.12, "Rn": 2.30, "Fr": 3.24, "Ra": 2.57, "Ac": 2.12, "Th": 1.84,
    "Pa": 1.60, "U": 1.75, "Np": 1.71, "Pu": 1.67, "Am": 1.66, "Cm": 1.65, "Bk": 1.64,
    "Cf": 1.63, "Es": 1.62, "Fm": 1.61, "Md": 1.60, "No": 1.59, "Lr": 1.58,
}


def vdw_radii(st: gemmi.Structure) -> np.ndarray:
    """Per-atom van der Waals radius (Å) of the first model, in ``st[0].all()`` order.

    Raises :class:`InputError` for an element without a tabulated radius.
    """
    out = []
    for cra in st[0].all():
        el = cra.atom.element.name
        r = VDW_RADII.get(el)
        if r is None:
            raise InputError(f"{st.name or 'model'}: no van der Waals radius for element {el!r} "
                             f"(atom {cra.chain.name}/{cra.residue.name}{cra.residue.seqid}/{cra.atom.name})")
        out.append(r)
    return np.array(out, dtype=np.float64)


@njit(cache=True)
def _mark_atoms(grid_xyz, radii, r_solv, h, shape):
    # 1 = solvent, 0 = molecule, -1 = boundary shell (step 1 of the module docstring).
    data = np.ones((shape[0], shape[1], shape[2]), dtype=np.int8)
    for a in range(grid_xyz.shape[0]):
        r = radii[a]
        cut = r + r_solv
        cut2 = cut * cut
        r2 = r * r
        lo = np.empty(3, np.int64)
        hi = np.empty(3, np.int64)
        for d in range(3):
            lo[d] = max(0, int(np.floor(grid_xyz[a, d] - cut / h[d])))
            hi[d] = min(shape[d] - 1, int(np.ceil(grid_xyz[a, d] + cut / h[d])))
        for i in range(lo[0], hi[0] + 1):
            dx = (i - grid_xyz[a, 0]) * h[0]
            dx2 = dx * dx
            if dx2 >= cut2:
                continue
            for j in range(lo[1], hi[1] + 1):
                dy = (j - grid_xyz[a, 1]) * h[1]
                dxy2 = dx2 + dy * dy
                if dxy2 >= cut2:
                    continue
                for k in range(lo[2], hi[2] + 1):
                    dz = (k - grid_xyz[a, 2]) * h[2]
                    d2 = dxy2 + dz * dz
                    if d2 < cut2:
                        if d2 < r2:
                            data[i, j, k] = 0
                        elif data[i, j, k] != 0:
                            data[i, j, k] = -1
    return data


@njit(cache=True)
def _shrink(data, offsets):
    # Boundary points next to solvent (within the shrink radius) become solvent.
    nx, ny, nz = data.shape
    out = np.empty_like(data)
    for i in range(nx):
        for j in range(ny):
            for k in range(nz):
                v = data[i, j, k]
                if v != -1:
                    out[i, j, k] = v
                    continue
                res = 0
                for o in range(offsets.shape[0]):
                    ii = i + offsets[o, 0]
                    jj = j + offsets[o, 1]
                    kk = k + offsets[o, 2]
                    if ii < 0 or jj < 0 or kk < 0 or ii >= nx or jj >= ny or kk >= nz:
                        continue
                    if data[ii, jj, kk] == 1:
                        res = 1
                        break
                out[i, j, k] = res
    return out


def _shrink_offsets(h: np.ndarray, radius: float) -> np.ndarray:
    n = np.ceil(radius / h).astype(int)
    g = np.mgrid[-n[0]:n[0] + 1, -n[1]:n[1] + 1, -n[2]:n[2] + 1].reshape(3, -1).T
    d2 = ((g * h) ** 2).sum(axis=1)
    sel = (d2 < radius * radius) & (d2 > 0)
    g = g[sel]
    # Nearest first: solvent is usually found at once.
    return np.ascontiguousarray(g[np.argsort(d2[sel])], dtype=np.int64)


def molecular_mask(st: gemmi.Structure, dmap: DensityMap, *, solvent_radius: float = SOLVENT_RADIUS,
                   shrink_radius: float = SHRINK_RADIUS) -> np.ndarray:
    """Boolean molecular mask (True inside the molecule) on the grid of ``dmap``.

    Parameters
    ----------
    st : gemmi.Structure
        Model (first model), same frame as ``dmap``.
    dmap : DensityMap
        Map whose grid the mask is made on (orthogonal cell).
    solvent_radius, shrink_radius : float
        Å; defaults 1.11 and 0.9 as in cctbx.
    """
    if not dmap.is_orthogonal:
        raise InputError(f"{dmap.name}: the molecular mask needs an orthogonal map cell")
    xyz = np.array([cra.atom.pos.tolist() for cra in st[0].all()], dtype=np.float64).reshape(-1, 3)
    return mask_from_atoms(dmap, xyz, vdw_radii(st), solvent_radius=solvent_radius, shrink_radius=shrink_radius)


def mask_from_atoms(dmap: DensityMap, xyz: np.ndarray, radii: np.ndarray, *,
                    solvent_radius: float = SOLVENT_RADIUS, shrink_radius: float = SHRINK_RADIUS) -> np.ndarray:
    """:func:`molecular_mask` from atom positions ``xyz`` (N, 3; Å, the map's frame) and their
    van der Waals radii ``radii`` (N; Å) on the grid of ``dmap`` (orthogonal cell)."""
    g = np.ascontiguousarray(dmap.grid_coordinates(xyz))
    h = np.asarray(dmap.voxel_size, dtype=np.float64)
    data = _mark_atoms(g, np.asarray(radii, dtype=np.float64), float(solvent_radius), h,
                       np.array(dmap.shape, dtype=np.int64))
    if shrink_radius > 0:
        data = _shrink(data, _shrink_offsets(h, shrink_radius))
    else:
        data[data == -1] = 0
    return data == 0
