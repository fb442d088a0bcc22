"""Benchmark: mirror discovery at archive scale (issue 17, item 5).

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_discovery.py [--entries 230000] [--new 100]``
-> ``benchmarks/results/discovery.json``.

A synthetic local mirror of ``--entries`` correctly named model files
(``pdb/data/structures/divided/mmCIF/{key}/{id}.cif.gz``), each a tiny gzipped mmCIF stating
``_exptl.method 'X-RAY DIFFRACTION'`` (as most of the PDB: judged from the record alone), is
discovered as the nightly does (:func:`rerefine.harvester.harvest.discover` with ``only_changed``,
the skips recorded in a project database by :func:`rerefine.flows.nightly.record_judgements`, then
:meth:`~rerefine.harvester.harvest.Discovery.remember`) three times with one download cache: the
first night (empty index: every file parsed and judged), a night after ``--new`` files were added,
and a night with no change. Reported per night: wall seconds of discovery, files parsed (counted),
entries judged (returned) and left out as judged before, project-database runs written and the
seconds that took, and the state file's size.

Recording is timed on every row written, except on the first night, where only ``--record-sample``
rows are written (its total is that sample's seconds per row times the rows it would write). With
``--old`` a night of the previous behaviour (``only_changed=False``: every entry judged and every
skip written, as each night before) is measured on the same mirror for comparison.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

from rerefine.flows import nightly as nightly_mod
from rerefine.harvester import harvest
from rerefine.reports import db
from rerefine.harvester import mirror as mirror_mod
from rerefine.harvester.mirror import Mirror

REPO = Path(__file__).resolve().parent.parent
ALNUM = "0123456789abcdefghijklmnopqrstuvwxyz"


def pdb_ids():
    for d, a, b, c in itertools.product("123456789", ALNUM, ALNUM, ALNUM):
        yield f"{d}{a}{b}{c}"


def write_models(root: Path, pids) -> None:
    for pid in pids:
        p = root / Mirror.model_rel(pid)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(gzip.compress(f"data_{pid.upper()}\n_exptl.method 'X-RAY DIFFRACTION'\n".encode(), 1, mtime=0))


def night(root: Path, cache: Path, engine, *, only_changed: bool = True, record_sample: int | None = None) -> dict:
    parsed = []
    real = mirror_mod.model_record

    def counting(path, pid):
        parsed.append(pid)
        return real(path, pid)

    mirror_mod.model_record = counting
    try:
        t = time.perf_counter()
        cands = harvest.discover(mirror=root, cache_dir=cache, only_changed=only_changed)
        seconds = time.perf_counter() - t
    finally:
        mirror_mod.model_record = real
    skips = [c for c in cands if c.status != "accepted"]
    sample = skips if record_sample is None else skips[:record_sample]
    todo = harvest.Discovery(sample, unchanged=cands.unchanged)
    todo.index_path, todo.root, todo.pending, todo.forget = cands.index_path, cands.root, [], []
    summary = {"rejected": [], "failed": []}
    t = time.perf_counter()
    nightly_mod.record_judgements(engine, todo, {}, summary)
    record_s = time.perf_counter() - t
    per_row = record_s / len(sample) if sample else 0.0
    t = time.perf_counter()
    kept = cands.remember() if only_changed else 0
    remember_s = time.perf_counter() - t
    return {"seconds": round(seconds, 2), "parsed": len(parsed), "judged": len(cands),
            "judged_before": cands.unchanged,
            "rejected": sum(c.status == "rejected" for c in cands),
            "db_rows_written": len(skips), "db_rows_timed": len(sample),
            "db_record_seconds": round(per_row * len(skips), 2), "db_seconds_per_row": round(per_row, 5),
            "judgements_kept": kept, "remember_seconds": round(remember_s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=230_000)
    ap.add_argument("--new", type=int, default=100)
    ap.add_argument("--record-sample", type=int, default=2000,
                    help="rows recorded (and timed) in the database on the first night")
    ap.add_argument("--old", action="store_true", help="also a night of the previous behaviour (all judged)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "discovery.json"))
    args = ap.parse_args()
    ids = pdb_ids()
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "mirror", Path(tmp) / "cache"
        database = f"sqlite:///{Path(tmp) / 'rerefine.sqlite'}"
        db.upgrade(database)
        engine = db.make_engine(database)
        t = time.perf_counter()
        write_models(root, itertools.islice(ids, args.entries))
        build_s = time.perf_counter() - t
        first = night(root, cache, engine, record_sample=args.record_sample)
        write_models(root, itertools.islice(ids, args.new))
        later = night(root, cache, engine)
        unchanged = night(root, cache, engine)
        old = night(root, cache, engine, only_changed=False, record_sample=args.record_sample) if args.old else None
        index_mb = os.path.getsize(cache / harvest.MODEL_INDEX_NAME) / 2**20
        engine.dispose()
    out = {"entries": args.entries, "new": args.new, "mirror_build_seconds": round(build_s, 1),
           "load_average": os.getloadavg(),
           "first_night": first, "night_with_new_files": later, "night_without_change": unchanged,
           "old_night_without_change": old, "index_mb": round(index_mb, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
