"""Rigid-body fit of a model, or of each of its chains, into a map.

Real-space rigid-body refinement as in phenix.real_space_refine (Afonine et al. 2018, Acta
Cryst. D74:531, section 2.3, "rigid-body refinement"): each group keeps its internal
geometry and moves as a whole, six parameters per group (a rotation about the group's
centroid and a translation), to maximise the same map term as coordinate refinement,

    T_map = - sum_i w_i * rho(x_i),

(:class:`rerefine.refine.maptarget.MapTarget`: map low-pass filtered and normalised, tricubic
interpolation, atoms weighted by scattering power). It is run first at a coarse resolution
(:data:`COARSE_RESOLUTION` or twice the map's, whichever is lower in detail), which widens the
radius of convergence, then at the map's resolution.

Rotation ``R(omega)`` is parametrised by its rotation vector ``omega`` (axis x angle, radians);
the gradient with respect to ``omega`` is exact through the left Jacobian of SO(3): for
``y = R(omega) u``, ``dT/domega = J_l(omega)^T sum_i y_i x g_i`` (Barfoot 2017, State Estimation
for Robotics, section 7.1.5), where ``g_i = dT/dx_i``.

Why a service needs it: a deposited model can sit misplaced in its map as a whole, which
local refinement held to the input positions cannot undo. 5ME2 sits rotated 1.2 deg in its
map EMD-3488; the same authors' later model of the same map, 5NI1, is 5ME2 rotated 1.23 deg,
and this fit finds that rotation (tests/test_rigidbody.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import gemmi
import numpy as np
from scipy import optimize

from .mapio import DensityMap
from .maptarget import MapTarget

#: Å: the coarse stage uses the map low-pass filtered to max(2 d, this).
COARSE_RESOLUTION = 6.0
#: Groups with fewer atoms than this are not moved on their own (too little density to place
#: them reliably); with ``by="chain"`` they stay where they are.
MIN_GROUP_ATOMS = 50
#: A rigid-body fit is a local correction. A group whose optimum turns it by more than this many
#: degrees or shifts it by more than :data:`MAX_SHIFT` Å is not moved and reported
#: ``"ambiguous"``: on an unseen protein-RNA entry whose model covers only part of the map, the
#: fit turned a 14-nucleotide strand by 131 deg and 10 Å into neighbouring density (490 new
#: overlaps). Misplacements that are real and local stay well inside: 5ME2 in EMD-3488 turns by
#: 1.1-1.5 deg per chain.
MAX_TURN_DEG = 5.0
MAX_SHIFT = 2.0
#: Å: heavy atoms of a moved group closer than this to atoms outside it are a severe overlap;
#: a move that adds more than :data:`MAX_NEW_OVERLAPS` of them is undone (status ``"clash"``).
OVERLAP_DIST = 2.2
MAX_NEW_OVERLAPS = 5


@dataclass
class RigidBodyFit:
    """Outcome of :func:`fit_rigid_body`.

    Attributes
    ----------
    xyz : numpy.ndarray
        (N, 3) moved positions, Å (atoms of no group unchanged).
    labels : list of str
        Group names (``"model"`` or chain names).
    rotation_deg : numpy.ndarray
        (G,) rotation angle of each group about its centroid, degrees.
    axis : numpy.ndarray
        (G, 3) unit rotation axes (zero where the angle is zero).
    translation : numpy.ndarray
        (G, 3) shift of each group's centroid, Å.
    map_before, map_after : float
        Mean weighted map value at the atoms (sd units of the map filtered to the resolution).
    rmsd_moved : float
        RMS coordinate change, Å.
    """

    xyz: np.ndarray
    labels: list
    rotation_deg: np.ndarray
    axis: np.ndarray
    translation: np.ndarray
    map_before: float
    map_after: float
    rmsd_moved: float
    status: list = None

    def summary(self) -> list[dict]:
        """One plain dict per group: label, rotation (deg), axis, translation (Å), its length and
        ``status`` (``"moved"``, ``"ambiguous"``: optimum beyond :data:`MAX_TURN_DEG` /
        :data:`MAX_SHIFT`, not applied, the figures are the optimum's; ``"clash"``: undone because
        it created overlaps)."""
        status = self.status or ["moved"] * len(self.labels)
        return [{"group": lab, "rotation_deg": float(a), "axis": [float(v) for v in ax],
                 "translation": [float(v) for v in t], "shift": float(np.linalg.norm(t)), "status": st}
                for lab, a, ax, t, st in zip(self.labels, self.rotation_deg, self.axis, self.translation, status)]


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]])


def rotation_matrix(omega: np.ndarray) -> np.ndarray:
    """Rotation matrix of the rotation vector ``omega`` (radians; Rodrigues' formula)."""
    theta = float(np.linalg.norm(omega))
    k = _skew(omega)
    if theta < 1e-8:
        return np.eye(3) + k + 0.5 * k @ k
    return np.eye(3) + np.sin(theta) / theta * k + (1.0 - np.cos(theta)) / theta ** 2 * k @ k


def left_jacobian(omega: np.ndarray) -> np.ndarray:
    """Left Jacobian of SO(3) at ``omega``: ``R(omega + d) ~ exp(J_l d) R(omega)`` for small ``d``."""
    theta = float(np.linalg.norm(omega))
    k = _skew(omega)
    if theta < 1e-6:
        return np.eye(3) + 0.5 * k + k @ k / 6.0
    return (np.eye(3) + (1.0 - np.cos(theta)) / theta ** 2 * k
            + (theta - np.sin(theta)) / theta ** 3 * k @ k)


def chain_groups(st: gemmi.Structure) -> tuple[list[np.ndarray], list[str]]:
    """Atom indices (``st[0].all()`` order) of each chain of the first model, and the chain names.

    Chains of the same name (e.g. a polymer and its ligands written as separate chains in PDB
    files) form one group.
    """
    names = [c.chain.name for c in st[0].all()]
    order: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        order.setdefault(n, []).append(i)
    return [np.asarray(v, np.int64) for v in order.values()], list(order)


def rigid_groups(st: gemmi.Structure, by: str) -> tuple[list[np.ndarray] | None, list[str] | None]:
    """Groups and labels for :func:`fit_rigid_body`: each chain (``by="chain"``, see
    :func:`chain_groups`) or the whole model (``"model"``: ``(None, None)``, the default group)."""
    if by not in ("chain", "model"):
        raise ValueError(f"rigid-body groups must be by 'chain' or 'model' (got {by!r})")
    return chain_groups(st) if by == "chain" else (None, None)


def _apply(xyz: np.ndarray, groups: list[np.ndarray], centres: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Positions after turning group ``k`` by ``p[6k:6k+3]`` (rotation vector, radians) about
    ``centres[k]`` and shifting it by ``p[6k+3:6k+6]`` (Å); atoms of no group stay."""
    x = xyz.copy()
    for k, g in enumerate(groups):
        r = rotation_matrix(p[6 * k:6 * k + 3])
        x[g] = (xyz[g] - centres[k]) @ r.T + centres[k] + p[6 * k + 3:6 * k + 6]
    return x


def _fit_stage(target: MapTarget, xyz: np.ndarray, weights: np.ndarray, groups: list[np.ndarray],
               centres: np.ndarray, p0: np.ndarray, max_iter: int) -> np.ndarray:
    ng = len(groups)

    def fg(p):
        x = _apply(xyz, groups, centres, p)
        e, grad = target.energy_gradient(x, weights)
        out = np.empty(6 * ng)
        for k, g in enumerate(groups):
            y = x[g] - centres[k] - p[6 * k + 3:6 * k + 6]  # R u: the rotated offsets
            out[6 * k:6 * k + 3] = left_jacobian(p[6 * k:6 * k + 3]).T @ np.cross(y, grad[g]).sum(axis=0)
            out[6 * k + 3:6 * k + 6] = grad[g].sum(axis=0)
        return e, out

    with np.errstate(all="ignore"):
        sol = optimize.minimize(fg, p0, jac=True, method="L-BFGS-B", options={"maxiter": max_iter})
    return sol.x if np.all(np.isfinite(sol.x)) else p0


def fit_rigid_body(xyz: np.ndarray, dmap: DensityMap, resolution: float, weights: np.ndarray,
                   groups: list[np.ndarray] | None = None, labels: list[str] | None = None, *,
                   b_sharpen: float = 0.0, target: MapTarget | None = None,
                   max_iter: int = 100, heavy_mask: np.ndarray | None = None) -> RigidBodyFit:
    """Move each group of atoms as a rigid body to maximise the weighted map values at the atoms.

    Parameters
    ----------
    xyz : numpy.ndarray
        (N, 3) atom positions, Å, in the map's frame.
    dmap : DensityMap
        The map.
    resolution : float
        Å; the final stage uses the map filtered to it, the first to max(2 d, 6 Å).
    weights : numpy.ndarray
        (N,) per-atom weights (:func:`rerefine.refine.maptarget.scattering_weights`).
    groups : list of numpy.ndarray, optional
        Atom indices of each rigid group (default: all atoms, one group). Groups with fewer
        than :data:`MIN_GROUP_ATOMS` atoms are left in place.
    labels : list of str, optional
        Names of the groups (default ``"model"`` / ``"group<k>"``).
    b_sharpen : float
        Å², sharpening of the map for the final stage (as :meth:`MapTarget.from_map`).
    target : MapTarget, optional
        The final stage's target when the caller has it already (``dmap`` filtered to
        ``resolution`` with ``b_sharpen``, as coordinate refinement builds it); else built here.
    max_iter : int
        L-BFGS iterations per stage.
    heavy_mask : numpy.ndarray, optional
        (N,) atoms counted in the overlap check (default all; give the non-hydrogens).

    A group is moved only when its optimum stays local (:data:`MAX_TURN_DEG`, :data:`MAX_SHIFT`;
    else ``"ambiguous"``) and the move adds at most :data:`MAX_NEW_OVERLAPS` severe overlaps
    with the other atoms (else ``"clash"``); see :meth:`RigidBodyFit.summary`.
    """
    xyz = np.asarray(xyz, float).reshape(-1, 3)
    weights = np.asarray(weights, float)
    if groups is None:
        groups, labels = [np.arange(len(xyz))], ["model"]
    if labels is None:
        labels = [f"group{k}" for k in range(len(groups))]
    keep = [k for k, g in enumerate(groups) if len(g) >= MIN_GROUP_ATOMS]
    groups = [np.asarray(groups[k], np.int64) for k in keep]
    labels = [labels[k] for k in keep]
    ng = len(groups)
    wsum = float(weights.sum()) or 1.0
    centres = np.array([xyz[g].mean(axis=0) for g in groups]) if ng else np.zeros((0, 3))
    p = np.zeros(6 * ng)
    if ng:  # coarse stage first, its target freed before the final one is made (one box-size target at a time)
        coarse = MapTarget.from_map(dmap, max(2.0 * resolution, COARSE_RESOLUTION))
        p = _fit_stage(coarse, xyz, weights, groups, centres, p, max_iter)
        del coarse
    final = target if target is not None else MapTarget.from_map(dmap, resolution, b_sharpen=b_sharpen)
    map_before = float(np.dot(weights, final.values(xyz)) / wsum)
    if ng == 0:
        return RigidBodyFit(xyz.copy(), [], np.zeros(0), np.zeros((0, 3)), np.zeros((0, 3)),
                            map_before, map_before, 0.0, [])
    p = _fit_stage(final, xyz, weights, groups, centres, p, max_iter)

    angles, axes, shifts = np.zeros(ng), np.zeros((ng, 3)), np.zeros((ng, 3))
    status = ["moved"] * ng
    for k in range(ng):
        omega, t = p[6 * k:6 * k + 3], p[6 * k + 3:6 * k + 6]
        theta = float(np.linalg.norm(omega))
        angles[k] = np.degrees(theta)
        axes[k] = omega / theta if theta > 0 else 0.0
        shifts[k] = t
        if angles[k] > MAX_TURN_DEG or float(np.linalg.norm(t)) > MAX_SHIFT:
            status[k] = "ambiguous"
            p[6 * k:6 * k + 6] = 0.0
    moved = _apply(xyz, groups, centres, p)
    heavy = np.ones(len(xyz), bool) if heavy_mask is None else np.asarray(heavy_mask, bool)
    for k, g in enumerate(groups):
        if status[k] == "moved" and new_overlaps(xyz, moved, g, heavy) > MAX_NEW_OVERLAPS:
            status[k] = "clash"
            p[6 * k:6 * k + 6] = 0.0
            moved[g] = xyz[g]
    map_after = float(np.dot(weights, final.values(moved)) / wsum)
    if not map_after >= map_before:  # never worse than the input placement
        return RigidBodyFit(xyz.copy(), labels, np.zeros(ng), np.zeros((ng, 3)), np.zeros((ng, 3)),
                            map_before, map_before, 0.0, ["unchanged"] * ng)
    rmsd = float(np.sqrt(np.mean(np.sum((moved - xyz) ** 2, axis=1))))
    return RigidBodyFit(moved, labels, angles, axes, shifts, map_before, map_after, rmsd, status)


def new_overlaps(before: np.ndarray, after: np.ndarray, group: np.ndarray, heavy: np.ndarray) -> int:
    """Severe overlaps (< :data:`OVERLAP_DIST`) between heavy atoms of ``group`` and heavy atoms
    outside it after the move, minus those there were before."""
    from scipy.spatial import cKDTree

    inside = np.zeros(len(before), bool)
    inside[group] = True
    g = group[heavy[group]]
    others = np.nonzero(heavy & ~inside)[0]
    if not len(g) or not len(others):
        return 0
    count = []
    for x in (before, after):
        # only atoms inside the group's bounding box widened by the overlap distance can be that
        # close (the margin's 1e-6 Å covers rounding), so the tree holds those, not the whole model:
        # the check costs O(atoms) per group instead of a tree of the whole model per group
        lo = x[g].min(axis=0) - (OVERLAP_DIST + 1e-6)
        hi = x[g].max(axis=0) + (OVERLAP_DIST + 1e-6)
        xo = x[others]
        near = xo[np.all((xo >= lo) & (xo <= hi), axis=1)]
        if not len(near):
            count.append(0)
            continue
        tree = cKDTree(near)
        count.append(sum(len(v) for v in tree.query_ball_point(x[g], OVERLAP_DIST)))
    return count[1] - count[0]


#: Degrees / Å: a group turned or shifted by at least this much by the fit counts as misplaced.
#: Well-placed deposited models turn by less than 0.1 deg (7CEC in its EMD-30342 zone 0.09,
#: 3AJO in EMD-20026 0.03); 5ME2 in EMD-3488 turns by 1.1-1.5 deg per chain.
MISPLACED_TURN_DEG = 0.5
MISPLACED_SHIFT = 0.3


def placement_check(st: gemmi.Structure, dmap: DensityMap, resolution: float, *, by: str = "chain") -> dict:
    """How the map would move each chain (``by="chain"``) or the whole model (``"model"``) as a rigid body.

    A diagnosis, nothing is changed: ``{"by", "groups": RigidBodyFit.summary(), "map_before",
    "map_after", "misplaced", "ambiguous"}``, where ``misplaced`` says that some group the fit
    would move (status ``"moved"``: a local optimum that creates no overlaps) turns by at least
    :data:`MISPLACED_TURN_DEG` or shifts by at least :data:`MISPLACED_SHIFT` Å (the condition for
    advising a rigid-body fit), and ``ambiguous`` that some group's optimum lies beyond
    :data:`MAX_TURN_DEG` / :data:`MAX_SHIFT` or clashes (reported, never advice).
    """
    from .maptarget import scattering_weights
    from .restraints import atom_xyz

    groups, labels = rigid_groups(st, by)
    heavy = np.array([not c.atom.is_hydrogen() for c in st[0].all()])
    fit = fit_rigid_body(atom_xyz(st), dmap, resolution, scattering_weights(st, resolution), groups, labels,
                         heavy_mask=heavy)
    rows = fit.summary()
    return {"by": by, "groups": rows, "map_before": fit.map_before, "map_after": fit.map_after,
            "misplaced": any(g["status"] == "moved" and (g["rotation_deg"] >= MISPLACED_TURN_DEG
                                                         or g["shift"] >= MISPLACED_SHIFT) for g in rows),
            "ambiguous": any(g["status"] in ("ambiguous", "clash") for g in rows)}
