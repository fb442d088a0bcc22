"""Real-space refinement of a model against a cryo-EM map: coordinates, then B factors.

Method (after phenix.real_space_refine, Afonine et al. 2018, Acta Cryst. D74:531):

* target ``T = w * T_map + T_restraints`` where ``T_map = -sum_i w_i rho(x_i)`` is the
  weighted sum of the (low-pass filtered, normalised) map at the atom centres
  (:mod:`.maptarget`) and ``T_restraints`` the library geometry restraints with
  nonbonded repulsion (:mod:`.restraints`, :mod:`.geometry`);
* minimised by L-BFGS (scipy) in macro-cycles; atoms of residues without a dictionary
  (``Restraints.fixed``) are not parameters and stay where they are;
* **automatic weight**: the first ``w`` is the ratio of the restraint and map gradient
  norms (the restraint gradient taken at a probe shake of the input, so that an ideal
  input model does not give a zero ratio); after each macro-cycle ``w`` is scaled until
  the RMS deviations from ideal bond lengths and angles approach the targets
  (0.01 Å, 1.0 deg: the values Phenix aims at). With ``per_chain=True`` each chain gets
  its own factor on top of the global weight, adjusted from its own RMSDs (Afonine:
  the weight "can be local");
* a harmonic restraint ties every refined atom to its input position (sigma
  :data:`REFERENCE_SIGMA`, as Phenix's reference-coordinate restraints): the map-value
  target alone drifts 0.8 Å from deposited models at 3-4 Å and cannot average the noise of a
  shaken start;
* peptide links are decided robustly against coordinate errors (:func:`refinement_topology`:
  C-N up to 3 Å still a bond, cis/trans from the file's records or conservative rules), and
  peptides trapped far from planar cis/trans after a macro-cycle are rebuilt as ideal units
  at the best rotation about CA-CA, with cis/trans chosen by the target where the file has no
  records (:func:`rebuild_peptides`);
* then (``adp=True``) B factors, per residue then per atom, against the map (:mod:`.adp`),
  and ``fit_cycles`` macro-cycles alternating coordinates against the model-map fit
  (:class:`rerefine.refine.modelfit.ModelMapFit`, which uses the B just refined: better B
  sharpen the prediction, so the next coordinate step fits better) with B refinement.

A macro-cycle whose target or coordinates become non-finite stops the refinement; the
input model is returned unchanged with the reason in ``RefinementResult.status``.

Length (~870 lines): the driver, its density-fit stage, the automatic weight and the clash
guard are one algorithm sharing their state; the peptide topology and rebuilding live in
:mod:`.peptide_links`, the issue-16 terms in their own modules (ramachandran_restraint,
rotamer_restraint, cbeta_restraint, metal_restraint, chain_breaks, riding_hydrogens).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import gemmi
import numpy as np
from scipy import optimize

from rerefine.common.errors import InputError, RefinementError
from .mapio import DensityMap, fraction_inside
from .maptarget import MapTarget, scattering_weights
from .nonbonded import nonbonded_range
from .peptide_links import omega_angles, peptide_units, rebuild_peptides, refinement_topology  # noqa: F401 (re-exported)
from .threads import PARALLEL_MIN_ATOMS

log = logging.getLogger(__name__)

#: Geometry the automatic weight aims at (Phenix's defaults for real-space refinement).
TARGET_BOND_RMSD = 0.01
TARGET_ANGLE_RMSD = 1.0
#: Å, sigma of the harmonic restraint of every refined atom to its input position
#: (``sum |x - x_in|^2 / sigma^2``, the form of Phenix's optional reference-coordinate
#: restraints). Without it the map-value target moves deposited models by ~0.8 Å RMS at 3-4 Å
#: (5ME2/EMD-3488, 7CEC/EMD-30342) and leaves 0.5 Å-shaken models 0.8-0.9 Å from the deposited
#: coordinates. With the robust peptide topology (:func:`refinement_topology`): 0.2 Å left shaken
#: 5ME2 0.275 Å from the deposited model, 0.15 Å 0.225-0.235 Å (the map of EMD-3488 itself pulls
#: the deposited 5ME2 0.2 Å away: a looser restraint follows the map, not the deposited model),
#: while the CC_mask of the re-refined deposited models stays well above their input (measured,
#: benchmarks/bench_refine.py).
REFERENCE_SIGMA = 0.15
#: Degrees: angle RMSD the weight of the density-fit stage aims at. The fit stage starts from a
#: model already at the 1.0 deg target; allowing 1.3 lets the B-aware target pull the model into
#: its density (re-refined 5ME2: CC_mask 0.877 at 1.0 deg, 0.884 at 1.3; shaken recovery
#: unchanged), still inside the 1.5 deg of issue 6.
FIT_TARGET_ANGLE = 1.3


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
        Final map weight ``w`` (the global one; see ``chain_weights`` for per-chain factors).
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
        Per macro-cycle: weight, iterations, bond/angle RMSD, map term.
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
    chain_weights: dict = field(default_factory=dict)
    seconds: float = 0.0


#: Torsion labels not restrained during refinement: backbone phi/psi of the peptide links
#: carry one generic value (e.g. psi 160 deg) that would drag helices towards strands;
#: Phenix restrains them only through optional Ramachandran restraints.
UNRESTRAINED_TORSIONS = ("phi", "psi")
#: Torsions kept at their library sigma; the others (side-chain chi and the generic ``sp3_sp3``
#: / ``sp2_sp3`` torsions of ligands) get ``TORSION_SIGMA_SCALE`` times theirs. The library's
#: 10 deg on a staggered chi pulls side chains off their density: minimising the restraints
#: alone moves the deposited 5ME2 by 0.42 Å RMS, 0.16 Å without torsions (measured).
FULL_WEIGHT_TORSIONS = ("omega",)
TORSION_SIGMA_SCALE = 2.5


def _ring_bonds(n: int, bonds: np.ndarray, max_ring: int = 8) -> set:
    """Bonds (i, j), i < j, that close a ring of at most ``max_ring`` atoms."""
    adj: list[list[int]] = [[] for _ in range(n)]
    for i, j in bonds.tolist():
        adj[i].append(j)
        adj[j].append(i)
    ring = set()
    for i, j in bonds.tolist():
        # breadth-first search from i to j without the bond i-j itself
        frontier = {i}
        seen = {i}
        found = False
        for _ in range(max_ring - 1):
            nxt = set()
            for a in frontier:
                for b in adj[a]:
                    if (a == i and b == j) or b in seen:
                        continue
                    if b == j:
                        found = True
                        break
                    nxt.add(b)
                if found:
                    break
            if found or not nxt:
                break
            seen |= nxt
            frontier = nxt
        if found:
            ring.add((min(i, j), max(i, j)))
    return ring


def refinement_restraints(r):
    """The restraints as used for refinement: same arrays, but no weight on some torsions.

    Torsions get ``sigma = 0`` (the geometry kernels skip them) when their label is in
    :data:`UNRESTRAINED_TORSIONS`, or when their central bond lies in a ring: ring
    conformations (proline puckers, porphyrins) are fixed by bonds, angles and planes, and
    the library's generic staggered values for ring torsions (``sp3_sp3_*`` of acedrg
    dictionaries) contradict ring closure. Other torsions except omega are loosened by
    :data:`TORSION_SIGMA_SCALE`. Returns a shallow copy; ``r`` is not changed.
    """
    from dataclasses import replace

    from .restraints import TorsionSet

    t = r.torsions
    sigma = np.array(t.sigma, dtype=np.float64, copy=True)
    if len(sigma):
        ring = _ring_bonds(r.n_atoms, np.asarray(r.bonds.idx))
        for k in range(len(sigma)):
            lab = t.label[k] if k < len(t.label) else ""
            j, l = int(t.idx[k, 1]), int(t.idx[k, 2])
            if lab in UNRESTRAINED_TORSIONS or (min(j, l), max(j, l)) in ring:
                sigma[k] = 0.0
            elif lab not in FULL_WEIGHT_TORSIONS:
                sigma[k] *= TORSION_SIGMA_SCALE
    tors = TorsionSet(t.idx, t.ideal, sigma, t.period, list(t.label))
    return replace(r, torsions=tors)


#: Degrees: validation watch (restraints.TorsionWatch) limits after each cycle: an omega further
#: than this from 0/180 (MolProbity calls 30 deg twisted) and a C-beta torsion further than
#: WATCH_CBETA from its ideal (together ~9 deg make the 0.25 Å C-beta outlier) get weight x4, up to x16.
WATCH_OMEGA = 15.0
WATCH_CBETA = 4.0




@contextlib.contextmanager
def thread_limits(n_atoms: int):
    """One BLAS thread (L-BFGS-B's small dense algebra runs 10x slower with OpenBLAS threads
    competing with numba's) and, for small models, one numba thread. Restored on exit."""
    import numba

    old = numba.get_num_threads()
    if n_atoms < PARALLEL_MIN_ATOMS:
        numba.set_num_threads(1)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # optional: without it BLAS keeps its own thread count
            threadpool_limits = None
        if threadpool_limits is None:
            yield
        else:
            with threadpool_limits(limits=1, user_api="blas"):
                yield
    finally:
        numba.set_num_threads(old)


class ClashGuard:
    """Extra repulsion keeping pairs out of the MolProbity clash range during refinement.

    The library repulsion lets 1-5 pairs (C(i)...N(i+2), O...CG) come to 0.85 x the vdW
    sum, closer than the Probe radii minus 0.4 Å that ``nonbonded_overlaps`` counts as a
    clash (Word et al. 1999): the map pull at low resolution then creates clashes by the
    hundred. This term repels every pair that the clash count would consider (same pair list,
    not 1-4, not H-bond donor/acceptor, not metal) once closer than that limit + ``margin``.
    """

    def __init__(self, r, margin: float = 0.1, sigma: float = 0.03):
        from .nonbonded import CLASH_OVERLAP, probe_radii

        self.r = r
        self.rad = probe_radii(r)
        self.overlap = CLASH_OVERLAP - margin
        self.sigma = sigma
        self.fixed = np.asarray(r.fixed, np.bool_)
        self._builds = -1
        self._pi = self._pj = self._lim = None

    def _refresh(self):
        nb = self.r.nonbonded
        hb = self.r.hb_type
        pi, pj = nb.pi, nb.pj
        hi, hj = hb[pi], hb[pj]
        don = (hi == 1) | (hi == 3)
        acc = (hi == 2) | (hi == 3)
        donj = (hj == 1) | (hj == 3)
        accj = (hj == 2) | (hj == 3)
        hbond = (don & accj) | (donj & acc) | ((hi == 4) & accj) | ((hj == 4) & acc)
        keep = ~hbond & (hi != 5) & (hj != 5)
        kind = getattr(nb, "kind", None)
        if kind is not None and len(kind) == len(pi):
            keep &= kind != 4
        self._pi = np.ascontiguousarray(pi[keep])
        self._pj = np.ascontiguousarray(pj[keep])
        self._lim = self.rad[self._pi] + self.rad[self._pj] - self.overlap
        self._builds = nb.n_builds

    def energy_gradient(self, xyz: np.ndarray, grad: np.ndarray) -> float:
        """Energy; adds the gradient into ``grad``. Call after the restraint term (list is fresh)."""
        if self.r.nonbonded is None:
            return 0.0
        if self._builds != self.r.nonbonded.n_builds:
            self._refresh()
        # The same harmonic repulsion as the library's nonbonded term, with the clash limits.
        g = np.zeros_like(grad)
        e = nonbonded_range(xyz, self._pi, self._pj, self._lim, self.sigma, 1.0, g, 0, len(self._pi))
        g[self.fixed] = 0.0
        grad += g
        return float(e)


def _chain_index(st: gemmi.Structure) -> tuple[np.ndarray, list[str]]:
    """Chain serial of each atom (``st[0].all()`` order) and the chain names."""
    idx = []
    names = []
    for ci, ch in enumerate(st[0]):
        names.append(ch.name)
        for res in ch:
            idx.extend([ci] * len(res))
    return np.array(idx, dtype=np.int64), names


def _adjust(w: float, bond: float, angle: float, tb: float, ta: float) -> float:
    """New weight from the RMSDs after a cycle: shrink when geometry is loose, grow when tight.

    The larger of the two relative excesses decides. Steps are bounded so one noisy cycle
    cannot swing the weight by more than a factor 4 down or 2 up.
    """
    excess = max(bond / tb, angle / ta)
    if excess > 1.25:
        return w * max(0.25, 1.0 / excess ** 2)
    if excess < 0.8:
        return w * min(2.0, 1.0 / max(excess, 0.05))
    return w


def refine_model(st: gemmi.Structure, dmap: DensityMap, resolution: float, monlib_dir, *,
                 adp: bool = True, cycles: int = 3, weight: float | None = None,
                 b_sharpen: float = 0.0, target_bond: float = TARGET_BOND_RMSD,
                 target_angle: float = TARGET_ANGLE_RMSD, max_iter: int = 150,
                 per_chain: bool = False, restraints=None, max_extra_cycles: int = 3,
                 adp_max_iter: int = 25, nonbonded_weight: float = 5.0,
                 clash_guard: bool = True, reference_sigma: float | None = REFERENCE_SIGMA,
                 soft_start: bool = True, rebuild: bool = True, fit_cycles: int = 2, fit_iter: int = 40,
                 fit_reference_sigma: float | None = REFERENCE_SIGMA,
                 fit_target_angle: float | None = FIT_TARGET_ANGLE,
                 occupancy: bool = True, fit_map: DensityMap | None = None,
                 rigid_body: str | None = None, rama_weight: float | None = None,
                 rotamer_sigma_scale: float | None = None, cbeta: bool = True,
                 hydrogens: bool = True, adp_prior_sigma: float | None = None,
                 metals: bool = True, top8000_dir=None, secondary_structure: bool = False) -> RefinementResult:
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
    adp : bool
        Refine isotropic B after the coordinates.
    cycles : int
        Macro-cycles of coordinate refinement; up to ``max_extra_cycles`` more are run while
        the geometry is outside 1.5 x the targets (a cycle that overshoots is undone and
        repeated with a lower weight).
    weight : float, optional
        Fixed map weight; disables the automatic weight.
    b_sharpen : float
        Å², sharpening (> 0) or blurring (< 0) applied to the map for the coordinate target.
    target_bond, target_angle : float
        RMSD targets (Å, degrees) of the automatic weight.
    max_iter : int
        L-BFGS iterations per macro-cycle.
    per_chain : bool
        Separate weight factors per chain.
    restraints : Restraints, optional
        Pre-built restraints (else built from ``monlib_dir``).
    nonbonded_weight : float
        Multiplier of the nonbonded repulsion during refinement: the map pulls atoms of
        neighbouring residues into one blob at low resolution, the library weight lets
        clashes appear.
    clash_guard : bool
        Add :class:`ClashGuard` (repulsion below the MolProbity clash distance).
    reference_sigma : float or None
        Å; harmonic restraint of each refined atom to its input position (default
        :data:`REFERENCE_SIGMA`); None or 0 switches it off.
    soft_start : bool
        Run all but the last macro-cycle with the library repulsion and no clash guard
        (``nonbonded_weight`` and the guard apply in the last one).
    rebuild : bool
        After each macro-cycle but the last, rebuild peptides trapped far from their cis/trans
        omega (:func:`rebuild_peptides`).
    fit_cycles, fit_iter : int
        With ``adp``: macro-cycles (L-BFGS iterations each) of coordinates against the model-map
        fit, each followed by B refinement; 0 switches the stage off.
    fit_reference_sigma : float or None
        Å; reference-position restraint during the fit stage (to the same positions as before).
    fit_target_angle : float or None
        Degrees; angle RMSD target of the fit stage's automatic weight (default
        :data:`FIT_TARGET_ANGLE`; None: ``target_angle``).
    occupancy : bool
        Refine the occupancies of alternative conformers (residues with altlocs) last,
        see :func:`rerefine.refine.occupancy.refine_occupancy`.
    fit_map : DensityMap, optional
        Map (same frame) for everything that fits the model map: B factors, occupancies and
        the density-fit stage; default ``dmap``. Give the deposited map when ``dmap`` is a
        sharpened copy: B factors then describe the data as deposited (the map every fit
        figure is measured on), and sharpening only steers the map-value coordinate cycles.
    rigid_body : {None, "model", "chain"}
        First fit the whole model (``"model"``) or each chain (``"chain"``) into ``dmap`` as a
        rigid body (:func:`rerefine.refine.rigidbody.fit_rigid_body`); the reference-position
        restraint then holds atoms to the moved positions. For models misplaced as a whole.
    rama_weight : float or None
        Weight ``w`` of the Ramachandran term ``-w V(phi, psi)``
        (:mod:`rerefine.refine.ramachandran_restraint`, Top8000 landscapes); default
        :data:`rerefine.refine.ramachandran_restraint.RAMA_WEIGHT`, 0 switches it off.
    rotamer_sigma_scale : float or None
        Chi restraints of side chains that start in a Top8000 rotamer to its centre, sigma =
        this x the rotamer's esd (:mod:`rerefine.refine.rotamer_restraint`); default
        :data:`rerefine.refine.rotamer_restraint.SIGMA_SCALE`, 0 switches them off.
    cbeta : bool
        C-beta torsion restraints (:mod:`rerefine.refine.cbeta_restraint`).
    hydrogens : bool
        Refine a model without hydrogens with riding hydrogens added
        (:mod:`rerefine.refine.riding_hydrogens`; removed again from the result), so that the
        repulsion sees what the all-atom clashscore counts. Not with ``restraints`` given.
    adp_prior_sigma : float or None
        Width (ln B) of the weak prior of B to the input's pattern
        (:func:`rerefine.refine.adp.log_prior`); default :data:`rerefine.refine.adp.PRIOR_SIGMA`,
        0 switches it off.
    metals : bool
        Distance restraints for the model's metal connection records
        (:mod:`rerefine.refine.metal_restraint`).
    top8000_dir : path or None
        Top8000 reference data folder of the Ramachandran and rotamer terms, the one the
        validation reads (default
        :func:`rerefine.refine.validation.tables.default_top8000_dir`, i.e. ``RR_TOP8000``).
    secondary_structure : bool
        Backbone hydrogen-bond restraints of helices and sheets, from the model's annotation
        or a DSSP-like assignment (:mod:`rerefine.refine.secondary_structure`; off by default,
        the module says why).

    Raises
    ------
    InputError
        Bad resolution, model outside the map, no atom with occupancy.
    """
    with thread_limits(st[0].count_atom_sites() if len(st) else 0):
        return _refine_model(st, dmap, resolution, monlib_dir, adp=adp, cycles=cycles, weight=weight,
                             b_sharpen=b_sharpen, target_bond=target_bond, target_angle=target_angle,
                             max_iter=max_iter, per_chain=per_chain, restraints=restraints,
                             max_extra_cycles=max_extra_cycles, adp_max_iter=adp_max_iter,
                             nonbonded_weight=nonbonded_weight, clash_guard=clash_guard,
                             reference_sigma=reference_sigma, soft_start=soft_start, rebuild=rebuild,
                             fit_cycles=fit_cycles, fit_iter=fit_iter, fit_reference_sigma=fit_reference_sigma,
                             fit_target_angle=fit_target_angle, occupancy=occupancy, fit_map=fit_map,
                             rigid_body=rigid_body, rama_weight=rama_weight,
                             rotamer_sigma_scale=rotamer_sigma_scale, cbeta=cbeta, hydrogens=hydrogens,
                             adp_prior_sigma=adp_prior_sigma, metals=metals, top8000_dir=top8000_dir,
                             secondary_structure=secondary_structure)


def initial_weight(r, target: MapTarget, xyz: np.ndarray, w_atom: np.ndarray, free: np.ndarray,
                   target_bond: float = TARGET_BOND_RMSD, scale: float = 0.15) -> float:
    """First map weight: ``scale * |H_r d| / |g_map|``.

    ``H_r d`` is the change of the restraint gradient under a random displacement ``d``
    whose bond-length RMS is ``target_bond`` (a finite-difference Hessian-vector product),
    i.e. the restraint force that geometry at the target RMSD produces, whatever the strain
    of the input model; ``g_map`` is the map gradient at the input. ``scale`` (0.15) was
    calibrated on 5ME2/EMD-3488 (the weight giving 0.01 Å / 1 deg there is 0.1-0.2 of the
    raw ratio); the macro-cycles correct it.
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


