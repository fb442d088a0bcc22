"""Weight control of coordinate refinement: the automatic map weight and the validation watch.

* :func:`initial_weight`: the first map weight from the ratio of restraint and map gradients;
* :func:`adjust_weight`: after each macro-cycle the weight is scaled until the RMS deviations
  from ideal bond lengths and angles approach the targets (:data:`TARGET_BOND_RMSD`,
  :data:`TARGET_ANGLE_RMSD`: the values Phenix aims at, Afonine et al. 2018, Acta Cryst.
  D74:531);
* :func:`watch_validation`: after each accepted cycle, the local weight of restraints whose
  validation class (MolProbity: Ramachandran, rotamer, omega, C-beta) got worse is raised.
"""

from __future__ import annotations

import numpy as np

#: Geometry the automatic weight aims at (Phenix's defaults for real-space refinement): Å, degrees.
TARGET_BOND_RMSD = 0.01
TARGET_ANGLE_RMSD = 1.0
#: Degrees: validation watch (restraints.TorsionWatch) limits after each cycle: an omega further
#: than this from 0/180 (MolProbity calls 30 deg twisted) and a C-beta torsion further than
#: WATCH_CBETA from its ideal (together ~9 deg make the 0.25 Å C-beta outlier) get weight x4, up to x16.
WATCH_OMEGA = 15.0
WATCH_CBETA = 4.0


def initial_weight(r, target, xyz: np.ndarray, w_atom: np.ndarray, free: np.ndarray,
                   target_bond: float = TARGET_BOND_RMSD, scale: float = 0.15) -> float:
    """First map weight: ``scale * |H_r d| / |g_map|``.

    ``H_r d`` is the change of the restraint gradient under a random displacement ``d``
    whose bond-length RMS is ``target_bond`` (Å; a finite-difference Hessian-vector product),
    i.e. the restraint force that geometry at the target RMSD produces, whatever the strain
    of the input model; ``g_map`` is the gradient of the :class:`.maptarget.MapTarget` ``target``
    at the input with per-atom weights ``w_atom``. ``scale`` (0.15) was calibrated on
    5ME2/EMD-3488 (the weight giving 0.01 Å / 1 deg there is 0.1-0.2 of the raw ratio); the
    macro-cycles correct it.
    """
    from .geometry import restraint_energy_gradient

    rng = np.random.default_rng(0)
    delta = np.zeros_like(xyz)
    delta[free] = rng.normal(0.0, target_bond / np.sqrt(2.0), (int(free.sum()), 3))
    _, g1 = restraint_energy_gradient(r, xyz + delta)
    _, g0 = restraint_energy_gradient(r, xyz)
    _, gm = target.energy_gradient(xyz, w_atom)
    num = float(np.linalg.norm((g1 - g0)[free]))
    den = float(np.linalg.norm(gm[free]))
    if not (np.isfinite(num) and np.isfinite(den)) or den <= 0 or num <= 0:
        return 1.0
    return scale * num / den


def geometry_excess(stats: dict, target_bond: float, target_angle: float) -> float:
    """``max(bond_rmsd / target_bond, angle_rmsd / target_angle)`` of :func:`.geometry.geometry_stats`."""
    return max(stats["bond_rmsd"] / target_bond, stats["angle_rmsd"] / target_angle)


def adjust_weight(w: float, bond: float, angle: float, tb: float, ta: float) -> float:
    """New weight from the RMSDs after a cycle: shrink when geometry is loose, grow when tight.

    ``bond``/``angle`` (Å, degrees) against the targets ``tb``/``ta``; the larger of the two
    relative excesses decides. Steps are bounded so one noisy cycle cannot swing the weight by
    more than a factor 4 down or 2 up.
    """
    excess = max(bond / tb, angle / ta)
    if excess > 1.25:
        return w * max(0.25, 1.0 / excess ** 2)
    if excess < 0.8:
        return w * min(2.0, 1.0 / max(excess, 0.05))
    return w


def watch_validation(r, xyz: np.ndarray, record: dict) -> None:
    """After an accepted cycle: raise the Ramachandran weight of residues whose MolProbity class
    got worse than the input's (:meth:`.ramachandran_restraint.RamachandranRestraint.watch`) and
    the weight of torsions pulled towards what validation calls an outlier
    (:class:`.restraints.TorsionWatch`: rotamer chis, omega, C-beta). What was raised is written
    into ``record`` (``rama_raised``, ``<watch>_raised``)."""
    if r.ramachandran is not None:
        record["rama_raised"] = r.ramachandran.watch(xyz)
    for w in r.watches:
        record[f"{w.name}_raised"] = w.watch(r, xyz)
