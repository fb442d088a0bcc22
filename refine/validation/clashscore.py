"""All-atom clashscore (Word et al. 1999, J. Mol. Biol. 285:1735; MolProbity/probe).

Definition: the number of *serious clashes* -- pairs of atoms whose van der Waals spheres
overlap by ≥ 0.4 Å -- per 1000 atoms of the model with hydrogens present (MolProbity's
``clashscore``). Each atom pair counts once.

How it is computed here (probe-like, not probe's dot surfaces):

* Hydrogens: every hydrogen is (re)placed from the CCP4 monomer library by gemmi's topology
  (``HydrogenChange.ReAddButWater``: existing H are replaced, waters get none, as reduce does
  in MolProbity's default); gemmi puts them at the library's electron-cloud X-H distances
  (C-H 0.97 Å, N-H 0.86 Å, O-H 0.82 Å), the distances phenix.clashscore uses by default.
  Residues without a dictionary get no hydrogens.
* Radii: probe's explicit-hydrogen van der Waals radii (:data:`rerefine.refine.nonbonded.PROBE_RADIUS`:
  C 1.70, N 1.55, O 1.40, S 1.80, apolar H 1.17, polar H 1.00 Å, metal ions 0.9 Å).
* Pairs not scored: atoms 1-2, 1-3 or 1-4 bonds apart (1-5 when one of them is a hydrogen,
  probe's ``-4H``), polar hydrogen with an H-bond acceptor (an H-bond), contacts with metal
  ions, alternative conformers of each other, atoms within one residue that has no
  dictionary (bonds unknown), and zero-occupancy atoms.
* Waters: a water O is an H-bond donor (its hydrogens are implicit) to any acceptor;
  water-water pairs are not scored and waters are not in the denominator (probe's
  ``not water`` source selection in phenix.clashscore).
* Denominator: all other atoms after hydrogens were added, ligands included.
"""

from __future__ import annotations

import io
import os

import gemmi
import numpy as np
from numba import njit

from rerefine.common.errors import InputError
from ..nonbonded import PROBE_METAL, probe_radii
from ..restraints import atom_xyz

OVERLAP = 0.4


def add_hydrogens(st: gemmi.Structure, monlib_dir: str | os.PathLike) -> gemmi.Structure:
    """A copy of the first model of ``st`` with riding hydrogens from the monomer library.

    Existing hydrogens are replaced; waters get none; residues without a dictionary keep
    what they have. Raises :class:`InputError` when gemmi's topology fails.
    """
    work = st.clone()
    while len(work) > 1:
        del work[len(work) - 1]
    work.setup_entities()
    model = work[0]
    resnames = model.get_all_residue_names()
    label = st.name or "model"
    try:
        monlib = gemmi.read_monomer_lib(os.fspath(monlib_dir), resnames, ignore_missing=True)
    except Exception as exc:
        raise InputError(f"{monlib_dir}: cannot read monomer library ({str(exc).splitlines()[0]})") from None
    try:
        gemmi.prepare_topology(work, monlib, model_index=0, h_change=gemmi.HydrogenChange.ReAddButWater,
                               reorder=False, warnings=io.StringIO(), ignore_unknown_links=True)
    except Exception as exc:
        raise InputError(f"{label}: cannot add hydrogens ({str(exc).splitlines()[0]})") from None
    return work


@njit(cache=True)
def clash_kernel(xyz, pi, pj, kind, rad, hb, is_h, occ, water, overlap):
    """Indices ``k`` of pairs ``(pi[k], pj[k])`` that clash, and their overlaps (Å).

    ``kind``: bond-path code (4 = 1-4, 5 = 1-5, 0 = further); ``hb``: H-bond class
    (2 acceptor, 3 both, 4 polar H, 5 metal); ``water``: water atoms (their hydrogens are
    implicit: a water O is an H-bond donor to any acceptor; water-water pairs not scored).
    """
    m = pi.shape[0]
    keep = np.empty(m, dtype=np.int64)
    ov = np.empty(m)
    n = 0
    for k in range(m):
        i = pi[k]
        j = pj[k]
        if kind[k] == 4 or (kind[k] == 5 and (is_h[i] or is_h[j])):
            continue
        if occ[i] <= 0.0 or occ[j] <= 0.0:
            continue
        if water[i] and water[j]:
            continue
        hi = hb[i]
        hj = hb[j]
        if (water[i] and (hj == 2 or hj == 3)) or (water[j] and (hi == 2 or hi == 3)):
            continue
        if hi == 5 or hj == 5:
            continue
        if (hi == 4 and (hj == 2 or hj == 3)) or (hj == 4 and (hi == 2 or hi == 3)):
            continue
        dx = xyz[i, 0] - xyz[j, 0]
        dy = xyz[i, 1] - xyz[j, 1]
        dz = xyz[i, 2] - xyz[j, 2]
        o = rad[i] + rad[j] - np.sqrt(dx * dx + dy * dy + dz * dz)
        if o >= overlap:
            keep[n] = k
            ov[n] = o
            n += 1
    return keep[:n], ov[:n]


def clashes(r, xyz: np.ndarray, occupancy: np.ndarray, counted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Serious clashes of a model with restraints ``r`` (built on the model with hydrogens).

    ``counted``: atoms that are not water (:func:`counted_atoms`); pairs of two waters are
    not scored (probe's source selection ``not water``).

    Returns
    -------
    (i, j, overlap) : ndarrays
        Atom indices (``st[0].all()`` order) and overlap (Å, positive), largest first.
    """
    nb = r.nonbonded
    nb.update(xyz)
    rad = probe_radii(r)
    rad[r.hb_type == 5] = PROBE_METAL
    is_h = (r.element == "H") | (r.element == "D")
    k, ov = clash_kernel(xyz, nb.pi, nb.pj, nb.kind, rad, r.hb_type, is_h, np.asarray(occupancy, dtype=np.float64),
                         ~np.asarray(counted, dtype=bool), OVERLAP)
    order = np.argsort(-ov, kind="stable")
    return nb.pi[k][order], nb.pj[k][order], ov[order]


def atom_labels(st: gemmi.Structure) -> list[str]:
    """``CHAIN:SEQ[ICODE]:RESNAME/ATOM[ALT]`` of every atom of the first model (``st[0].all()`` order)."""
    out = []
    for cra in st[0].all():
        alt = cra.atom.altloc
        out.append(f"{cra.chain.name}:{cra.residue.seqid.num}{cra.residue.seqid.icode.strip()}:"
                   f"{cra.residue.name}/{cra.atom.name}{'' if alt == chr(0) else alt}")
    return out


def counted_atoms(st: gemmi.Structure) -> np.ndarray:
    """Mask of the atoms that make the clashscore's denominator: every atom but waters."""
    return np.array([not c.residue.is_water() for c in st[0].all()], dtype=bool)


def occupancies(st: gemmi.Structure) -> np.ndarray:
    """Occupancy of every atom of the first model."""
    return np.array([c.atom.occ for c in st[0].all()], dtype=np.float64)


__all__ = ["OVERLAP", "add_hydrogens", "clash_kernel", "clashes", "atom_labels", "counted_atoms", "occupancies", "atom_xyz"]
