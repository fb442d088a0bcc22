"""Atom inclusion (EMDB validation analysis) and a default contour level.

Atom inclusion, as the EMDB validation analysis (Wang et al., EMDB VA; ``emdb-va``) defines it,
is the fraction of a model's non-hydrogen atoms whose map value, trilinearly interpolated at the
atom centre, is above the recommended contour level. "Backbone" inclusion uses the atoms
N, CA, C, O of amino acids and P, O5', C5', C4', C3', O3' of nucleotides.

An atom whose centre lies outside the map box counts as *not* included (the map gives it no
density); hydrogens are the caller's to skip.
"""

from __future__ import annotations

import gemmi
import numpy as np

from .interpolate import values_at
from .mapcc import kth_smallest
from .mapio import DensityMap

#: Backbone atom names used for backbone atom inclusion (EMDB VA convention).
PROTEIN_BACKBONE = frozenset({"N", "CA", "C", "O"})
NUCLEIC_BACKBONE = frozenset({"P", "O5'", "C5'", "C4'", "C3'", "O3'"})

#: Volume per non-hydrogen atom, Å³, for :func:`default_contour` (see there).
VOLUME_PER_ATOM = 17.0


def atoms_above(dmap: DensityMap, xyz: np.ndarray, level: float) -> np.ndarray:
    """Whether the interpolated map value at each position exceeds ``level``.

    Parameters
    ----------
    dmap : DensityMap
        The map.
    xyz : array_like, shape (N, 3)
        Atom positions, Å, model frame (non-hydrogen atoms).
    level : float
        Contour level, map units.

    Returns
    -------
    numpy.ndarray of bool, shape (N,)
        True where the trilinear value is strictly above ``level``; False outside the map box.
    """
    vals = values_at(dmap, xyz, outside=np.nan)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(vals, nan=-np.inf) > float(level)


def atom_inclusion(dmap: DensityMap, xyz: np.ndarray, level: float) -> float:
    """Fraction of the positions ``xyz`` whose interpolated value is above ``level`` (NaN if none)."""
    inc = atoms_above(dmap, xyz, level)
    return float(inc.mean()) if len(inc) else float("nan")


def default_contour(dmap: DensityMap, xyz: np.ndarray, volume_per_atom: float = VOLUME_PER_ATOM) -> float:
    """Contour level enclosing the model's expected molecular volume, used when none is known.

    The level is chosen so that the map volume above it equals ``n_atoms × volume_per_atom``,
    with ``n_atoms`` the number of non-hydrogen atoms passed (the whole model). The default
    17 Å³ per non-H atom is the protein density convention of 1.21 Å³/Da (0.826 Da/Å³, the value
    behind "volume from mass" in Chimera and EMDB tools) times ≈14 Da per non-H atom (a mean
    residue mass of ≈110 Da, hydrogens included, over ≈7.8 non-H atoms); nucleic acids come out
    close (≈16 Å³ per atom: 330 Da over ≈20 atoms at their higher density).

    Why this and not mean + k·SD: a box of any size around the same molecule gives the same
    level, while k·SD levels move with the amount of solvent in the box. Limitation: when the map
    holds much more than the model (a complex with one chain modelled), the level is too high
    and inclusion too low; give the recommended contour then.

    Returns
    -------
    float
        The level (map units). If the box is smaller than the expected volume, the map minimum.
    """
    xyz = np.asarray(xyz, dtype=np.float64).reshape(-1, 3)
    if len(xyz) == 0:
        raise ValueError("default_contour needs at least one atom")
    voxel_volume = abs(float(np.linalg.det(dmap.orth_matrix)))
    n_vox = int(round(len(xyz) * volume_per_atom / voxel_volume))
    flat = dmap.data.ravel()
    if n_vox >= flat.size:
        return float(flat.min())
    if n_vox <= 0:
        return float(flat.max())
    # the n_vox-th highest value: voxels strictly above it number n_vox - 1 (ties aside)
    return kth_smallest(flat, flat.size - n_vox)


def is_backbone(resname: str, atom_name: str) -> bool:
    """True for backbone atoms (N, CA, C, O of amino acids; P, O5', C5', C4', C3', O3' of nucleotides)."""
    info = gemmi.find_tabulated_residue(resname)
    if info is not None and info.is_nucleic_acid():
        return atom_name in NUCLEIC_BACKBONE
    if info is not None and info.is_amino_acid():
        return atom_name in PROTEIN_BACKBONE
    # unknown residues: by name (modified residues not in gemmi's table)
    return atom_name in PROTEIN_BACKBONE or atom_name in NUCLEIC_BACKBONE


def backbone_mask(st: gemmi.Structure, *, hydrogens: bool = False) -> np.ndarray:
    """Boolean mask over the atoms of the first model (same order as ``modelio.atom_positions``).

    With ``hydrogens=False`` (default) the mask covers non-hydrogen atoms only, matching
    ``atom_positions(st, hydrogens=False)``.
    """
    out = []
    for cra in st[0].all():
        if not hydrogens and cra.atom.is_hydrogen():
            continue
        out.append(is_backbone(cra.residue.name, cra.atom.name))
    return np.array(out, dtype=bool)
