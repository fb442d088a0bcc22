"""Rotamer restraints: side-chain chi angles held to the nearest Top8000 rotamer they start in.

Form
----
For each amino acid whose side chain is in a rotamer when refinement starts (every chi within
:data:`MATCH_LIMIT` of that rotamer's centre, in units of the rotamer's own spread, see below),
each chi angle gets a harmonic torsion restraint to the rotamer's central value::

    E_rot = sum_chi ((chi - chi_0) / sigma)^2,   sigma = SIGMA_SCALE * esd_chi

(deviation wrapped to +-180 deg, +-90 deg for the symmetric chi of Phe/Tyr chi2, Asp chi2 and
Glu chi3, which are restrained with period 2). ``chi_0`` and ``esd_chi`` are the Top8000 mean
and standard deviation of the rotamer (``rotamer_central_values/*.csv``; MolProbity, Williams
et al. 2018, Protein Sci 27:293, CC-BY 4.0). The rows go into the same torsion kernel as the
library's torsions (:func:`rerefine.refine.geometry.torsion_range`), labelled
``rotamer_chi1`` ... ``rotamer_chi4``.

Criterion (when may a side chain leave its rotamer): a chi held by this term costs
``(delta / (SIGMA_SCALE esd))^2``; leaving the rotamer (about 3 esd out, where the Top8000
density drops below the 2 % favoured contour for most rotamers) costs about
``(3 / SIGMA_SCALE)^2`` = 9 target units per chi at ``SIGMA_SCALE = 1`` (-2 ln L). A chi that
the map still pulls further than :data:`WATCH_DEV` esd gets its weight raised after each cycle
(:func:`rotamer_watch`, x4 up to x16), so it leaves its rotamer only when the map gains more
than ~16 x 9 = 144 units there, i.e. when the density clearly places it elsewhere (5ME2's
Thr A/C 118 were pulled from chi1 45.6 to 34 deg, an outlier, at the plain weight). Side chains that start outside every rotamer are not restrained (the map
and the library decide, as before).

The rotamer a side chain starts in is the one whose centre is nearest in esd units
``sqrt(sum_chi (delta_chi / esd_chi)^2)``; all rotamers of the table compete, rare ones included.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from .validation.tables import default_top8000_dir, rotamer_central_values

#: Atoms of chi1..chi4 per residue (standard IUPAC definitions, as MolProbity's rotalyze).
CHI_ATOMS = {
    "ARG": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD"), ("CB", "CG", "CD", "NE"), ("CG", "CD", "NE", "CZ")),
    "ASN": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "OD1")),
    "ASP": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "OD1")),
    "CYS": (("N", "CA", "CB", "SG"),),
    "GLN": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD"), ("CB", "CG", "CD", "OE1")),
    "GLU": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD"), ("CB", "CG", "CD", "OE1")),
    "HIS": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "ND1")),
    "ILE": (("N", "CA", "CB", "CG1"), ("CA", "CB", "CG1", "CD1")),
    "LEU": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")),
    "LYS": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD"), ("CB", "CG", "CD", "CE"), ("CG", "CD", "CE", "NZ")),
    "MET": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "SD"), ("CB", "CG", "SD", "CE")),
    "PHE": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")),
    "SER": (("N", "CA", "CB", "OG"),),
    "THR": (("N", "CA", "CB", "OG1"),),
    "TRP": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")),
    "TYR": (("N", "CA", "CB", "CG"), ("CA", "CB", "CG", "CD1")),
    "VAL": (("N", "CA", "CB", "CG1"),),
}
#: (residue, chi number from 1) whose chi is symmetric under a 180-degree turn.
SYMMETRIC = {("PHE", 2), ("TYR", 2), ("ASP", 2), ("GLU", 3)}
#: Factor on the Top8000 esd of each chi to get the restraint sigma.
SIGMA_SCALE = 1.0
#: Smallest sigma (deg): a few rotamers have esd of 3-4 deg from a handful of residues.
SIGMA_MIN = 5.0
#: A side chain is "in" a rotamer when its distance to the centre is at most this (esd units).
MATCH_LIMIT = 4.0
#: Validation watch (:func:`rotamer_watch`): after a cycle, a restrained chi further than this many
#: of its esd from the rotamer centre (it is leaving the rotamer: the Top8000 favoured region of
#: e.g. Thr "p" ends about 2-3 esd out) gets its weight multiplied by WATCH_FACTOR, up to WATCH_MAX.
WATCH_DEV = 2.0
WATCH_FACTOR = 4.0
WATCH_MAX = 16.0


def central_values(top8000_dir: str | Path | None = None) -> dict:
    """``resname -> list of (rotamer name, frequency %, means (nchi,), esds (nchi,))`` from the
    Top8000 ``rotamer_central_values`` tables of ``top8000_dir`` (default
    :func:`rerefine.refine.validation.tables.default_top8000_dir`, i.e. ``RR_TOP8000``, the
    folder the validation reads), read once per process."""
    return _central_values(str(top8000_dir or default_top8000_dir()))


@lru_cache(maxsize=2)
def _central_values(top8000_dir: str) -> dict:
    return {res: [(name, freq, means[: len(chis)], esds[: len(chis)])
                  for name, freq, means, esds in rotamer_central_values(top8000_dir, res)]
            for res, chis in CHI_ATOMS.items()}


def _wrap(d: np.ndarray, period: np.ndarray) -> np.ndarray:
    per = 360.0 / period
    return d - per * np.floor(d / per + 0.5)


def nearest_rotamer(resname: str, chis: np.ndarray, top8000_dir: str | Path | None = None
                    ) -> tuple[str, float, np.ndarray, np.ndarray] | None:
    """Nearest Top8000 rotamer of ``resname`` to ``chis`` (deg): (name, distance in esd units,
    means, esds), or None when the residue has no table. ``top8000_dir``: see :func:`central_values`."""
    table = central_values(top8000_dir).get(resname)
    if not table:
        return None
    period = np.array([2 if (resname, k + 1) in SYMMETRIC else 1 for k in range(len(chis))])
    best = None
    for name, _, mean, esd in table:
        d = float(np.sqrt(np.sum((_wrap(chis - mean, period) / esd) ** 2)))
        if best is None or d < best[1]:
            best = (name, d, mean, esd)
    return best


def rotamer_rows(st, r, xyz: np.ndarray, sigma_scale: float = SIGMA_SCALE, match_limit: float = MATCH_LIMIT,
                 top8000_dir: str | Path | None = None):
    """Torsion rows for :class:`rerefine.refine.restraints.TorsionSet`: ``(idx (n, 4), ideal (n,),
    sigma (n,), period (n,), labels, residues)`` for every side chain of ``st[0]`` in a rotamer at
    ``xyz`` (see the module docstring); ``residues`` lists ``(residue serial, rotamer)`` restrained.

    Skipped: residues with a missing chi atom, chi atoms with alternative conformers or fixed
    (no dictionary), and side chains outside every rotamer (distance > ``match_limit``).
    """
    from .geometry import dihedral_gradient

    cras = list(st[0].all())
    names: dict[int, dict[str, int]] = {}
    resname: dict[int, str] = {}
    for i, c in enumerate(cras):
        rid = int(r.residue[i])
        resname[rid] = c.residue.name
        if not r.altloc[i] and not r.fixed[i]:
            names.setdefault(rid, {})[c.atom.name] = i
    idx, ideal, sig, per, lab, done = [], [], [], [], [], []
    d = np.empty((4, 3))
    for rid, at in names.items():
        rn = resname[rid]
        spec = CHI_ATOMS.get(rn)
        if spec is None or any(a not in at for quad in spec for a in quad):
            continue
        quads = [tuple(at[a] for a in quad) for quad in spec]
        chis = np.degrees([dihedral_gradient(xyz, *q, d)[0] for q in quads])
        best = nearest_rotamer(rn, chis, top8000_dir)
        if best is None or best[1] > match_limit:
            continue
        name, _, mean, esd = best
        for k, q in enumerate(quads):
            idx.append(q)
            ideal.append(mean[k])
            sig.append(max(SIGMA_MIN, sigma_scale * esd[k]))
            per.append(2 if (rn, k + 1) in SYMMETRIC else 1)
            lab.append(f"rotamer_chi{k + 1}")
        done.append((rid, name))
    return (np.array(idx, dtype=np.int32).reshape(-1, 4), np.array(ideal, dtype=np.float64),
            np.array(sig, dtype=np.float64), np.array(per, dtype=np.int32), lab, done)


def with_rotamer_restraints(st, r, xyz: np.ndarray, sigma_scale: float = SIGMA_SCALE,
                            top8000_dir: str | Path | None = None):
    """A shallow copy of restraints ``r`` whose torsions include the rotamer rows of
    :func:`rotamer_rows`; returns ``(restraints, residues restrained)``."""
    from .restraints import with_torsions

    idx, ideal, sig, per, lab, done = rotamer_rows(st, r, xyz, sigma_scale, top8000_dir=top8000_dir)
    return with_torsions(r, idx, ideal, sig, per, lab), done



def rotamer_watch(r):
    """:class:`rerefine.refine.restraints.TorsionWatch` of the ``rotamer_chi*`` rows of ``r``: a chi
    further than :data:`WATCH_DEV` of its starting sigmas (esd) from the centre gets weight x4,
    up to x16 (:data:`WATCH_FACTOR`, :data:`WATCH_MAX`)."""
    from .restraints import TorsionWatch

    rows = np.array([k for k, lab in enumerate(r.torsions.label) if lab.startswith("rotamer_chi")], dtype=np.int64)
    return TorsionWatch("rotamer", rows, WATCH_DEV * np.asarray(r.torsions.sigma)[rows], r.torsions.sigma[rows],
                        WATCH_FACTOR, WATCH_MAX)