def _refine_model(st, dmap, resolution, monlib_dir, *, adp, cycles, weight, b_sharpen, target_bond,
                  target_angle, max_iter, per_chain, restraints, max_extra_cycles, adp_max_iter,
                  nonbonded_weight, clash_guard, reference_sigma, soft_start, rebuild, fit_cycles, fit_iter,
                  fit_reference_sigma, fit_target_angle, occupancy, fit_map, rigid_body,
                  rama_weight, rotamer_sigma_scale, cbeta, hydrogens, adp_prior_sigma,
                  metals, top8000_dir, secondary_structure) -> RefinementResult:
    from .geometry import geometry_stats, restraint_energy_gradient
    from .restraints import atom_xyz, set_xyz
    from .riding_hydrogens import add_hydrogens, has_hydrogens, strip_added

    t0 = time.perf_counter()
    if not (resolution and np.isfinite(resolution) and resolution > 0):
        raise InputError(f"{dmap.name}: resolution must be a positive number of Å (got {resolution})")
    work = st.clone()
    while len(work) > 1:
        del work[len(work) - 1]
    if adp_prior_sigma is None:
        from .adp import PRIOR_SIGMA as adp_prior_sigma
    from .occupancy import has_altlocs

    # not with alternative conformers: the occupancy refinement works on the input's atoms
    added_h = hydrogens and restraints is None and len(work) and not has_hydrogens(work) and not has_altlocs(work)
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
    r = refinement_restraints(r_full)
    adp_fixed = np.asarray(r.fixed, bool) | h_added
    r.weights = dict(r_full.weights)
    r.weights["nonbonded"] = r_full.weights.get("nonbonded", 1.0) * nonbonded_weight
    from .ramachandran_restraint import RAMA_WEIGHT, ramachandran_restraint
    from .rotamer_restraint import SIGMA_SCALE, with_rotamer_restraints

    rotamer_sigma_scale = SIGMA_SCALE if rotamer_sigma_scale is None else float(rotamer_sigma_scale)
    if rotamer_sigma_scale > 0:
        from .rotamer_restraint import rotamer_watch

        r, _ = with_rotamer_restraints(work, r, xyz0, rotamer_sigma_scale, top8000_dir=top8000_dir)
        r.watches = (rotamer_watch(r),)
    if metals:
        from .metal_restraint import with_metal_restraints

        r, _ = with_metal_restraints(work, r, xyz0)
    if cbeta:
        from .cbeta_restraint import with_cbeta_restraints

        r = with_cbeta_restraints(work, r)
    from .restraints import torsion_watch

    # omega further than WATCH_OMEGA from cis/trans and C-beta torsions further than WATCH_CBETA
    # get their weight raised after a cycle (validation calls 30 deg twisted, 0.25 Å a C-beta outlier)
    r.watches = tuple(r.watches) + (torsion_watch(r, "omega", ("omega",), WATCH_OMEGA),
                                    torsion_watch(r, "cbeta", ("cbeta_n", "cbeta_c"), WATCH_CBETA))
    rama_weight = RAMA_WEIGHT if rama_weight is None else float(rama_weight)
    r.ramachandran = (ramachandran_restraint(work, r, rama_weight, top8000_dir=top8000_dir)
                      if rama_weight > 0 else None)
    from .chain_breaks import GapKeeper, gap_pairs

    gaps = gap_pairs(work, r, xyz0)
    r.extra_terms = (GapKeeper(*gaps, r.fixed),) if len(gaps[0]) else ()
    if secondary_structure:
        from .secondary_structure import secondary_structure_terms

        r.extra_terms = tuple(r.extra_terms) + secondary_structure_terms(work, r, xyz0)
    result = RefinementResult(structure=work, warnings=list(r.warnings))
    if inside < 1.0:
        result.warnings.append(f"{100 * (1 - inside):.1f}% of the atoms lie outside the map box")

    target = MapTarget.from_map(dmap, resolution, b_sharpen=b_sharpen)
    fmap = dmap if fit_map is None else fit_map
    w_atom = scattering_weights(work, resolution)
    if not np.any(w_atom > 0):
        raise InputError(f"{st.name or 'model'}: every atom has zero occupancy; nothing to fit")
    free = ~np.asarray(r.fixed, bool)
    if not free.any():
        result.warnings.append("every atom is fixed (no dictionaries): coordinates not refined")
    chain_of, chain_names = _chain_index(work)
    nchain = len(chain_names)
    chain_factor = np.ones(nchain)

    result.geometry_before = _model_geometry(r_full, r_geo, h_added, xyz0)
    result.map_before = float(np.dot(w_atom, target.values(xyz0)) / w_atom.sum())

    start = xyz0
    if rigid_body:
        from .rigidbody import fit_rigid_body, rigid_groups

        groups, labels = rigid_groups(work, rigid_body)
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

    auto = weight is None
    w = initial_weight(r, target, start, w_atom, free, target_bond) if auto else float(weight)
    if not np.isfinite(w) or w <= 0:
        w = 1.0

    xyz = start.copy()
    nfree = int(free.sum())
    guard = ClashGuard(r) if clash_guard else None
    p_ref = start[free].ravel().copy()
    ref_k = 1.0 / reference_sigma ** 2 if reference_sigma else 0.0

    def fg(p, wa):
        x = xyz.copy()
        x[free] = p.reshape(-1, 3)
        em, gmap = target.energy_gradient(x, wa)
        return _restrained(x, p, em, gmap, r, free, guard if stage["guard"] else None, ref_k, p_ref)

    def plain_energy(x, wa):
        """Map + restraint (+ clash guard) target without the reference term."""
        em, gm = target.energy_gradient(x, wa)
        er, g = restraint_energy_gradient(r, x)
        ec = guard.energy_gradient(x, g) if (guard is not None and stage["guard"]) else 0.0
        return em + er + ec, g + gm

    units = peptide_units(work, r) if rebuild else None
    if units is not None:
        # isomers from cis-peptide records are the authors' (annotated) word; from geometry a guess
        switchable = np.full(len(units), not len(work.cispeps), bool)
        resnames = [c.residue.name for c in work[0].all()]
        unit_next = [resnames[int(i)] for i in units[:, 6]]
    free_pos = np.cumsum(free) - 1  # row of each free atom in the parameter vector
    stage = {"guard": True}
    nb_full = r.weights["nonbonded"]
    ncycle = 0
    total_cycles = cycles
    cur_excess = max(result.geometry_before["bond_rmsd"] / target_bond,
                     result.geometry_before["angle_rmsd"] / target_angle)
    while ncycle < total_cycles and nfree:
        ncycle += 1
        # all but the last cycle with the library repulsion and no clash guard: a noisy start has
        # clashes by the hundred, and stiff repulsion pushes atoms into wrong minima before the
        # bonded geometry has settled (3AJO shaken 0.5 Å, two seeds: 0.25 Å from the deposited
        # model vs 0.27 with the guard throughout); the last cycle clears the clashes
        soft = soft_start and ncycle < total_cycles
        stage["guard"] = not soft
        r.weights["nonbonded"] = r_full.weights.get("nonbonded", 1.0) if soft else nb_full
        wa = w_atom * (w * chain_factor[chain_of] if per_chain else w)
        p0 = xyz[free].ravel()
        try:
            with np.errstate(all="ignore"):
                sol = optimize.minimize(fg, p0, args=(wa,), jac=True, method="L-BFGS-B",
                                        options={"maxiter": max_iter, "maxcor": 20})
        except (FloatingPointError, ValueError, ZeroDivisionError, RefinementError) as exc:
            return _diverged(st, result, f"cycle {ncycle}: {exc}", t0)
        if not (np.isfinite(sol.fun) and np.all(np.isfinite(sol.x))):
            return _diverged(st, result, f"cycle {ncycle}: target became non-finite (weight {w:.3g})", t0)
        trial = xyz.copy()
        trial[free] = sol.x.reshape(-1, 3)
        stats = _model_geometry(r_full, r_geo, h_added, trial)  # heavy atoms decide the weight
        mterm = float(np.dot(w_atom, target.values(trial)) / w_atom.sum())
        loose = stats["bond_rmsd"] > 1.5 * target_bond or stats["angle_rmsd"] > 1.5 * target_angle
        # a loose cycle is undone only when it left the geometry worse than it found it: a shaken
        # or badly strained input is loose after its first cycle too, yet much improved
        excess = max(stats["bond_rmsd"] / target_bond, stats["angle_rmsd"] / target_angle)
        loose = loose and excess > cur_excess
        result.history.append({"cycle": ncycle, "weight": w, "iterations": int(sol.nit),
                               "bond_rmsd": stats["bond_rmsd"], "angle_rmsd": stats["angle_rmsd"],
                               "map_value": mterm, "accepted": not (loose and auto)})
        log.debug("cycle %d: w=%.4g it=%d bond=%.4f angle=%.3f map=%.4f", ncycle, w, sol.nit,
                  stats["bond_rmsd"], stats["angle_rmsd"], mterm)
        if loose and auto:
            # overshoot: undo the cycle (the distortion would seed wrong local minima) and retry lower
            if total_cycles < cycles + max_extra_cycles:
                total_cycles += 1
        else:
            xyz = trial
            cur_excess = excess
            _watch_validation(r, xyz, result.history[-1])
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
        if not auto:
            continue
        if per_chain and nchain > 1 and not loose:
            for c in range(nchain):
                sel = chain_of == c
                if not (sel & free).any():
                    continue
                cs = _chain_rmsd(r_full, xyz, sel)
                if cs is not None:
                    chain_factor[c] = _adjust(chain_factor[c], cs[0], cs[1], stats["bond_rmsd"] or target_bond,
                                              stats["angle_rmsd"] or target_angle)
            chain_factor /= np.exp(np.mean(np.log(chain_factor)))  # the global w carries the scale
        w = _adjust(w, stats["bond_rmsd"], stats["angle_rmsd"], target_bond, target_angle)

    accepted = [h for h in result.history if h["accepted"]]
    result.weight = float(accepted[-1]["weight"]) if accepted else float(w)
    result.cycles = ncycle
    result.chain_weights = ({n: float(result.weight * f) for n, f in zip(chain_names, chain_factor)}
                            if per_chain else {})
    set_xyz(work, xyz)
    result.geometry_after = _model_geometry(r_full, r_geo, h_added, xyz)
    result.map_after = float(np.dot(w_atom, target.values(xyz)) / w_atom.sum())
    result.rmsd_moved = float(np.sqrt(np.mean(np.sum((xyz - xyz0) ** 2, axis=1))))

    if adp:
        from .adp import refine_adp

        if fmap.is_orthogonal:
            pairs = np.asarray(r.bonds.idx, np.int64)
            # no B similarity to the riding hydrogens: their B stay fixed at the input's and would
            # tie their atoms' B to it (5ME2: full CC_mask 0.886 -> 0.870 with them)
            pairs = pairs[~h_added[pairs].any(axis=1)]
            try:
                result.adp = refine_adp(work, fmap, resolution, xyz=xyz, pairs=pairs,
                                        fixed=adp_fixed, max_iter=adp_max_iter, b_prior=b_input,
                                        prior_sigma=adp_prior_sigma)
            except (InputError, ValueError) as exc:
                result.warnings.append(f"B factors not refined: {exc}")
            else:
                if fit_cycles and nfree and result.status == "ok":
                    try:
                        xyz = _fit_stage(result, work, fmap, resolution, r, r_full, xyz, free, w, target,
                                         w_atom, guard, stage, fit_cycles, fit_iter, fit_reference_sigma,
                                         target_bond, fit_target_angle or target_angle, pairs,
                                         adp_max_iter, auto_weight=auto, p_ref=p_ref, b_input=b_input,
                                         adp_prior_sigma=adp_prior_sigma, adp_fixed=adp_fixed,
                                         geo=lambda x: _model_geometry(r_full, r_geo, h_added, x))
                    except (InputError, ValueError) as exc:  # e.g. voxels too coarse for the model map
                        result.warnings.append(f"density-fit stage skipped: {exc}")
                    set_xyz(work, xyz)
                    result.geometry_after = _model_geometry(r_full, r_geo, h_added, xyz)
                    result.map_after = float(np.dot(w_atom, target.values(xyz)) / w_atom.sum())
                    result.rmsd_moved = float(np.sqrt(np.mean(np.sum((xyz - xyz0) ** 2, axis=1))))
        else:
            result.warnings.append("B factors not refined: the map cell is not orthogonal")
    if occupancy and result.status == "ok":
        from .occupancy import has_altlocs, refine_occupancy

        if has_altlocs(work):
            if not fmap.is_orthogonal:
                result.warnings.append("occupancies not refined: the map cell is not orthogonal")
            else:
                try:
                    result.occupancy = refine_occupancy(work, fmap, resolution, xyz=xyz)
                except (InputError, ValueError) as exc:
                    result.warnings.append(f"occupancies not refined: {exc}")
    if added_h:
        strip_added(work)
    result.seconds = time.perf_counter() - t0
    return result


