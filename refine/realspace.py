"""Real-space refinement of a model against a cryo-EM map: coordinates, then B factors.

Method (after phenix.real_space_refine, Afonine et al. 2018, Acta Cryst. D74:531):

* target ``T = w * T_map + T_restraints`` where ``T_map = -sum_i w_i rho(x_i)`` is the
  weighted sum of the (low-pass filtered, normalised) map at the atom centres
  (:mod:`.maptarget`) and ``T_restraints`` the library geometry restraints with
  nonbonded repulsion and the issue-16 terms (Ramachandran, rotamer, C-beta, metal, chain
  breaks), plus a harmonic restraint of every refined atom to its input position
  (:mod:`.refine_target`);
* minimised by L-BFGS (scipy) in macro-cycles; atoms of residues without a dictionary
  (``Restraints.fixed``) are not parameters and stay where they are;
* the weight ``w`` is automatic (:mod:`.weight_control`): calibrated on the gradients, then
  scaled after each macro-cycle towards the bond/angle RMSD targets; the validation watch raises
  local restraint weights where MolProbity classes get worse, each cycle's step is undone for
  residues it moves into a worse Ramachandran class or a rotamer outlier, and chains whose
  validation figures worsen get a lower data weight (:class:`.weight_control.ClassWatch`);
* peptides trapped far from planar cis/trans after a macro-cycle are rebuilt as ideal units
  (:func:`.peptide_links.rebuild_peptides`);
* all but the last macro-cycle run with the library repulsion only; the last adds the clash
  guard (:class:`.nonbonded.ClashGuard`) and the stiffer repulsion;
* then (``adp``) B factors against the map (:mod:`.adp`), the density-fit stage
  (:mod:`.fit_stage`) and the occupancies of alternative conformers (:mod:`.occupancy`).

Settings: :class:`.refine_params.RefineParameters`. A macro-cycle whose target or coordinates
become non-finite stops the refinement; the input model is returned unchanged with the reason in
``RefinementResult.status``.

Length (~500 lines): the driver only (its settings, target, weight control and fit stage live in
the modules named above); its macro-cycle loop shares the state of one refinement.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import gemmi
import numpy as np
from scipy import optimize

from rerefine.common.errors import InputError, RefinementError
from .fit_stage import density_fit_stage
from .mapio import DensityMap, fraction_inside
from .maptarget import MapTarget, scattering_weights
from .nonbonded import ClashGuard
from .peptide_links import omega_angles, peptide_units, rebuild_peptides, refinement_topology  # noqa: F401 (re-exported)
from .refine_params import RefineParameters
from .refine_target import model_geometry, refinement_restraints, restrained_target  # noqa: F401 (re-exported)
from .threads import thread_limits
from .weight_control import WATCH_CBETA, WATCH_OMEGA, ClassWatch, adjust_weight, geometry_excess, \
    initial_weight, relax_atoms, watch_validation

log = logging.getLogger(__name__)


@dataclass
class RefinementResult:
    """What :func:`refine_model` did.

    Attributes
    ----------
    structure : gemmi.Structure
        The refined model (a copy; the input is untouched). The input model itself when
        the refinement diverged.
    status : str
        ``"ok"`` or ``"diverged: <reason>"``.
    weight : float
        Final map weight ``w``.
    cycles : int
        Macro-cycles of coordinate refinement run.
    geometry_before, geometry_after : dict
        :func:`rerefine.refine.geometry.geometry_stats` of the input and refined model.
    map_before, map_after : float
        Mean weighted map value at the atoms (sd units of the filtered map).
    rmsd_moved : float
        RMS coordinate change, Å.
    adp : object
        :class:`rerefine.refine.adp.AdpResult` or None.
    occupancy : object
        :class:`rerefine.refine.occupancy.OccupancyResult` when the model has alternative
        conformers, else None.
    rigid_body : object
        :class:`rerefine.refine.rigidbody.RigidBodyFit` when a rigid-body fit ran first, else None.
    history : list of dict
        Per macro-cycle: weight, iterations, bond/angle RMSD, map term, what the watch raised
        (``*_raised``), the residue serials whose step was undone (``undone``) and the per-chain
        data-weight factors (``chain_factors``, chains in model order).
    warnings : list of str
        From the restraints (unknown residues fixed, ...) and the refinement.
    seconds : float
        Wall time, restraint set-up included.
    """

    structure: gemmi.Structure
    status: str = "ok"
    weight: float = float("nan")
    cycles: int = 0
    geometry_before: dict = field(default_factory=dict)
    geometry_after: dict = field(default_factory=dict)
    map_before: float = float("nan")
    map_after: float = float("nan")
    rmsd_moved: float = 0.0
    adp: object = None
    occupancy: object = None
    rigid_body: object = None
    history: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    seconds: float = 0.0


def refine_model(st: gemmi.Structure, dmap: DensityMap, resolution: float, monlib_dir,
                 params: RefineParameters | None = None, *, restraints=None, fit_map: DensityMap | None = None,
                 fixed_atoms: np.ndarray | None = None, **settings) -> RefinementResult:
    """Refine coordinates (and B factors) of the first model of ``st`` against ``dmap``.

    Parameters
    ----------
    st : gemmi.Structure
        Model in the frame of the map; not modified.
    dmap : DensityMap
        Experimental (optionally already sharpened) map.
    resolution : float
        Å; the map is low-pass filtered to it for the coordinate target.
    monlib_dir : path
        CCP4 monomer library.
    params : RefineParameters, optional
        The settings (default: :class:`.refine_params.RefineParameters`'s defaults).
    restraints : Restraints, optional
        Pre-built restraints (else built from ``monlib_dir``).
    fit_map : DensityMap, optional
        Map (same frame) for everything that fits the model map: B factors, occupancies and
        the density-fit stage; default ``dmap``. Give the deposited map when ``dmap`` is a
        sharpened copy: B factors then describe the data as deposited (the map every fit
        figure is measured on), and sharpening only steers the map-value coordinate cycles.
    fixed_atoms : ndarray of bool, optional
        Atoms of the first model of ``st`` (``st[0].all()`` order) held fixed: not parameters of
        any stage (coordinates, B, fit stage), like the atoms of residues without a dictionary;
        restraints between a fixed and a refined atom keep the fixed atom where it is. Riding
        hydrogens added for refinement follow their residue (fixed when all its atoms are).
        Used by :mod:`rerefine.refine.boxed` for the margin of a region.
    **settings
        Any field of :class:`.refine_params.RefineParameters` (e.g. ``cycles=5``), replacing
        that of ``params``.

    Raises
    ------
    InputError
        Bad resolution, model outside the map, no atom with occupancy.
    TypeError
        A keyword that is not a setting.
    """
    params = replace(params or RefineParameters(), **settings)
    with thread_limits(st[0].count_atom_sites() if len(st) else 0):
        return _refine_model(st, dmap, resolution, monlib_dir, params, restraints, fit_map, fixed_atoms)


def _with_refinement_terms(work, r_full, xyz0, params: RefineParameters):
    """The restraints refinement minimises: :func:`.refine_target.refinement_restraints` of ``r_full``
    with the stiffer repulsion and the issue-16 terms of ``params`` (rotamer, metal, C-beta,
    Ramachandran, chain breaks) and the validation watches (:mod:`.weight_control`)."""
    from .chain_breaks import GapKeeper, gap_pairs
    from .ramachandran_restraint import RAMA_WEIGHT, ramachandran_restraint
    from .restraints import torsion_watch
    from .rotamer_restraint import SIGMA_SCALE, rotamer_watch, with_rotamer_restraints

    r = refinement_restraints(r_full)
    r.weights = dict(r_full.weights)
    r.weights["nonbonded"] = r_full.weights.get("nonbonded", 1.0) * params.nonbonded_weight
    scale = SIGMA_SCALE if params.rotamer_sigma_scale is None else float(params.rotamer_sigma_scale)
    if scale > 0:
        r, _ = with_rotamer_restraints(work, r, xyz0, scale, top8000_dir=params.top8000_dir)
        r.watches = (rotamer_watch(r),)
    if params.metals:
        from .metal_restraint import with_metal_restraints

        r, _ = with_metal_restraints(work, r, xyz0)
    if params.cbeta:
        from .cbeta_restraint import with_cbeta_restraints

        r = with_cbeta_restraints(work, r)
    # omega further than WATCH_OMEGA from cis/trans and C-beta torsions further than WATCH_CBETA
    # get their weight raised after a cycle (validation calls 30 deg twisted, 0.25 Å a C-beta outlier)
    r.watches = tuple(r.watches) + (torsion_watch(r, "omega", ("omega",), WATCH_OMEGA),
                                    torsion_watch(r, "cbeta", ("cbeta_n", "cbeta_c"), WATCH_CBETA))
    rama_weight = RAMA_WEIGHT if params.rama_weight is None else float(params.rama_weight)
    r.ramachandran = (ramachandran_restraint(work, r, rama_weight, top8000_dir=params.top8000_dir)
                      if rama_weight > 0 else None)
    gaps = gap_pairs(work, r, xyz0)
    r.extra_terms = (GapKeeper(*gaps, r.fixed),) if len(gaps[0]) else ()
    if params.secondary_structure:
        from .secondary_structure import secondary_structure_terms

        r.extra_terms = tuple(r.extra_terms) + secondary_structure_terms(work, r, xyz0)
    if params.ncs:
        from .ncs import ncs_torsion_restraint

        term = ncs_torsion_restraint(work, r)
        if term is None:
            r.warnings.append("NCS restraints requested, but the model has no copies of a chain")
        else:
            r.extra_terms = tuple(r.extra_terms) + (term,)
    return r


def _refine_model(st, dmap, resolution, monlib_dir, params: RefineParameters, restraints, fit_map,
                  fixed_atoms=None) -> RefinementResult:
    """:func:`refine_model` inside its thread limits."""
    from .geometry import restraint_energy_gradient
    from .occupancy import has_altlocs
    from .restraints import atom_xyz, set_xyz
    from .riding_hydrogens import add_hydrogens, has_hydrogens, strip_added

    t0 = time.perf_counter()
    target_bond, target_angle = params.target_bond, params.target_angle
    if not (resolution and np.isfinite(resolution) and resolution > 0):
        raise InputError(f"{dmap.name}: resolution must be a positive number of Å (got {resolution})")
    work = st.clone()
    while len(work) > 1:
        del work[len(work) - 1]
    adp_prior_sigma = params.adp_prior_sigma
    if adp_prior_sigma is None:
        from .adp import PRIOR_SIGMA as adp_prior_sigma
    adp_tail_sigma = params.adp_tail_sigma
    if adp_tail_sigma is None:
        from .adp import TAIL_SIGMA as adp_tail_sigma

    # not with alternative conformers: the occupancy refinement works on the input's atoms
    added_h = (params.hydrogens and restraints is None and len(work) and not has_hydrogens(work)
               and not has_altlocs(work))
    r_geo = None
    if added_h:
        # geometry figures (before/after) stay those of the model itself, without the added H
        r_geo = refinement_topology(work, monlib_dir)
        work = add_hydrogens(work, monlib_dir)
    # hydrogens added for refinement ride on their atoms: no map term (occupancy 0), no B of their own
    h_added = np.array([bool(added_h) and c.atom.serial == -1 for c in work[0].all()], dtype=bool)
    xyz0 = atom_xyz(work)
    b_input = np.array([c.atom.b_iso for c in work[0].all()])  # reference of the B prior (adp.log_prior)
    if len(xyz0) == 0:
        raise InputError(f"{st.name or 'model'}: model has no atoms")
    inside = fraction_inside(dmap, xyz0)
    if inside < 0.5:
        raise InputError(f"{st.name or 'model'}: only {100 * inside:.0f}% of the atoms lie inside map "
                         f"{dmap.name} (box too small or wrong frame)")
    r_full = restraints if restraints is not None else refinement_topology(work, monlib_dir)
    held = np.zeros(len(xyz0), bool)
    if fixed_atoms is not None:
        from .restraints import without_fixed_terms

        held = _work_mask(st, work, fixed_atoms)
        # terms among held atoms only are constant and stay out of the RMSDs the weight follows
        r_full = without_fixed_terms(r_full, held)
        if r_geo is not None:
            r_geo = without_fixed_terms(r_geo, fixed_atoms)
    r = _with_refinement_terms(work, r_full, xyz0, params)
    adp_fixed = np.asarray(r.fixed, bool) | h_added
    if params.fixed_b_free:
        adp_fixed &= ~held | h_added
    result = RefinementResult(structure=work, warnings=list(r.warnings))
    if inside < 1.0:
        result.warnings.append(f"{100 * (1 - inside):.1f}% of the atoms lie outside the map box")

    target = MapTarget.from_map(dmap, resolution, b_sharpen=params.b_sharpen)
    fmap = dmap if fit_map is None else fit_map
    w_atom = scattering_weights(work, resolution)
    if not np.any(w_atom > 0):
        raise InputError(f"{st.name or 'model'}: every atom has zero occupancy; nothing to fit")
    free = ~np.asarray(r.fixed, bool)
    if not free.any():
        result.warnings.append("every atom is fixed (no dictionaries): coordinates not refined")

    def geo(x):
        return model_geometry(r_full, r_geo, h_added, x)

    result.geometry_before = geo(xyz0)
    result.map_before = float(np.dot(w_atom, target.values(xyz0)) / w_atom.sum())

    start = xyz0
    if params.rigid_body:
        from .rigidbody import fit_rigid_body, rigid_groups

        groups, labels = rigid_groups(work, params.rigid_body)
        # the final stage fits the very target the coordinate cycles use: no second filtering of the map
        heavy = np.array([not c.atom.is_hydrogen() for c in work[0].all()])
        result.rigid_body = fit_rigid_body(xyz0, dmap, resolution, w_atom, groups, labels, target=target,
                                           heavy_mask=heavy)
        for g in result.rigid_body.summary():
            if g["status"] in ("ambiguous", "clash"):
                result.warnings.append(f"rigid-body fit of {g['group']} not applied ({g['status']}: optimum "
                                       f"{g['rotation_deg']:.1f} deg, {g['shift']:.1f} Å)")
        start = result.rigid_body.xyz
    if r.ramachandran is not None:
        r.ramachandran.watch(start)  # the classes refinement must not make worse
    # validation-aware acceptance of each cycle and per-chain data weights (weight_control.ClassWatch)
    classes = ClassWatch(work, r, start, params.top8000_dir)
    chain_of = classes.chain_of_res[np.asarray(r.residue, np.int64)]

    auto = params.weight is None
    w = initial_weight(r, target, start, w_atom, free, target_bond) if auto else float(params.weight)
    if not np.isfinite(w) or w <= 0:
        w = 1.0

    xyz = start.copy()
    nfree = int(free.sum())
    guard = ClashGuard(r) if params.clash_guard else None
    p_ref = start[free].ravel().copy()
    # the reference restraint holds the model's own atoms: a riding hydrogen's place follows from its
    # atom's, and holding it where it was first placed pulls against its atom's regularisation
    ref_k = np.repeat(~h_added[free], 3) / params.reference_sigma ** 2 if params.reference_sigma else 0.0
    stage = {"guard": True}

    def fg(p, wa):
        x = xyz.copy()
        x[free] = p.reshape(-1, 3)
        em, gmap = target.energy_gradient(x, wa)
        return restrained_target(x, p, em, gmap, r, free, guard if stage["guard"] else None, ref_k, p_ref)

    def plain_energy(x, wa):
        """Map + restraint (+ clash guard) target without the reference term."""
        em, gm = target.energy_gradient(x, wa)
        er, g = restraint_energy_gradient(r, x)
        ec = guard.energy_gradient(x, g) if (guard is not None and stage["guard"]) else 0.0
        return em + er + ec, g + gm

    units = peptide_units(work, r) if params.rebuild else None
    if units is not None:
        # isomers from cis-peptide records are the authors' (annotated) word; from geometry a guess
        switchable = np.full(len(units), not len(work.cispeps), bool)
        resnames = [c.residue.name for c in work[0].all()]
        unit_next = [resnames[int(i)] for i in units[:, 6]]
    free_pos = np.cumsum(free) - 1  # row of each free atom in the parameter vector
    nb_full = r.weights["nonbonded"]
    ncycle = 0
    total_cycles = params.cycles
    cur_excess = geometry_excess(result.geometry_before, target_bond, target_angle)
    while ncycle < total_cycles and nfree:
        ncycle += 1
        # all but the last cycle with the library repulsion and no clash guard: a noisy start has
        # clashes by the hundred, and stiff repulsion pushes atoms into wrong minima before the
        # bonded geometry has settled; the last cycle clears the clashes
        soft = params.soft_start and ncycle < total_cycles
        stage["guard"] = not soft
        r.weights["nonbonded"] = r_full.weights.get("nonbonded", 1.0) if soft else nb_full
        wa = w_atom * w * classes.factor[chain_of]
        p0 = xyz[free].ravel()
        try:
            with np.errstate(all="ignore"):
                sol = optimize.minimize(fg, p0, args=(wa,), jac=True, method="L-BFGS-B",
                                        options={"maxiter": params.max_iter, "maxcor": 20})
        except (FloatingPointError, ValueError, ZeroDivisionError, RefinementError) as exc:
            return _diverged(st, result, f"cycle {ncycle}: {exc}", t0)
        if not (np.isfinite(sol.fun) and np.all(np.isfinite(sol.x))):
            return _diverged(st, result, f"cycle {ncycle}: target became non-finite (weight {w:.3g})", t0)
        trial = xyz.copy()
        trial[free] = sol.x.reshape(-1, 3)
        stats = geo(trial)  # heavy atoms decide the weight
        mterm = float(np.dot(w_atom, target.values(trial)) / w_atom.sum())
        loose = stats["bond_rmsd"] > 1.5 * target_bond or stats["angle_rmsd"] > 1.5 * target_angle
        # a loose cycle is undone only when it left the geometry worse than it found it: a shaken
        # or badly strained input is loose after its first cycle too, yet much improved
        excess = geometry_excess(stats, target_bond, target_angle)
        loose = loose and excess > cur_excess
        result.history.append({"cycle": ncycle, "weight": w, "iterations": int(sol.nit),
                               "bond_rmsd": stats["bond_rmsd"], "angle_rmsd": stats["angle_rmsd"],
                               "map_value": mterm, "accepted": not (loose and auto)})
        log.debug("cycle %d: w=%.4g it=%d bond=%.4f angle=%.3f map=%.4f", ncycle, w, sol.nit,
                  stats["bond_rmsd"], stats["angle_rmsd"], mterm)
        if loose and auto:
            # overshoot: undo the cycle (the distortion would seed wrong local minima) and retry lower
            if total_cycles < params.cycles + params.max_extra_cycles:
                total_cycles += 1
        else:
            cur_excess = excess
            watch_validation(r, trial, result.history[-1])
            xyz, undone = classes.revert_worse(
                xyz, trial, target.values,
                lambda x, mask: relax_atoms(lambda p: fg(p, wa), x, mask, free))
            result.history[-1]["undone"] = undone
            result.history[-1]["chain_factors"] = classes.chain_factors(xyz).tolist()
            if units is not None and len(units) and ncycle < total_cycles:
                xyz, changed = rebuild_peptides(xyz, units, lambda x: plain_energy(x, wa)[0],
                                                omega_ideal=r.torsions.ideal, switchable=switchable,
                                                residue_names=unit_next,
                                                energy_gradient=lambda x: plain_energy(x, wa),
                                                residue=r.residue, free=free)
                if changed:
                    moved_ids = units[changed][:, [2, 3, 4, 5]].ravel()
                    moved_ids = moved_ids[moved_ids >= 0]
                    # the rebuilt atoms are restrained to where they now are, not to the trap
                    p_ref.reshape(-1, 3)[free_pos[moved_ids]] = xyz[moved_ids]
                result.history[-1]["peptides_rebuilt"] = len(changed)
        if auto:
            w = adjust_weight(w, stats["bond_rmsd"], stats["angle_rmsd"], target_bond, target_angle)

    accepted = [h for h in result.history if h["accepted"]]
    result.weight = float(accepted[-1]["weight"]) if accepted else float(w)
    result.cycles = ncycle

    def record(x):
        set_xyz(work, x)
        result.geometry_after = geo(x)
        result.map_after = float(np.dot(w_atom, target.values(x)) / w_atom.sum())
        result.rmsd_moved = float(np.sqrt(np.mean(np.sum((x - xyz0) ** 2, axis=1))))

    record(xyz)
    if params.adp:
        if fmap.is_orthogonal:
            pairs = np.asarray(r.bonds.idx, np.int64)
            # no B similarity to the riding hydrogens: their B stay fixed at the input's and would
            # tie their atoms' B to it
            pairs = pairs[~h_added[pairs].any(axis=1)]
            refine_b = _b_refinement(work, fmap, resolution, pairs, adp_fixed, b_input,
                                     (adp_prior_sigma, adp_tail_sigma), h_added)
            try:
                result.adp = refine_b(xyz, params.adp_max_iter)
            except (InputError, ValueError) as exc:
                result.warnings.append(f"B factors not refined: {exc}")
            else:
                if params.fit_cycles and nfree and result.status == "ok":
                    try:
                        xyz = density_fit_stage(result, work, fmap, resolution, r, xyz, free, w, target, w_atom,
                                                guard, params, refine_b, p_ref, geo, classes, ~h_added)
                    except (InputError, ValueError) as exc:  # e.g. voxels too coarse for the model map
                        result.warnings.append(f"density-fit stage skipped: {exc}")
                    record(xyz)
        else:
            result.warnings.append("B factors not refined: the map cell is not orthogonal")
    if params.occupancy and result.status == "ok" and has_altlocs(work):
        from .occupancy import refine_occupancy

        if not fmap.is_orthogonal:
            result.warnings.append("occupancies not refined: the map cell is not orthogonal")
        else:
            try:
                result.occupancy = refine_occupancy(work, fmap, resolution, xyz=xyz)
            except (InputError, ValueError) as exc:
                result.warnings.append(f"occupancies not refined: {exc}")
    if params.fixed_b_free and held.any():
        atoms = [c.atom for c in work[0].all()]
        for k in np.flatnonzero(held).tolist():
            atoms[k].b_iso = float(b_input[k])
    if added_h:
        strip_added(work)
    result.seconds = time.perf_counter() - t0
    return result


def _work_mask(st: gemmi.Structure, work: gemmi.Structure, mask) -> np.ndarray:
    """``mask`` over the atoms of ``st[0]`` carried over to ``work`` (the same chains and residues,
    possibly with added hydrogens): atoms matched by chain, residue and atom name and altloc;
    added atoms take True when every atom of their residue in ``st`` is True."""
    mask = np.asarray(mask, bool)
    if len(mask) != st[0].count_atom_sites():
        raise ValueError(f"fixed_atoms has {len(mask)} entries for {st[0].count_atom_sites()} atoms")
    by_atom, by_res = {}, {}
    k = 0
    for ci, ch in enumerate(st[0]):
        for ri, res in enumerate(ch):
            for at in res:
                by_atom[(ci, ri, at.name, at.altloc)] = mask[k]
                by_res[(ci, ri)] = by_res.get((ci, ri), True) and bool(mask[k])
                k += 1
    out = []
    for ci, ch in enumerate(work[0]):
        for ri, res in enumerate(ch):
            for at in res:
                out.append(by_atom.get((ci, ri, at.name, at.altloc), by_res.get((ci, ri), False)))
    return np.array(out, bool)


def _b_refinement(work, fmap, resolution, pairs, fixed, b_input, priors, h_added):
    """``refine_b(xyz, max_iter) -> AdpResult``: :func:`.adp.refine_adp` of ``work``'s B at ``xyz`` (Å)
    against ``fmap``, with bonded similarity over ``pairs`` and the priors to ``b_input``
    (``priors``: widths of :func:`.adp.log_prior` and :func:`.adp.tail_prior`). Riding
    hydrogens added for refinement (``h_added``: occupancy 0, B fixed) are left out of the model
    map (they scatter nothing; the map and gradients were computed over them for nothing); the data
    weight stays the one :func:`.adp.refine_adp` gives the whole model (``2 N / misfit``, ``N`` with
    the hydrogens), so that leaving them out changes the cost, not the balance with the restraints."""
    from .adp import B_MAX, B_MIN, refine_adp
    from .modelfit import ModelMapFit

    prior_sigma, tail_sigma = priors
    if not h_added.any():
        return lambda xyz, max_iter: refine_adp(work, fmap, resolution, xyz=xyz, pairs=pairs, fixed=fixed,
                                                max_iter=max_iter, b_prior=b_input, prior_sigma=prior_sigma,
                                                tail_sigma=tail_sigma)
    heavy = ~h_added
    row = np.cumsum(heavy) - 1
    heavy_pairs = row[pairs[heavy[pairs].all(axis=1)]]
    atoms = [c.atom for c in work[0].all()]

    def refine_b(xyz, max_iter):
        sub = work.clone()
        sub.remove_hydrogens()
        sub_atoms = [c.atom for c in sub[0].all()]
        fit = ModelMapFit.prepare(fmap, xyz[heavy], [a.element.name for a in sub_atoms],
                                  np.array([a.occ for a in sub_atoms]), resolution, target="ccmask")
        b0 = np.clip(np.nan_to_num([a.b_iso for a in sub_atoms], nan=30.0), B_MIN, B_MAX)
        weight = 2.0 * len(atoms) / max(fit.evaluate(b0)[0], 1e-6)
        out = refine_adp(sub, fmap, resolution, xyz=xyz[heavy], pairs=heavy_pairs, fixed=fixed[heavy],
                         max_iter=max_iter, b_prior=b_input[heavy], prior_sigma=prior_sigma,
                         tail_sigma=tail_sigma, fit=fit,
                         data_weight=weight)
        for k, c in zip(np.flatnonzero(heavy).tolist(), sub[0].all()):
            atoms[k].b_iso = c.atom.b_iso
        return out

    return refine_b


def _diverged(st: gemmi.Structure, result: RefinementResult, reason: str, t0: float) -> RefinementResult:
    """Keep the input model and say why the refinement stopped."""
    log.warning("refinement stopped, input model kept: %s", reason)
    work = st.clone()
    while len(work) > 1:
        del work[len(work) - 1]
    result.structure = work
    result.status = f"diverged: {reason}"
    result.geometry_after = dict(result.geometry_before)
    result.map_after = result.map_before
    result.rmsd_moved = 0.0
    result.seconds = time.perf_counter() - t0
    return result


__all__ = ["RefinementResult", "RefineParameters", "refine_model", "RefinementError"]
