"""Static-site benchmark: full build of 10,000 synthetic entries from an SQLite results
database, then incremental builds.

Run: ``/work/main/.venv/bin/python benchmarks/bench_site.py [--n 10000] [--repeats 3] [--db FILE]``.
Writes ``benchmarks/results/site.json``.

Goal (issue 9): a full build of 10,000 entries in under 2 minutes.

The entries are made by the results-database benchmark's generator
(``benchmarks/bench_db.py``: ~300 residues in three chains, full metric sets, a failed
run every 50th entry) and stored through :func:`rerefine.reports.store.store_result`;
20 % of them also get a second pipeline version so the method-impact page has work.
``--db FILE`` reuses (or keeps) that database between runs.

Timings are medians of ``--repeats`` runs. Because the machine is shared, the benchmark
also times a *reference* in the same process: reading every entry's page data through
the query layer alone (:func:`rerefine.reports.queries.entry_detail`, what any renderer
must do). ``full / reference`` is the rendering and writing overhead, less noisy than seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from rerefine.reports import db, queries, site, site_sources, store  # noqa: E402


def populate(engine, n: int, n_res: int) -> float:
    import bench_db  # the results-database benchmark's synthetic generator

    rng = random.Random(1)
    pool = bench_db.residue_pool(rng, n_res)
    t0 = time.perf_counter()
    bench_db.insert_all(engine, n, "1.0", rng, pool)
    for i in range(0, n, 5):
        store.store_result(engine, **bench_db.synthetic_result(i, "1.1", rng, pool))
    return time.perf_counter() - t0


def touch(engine, ids: list[int], n_res: int) -> None:
    """New results for some entries (as a nightly run would store)."""
    import bench_db

    rng = random.Random(len(ids))
    pool = bench_db.residue_pool(rng, n_res, size=2)
    for i in ids:
        kw = bench_db.synthetic_result(i, "1.2", rng, pool)
        store.store_result(engine, **kw)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--residues", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="rendering processes")
    ap.add_argument("--db", type=Path, help="SQLite file to reuse/keep (default: a temporary one)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="rr-bench-site-"))
    dbfile = args.db or tmp / "rr.sqlite"
    engine = db.make_engine(db.sqlite_url(dbfile))
    db.upgrade(engine)
    populate_s = None
    with engine.connect() as conn:
        have = conn.exec_driver_sql("select count(*) from entries").scalar()
    if have < args.n:
        print(f"storing {args.n} synthetic entries ...", flush=True)
        populate_s = populate(engine, args.n, args.residues)
        print(f"  stored in {populate_s:.1f} s", flush=True)
    src = site_sources.DatabaseSource(engine)
    out = tmp / "site"

    listing = src.listing()
    n_entries = len(listing)

    def reference():
        for item in listing:
            queries.entry_detail(engine, item["pdb_id"], run_id=item["run_id"])

    ref_times = [timed(reference)[0] for _ in range(args.repeats)]

    full_times, report = [], None
    for _ in range(args.repeats):
        shutil.rmtree(out, ignore_errors=True)
        t, report = timed(lambda: site.build_site(src, out, full=True, jobs=args.jobs))
        full_times.append(t)
        print(f"  full build {t:.1f} s ({report.pages_written} pages, {args.jobs} processes)", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    t_serial, _ = timed(lambda: site.build_site(src, out, full=True, jobs=1))
    print(f"  full build {t_serial:.1f} s (1 process)", flush=True)
    load = os.getloadavg()[0]
    size_mb = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6
    entry_pages = sorted((out / "entry").glob("*.html"))
    entry_kb = statistics.median(p.stat().st_size for p in entry_pages) / 1e3
    index_kb = (out / "data" / "index.js").stat().st_size / 1e3

    noop_times, noop = [], None
    for _ in range(args.repeats):
        t, noop = timed(lambda: site.build_site(src, out, jobs=args.jobs))
        noop_times.append(t)

    touched = list(range(3, min(args.n, 300), 3))  # 99 entries get a new result
    touch(engine, touched, args.residues)
    t_inc, inc = timed(lambda: site.build_site(src, out, jobs=args.jobs))
    inc_entry_pages = sum(1 for w in inc.written if w.startswith("entry/"))

    res = {
        "benchmark": "site",
        "host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
        "n_entries": n_entries, "residues_per_entry": args.residues, "repeats": args.repeats,
        "populate_s": populate_s,
        "full_build_s": statistics.median(full_times), "full_build_runs_s": full_times,
        "full_build_ms_per_entry": 1000 * statistics.median(full_times) / max(n_entries, 1),
        "goal_full_build_s": 120.0,
        "goal_met": statistics.median(full_times) < 120.0,
        "jobs": args.jobs, "full_build_1_process_s": t_serial, "load_average_1min": load,
        "pages": report.pages_total,
        "reference_query_only_s": statistics.median(ref_times), "reference_runs_s": ref_times,
        "ratio_full_over_reference": statistics.median(full_times) / statistics.median(ref_times),
        "noop_build_s": statistics.median(noop_times), "noop_pages_written": noop.pages_written,
        "incremental_changed_entries": len(touched), "incremental_build_s": t_inc,
        "incremental_pages_written": inc.pages_written, "incremental_entry_pages_written": inc_entry_pages,
        "site_size_mb": round(size_mb, 1), "entry_page_median_kb": round(entry_kb, 1),
        "index_data_kb": round(index_kb, 1),
    }
    dest = HERE / "results" / "site.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    engine.dispose()
    shutil.rmtree(out, ignore_errors=True)
    if not args.db:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