#: Voxels of the model box above which the density-fit stage is skipped (with a warning): every
#: evaluation costs two FFT pairs of the box, about 70 ms for 5ME2's 80x81x72 box; a 300^3 box
#: would take seconds per evaluation and minutes per refinement.
FIT_MAX_VOXELS = 8.0e6
#: Extra blur and cut-off of the density-fit model map (:meth:`.modelfit.ModelMapFit.prepare`):
#: 0.7 % and 1 % instead of the 0.1 % of the B-factor fit make the target 3x cheaper; for a
#: coordinate target the gradient direction is what matters.
FIT_ALIAS_LOG = 5.0
FIT_CUTOFF_LOG = 4.6


def _model_geometry(r_full, r_geo, h_added, xyz) -> dict:
    """:func:`.geometry.geometry_stats` of the model as given: with hydrogens added for refinement,
    on the input's own restraints ``r_geo`` and atoms (the added ones dropped)."""
    from .geometry import geometry_stats

    if r_geo is None:
        return geometry_stats(r_full, xyz)
    return geometry_stats(r_geo, xyz[~h_added])


def _watch_validation(r, xyz, record: dict) -> None:
    """After an accepted cycle: raise the Ramachandran weight of residues whose MolProbity class
    got worse than the input's (:meth:`.ramachandran_restraint.RamachandranRestraint.watch`) and
    the weight of torsions pulled towards what validation calls an outlier (:class:`.restraints.TorsionWatch`:
    rotamer chis, omega, C-beta)."""
    if r.ramachandran is not None:
        record["rama_raised"] = r.ramachandran.watch(xyz)
    for w in r.watches:
        record[f"{w.name}_raised"] = w.watch(r, xyz)


