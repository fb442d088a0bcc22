"""Refinement of a large model in boxes: regions refined independently on small map boxes, then merged.

:func:`refine_boxed` cuts the model into regions (:func:`rerefine.refine.regions.split_regions`:
cores of whole residues and a margin held fixed), cuts for each a map box around its atoms (the
same frame, :func:`rerefine.refine.mapio.cut_box`), refines each with the normal
:func:`rerefine.refine.realspace.refine_model` (coordinates, B, density-fit stage, occupancies:
every stage), with the margin as ``fixed_atoms`` (positions held; B refined alongside the core's
and dropped, ``fixed_b_free``), and copies the refined core atoms (positions, B,
occupancies) back. A second pass refines the seams between regions the same way
(:func:`rerefine.refine.regions.seam_regions`) starting from the merged model. Restraints across a
region's border act between a refined and a fixed atom, so the geometry across the cuts stays
intact.

Memory and time follow the region, not the model: each task gets its own sub-model and map
boxes (a few MB), never the whole map, and the density-fit stage works on the region's box, so no
stage is skipped for a large model (the whole-model path skips it above
:data:`rerefine.refine.fit_stage.FIT_MAX_VOXELS`). The regions of a pass are independent tasks run
on any :class:`concurrent.futures.Executor` (a :class:`~concurrent.futures.ProcessPoolExecutor` by
default; a Dask ``distributed.Client.get_executor()`` works the same way); each region is refined
deterministically (one numba thread below :data:`rerefine.refine.threads.PARALLEL_MIN_ATOMS`
atoms, fixed random seed of the first weight), so any executor gives the same model.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import time
from dataclasses import dataclass, field

import gemmi
import numpy as np

from rerefine.common.errors import InputError
from .mapio import DensityMap, cut_box
from .fit_stage import FIT_MAX_VOXELS
from .realspace import RefinementResult
from .regions import MARGIN, REGION_ATOMS, SEAM_WIDTH, Region, seam_regions, split_regions, sub_model

log = logging.getLogger(__name__)

#: Atoms above which :func:`use_boxes` chooses boxed refinement: two region cores
#: (:data:`rerefine.refine.regions.REGION_ATOMS`). Below it a model would make at most two regions
#: whose margins and seam pass cost more than the split saves (one 5ME2 copy, 4,468 atoms, refines
#: in one box in ~13 s), and the whole-model path stays exactly as it was.
BOXED_MIN_ATOMS = 2 * REGION_ATOMS
#: Å of map around a region's atoms (core and margin): the pipeline's box padding, enough for
#: the filtered map target and the model-map fit near the margin.
BOX_PADDING = 8.0


def use_boxes(st: gemmi.Structure, dmap: DensityMap, min_atoms: int | None = None) -> bool:
    """Whether :func:`refine_boxed` should refine ``st`` against ``dmap``: from ``min_atoms``
    atoms (default :data:`BOXED_MIN_ATOMS`), or when the model's box would exceed the density-fit stage's
    voxel limit (:data:`rerefine.refine.fit_stage.FIT_MAX_VOXELS`) and the whole-model path would
    skip that stage. Needs an orthogonal map (boxes are cut on its grid)."""
    if not len(st) or not dmap.is_orthogonal:
        return False
    n = st[0].count_atom_sites()
    if n >= (BOXED_MIN_ATOMS if min_atoms is None else min_atoms):
        return True
    if n == 0:
        return False
    return _box_voxels(dmap, _xyz(st)) > FIT_MAX_VOXELS


@dataclass
class RegionTask:
    """What one worker needs: the region's sub-model, its map boxes and the atoms held fixed."""

    label: str
    model: gemmi.Structure
    dmap: DensityMap
    fit_map: DensityMap | None
    fixed: np.ndarray
    resolution: float
    monlib_dir: object
    options: dict = field(default_factory=dict)


@dataclass
class RegionOutcome:
    """A refined region: positions (Å), B (Å²) and occupancies of every atom of the sub-model."""

    label: str
    xyz: np.ndarray
    b: np.ndarray
    occ: np.ndarray
    status: str
    weight: float
    cycles: int
    warnings: list
    adp: object
    seconds: float
    cpu_seconds: float = float("nan")


def refine_region(task: RegionTask) -> RegionOutcome:
    """Refine one region (a module-level function, so process and Dask executors can run it)."""
    from .realspace import refine_model

    cpu0 = time.process_time()
    res = refine_model(task.model, task.dmap, task.resolution, task.monlib_dir, fit_map=task.fit_map,
                       fixed_atoms=task.fixed, **task.options)
    cras = list(res.structure[0].all())
    return RegionOutcome(label=task.label, xyz=np.array([c.atom.pos.tolist() for c in cras]).reshape(-1, 3),
                         b=np.array([c.atom.b_iso for c in cras]), occ=np.array([c.atom.occ for c in cras]),
                         status=res.status, weight=float(res.weight), cycles=int(res.cycles),
                         warnings=list(res.warnings), adp=res.adp, seconds=float(res.seconds),
                         cpu_seconds=time.process_time() - cpu0)


