"""``rerefine refine MODEL MAP --resolution R -o OUT.cif``: real-space re-refinement of one model.

Fit measures (CC_mask, CC_box, Q-score, atom inclusion, ...) and geometry are reported for
the input and the refined model; the refined model is written as mmCIF (or PDB for a
``.pdb`` name) keeping chain/residue/atom names and hydrogens, with the program and
version in ``_software``.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import time

log = logging.getLogger(__name__)

#: Keys of the ``before``/``after`` blocks.
METRIC_KEYS = ("cc_mask", "cc_box", "cc_peaks", "cc_volume", "q_score", "atom_inclusion",
               "atom_inclusion_backbone")


def register(sub) -> None:
    p = sub.add_parser("refine", help="re-refine a model against its map in real space (coordinates, B)")
    p.add_argument("model", help="model file (mmCIF or PDB, optionally .gz)")
    p.add_argument("map", help="map file (MRC/CCP4, optionally .gz)")
    p.add_argument("--resolution", type=float, default=None,
                   help="map resolution, Å (default: the one stated in the model file)")
    p.add_argument("-o", "--output", required=True, help="refined model (.cif, or .pdb)")
    p.add_argument("--json", metavar="OUT|-", help="write before/after figures as JSON")
    p.add_argument("--monlib", default=None,
                   help="CCP4 monomer library folder (default: settings RR_MONOMER_LIB / CLIBD_MON)")
    p.add_argument("--no-adp", action="store_true", help="refine coordinates only, keep B factors")
    p.add_argument("--cycles", type=int, default=None,
                   help="coordinate macro-cycles (default: the nightly pipeline's, PipelineParams.macro_cycles)")
    p.add_argument("--weight", type=float, default=None,
                   help="fixed map weight (default: automatic, aiming at 0.01 Å / 1.0 deg RMSD)")
    p.add_argument("--sharpen-b", type=float, default=0.0,
                   help="B (Å²) to sharpen (>0) or blur (<0) the map for the coordinate target")
    p.add_argument("--free", action="store_true",
                   help="no restraint to the input positions: follow the map further (by default each "
                        "atom is held to its input position with sigma 0.15 Å)")
    p.add_argument("--rigid-body", choices=("model", "chain"), default=None,
                   help="first fit the whole model or each chain into the map as a rigid body "
                        "(for a model misplaced as a whole)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes refining the regions of a large model in parallel (models above "
                        "rerefine.refine.boxed.BOXED_MIN_ATOMS atoms are refined in boxes; default 1)")
    p.add_argument("--ncs", action="store_true",
                   help="torsion NCS restraints between copies of a chain (identical chains found "
                        "automatically; Headd et al. 2014); off by default")
    p.set_defaults(func=run)


def _geometry(stats: dict) -> dict:
    from rerefine.refine.geometry import GEOMETRY_KEYS

    return {k: stats.get(k) for k in GEOMETRY_KEYS}


def _metrics(st, dmap, resolution) -> dict:
    from rerefine.refine.metrics import compute_metrics

    m = compute_metrics(st, dmap, resolution)
    return {k: m.get(k) for k in METRIC_KEYS}


def _validation(st, monlib, top8000) -> dict:
    """MolProbity-class summary (:data:`rerefine.refine.validation.SUMMARY_KEYS`) of a model."""
    from rerefine.refine.validation import SUMMARY_KEYS, validate

    s = validate(st, monlib, top8000_dir=top8000).summary
    return {k: s[k] for k in SUMMARY_KEYS}


def _later(executor, fn, *args, **kwargs) -> cf.Future:
    """``fn(*args, **kwargs)`` as a future: on ``executor``, or run now in this process when None."""
    if executor is not None:
        return executor.submit(fn, *args, **kwargs)
    fut = cf.Future()
    fut.set_result(fn(*args, **kwargs))
    return fut


def refine_files(model_path, map_path, output, *, resolution=None, monlib=None, adp=True,
                 cycles=None, weight=None, sharpen_b=0.0, free=False, rigid_body=None, top8000=None,
                 workers=1, executor=None, ncs=False) -> dict:
    """Refine ``model_path`` against ``map_path``, write ``output``; the report as a dict.

    ``cycles``: coordinate macro-cycles, by default the nightly pipeline's
    (:attr:`rerefine.flows.pipeline.PipelineParams.macro_cycles`), so both refine alike. Models
    that :func:`rerefine.refine.boxed.use_boxes` selects (large ones) are refined in boxes, on
    ``workers`` processes or the given ``executor``, unless ``rigid_body`` is asked for (a
    rigid-body fit moves whole chains, so it runs on the whole model).
    ``ncs``: torsion NCS restraints (:mod:`rerefine.refine.ncs`; in boxes, between the copies
    inside one region); the NCS groups of the input and the copies' all-atom RMSD before and
    after are reported either way (key ``ncs``).

    In boxes on a pool (``workers`` > 1 or an ``executor``), the whole-model figures before and
    after (metrics, placement check, validation) run as tasks of the same pool, so they use
    every worker instead of one process while the others wait."""
    from rerefine.flows import __version__
    from rerefine.flows.commands.metrics import read_map_around
    from rerefine.flows.pipeline import PipelineParams
    from rerefine.refine import modelio
    from rerefine.refine.adp import distribution
    from rerefine.common.errors import InputError
    from rerefine.refine.ncs import copy_rmsd, find_ncs_groups
    from rerefine.refine.realspace import refine_model

    t0 = time.perf_counter()
    if cycles is None:
        cycles = PipelineParams().macro_cycles
    elif cycles < 1:
        raise InputError("--cycles must be at least 1")
    st = modelio.read_model(model_path)
    dmap = read_map_around(st, map_path)
    if resolution is None:
        resolution = modelio.model_resolution(st)
        if resolution is None:
            raise InputError(f"{model_path}: no resolution in the model file; give --resolution")
    if not resolution > 0:
        raise InputError(f"--resolution must be positive (got {resolution})")
    if monlib is None:
        raise InputError("no monomer library: set RR_MONOMER_LIB or CLIBD_MON, or give --monlib")
    if workers < 1:
        raise InputError("--workers must be at least 1")
    from rerefine.refine.boxed import refine_boxed, use_boxes
    from rerefine.refine.rigidbody import placement_check

    boxed = not rigid_body and use_boxes(st, dmap)
    own = pool = None
    if boxed:
        pool = executor
        if pool is None and workers > 1:
            own = pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        before = _later(pool, _metrics, st, dmap, resolution)
        # the same diagnosis as on the nightly site: would the map move the chains as a whole?
        placement = None if rigid_body else _later(pool, placement_check, st, dmap, resolution, by="chain")
        valid_before = _later(pool, _validation, st, monlib, top8000)
        options = dict(adp=adp, cycles=cycles, weight=weight, b_sharpen=sharpen_b, top8000_dir=top8000, ncs=ncs,
                       **({"reference_sigma": None, "fit_reference_sigma": None} if free else {}))
        if boxed:
            res = refine_boxed(st, dmap, resolution, monlib, workers=workers, executor=pool, **options)
        else:
            res = refine_model(st, dmap, resolution, monlib, rigid_body=rigid_body, **options)
        refine_seconds = res.seconds
        after = _later(pool, _metrics, res.structure, dmap, resolution)
        valid_after = _later(pool, _validation, res.structure, monlib, top8000)
        groups = find_ncs_groups(st)
        ncs_report = {"restrained": bool(ncs and groups),
                      "groups": [{**g.summary(), "copy_rmsd_before": copy_rmsd(st, g),
                                  "copy_rmsd_after": copy_rmsd(res.structure, g)} for g in groups]}
        modelio.write_model(output, res.structure, program="rerefine", version=__version__)
        before, after = before.result(), after.result()
        valid_before, valid_after = valid_before.result(), valid_after.result()
        placement = placement.result() if placement is not None else None
    finally:
        if own is not None:
            own.shutdown(cancel_futures=True)  # on an error, queued regions and figures are dropped
    report = {
        "model": str(model_path),
        "map": str(map_path),
        "output": str(output),
        "resolution": float(resolution),
        "status": res.status,
        "before": {**before, **_geometry(res.geometry_before), **valid_before,
                   "b": distribution(_b_values(st))},
        "after": {**after, **_geometry(res.geometry_after), **valid_after,
                  "b": distribution(_b_values(res.structure))},
        "weight": res.weight,
        "cycles": res.cycles,
        "rmsd_moved": res.rmsd_moved,
        "b_refined": res.adp is not None,
        "occupancies_refined": res.occupancy is not None,
        "reference_restraint": not free,
        "rigid_body": res.rigid_body.summary() if res.rigid_body is not None else None,
        "boxed": boxed,
        "regions": len(res.history) if boxed else None,
        "region_history": res.history if boxed else None,
        "placement": placement,
        "ncs": ncs_report,
        "refine_seconds": refine_seconds,
        "seconds": time.perf_counter() - t0,
        "warnings": res.warnings,
    }
    return report


def _b_values(st) -> list[float]:
    """Isotropic B (Å²) of the non-hydrogen atoms of the first model."""
    return [c.atom.b_iso for c in st[0].all() if not c.atom.is_hydrogen()]


def run(args, settings) -> int:
    from rerefine.flows.cli import emit_json

    monlib = args.monlib or settings.monomer_library
    rep = refine_files(args.model, args.map, args.output, resolution=args.resolution, monlib=monlib,
                       adp=not args.no_adp, cycles=args.cycles, weight=args.weight,
                       sharpen_b=args.sharpen_b, free=args.free,
                       rigid_body=args.rigid_body, top8000=settings.top8000_dir, workers=args.workers,
                       ncs=args.ncs)
    if args.json != "-":
        b, a = rep["before"], rep["after"]

        def f(x, fmt):
            return "n/a" if x is None else format(x, fmt)

        print(f"refined {rep['model']} against {rep['map']} at {rep['resolution']:.2f} Å "
              f"({rep['status']}; weight {f(rep['weight'], '.3g')}, {rep['cycles']} cycles, "
              f"{rep['seconds']:.1f} s) -> {rep['output']}")
        for key, fmt in (("cc_mask", ".3f"), ("cc_box", ".3f"), ("q_score", ".3f"), ("atom_inclusion", ".3f"),
                         ("bond_rmsd", ".4f"), ("angle_rmsd", ".2f"), ("nonbonded_overlaps", "d"),
                         ("clashscore", ".2f"), ("rama_favored_pct", ".2f"), ("rama_outliers", "d"),
                         ("rotamer_outliers", "d"), ("cbeta_outliers", "d")):
            print(f"  {key:<20} {f(b.get(key), fmt):>8} -> {f(a.get(key), fmt)}")
        for g in rep["rigid_body"] or ():
            print(f"  rigid body {g['group']}: rotated {g['rotation_deg']:.2f} deg, shifted {g['shift']:.2f} Å")
        from rerefine.flows.commands.info import ncs_lines

        for line in ncs_lines(rep["ncs"]["groups"]):
            print(f"  {line}")
        for g in rep["ncs"]["groups"]:
            rms = ", ".join(f"{c} {g['copy_rmsd_before'][c]:.3f} -> {g['copy_rmsd_after'][c]:.3f} Å"
                            for c in g["copy_rmsd_before"])
            kind = "restrained" if rep["ncs"]["restrained"] else "not restrained (--ncs)"
            print(f"  NCS copies {kind}: all-atom RMSD to {g['reference']}: {rms}")
        if rep["placement"] and rep["placement"]["misplaced"]:
            moves = ", ".join(f"{g['group']} {g['rotation_deg']:.1f} deg / {g['shift']:.1f} Å"
                              for g in rep["placement"]["groups"])
            kept = "; the refinement kept atoms near their input positions" if rep["reference_restraint"] else ""
            print(f"  note: the map would move the input chains as rigid bodies ({moves}){kept}; "
                  f"--rigid-body chain fits the chains first")
        for w in rep["warnings"]:
            print(f"  warning: {w}")
    emit_json(rep, args.json)
    return 0 if rep["status"] == "ok" else 3
