"""``rerefine nightly``: harvest new entries, re-refine each, store results, rebuild the site."""

from __future__ import annotations

import sys
import time


def register(sub) -> None:
    p = sub.add_parser("nightly", help="the nightly run: harvest, re-refine, store, publish")
    p.add_argument("--since", metavar="DATE", help="first release date (default: after the newest entry "
                   "already in the database; everything in a mirror)")
    p.add_argument("--until", metavar="DATE", help="last release date")
    p.add_argument("--mirror", metavar="PATH|URL", help="archive mirror (default: RR_MIRROR or the public archive)")
    p.add_argument("--limit", type=int, metavar="N", help="process at most N accepted entries")
    p.add_argument("--workers", type=int, metavar="N",
                   help="entries processed at once on a local multi-process Dask cluster (default: RR_CONCURRENCY)")
    p.add_argument("--dask-address", metavar="ADDR", help="run entries on this Dask scheduler (e.g. tcp://host:8786)")
    p.add_argument("--force", action="store_true", help="redo entries already done by this pipeline version")
    p.add_argument("--no-site", action="store_true", help="do not rebuild the website")
    p.add_argument("--wait", action="store_true",
                   help="when another nightly run holds the data directory, wait for it to end "
                        "(default: say who holds it and exit 0)")
    add_pipeline_options(p)
    p.add_argument("--json", metavar="OUT|-", help="write the run summary as JSON")
    p.set_defaults(func=run)


def add_pipeline_options(p) -> None:
    """Options that change the pipeline's parameters (they are hashed into the run's pipeline record)."""
    p.add_argument("--cycles", type=int, metavar="N", help="refinement macro-cycles (default 5)")
    p.add_argument("--no-adp", action="store_true", help="do not refine B factors")
    p.add_argument("--q-sigma", type=float, metavar="Å", help="Q-score reference width (default 0.6)")
    p.add_argument("--region-atoms", type=int, metavar="N",
                   help="core atoms per region of a model refined in boxes; models from 2N atoms are refined "
                        "in boxes (default 6000)")


def pipeline_params(args, settings=None):
    from rerefine.flows.pipeline import PipelineParams
    from rerefine.common.errors import InputError

    p = PipelineParams()
    if settings is not None:
        p.douse_max_resolution = float(settings.douse_max_resolution)
    if args.cycles is not None:
        if args.cycles < 1:
            raise InputError("--cycles must be at least 1")
        p.macro_cycles = args.cycles
    if args.no_adp:
        p.refine_adp = False
    if args.q_sigma is not None:
        if args.q_sigma <= 0:
            raise InputError("--q-sigma must be positive")
        p.q_sigma = args.q_sigma
    if args.region_atoms is not None:
        if args.region_atoms < 100:
            raise InputError("--region-atoms must be at least 100")
        p.region_atoms = args.region_atoms
    return p


def print_summary(summary: dict) -> None:
    print(f"found {summary['found']}, processed {summary['processed']} (improved {summary['improved']}, "
          f"unchanged {summary['unchanged']}, worse {summary['worse']}), cached {summary['cached']}, "
          f"rejected {len(summary['rejected'])}, failed {len(summary['failed'])} in {summary['seconds']:.0f} s")
    for f in summary["failed"]:
        print(f"  failed  {f['pdb_id']}: {f['reason']}")
    for r in summary["rejected"]:
        print(f"  skipped {r['pdb_id']}: {r['reason']}")
    if summary.get("site"):
        print(f"site: {summary['site']}")


def run(args, settings) -> int:
    from rerefine.common.errors import InputError

    workers = args.workers if args.workers is not None else settings.concurrency
    if workers < 1:
        raise InputError("--workers must be at least 1")
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be at least 1")
    from rerefine.flows.runlock import AlreadyRunning, nightly_lock

    try:
        with nightly_lock(settings.data_dir, wait=args.wait):
            return _run_locked(args, settings, workers)
    except AlreadyRunning as exc:
        print(f"{exc}; not starting a second one", file=sys.stderr)
        return 0


def _run_locked(args, settings, workers: int) -> int:
    from rerefine.flows.cli import emit_json
    from rerefine.flows.prefect_home import configure_prefect

    configure_prefect(settings.data_dir, quiet=args.json == "-")
    t = time.perf_counter()
    params = pipeline_params(args, settings)  # an invalid option stops the server again at exit
    params_s = time.perf_counter() - t
    t = time.perf_counter()
    from rerefine.flows.nightly import run_nightly

    prefect_import = time.perf_counter() - t
    mirror = args.mirror if args.mirror is not None else (settings.mirror or None)
    summary = run_nightly(settings=settings, since=args.since, until=args.until, mirror=mirror, limit=args.limit,
                          workers=workers, dask_address=args.dask_address, build_site=not args.no_site,
                          force=args.force, params=params)
    summary["prefect_startup"]["import_seconds"] = round(prefect_import, 3)
    summary["setup_seconds"]["options"] = round(params_s, 3)
    if args.json != "-":
        print_summary(summary)
    emit_json(summary, args.json)
    return 0