def _task(st: gemmi.Structure, region: Region, dmap: DensityMap, fit_map: DensityMap | None, resolution: float,
          monlib_dir, options: dict) -> RegionTask:
    atoms = region.atoms
    sub = sub_model(st, atoms)
    xyz = np.array([c.atom.pos.tolist() for c in sub[0].all()]).reshape(-1, 3)
    box = cut_box(dmap, xyz, BOX_PADDING)
    fbox = cut_box(fit_map, xyz, BOX_PADDING) if fit_map is not None else None
    fixed = ~np.isin(atoms, region.core)
    return RegionTask(label=region.label, model=sub, dmap=box, fit_map=fbox, fixed=fixed, resolution=resolution,
                      monlib_dir=monlib_dir, options=options)


def _run_pass(st: gemmi.Structure, regions: list[Region], dmap, fit_map, resolution, monlib_dir, options,
              executor, in_flight: int) -> list[tuple[Region, RegionOutcome]]:
    """Refine ``regions`` of ``st`` (at most ``in_flight`` tasks submitted at a time, so the parent
    holds few boxes); outcomes in region order."""
    outcomes: dict[int, RegionOutcome] = {}
    t0 = time.perf_counter()

    def done(k: int, out: RegionOutcome) -> None:
        outcomes[k] = out
        log.info("region %s refined: %d atoms (%d fixed) in %.1f s (%.1f s CPU), %s (%d/%d done, %.0f s)",
                 out.label, len(out.xyz), len(regions[k].margin), out.seconds, out.cpu_seconds, out.status,
                 len(outcomes), len(regions), time.perf_counter() - t0)

    if executor is None:
        for k, reg in enumerate(regions):
            done(k, refine_region(_task(st, reg, dmap, fit_map, resolution, monlib_dir, options)))
    else:
        pending: dict = {}
        todo = list(enumerate(regions))
        while todo or pending:
            while todo and len(pending) < in_flight:
                k, reg = todo.pop(0)
                pending[executor.submit(refine_region, _task(st, reg, dmap, fit_map, resolution, monlib_dir,
                                                             options))] = k
            finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                done(pending.pop(fut), fut.result())
    return [(regions[k], outcomes[k]) for k in range(len(regions))]


def _merge(st: gemmi.Structure, pairs, result: RefinementResult) -> None:
    """Copy each region's refined core atoms into ``st`` (in place)."""
    cras = list(st[0].all())
    for reg, out in pairs:
        atoms = reg.atoms
        if len(out.xyz) != len(atoms):
            raise InputError(f"region {reg.label}: refined model has {len(out.xyz)} atoms, expected {len(atoms)}")
        if out.status != "ok":
            result.warnings.append(f"region {reg.label}: {out.status}; its atoms kept as they were")
            continue
        pos = np.searchsorted(atoms, reg.core)
        for i, p in zip(reg.core, pos):
            at = cras[int(i)].atom
            at.pos = gemmi.Position(*out.xyz[p])
            at.b_iso = float(out.b[p])
            at.occ = float(out.occ[p])
        result.warnings.extend(f"region {reg.label}: {w}" for w in out.warnings
                               if "lie outside the map box" not in w)
        result.history.append({"region": reg.label, "atoms": int(len(atoms)), "core": int(len(reg.core)),
                               "weight": out.weight, "cycles": out.cycles, "seconds": out.seconds,
                               "cpu_seconds": out.cpu_seconds})


def _box_voxels(dmap: DensityMap, xyz: np.ndarray) -> float:
    """Voxels of the density-fit stage's model box around ``xyz`` (its 8 Å padding)."""
    g = dmap.grid_coordinates(xyz)
    return float(np.prod(np.minimum(np.ptp(g, axis=0) + 2 * 8.0 / dmap.voxel_size, dmap.shape)))


def _xyz(st: gemmi.Structure) -> np.ndarray:
    return np.array([c.atom.pos.tolist() for c in st[0].all()], dtype=np.float64).reshape(-1, 3)


