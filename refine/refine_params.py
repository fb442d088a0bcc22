"""Settings of one real-space refinement (:func:`rerefine.refine.realspace.refine_model`)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from .fit_stage import FIT_TARGET_ANGLE
from .refine_target import REFERENCE_SIGMA
from .weight_control import TARGET_ANGLE_RMSD, TARGET_BOND_RMSD


@dataclass(frozen=True)
class RefineParameters:
    """What :func:`rerefine.refine.realspace.refine_model` does and how hard.

    Attributes
    ----------
    adp : bool
        Refine isotropic B after the coordinates.
    cycles : int
        Macro-cycles of coordinate refinement; up to ``max_extra_cycles`` more are run while
        the geometry is outside 1.5 x the targets (a cycle that overshoots is undone and
        repeated with a lower weight).
    max_extra_cycles : int
        See ``cycles``.
    weight : float, optional
        Fixed map weight; disables the automatic weight (:mod:`.weight_control`).
    b_sharpen : float
        Å², sharpening (> 0) or blurring (< 0) applied to the map for the coordinate target.
    target_bond, target_angle : float
        RMSD targets (Å, degrees) of the automatic weight.
    max_iter : int
        L-BFGS iterations per macro-cycle.
    adp_max_iter : int
        Iterations of each B refinement (:func:`.adp.refine_adp`).
    nonbonded_weight : float
        Multiplier of the nonbonded repulsion during refinement: the map pulls atoms of
        neighbouring residues into one blob at low resolution, the library weight lets
        clashes appear.
    clash_guard : bool
        Add :class:`.nonbonded.ClashGuard` (repulsion below the MolProbity clash distance).
    reference_sigma : float or None
        Å; harmonic restraint of each refined atom to its input position (default
        :data:`.refine_target.REFERENCE_SIGMA`); None or 0 switches it off. Riding hydrogens
        added for refinement are not held (their place follows from their atoms').
    soft_start : bool
        Run all but the last macro-cycle with the library repulsion and no clash guard
        (``nonbonded_weight`` and the guard apply in the last one).
    rebuild : bool
        After each macro-cycle but the last, rebuild peptides trapped far from their cis/trans
        omega (:func:`.peptide_links.rebuild_peptides`).
    fit_cycles, fit_iter : int
        With ``adp``: macro-cycles (L-BFGS iterations each) of coordinates against the model-map
        fit (:mod:`.fit_stage`), each followed by B refinement; 0 switches the stage off.
    fit_reference_sigma : float or None
        Å; reference-position restraint during the fit stage (to the same positions as before).
    fit_target_angle : float or None
        Degrees; angle RMSD target of the fit stage's automatic weight (default
        :data:`.fit_stage.FIT_TARGET_ANGLE`; None: ``target_angle``).
    occupancy : bool
        Refine the occupancies of alternative conformers (residues with altlocs) last,
        see :func:`.occupancy.refine_occupancy`.
    rigid_body : {None, "model", "chain"}
        First fit the whole model (``"model"``) or each chain (``"chain"``) into the map as a
        rigid body (:func:`.rigidbody.fit_rigid_body`); the reference-position restraint then
        holds atoms to the moved positions. For models misplaced as a whole.
    rama_weight : float or None
        Weight ``w`` of the Ramachandran term ``-w V(phi, psi)`` (:mod:`.ramachandran_restraint`,
        Top8000 landscapes); default :data:`.ramachandran_restraint.RAMA_WEIGHT`, 0 switches it off.
    rotamer_sigma_scale : float or None
        Chi restraints of side chains that start in a Top8000 rotamer to its centre, sigma =
        this x the rotamer's esd (:mod:`.rotamer_restraint`); default
        :data:`.rotamer_restraint.SIGMA_SCALE`, 0 switches them off.
    cbeta : bool
        C-beta torsion restraints (:mod:`.cbeta_restraint`).
    hydrogens : bool
        Refine a model without hydrogens with riding hydrogens added (:mod:`.riding_hydrogens`;
        removed again from the result), so that the repulsion sees what the all-atom clashscore
        counts. Not with pre-built ``restraints``.
    adp_prior_sigma : float or None
        Width (ln B) of the weak prior of B to the input's pattern (:func:`.adp.log_prior`);
        default :data:`.adp.PRIOR_SIGMA`, 0 switches it off.
    adp_tail_sigma : float or None
        Width (ln B) of the one-sided prior that keeps high B to the input's pattern
        (:func:`.adp.tail_prior`); default :data:`.adp.TAIL_SIGMA`, 0 switches it off (it is
        off too with ``adp_prior_sigma`` 0).
    metals : bool
        Distance restraints for the model's metal connection records (:mod:`.metal_restraint`).
    top8000_dir : path or None
        Top8000 reference data folder of the Ramachandran and rotamer terms, the one the
        validation reads (default :func:`.validation.tables.default_top8000_dir`, i.e. ``RR_TOP8000``).
    secondary_structure : bool
        Backbone hydrogen-bond restraints of helices and sheets, from the model's annotation
        or a DSSP-like assignment (:mod:`.secondary_structure`; off by default, the module says why).
    ncs : bool
        Torsion NCS restraints between copies of a chain (:mod:`.ncs`); off by default.
    fixed_b_free : bool
        With ``fixed_atoms`` (:func:`.realspace.refine_model`): the B of the held atoms are
        parameters of the B stages too, and their input B are put back in the result (their
        positions stay held throughout). Boxed refinement (:mod:`.boxed`) sets it for a region's
        margin: the B target is a correlation over the whole region (core and margin), so margin
        atoms held at B that do not fit the map (the input's, not yet refined) shift the B level
        of the core toward theirs.
    """

    adp: bool = True
    cycles: int = 3
    max_extra_cycles: int = 3
    weight: float | None = None
    b_sharpen: float = 0.0
    target_bond: float = TARGET_BOND_RMSD
    target_angle: float = TARGET_ANGLE_RMSD
    max_iter: int = 150
    adp_max_iter: int = 25
    nonbonded_weight: float = 5.0
    clash_guard: bool = True
    reference_sigma: float | None = REFERENCE_SIGMA
    soft_start: bool = True
    rebuild: bool = True
    fit_cycles: int = 2
    fit_iter: int = 40
    fit_reference_sigma: float | None = REFERENCE_SIGMA
    fit_target_angle: float | None = FIT_TARGET_ANGLE
    occupancy: bool = True
    rigid_body: str | None = None
    rama_weight: float | None = None
    rotamer_sigma_scale: float | None = None
    cbeta: bool = True
    hydrogens: bool = True
    adp_prior_sigma: float | None = None
    adp_tail_sigma: float | None = None
    metals: bool = True
    top8000_dir: str | Path | None = None
    secondary_structure: bool = False
    ncs: bool = False
    fixed_b_free: bool = False

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The setting names (the keywords :func:`.realspace.refine_model` accepts besides its data)."""
        return tuple(f.name for f in fields(cls))
