"""Benchmark: mirror discovery at archive scale (issue 17, item 5).

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_discovery.py [--entries 230000] [--new 100]``
-> ``benchmarks/results/discovery.json``.

A synthetic local mirror of ``--entries`` correctly named model files
(``pdb/data/structures/divided/mmCIF/{key}/{id}.cif.gz``), each a tiny gzipped mmCIF stating
``_exptl.method 'X-RAY DIFFRACTION'`` (as most of the PDB: judged from the record alone), is
discovered with :func:`rerefine.harvester.harvest.discover` three times with one download
cache: the first night (empty index: every file parsed), a night after ``--new`` files were
added, and a night with no change. Reported: wall seconds of each night, files parsed
(counted), and the index file's size.
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

from rerefine.harvester import harvest
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


def night(root: Path, cache: Path) -> dict:
    parsed = []
    real = mirror_mod.model_record

    def counting(path, pid):
        parsed.append(pid)
        return real(path, pid)

    mirror_mod.model_record = counting
    try:
        t = time.perf_counter()
        cands = harvest.discover(mirror=root, cache_dir=cache)
        seconds = time.perf_counter() - t
    finally:
        mirror_mod.model_record = real
    return {"seconds": round(seconds, 2), "parsed": len(parsed), "candidates": len(cands),
            "rejected": sum(c.status == "rejected" for c in cands)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=230_000)
    ap.add_argument("--new", type=int, default=100)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "discovery.json"))
    args = ap.parse_args()
    ids = pdb_ids()
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "mirror", Path(tmp) / "cache"
        t = time.perf_counter()
        write_models(root, itertools.islice(ids, args.entries))
        build_s = time.perf_counter() - t
        first = night(root, cache)
        write_models(root, itertools.islice(ids, args.new))
        later = night(root, cache)
        unchanged = night(root, cache)
        index_mb = os.path.getsize(cache / harvest.MODEL_INDEX_NAME) / 2**20
    out = {"entries": args.entries, "new": args.new, "mirror_build_seconds": round(build_s, 1),
           "first_night": first, "night_with_new_files": later, "night_without_change": unchanged,
           "index_mb": round(index_mb, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
