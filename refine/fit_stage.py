"""Density-fit stage of real-space refinement: coordinates against the model-map fit, alternating with B.

After the map-value macro-cycles and a first B refinement, ``params.fit_cycles`` cycles minimise
``N_fit (1 - CC^2)`` between the model map (:class:`.modelfit.ModelMapFit`, computed with the B
just refined: better B sharpen the prediction, so the next coordinate step fits better) and the
map, plus the restraints of :func:`.refine_target.restrained_target`; each coordinate step is
followed by B refinement (:func:`.adp.refine_adp`).
"""

from __future__ import annotations

import numpy as np
from scipy import optimize

from rerefine.common.errors import InputError
from .refine_target import restrained_target
from .refine_target import REFERENCE_SIGMA
from .weight_control import adjust_weight, geometry_excess, relax_atoms, watch_validation

#: Degrees: angle RMSD the weight of the density-fit stage aims at. The fit stage starts from a
#: model already at the 1.0 deg target; 1.3 lets the B-aware target pull the model into its
#: density, still inside the 1.5 deg of issue 6 (figures: benchmarks/bench_refine.py).
FIT_TARGET_ANGLE = 1.3
#: Voxels of the model box above which the density-fit stage is skipped (with a warning): every
#: evaluation costs two FFT pairs of the box, about 70 ms for 5ME2's 80x81x72 box; a 300^3 box
#: would take seconds per evaluation and minutes per refinement.
FIT_MAX_VOXELS = 8.0e6
#: Extra blur and cut-off of the density-fit model map (:meth:`.modelfit.ModelMapFit.prepare`):
#: 0.7 % and 1 % instead of the 0.1 % of the B-factor fit make the target 3x cheaper; for a
#: coordinate target the gradient direction is what matters.
FIT_ALIAS_LOG = 5.0
FIT_CUTOFF_LOG = 4.6
#: Å^2, bounds of the B used for the model map (those of :func:`.adp.refine_adp`).
B_RANGE = (1.0, 500.0)


