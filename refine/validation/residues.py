"""Protein residues of a model as MolProbity's per-residue tools see them.

One :class:`ProteinResidue` per amino-acid residue of the first model (gemmi's table of
standard and modified amino acids), in chain order, with the atom positions of one
conformer and the peptide links to its neighbours.

Treatment of special cases (documented here once, used by every per-residue check):

* Alternative conformers: the first conformer of each residue is evaluated (atoms with a
  blank altloc plus those of the residue's first altloc letter), as MolProbity's summary does
  for the per-residue tables keyed by chain/number/name only.
* Zero-occupancy atoms: used like any other atom (MolProbity scores them too); the clash
  count leaves them out (see :mod:`.clashscore`).
* Missing atoms: a check that needs an absent atom is not made for that residue (null
  in the per-residue list, not counted in the percentages); e.g. no rotamer without the
  chi atoms, no C-beta deviation without N, CA, C and CB, no phi/psi without the
  neighbouring C/N.
* Peptide links: residues ``i-1`` and ``i`` are linked when C(i-1)-N(i) is at most
  :data:`MAX_PEPTIDE_BOND` Å; phi, psi and omega need linked neighbours, so chain ends and
  gaps have no Ramachandran class.
* Nucleic acids, ligands, waters: not protein residues; they are not in these lists but
  take part in the clashscore (hydrogens added from the monomer library where one exists).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import gemmi
import numpy as np
from numba import njit

#: Longest C(i-1)-N(i) distance (Å) still taken as a peptide bond.
#: D-amino acids (wwPDB Chemical Component Dictionary names): the Ramachandran, C-beta and
#: chirality checks and restraints are for L residues.
D_AMINO = frozenset({"DAL", "DAR", "DSG", "DAS", "DCY", "DGN", "DGL", "DHI", "DIL", "DLE", "DLY", "MED", "DPN",
                     "DPR", "DSN", "DTH", "DTR", "DTY", "DVA"})
MAX_PEPTIDE_BOND = 2.0


@dataclass
class ProteinResidue:
    """One amino-acid residue (first conformer).

    Attributes
    ----------
    chain, seq, icode, resname : identifiers (``icode`` is ``""`` when blank).
    atoms : dict name -> ndarray (3,), Å.
    prev, next : index of the peptide-linked neighbour in the residue list, or -1.
    """

    chain: str
    seq: int
    icode: str
    resname: str
    atoms: dict = field(default_factory=dict)
    prev: int = -1
    next: int = -1

    @property
    def key(self) -> str:
        """``CHAIN:SEQ[ICODE]:RESNAME`` (the reference file's key)."""
        return f"{self.chain}:{self.seq}{self.icode}:{self.resname}"

    def get(self, name: str):
        return self.atoms.get(name)


def _first_conformer_atoms(res: gemmi.Residue) -> dict:
    first_alt = None
    for a in res:
        if a.altloc != "\0":
            first_alt = a.altloc
            break
    out = {}
    for a in res:
        if a.altloc == "\0" or a.altloc == first_alt:
            if a.name not in out:
                out[a.name] = np.array([a.pos.x, a.pos.y, a.pos.z])
    return out


def is_amino_acid(resname: str) -> bool:
    """True for residues gemmi tabulates as amino acids (standard and common modified)."""
    info = gemmi.find_tabulated_residue(resname)
    return info is not None and info.is_amino_acid()


def protein_residues(model: gemmi.Model) -> list[ProteinResidue]:
    """Amino-acid residues of ``model`` with their first-conformer atoms and peptide links."""
    out: list[ProteinResidue] = []
    for ch in model:
        start = len(out)
        for res in ch:
            if not is_amino_acid(res.name):
                continue
            out.append(ProteinResidue(ch.name, int(res.seqid.num), res.seqid.icode.strip(), res.name,
                                      _first_conformer_atoms(res)))
        for i in range(start + 1, len(out)):
            c = out[i - 1].get("C")
            n = out[i].get("N")
            if c is not None and n is not None and float(np.linalg.norm(c - n)) <= MAX_PEPTIDE_BOND:
                out[i - 1].next = i
                out[i].prev = i - 1
    return out


@njit(cache=True)
def dihedral(p0, p1, p2, p3):
    """Dihedral angle p0-p1-p2-p3 in degrees, (-180, 180] (IUPAC sign convention); NaN if undefined."""
    b0x, b0y, b0z = p0[0] - p1[0], p0[1] - p1[1], p0[2] - p1[2]
    b1x, b1y, b1z = p2[0] - p1[0], p2[1] - p1[1], p2[2] - p1[2]
    b2x, b2y, b2z = p3[0] - p2[0], p3[1] - p2[1], p3[2] - p2[2]
    n1 = math.sqrt(b1x * b1x + b1y * b1y + b1z * b1z)
    if n1 == 0.0:
        return math.nan
    b1x /= n1
    b1y /= n1
    b1z /= n1
    d0 = b0x * b1x + b0y * b1y + b0z * b1z
    d2 = b2x * b1x + b2y * b1y + b2z * b1z
    vx, vy, vz = b0x - d0 * b1x, b0y - d0 * b1y, b0z - d0 * b1z
    wx, wy, wz = b2x - d2 * b1x, b2y - d2 * b1y, b2z - d2 * b1z
    x = vx * wx + vy * wy + vz * wz
    cx = b1y * vz - b1z * vy
    cy = b1z * vx - b1x * vz
    cz = b1x * vy - b1y * vx
    y = cx * wx + cy * wy + cz * wz
    if x == 0.0 and y == 0.0:
        return math.nan
    return math.degrees(math.atan2(y, x))


def torsion(specs) -> float | None:
    """Dihedral of four (residue, atom name) pairs, or None when a residue or atom is absent."""
    pts = []
    for r, name in specs:
        if r is None:
            return None
        p = r.get(name)
        if p is None:
            return None
        pts.append(p)
    d = dihedral(*pts)
    return None if math.isnan(d) else d
