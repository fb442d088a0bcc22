"""``rerefine site build --out DIR [--full]``: render the static website from the results database."""

from __future__ import annotations

import os


def register(sub) -> None:
    p = sub.add_parser("site", help="static website of the results")
    ssub = p.add_subparsers(dest="site_command", metavar="ACTION", required=True)
    b = ssub.add_parser("build", help="render (or update) the static site from the results database")
    b.add_argument("--out", metavar="DIR", help="site folder (default: <data_dir>/site)")
    b.add_argument("--url", metavar="URL",
                   help="database URL (default: RR_DATABASE_URL, else <data_dir>/rerefine.sqlite)")
    b.add_argument("--full", action="store_true", help="rewrite every page, ignoring the manifest")
    b.add_argument("--no-files", action="store_true",
                   help="do not link refined models and maps into the site (list them only)")
    # One process by default: on the shared 2-core machine two were not faster (bench_site.py).
    b.add_argument("--jobs", type=int, default=1, metavar="N",
                   help=f"processes rendering entry pages (default 1; this machine has {os.cpu_count()} CPUs)")
    b.add_argument("--json", metavar="OUT|-", help="write the build summary as JSON")
    b.set_defaults(func=run_build)


def run_build(args, settings) -> int:
    from pathlib import Path

    from rerefine.flows.cli import emit_json
    from rerefine.common.errors import InputError
    from rerefine.reports import db, site, site_sources

    url = args.url or settings.database
    out = Path(args.out) if args.out else settings.site_dir
    engine = db.make_engine(url)
    try:
        current, head = db.current_revision(engine), db.head_revision()
        if current is None:
            raise InputError(f"{url}: the results database has no schema yet (run `rerefine db upgrade`)")
        if current != head:
            raise InputError(f"{url}: the results database schema is at revision {current}, this rerefine "
                             f"needs {head} (run `rerefine db upgrade`)")
        report = site.build_site(site_sources.DatabaseSource(engine), out, full=args.full,
                                 copy_artefacts=not args.no_files, jobs=args.jobs)
    finally:
        engine.dispose()
    summary = report.as_dict()
    if args.json != "-":
        print(f"site {out}: {report.entries} entries; wrote {report.pages_written} of {report.pages_total} pages"
              f"{f', removed {report.pages_removed}' if report.pages_removed else ''} in {report.seconds:.1f} s")
    emit_json(summary, args.json)
    return 0