def density_fit_stage(result, work, dmap, resolution, r, xyz, free, w_map, target, w_atom, guard, params,
                      refine_b, p_ref, geo, classes=None, scatter=None):
    """Alternate coordinate refinement against the model-map fit and B refinement.

    The first weight carries over the geometry-calibrated map-value weight ``w_map``: it makes the
    density-fit gradient at the start as large as the weighted map-value gradient of ``target``.
    After each coordinate step the weight follows the geometry (``geo(xyz)``: bond/angle RMSD
    against ``params.target_bond`` and ``params.fit_target_angle``) like in the map-value cycles;
    a step that leaves the geometry looser than 1.5 x the targets (and looser than before) is
    undone. ``refine_b(xyz, max_iter)`` refines the B of ``work`` (returns an :class:`.adp.AdpResult`);
    ``scatter`` (bool per atom, default all) the atoms of the model map (riding hydrogens scatter
    nothing). With ``classes`` (:class:`.weight_control.ClassWatch`) each accepted step passes its
    validation-aware acceptance, and a chain whose data weight it lowered (factor ``f < 1``) gets the
    reference-position restraint ``1/sigma^2`` raised by ``(1/f - 1) / REFERENCE_SIGMA^2`` instead
    (the fit term is one correlation over the model and cannot be weighted per chain); the reference
    restraint holds the ``scatter`` atoms only (riding hydrogens follow their atoms). Records each cycle in ``result.history``, the last B refinement in ``result.adp``;
    returns the coordinates (Å, (N, 3)).

    Raises
    ------
    ValueError
        The model box is larger than :data:`FIT_MAX_VOXELS` (or the voxels too coarse).
    """
    from .modelfit import ModelMapFit

    target_bond = params.target_bond
    target_angle = params.fit_target_angle or params.target_angle
    auto_weight = params.weight is None
    cycles, max_iter = params.fit_cycles, params.fit_iter
    cras = list(work[0].all())
    scatter = np.ones(len(cras), bool) if scatter is None else np.asarray(scatter, bool)
    sc = [c for c, s in zip(cras, scatter) if s]
    g = dmap.grid_coordinates(xyz)
    voxels = float(np.prod(np.minimum(np.ptp(g, axis=0) + 2 * 8.0 / np.asarray(dmap.voxel_size), dmap.shape)))
    if voxels > FIT_MAX_VOXELS:
        raise ValueError(f"model box of {voxels:.3g} voxels is above {FIT_MAX_VOXELS:.3g}")
    fit = ModelMapFit.prepare(dmap, xyz[scatter], [c.atom.element.name for c in sc],
                              np.array([0.0 if c.atom.is_hydrogen() else c.atom.occ for c in sc]), resolution,
                              target="sphere", alias_log=FIT_ALIAS_LOG, cutoff_log=FIT_CUTOFF_LOG)
    bvals = np.clip([c.atom.b_iso for c in sc], *B_RANGE)

    def density_fit(x, scale=1.0, moving=None):
        # per-atom size like the restraint target: N_fit (1 - CC^2); ``moving``: only those atoms'
        # gradient is needed (the others' map is kept, see ModelMapFit.evaluate_positions)
        misfit, grad, cc = fit.evaluate_positions(x[scatter], bvals, None if moving is None else moving[scatter])
        f = scale * fit.n_fit
        full = np.zeros_like(x)
        full[scatter] = f * grad
        return f * misfit, full, cc

    _, gm = target.energy_gradient(xyz, w_atom * w_map)
    _, gd, _ = density_fit(xyz)
    num, den = float(np.linalg.norm(gm[free])), float(np.linalg.norm(gd[free]))
    wd = num / den if den > 0 and np.isfinite(num / den) else 1.0
    # the reference restraint holds the atoms of the model map only (riding hydrogens follow their atoms)
    held = scatter[free]
    ref_k0 = held / params.fit_reference_sigma ** 2 if params.fit_reference_sigma else np.zeros(len(held))
    chain_of = classes.chain_of_res[np.asarray(r.residue, np.int64)][free] if classes is not None else None

    def reference_k():
        if classes is None or np.all(classes.factor == 1.0):
            return np.repeat(ref_k0, 3)
        f = classes.factor[chain_of]
        return np.repeat(ref_k0 + held * (1.0 / f - 1.0) / REFERENCE_SIGMA ** 2, 3)

    ref_k = reference_k()
    cur_excess = geometry_excess(geo(xyz), target_bond, target_angle)

    def fg(p, wd, moving=None):
        x = xyz.copy()
        x[free] = p.reshape(-1, 3)
        ed, gdd, _ = density_fit(x, wd, moving)
        return restrained_target(x, p, ed, gdd, r, free, guard, ref_k, p_ref)

    for cyc in range(cycles):
        with np.errstate(all="ignore"):
            sol = optimize.minimize(fg, xyz[free].ravel(), args=(wd,), jac=True, method="L-BFGS-B",
                                    options={"maxiter": max_iter, "maxcor": 20})
        if not (np.isfinite(sol.fun) and np.all(np.isfinite(sol.x))):
            result.warnings.append(f"density-fit cycle {cyc + 1} became non-finite; stopped")
            break
        trial = xyz.copy()
        trial[free] = sol.x.reshape(-1, 3)
        stats = geo(trial)
        excess = geometry_excess(stats, target_bond, target_angle)
        loose = excess > 1.5 and excess > cur_excess
        _, _, cc = density_fit(trial)
        result.history.append({"cycle": f"fit{cyc + 1}", "weight": wd, "iterations": int(sol.nit),
                               "bond_rmsd": stats["bond_rmsd"], "angle_rmsd": stats["angle_rmsd"],
                               "cc_fit": cc, "accepted": not (loose and auto_weight)})
        if loose and auto_weight:
            wd = adjust_weight(wd, stats["bond_rmsd"], stats["angle_rmsd"], target_bond, target_angle)
            continue
        cur_excess = excess
        watch_validation(r, trial, result.history[-1])
        if classes is not None:
            xyz, undone = classes.revert_worse(xyz, trial, target.values,
                                               lambda x, mask: relax_atoms(lambda p: fg(p, wd, mask), x, mask, free))
            result.history[-1]["undone"] = undone
            result.history[-1]["chain_factors"] = classes.chain_factors(xyz).tolist()
            ref_k = reference_k()
        else:
            xyz = trial
        if auto_weight:
            wd = adjust_weight(wd, stats["bond_rmsd"], stats["angle_rmsd"], target_bond, target_angle)
        try:
            # B between coordinate steps only has to be good enough for the next model map
            n_iter = params.adp_max_iter if cyc == cycles - 1 else max(5, params.adp_max_iter // 2)
            result.adp = refine_b(xyz, n_iter)
        except (InputError, ValueError) as exc:
            result.warnings.append(f"B factors not refined: {exc}")
            break
        bvals = np.clip([c.atom.b_iso for c in sc], *B_RANGE)
    return xyz