def _restrained(x, p, data_e, data_g, r, free, guard, ref_k, p_ref):
    """Target on the free atoms: data term + restraints (+ clash guard) + reference-position restraint.

    ``x`` all positions (Å), ``p`` the free ones flattened, ``data_e``/``data_g`` the data term
    and its gradient (N, 3); returns the energy and the gradient with respect to ``p``.
    """
    from .geometry import restraint_energy_gradient

    er, grr = restraint_energy_gradient(r, x)
    g = data_g + grr
    ec = guard.energy_gradient(x, g) if guard is not None else 0.0
    gf = g[free].ravel()
    if ref_k:
        d = p - p_ref
        ec += ref_k * float(np.dot(d, d))
        gf = gf + 2.0 * ref_k * d
    return data_e + er + ec, gf


def _fit_stage(result, work, dmap, resolution, r, r_full, xyz, free, w_map, target, w_atom, guard, stage,
               cycles, max_iter, reference_sigma, target_bond, target_angle, pairs, adp_max_iter,
               auto_weight=True, p_ref=None, b_input=None, adp_prior_sigma=None, adp_fixed=None, geo=None):
    """Alternate coordinate refinement against the model-map fit (:mod:`.modelfit`) and B.

    The first weight carries over the geometry-calibrated map-value weight: it makes the
    density-fit gradient at the start as large as the weighted map-value gradient. After each
    coordinate step the weight follows the geometry like in the map-value cycles; a step that
    leaves the geometry looser than 1.5 x the targets (and looser than before) is undone.
    Returns the coordinates.
    """
    from .adp import refine_adp
    from .geometry import geometry_stats
    from .modelfit import ModelMapFit

    cras = list(work[0].all())
    g = dmap.grid_coordinates(xyz)
    voxels = float(np.prod(np.minimum(np.ptp(g, axis=0) + 2 * 8.0 / np.asarray(dmap.voxel_size), dmap.shape)))
    if voxels > FIT_MAX_VOXELS:
        raise ValueError(f"model box of {voxels:.3g} voxels is above {FIT_MAX_VOXELS:.3g}")
    fit = ModelMapFit.prepare(dmap, xyz, [c.atom.element.name for c in cras],
                              np.array([0.0 if c.atom.is_hydrogen() else c.atom.occ for c in cras]), resolution,
                              target="sphere",
                              alias_log=FIT_ALIAS_LOG, cutoff_log=FIT_CUTOFF_LOG)
    bvals = np.clip([c.atom.b_iso for c in cras], 1.0, 500.0)

    def density_fit(x, scale=1.0):
        # per-atom size like the restraint target: N_fit (1 - CC^2)
        misfit, grad, cc = fit.evaluate_positions(x, bvals)
        f = scale * fit.n_fit
        return f * misfit, f * grad, cc

    _, gm = target.energy_gradient(xyz, w_atom * w_map)
    _, gd, _ = density_fit(xyz)
    num, den = float(np.linalg.norm(gm[free])), float(np.linalg.norm(gd[free]))
    wd = num / den if den > 0 and np.isfinite(num / den) else 1.0
    # restrained to the same reference positions as the map-value cycles (the input model, with
    # rebuilt peptides where they were rebuilt)
    p_ref = xyz[free].ravel().copy() if p_ref is None else p_ref
    ref_k = 1.0 / reference_sigma ** 2 if reference_sigma else 0.0
    stage["guard"] = True
    stats0 = geo(xyz) if geo is not None else geometry_stats(r_full, xyz)
    cur_excess = max(stats0["bond_rmsd"] / target_bond, stats0["angle_rmsd"] / target_angle)

    def fg(p, wd):
        x = xyz.copy()
        x[free] = p.reshape(-1, 3)
        ed, gdd, _ = density_fit(x, wd)
        return _restrained(x, p, ed, gdd, r, free, guard, ref_k, p_ref)

    for cyc in range(cycles):
        with np.errstate(all="ignore"):
            sol = optimize.minimize(fg, xyz[free].ravel(), args=(wd,), jac=True, method="L-BFGS-B",
                                    options={"maxiter": max_iter, "maxcor": 20})
        if not (np.isfinite(sol.fun) and np.all(np.isfinite(sol.x))):
            result.warnings.append(f"density-fit cycle {cyc + 1} became non-finite; stopped")
            break
        trial = xyz.copy()
        trial[free] = sol.x.reshape(-1, 3)
        stats = geo(trial) if geo is not None else geometry_stats(r_full, trial)
        excess = max(stats["bond_rmsd"] / target_bond, stats["angle_rmsd"] / target_angle)
        loose = excess > 1.5 and excess > cur_excess
        _, _, cc = density_fit(trial)
        result.history.append({"cycle": f"fit{cyc + 1}", "weight": wd, "iterations": int(sol.nit),
                               "bond_rmsd": stats["bond_rmsd"], "angle_rmsd": stats["angle_rmsd"],
                               "cc_fit": cc, "accepted": not (loose and auto_weight)})
        if loose and auto_weight:
            wd = _adjust(wd, stats["bond_rmsd"], stats["angle_rmsd"], target_bond, target_angle)
            continue
        xyz = trial
        cur_excess = excess
        _watch_validation(r, xyz, result.history[-1])
        if auto_weight:
            wd = _adjust(wd, stats["bond_rmsd"], stats["angle_rmsd"], target_bond, target_angle)
        try:
            # B between coordinate steps only has to be good enough for the next model map
            result.adp = refine_adp(work, dmap, resolution, xyz=xyz, pairs=pairs,
                                    fixed=adp_fixed if adp_fixed is not None else r.fixed, max_iter=adp_max_iter if cyc == cycles - 1 else max(5, adp_max_iter // 2),
                                    b_prior=b_input, prior_sigma=adp_prior_sigma)
        except (InputError, ValueError) as exc:
            result.warnings.append(f"B factors not refined: {exc}")
            break
        bvals = np.clip([c.atom.b_iso for c in cras], 1.0, 500.0)
    return xyz


def _chain_rmsd(r, xyz: np.ndarray, sel: np.ndarray) -> tuple[float, float] | None:
    """Bond and angle RMSD (Å, deg) of the restraints whose first atom is selected."""
    from .geometry import angle_devs, bond_devs

    bsel = sel[r.bonds.idx[:, 0]]
    asel = sel[r.angles.idx[:, 0]]
    if not bsel.any() or not asel.any():
        return None
    bd = bond_devs(xyz, np.ascontiguousarray(r.bonds.idx[bsel]), r.bonds.ideal[bsel])
    ad = angle_devs(xyz, np.ascontiguousarray(r.angles.idx[asel]), r.angles.ideal[asel])
    return float(np.sqrt(np.mean(bd ** 2))), float(np.sqrt(np.mean(ad ** 2)))


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


__all__ = ["RefinementResult", "refine_model", "RefinementError"]
