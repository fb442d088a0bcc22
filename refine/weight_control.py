"""Weight control of coordinate refinement: the automatic map weight and the validation watch.

* :func:`initial_weight`: the first map weight from the ratio of restraint and map gradients;
* :func:`adjust_weight`: after each macro-cycle the weight is scaled until the RMS deviations
  from ideal bond lengths and angles approach the targets (:data:`TARGET_BOND_RMSD`,
  :data:`TARGET_ANGLE_RMSD`: the values Phenix aims at, Afonine et al. 2018, Acta Cryst.
  D74:531);
* :func:`watch_validation`: after each accepted cycle, the local weight of restraints whose
  validation class (MolProbity: Ramachandran, rotamer, omega, C-beta) got worse is raised;
* :class:`ClassWatch`: after each accepted cycle, steps that make a residue's Ramachandran or
  rotamer class worse than the input's are undone (criterion in its docstring), and the data weight
  of a chain whose validation figures got worse is lowered;
* :func:`relax_atoms`: the short local minimisation that heals the junctions of undone steps.
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


#: Rotamer criterion of :class:`ClassWatch`: a side chain that was not an outlier in the input may
#: become one only when its atoms beyond C-beta then sit, on average, this much higher in the
#: coordinate target's map (sd units of the filtered map) than in the conformation it left.
ROTAMER_MAP_GAIN = 1.0
#: Per-chain data weight (:meth:`ClassWatch.chain_factors`): factor applied after a cycle to the
#: map weight of a chain whose Ramachandran or rotamer figures are worse than the input's, and its floor.
CHAIN_FACTOR_STEP = 0.7
CHAIN_FACTOR_MIN = 0.25
#: Fraction of a chain's Ramachandran residues that may leave the favoured class before its data
#: weight is lowered (the validation gate of issue 16: favoured % not lower by more than 0.5 point).
FAVORED_DROP = 0.005
#: Proline chi1 (scored by the validation, not restrained by the rotamer term).
PRO_CHI1 = ("N", "CA", "CB", "CG")


class ClassWatch:
    """Validation-aware acceptance of coordinate steps and per-chain data weights.

    MolProbity classes per residue (Ramachandran: :meth:`.ramachandran_restraint.RamachandranRestraint.classes`,
    Top8000 densities; rotamer: the Top8000 rotamericity grids of :mod:`.validation.rotamer`, favoured
    >= 2 %, outlier < 0.3 %), computed from coordinates during refinement and compared with the input's.

    **Acceptance criterion** (:meth:`revert_worse`), applied to every accepted macro-cycle:

    * a residue whose Ramachandran class is worse than in the input (favoured to allowed or
      outlier, allowed to outlier) *and* worse than before the cycle has the cycle's step undone
      for itself and both its neighbours (the atoms that define its phi and psi);
    * a side chain that becomes a rotamer outlier (not one in the input) has the step undone for
      its residue unless its atoms beyond C-beta gained at least :data:`ROTAMER_MAP_GAIN` sd of
      the map there (the map strongly supports the new conformation);
    * the undone atoms and one residue either side are then relaxed together (short L-BFGS of the
      same target, everything else held), so that the junctions keep their geometry; a residue
      that the relaxation takes back into the worse class goes back to its undone step and its
      neighbours are relaxed again with it held (if that too makes it worse, it keeps the plain
      undone step with both neighbours).

    The Ramachandran watch (weight x4 per cycle) keeps acting on top.

    **Per-chain data weight** (:meth:`chain_factors`): after each accepted cycle, a chain with more
    Ramachandran outliers, fewer favoured residues or more rotamer outliers than in the input gets
    its data weight multiplied by :data:`CHAIN_FACTOR_STEP` (floor :data:`CHAIN_FACTOR_MIN`).
    """

    def __init__(self, work, r, xyz0: np.ndarray, top8000_dir=None):
        from .rotamer_restraint import CHI_ATOMS
        from .validation.rotamer import GRIDS
        from .validation.tables import default_top8000_dir

        self.r = r
        self.top8000_dir = str(top8000_dir or default_top8000_dir())
        self.residue = np.asarray(r.residue, np.int64)
        nres = int(self.residue.max()) + 1 if len(self.residue) else 0
        chain_of_res = np.zeros(nres, np.int64)
        self.chain_names = []
        names: dict[int, dict[str, int]] = {}
        resname: dict[int, str] = {}
        for i, c in enumerate(work[0].all()):
            rid = int(self.residue[i])
            if not self.chain_names or self.chain_names[-1] != c.chain.name:
                self.chain_names.append(c.chain.name)
            chain_of_res[rid] = len(self.chain_names) - 1
            resname[rid] = c.residue.name
            if not r.altloc[i] and not r.fixed[i] and not c.atom.is_hydrogen():
                names.setdefault(rid, {})[c.atom.name] = i
        self.chain_of_res = chain_of_res
        # rotamer rows: residue, grid file, chi atom quadruples (the validation's chi definitions)
        self.rot_res, self.rot_grid, self.rot_quads, self.rot_side = [], [], [], []
        for rid, at in names.items():
            rn = resname[rid]
            spec = GRIDS.get(rn)
            if spec is None:
                continue
            quads = (PRO_CHI1,) if rn == "PRO" else CHI_ATOMS[rn][: spec[1]]
            if any(a not in at for q in quads for a in q):
                continue
            self.rot_res.append(rid)
            self.rot_grid.append(spec[0])
            self.rot_quads.append([[at[a] for a in q] for q in quads])
            self.rot_side.append([i for n, i in at.items() if n not in ("N", "CA", "C", "O", "CB")])
        self.rot_res = np.array(self.rot_res, np.int64)
        self.rama = r.ramachandran
        self.rama_ref = self.rama.classes(xyz0) if self.rama is not None else None
        self.rot_ref = self.rotamer_classes(xyz0)
        self.factor = np.ones(len(self.chain_names))

    def rotamer_classes(self, xyz: np.ndarray) -> np.ndarray:
        """Rotamer class per scored side chain (0 favoured, 1 allowed, 2 outlier)."""
        from .geometry import dihedral_gradient
        from .validation.rotamer import FAVORED, OUTLIER
        from .validation.tables import load_table

        out = np.zeros(len(self.rot_res), np.int64)
        d = np.empty((4, 3))
        by_grid: dict[str, list[int]] = {}
        chis = []
        for k, quads in enumerate(self.rot_quads):
            chis.append([np.degrees(dihedral_gradient(xyz, *q, d)[0]) % 360.0 for q in quads])
            by_grid.setdefault(self.rot_grid[k], []).append(k)
        for grid, ks in by_grid.items():
            s = load_table(self.top8000_dir, grid).lookup(np.array([chis[k] for k in ks], np.float64))
            out[ks] = np.where(s >= FAVORED, 0, np.where(s >= OUTLIER, 1, 2))
        return out

    def revert_worse(self, before: np.ndarray, after: np.ndarray, map_values, relax) -> tuple[np.ndarray, list]:
        """Apply the acceptance criterion (class docstring) to the step ``before`` -> ``after`` (Å, (N, 3)).

        ``map_values(x)`` gives the map value (sd) at each atom; ``relax(x, mask)`` returns ``x`` with
        the atoms of ``mask`` minimised in the refinement target. Returns the accepted coordinates
        and the residue serials whose step was undone."""
        res_bad = set()
        if self.rama is not None:
            c0, c1 = self.rama.classes(before), self.rama.classes(after)
            for k in np.nonzero((c1 > self.rama_ref) & (c1 > c0))[0]:
                rid = int(self.rama.residue[k])
                res_bad.update((rid - 1, rid, rid + 1))
        if len(self.rot_res):
            r0, r1 = self.rotamer_classes(before), self.rotamer_classes(after)
            new_out = np.nonzero((r1 == 2) & (self.rot_ref < 2) & (r0 < 2))[0]
            if len(new_out):
                v0, v1 = map_values(before), map_values(after)
                for k in new_out:
                    side = self.rot_side[k]
                    if not side or float(np.mean(v1[side]) - np.mean(v0[side])) < ROTAMER_MAP_GAIN:
                        res_bad.add(int(self.rot_res[k]))
        if not res_bad:
            return after, []
        block = np.isin(self.residue, list(res_bad))
        x = after.copy()
        x[block] = before[block]
        near = np.isin(self.residue, [q for p in res_bad for q in (p - 1, p, p + 1)])
        relaxed = relax(x, near & ~np.asarray(self.r.fixed, bool))
        # keep the relaxation only where it does not take residues back into a worse class; those
        # residues go back to their undone step and their neighbours are relaxed again with them
        # held, so that their junctions are not left stretched by the step
        still = self._worse_residues(before, relaxed) & res_bad
        if still:
            keep = np.isin(self.residue, list(still))
            relaxed[keep] = before[keep]
            relaxed = relax(relaxed, near & ~keep & ~np.asarray(self.r.fixed, bool))
            again = self._worse_residues(before, relaxed) & res_bad
            if again:
                back = np.isin(self.residue, [q for p in again for q in (p - 1, p, p + 1)])
                relaxed[back] = before[back]
        return relaxed, sorted(res_bad)

    def _worse_residues(self, before: np.ndarray, after: np.ndarray) -> set:
        bad = set()
        if self.rama is not None:
            c0, c1 = self.rama.classes(before), self.rama.classes(after)
            bad.update(int(self.rama.residue[k]) for k in np.nonzero((c1 > self.rama_ref) & (c1 > c0))[0])
        if len(self.rot_res):
            r1 = self.rotamer_classes(after)
            bad.update(int(self.rot_res[k]) for k in np.nonzero((r1 == 2) & (self.rot_ref < 2))[0])
        return bad

    def chain_factors(self, xyz: np.ndarray) -> np.ndarray:
        """Update and return the per-chain data-weight factors after an accepted cycle (class docstring)."""
        worse = np.zeros(len(self.chain_names), bool)
        if self.rama is not None and len(self.rama.residue):
            c = self.rama.classes(xyz)
            ch = self.chain_of_res[self.rama.residue]
            for q in range(len(self.chain_names)):
                s = ch == q
                if s.any() and (np.sum(c[s] == 2) > np.sum(self.rama_ref[s] == 2)
                                or np.sum(c[s] == 0) < np.sum(self.rama_ref[s] == 0) - FAVORED_DROP * s.sum()):
                    worse[q] = True
        if len(self.rot_res):
            c = self.rotamer_classes(xyz)
            ch = self.chain_of_res[self.rot_res]
            for q in range(len(self.chain_names)):
                s = ch == q
                if s.any() and np.sum(c[s] == 2) > np.sum(self.rot_ref[s] == 2):
                    worse[q] = True
        self.factor[worse] = np.maximum(self.factor[worse] * CHAIN_FACTOR_STEP, CHAIN_FACTOR_MIN)
        return self.factor


#: L-BFGS iterations of :func:`relax_atoms`.
RELAX_ITER = 30


def relax_atoms(fg, x: np.ndarray, mask: np.ndarray, free: np.ndarray, max_iter: int = RELAX_ITER) -> np.ndarray:
    """``x`` (Å, (N, 3)) with the atoms of ``mask`` minimised in ``fg`` (flattened coordinates of the
    ``free`` atoms -> energy, gradient), the others held; ``x`` unchanged when nothing is selected
    or the minimisation does not stay finite."""
    from scipy import optimize

    sub = mask[free]
    if not sub.any():
        return x
    base = x[free]

    def f(q):
        full = base.copy()
        full[sub] = q.reshape(-1, 3)
        e, g = fg(full.ravel())
        return e, g.reshape(-1, 3)[sub].ravel()

    with np.errstate(all="ignore"):
        sol = optimize.minimize(f, base[sub].ravel(), jac=True, method="L-BFGS-B",
                                options={"maxiter": max_iter, "maxcor": 20})
    if not (np.isfinite(sol.fun) and np.all(np.isfinite(sol.x))):
        return x
    out = x.copy()
    rows = np.nonzero(free)[0][sub]
    out[rows] = sol.x.reshape(-1, 3)
    return out
