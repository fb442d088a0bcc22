"""Chain breaks: which consecutive residues may be peptide-linked, and keeping open gaps open.

A chain break is two residues adjacent in the file whose sequence numbers are not consecutive
(``60`` then ``63``: residues 61-62 were not modelled) or whose C(i)-N(i+1) distance is too long
for a bond. Refinement must not close one: on an unseen entry the map pulled the ends 9:60 C and
9:63 N from 3.39 Å to 2.98 Å, the distance of a strained bond.

* :func:`consecutive` says whether two residues are numbered as neighbours (insertion codes
  count: 52, 52A, 53 are consecutive); ``realspace.refinement_topology`` restrains a stretched
  C-N (2.0-3.0 Å) as a peptide bond only between such residues.
* :class:`GapKeeper` is a one-sided harmonic term ``((d_min - d)/sigma)^2`` for ``d < d_min``
  (the repulsion kernel :func:`rerefine.refine.nonbonded.nonbonded_range`) on the C-N pair of
  every unlinked adjacent pair closer than :data:`GAP_WATCH`: ``d_min`` is the input distance,
  at most :data:`GAP_KEEP`, so a gap never closes further than the model had it.
"""

from __future__ import annotations

import numpy as np

from .nonbonded import nonbonded_range

#: Å: unlinked C(i)...N(i+1) pairs closer than this in the input are watched by :class:`GapKeeper`.
GAP_WATCH = 5.0
#: Å: largest ``d_min`` kept (two residues apart a C...N contact of 3.5 Å is ordinary packing).
GAP_KEEP = 3.5
#: Å: sigma of the one-sided restraint (the clash guard's).
GAP_SIGMA = 0.03


def consecutive(r1, r2) -> bool:
    """True when gemmi residues ``r1``, ``r2`` (in this order) are numbered as sequence neighbours:
    ``num2 - num1`` is 1, or 0 with different insertion codes (52, 52A)."""
    d = r2.seqid.num - r1.seqid.num
    return d == 1 or (d == 0 and r2.seqid.icode != r1.seqid.icode)


def gap_pairs(st, r, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """C(i), N(i+1) atom pairs of adjacent residues in one chain that are not bonded in ``r``
    and lie closer than :data:`GAP_WATCH` at ``xyz``; and their ``d_min`` (Å)."""
    # first atom index of every residue, in st[0].all() order
    start = {}
    i = 0
    for ci, ch in enumerate(st[0]):
        for ri, res in enumerate(ch):
            start[(ci, ri)] = i
            i += len(res)
    bonded = {(int(a), int(b)) for a, b in np.asarray(r.bonds.idx).tolist()}
    pairs, dmin = [], []
    for ci, ch in enumerate(st[0]):
        for k in range(1, len(ch)):
            r1, r2 = ch[k - 1], ch[k]
            c = [start[(ci, k - 1)] + m for m, a in enumerate(r1) if a.name == "C"]
            n = [start[(ci, k)] + m for m, a in enumerate(r2) if a.name == "N"]
            for ic in c:
                for jn in n:
                    if (ic, jn) in bonded or (jn, ic) in bonded:
                        continue
                    d = float(np.linalg.norm(xyz[ic] - xyz[jn]))
                    if d < GAP_WATCH:
                        pairs.append((ic, jn))
                        dmin.append(min(d, GAP_KEEP))
    return np.array(pairs, dtype=np.int32).reshape(-1, 2), np.array(dmin, dtype=np.float64)


class GapKeeper:
    """One-sided restraint keeping chain-break ends at least as far apart as in the input."""

    name = "chain_gap"

    def __init__(self, pairs: np.ndarray, dmin: np.ndarray, fixed: np.ndarray, sigma: float = GAP_SIGMA):
        self.pi = np.ascontiguousarray(pairs[:, 0], dtype=np.int32)
        self.pj = np.ascontiguousarray(pairs[:, 1], dtype=np.int32)
        self.dmin = np.ascontiguousarray(dmin, dtype=np.float64)
        self.fixed = np.asarray(fixed, bool)
        self.sigma = float(sigma)

    def __len__(self) -> int:
        return len(self.pi)

    def energy_gradient(self, xyz: np.ndarray, grad: np.ndarray) -> float:
        """Energy; adds the gradient (1/Å) into ``grad``, none on fixed atoms."""
        if not len(self.pi):
            return 0.0
        g = np.zeros_like(grad)
        e = nonbonded_range(xyz, self.pi, self.pj, self.dmin, self.sigma, 1.0, g, 0, len(self.pi))
        g[self.fixed] = 0.0
        grad += g
        return float(e)