def refine_boxed(st: gemmi.Structure, dmap: DensityMap, resolution: float, monlib_dir, *,
                 fit_map: DensityMap | None = None, executor: cf.Executor | None = None, workers: int = 1,
                 region_atoms: int = REGION_ATOMS, margin: float = MARGIN, seam_width: float = SEAM_WIDTH,
                 seams: bool = True, **options) -> RefinementResult:
    """Refine the first model of ``st`` against ``dmap`` region by region (see the module text).

    Parameters
    ----------
    st : gemmi.Structure
        Model in the frame of the map; not modified.
    dmap : DensityMap
        Map for the coordinate target (orthogonal cell).
    resolution : float
        Å.
    monlib_dir : path
        CCP4 monomer library.
    fit_map : DensityMap, optional
        Map for B, occupancies and the density-fit stage (``refine_model``'s ``fit_map``).
    executor : concurrent.futures.Executor, optional
        Runs the regions of a pass. Default: a process pool of ``workers`` processes (spawned,
        shut down at the end), or in this process when ``workers`` is 1.
    workers : int
        Processes of the default pool; also how many tasks are kept submitted (2 per worker).
    region_atoms, margin, seam_width : int, float, float
        :func:`rerefine.refine.regions.split_regions` and :func:`~rerefine.refine.regions.seam_regions`.
    seams : bool
        Run the seam pass.
    **options
        Passed to :func:`rerefine.refine.realspace.refine_model` for every region (``adp``,
        ``cycles``, ``top8000_dir``, ...; not ``rigid_body``, ``restraints``, ``fixed_atoms``).

    Returns
    -------
    RefinementResult
        ``structure`` the merged model; ``geometry_before``/``geometry_after`` of the whole model;
        ``weight`` the median of the regions' weights and ``cycles`` their most; ``history`` one
        entry per region (``region``, ``atoms``, ``core``, ``weight``, ``cycles``, ``seconds``,
        ``cpu_seconds`` of the process that refined it);
        ``adp`` the regions' :class:`rerefine.refine.adp.AdpResult` list (None when B were not
        refined); ``map_before``/``map_after`` are not computed (NaN). A region that diverges
        keeps its atoms and adds a warning; the status is ``diverged`` only when every region did.
    """
    from .geometry import geometry_stats
    from .peptide_links import refinement_topology

    for key in ("rigid_body", "restraints", "fixed_atoms"):
        if options.get(key):
            raise ValueError(f"refine_boxed does not take {key}")
    t0 = time.perf_counter()
    if not dmap.is_orthogonal:
        raise InputError(f"{dmap.name}: boxed refinement needs an orthogonal map cell")
    if not (resolution and np.isfinite(resolution) and resolution > 0):
        raise InputError(f"{dmap.name}: resolution must be a positive number of Å (got {resolution})")
    work = st.clone()
    while len(work) > 1:
        del work[len(work) - 1]
    if work[0].count_atom_sites() == 0:
        raise InputError(f"{st.name or 'model'}: model has no atoms")
    # a region's B target is a correlation over core and margin: the margin's B are refined with
    # the core's (and not kept), else its input B set the level of the core's
    options = {"fixed_b_free": True, **options}
    xyz0 = _xyz(work)
    topo = refinement_topology(work, monlib_dir)
    result = RefinementResult(structure=work, warnings=list(topo.warnings))
    result.geometry_before = geometry_stats(topo, xyz0)
    regions = split_regions(work, region_atoms, margin, xyz=xyz0)
    # no stage is skipped for size: halve the regions until every box is under the fit stage's limit
    fmap = fit_map if fit_map is not None else dmap
    while region_atoms > 500 and max(_box_voxels(fmap, xyz0[r.atoms]) for r in regions) > FIT_MAX_VOXELS:
        region_atoms //= 2
        regions = split_regions(work, region_atoms, margin, xyz=xyz0)
    log.info("boxed refinement: %d atoms in %d regions of at most %d core atoms (margin %.1f Å)",
             len(xyz0), len(regions), region_atoms, margin)
    own = None
    if executor is None and workers > 1:
        own = executor = cf.ProcessPoolExecutor(max_workers=workers,
                                                mp_context=multiprocessing.get_context("spawn"))
    in_flight = 2 * max(1, workers)
    try:
        outs = _run_pass(work, regions, dmap, fit_map, resolution, monlib_dir, options, executor, in_flight)
        _merge(work, outs, result)
        seam = seam_regions(work, regions, _xyz(work), seam_width, region_atoms, margin) if seams else []
        if seam:
            log.info("seam pass: %d atoms in %d regions", sum(len(r.core) for r in seam), len(seam))
            souts = _run_pass(work, seam, dmap, fit_map, resolution, monlib_dir, options, executor, in_flight)
            _merge(work, souts, result)
            outs = outs + souts
    finally:
        if own is not None:
            own.shutdown(cancel_futures=True)  # on an error, queued regions are dropped
    ok = [o for _, o in outs if o.status == "ok"]
    if not ok:
        result.status = f"diverged: every region ({outs[0][1].status})"
    result.weight = float(np.median([o.weight for o in ok])) if ok else float("nan")
    result.cycles = max((o.cycles for o in ok), default=0)
    adps = [o.adp for o in ok if o.adp is not None]
    result.adp = adps or None
    xyz = _xyz(work)
    result.geometry_after = geometry_stats(topo, xyz)
    result.rmsd_moved = float(np.sqrt(np.mean(np.sum((xyz - xyz0) ** 2, axis=1))))
    result.seconds = time.perf_counter() - t0
    return result


__all__ = ["refine_boxed", "refine_region", "use_boxes", "RegionTask", "RegionOutcome", "BOXED_MIN_ATOMS",
           "BOX_PADDING"]
