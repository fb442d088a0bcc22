"""Benchmark: the same night on a local Dask cluster and on the process pool (issue 17, item 1).

One invocation makes one mirror and runs ``rerefine nightly`` on it twice, each time in a fresh
data directory with the same options: ``--workers 1`` (entries one after another, a large
entry's regions on a process pool of the machine's cores) and ``--workers 2`` (a local Dask
cluster of two worker processes with one thread each; the regions of a large entry are tasks of
the whole cluster). Reported per night: wall time of the CLI process, load average, each entry's
status, verdict, CCmask after and CCmask of the refined coordinates with the input B, and where
the regions ran (``after.refinement.region_workers``); then the wall-time ratio Dask / pool and
whether every verdict and figure agrees.

    python benchmarks/bench_dask_night.py [--tiled N] [--region-atoms N] [--fast] [--order pool,dask]

``--tiled N``: the mirror holds N entries of 35,744 atoms, 5ME2 tiled 2×2×2 in EMD-3488 tiled
2×2×2 (``bench_nightly.make_tiled``), refined in boxes at the default region size. Without it,
the sample archive of the real test data (5ME2 and 7CEC processed), whose models are boxed only
with ``--region-atoms``. ``--fast``: one macro-cycle without B (the tests' setting).

Results: benchmarks/results/dask_night.json
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_nightly import CLI, ROOT, _env, loadavg, make_tiled  # noqa: E402


def night(archive: Path, data_dir: Path, data: Path, workers: int, extra: list[str]) -> dict:
    summary = data_dir.parent / f"{data_dir.name}.json"
    load0 = loadavg()
    t0 = time.perf_counter()
    r = subprocess.run(CLI + ["nightly", "--mirror", str(archive), "--workers", str(workers), "--no-site",
                              "--json", str(summary), *extra], env=_env(data_dir, data), capture_output=True,
                       text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(r.stderr[-3000:])
    s = json.loads(summary.read_text())
    with sqlite3.connect(data_dir / "rerefine.sqlite") as db:
        fulls = {k.lower(): json.loads(a) for k, a in db.execute(
            'SELECT e.pdb_id, m."after" FROM metrics_full m JOIN runs r ON r.id = m.run_id '
            "JOIN entries e ON e.id = r.entry_id")}
    entries = {}
    for e in s["entries"]:
        after = fulls.get(e["pdb_id"].lower(), {})
        entries[e["pdb_id"]] = {"status": e["status"], "verdict": e.get("verdict"), "reason": e.get("reason"),
                                "cc_mask_after": e.get("cc_mask_after"),
                                "cc_mask_input_b_after": e.get("cc_mask_input_b_after"),
                                "refine_seconds": (e.get("timings") or {}).get("refine"),
                                "region_workers": (after.get("refinement") or {}).get("region_workers"),
                                "stage_peak_mb": e.get("stage_peak_mb")}
    return {"workers": workers, "wall_seconds": round(wall, 1), "load_before": load0, "load_after": loadavg(),
            "flow_seconds": s["seconds"], "entries": entries}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiled", type=int, default=0)
    ap.add_argument("--region-atoms", type=int)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--order", default="pool,dask")
    ap.add_argument("--data", default=os.environ.get("RR_TEST_DATA", str(ROOT.parent / "shared" / "data")))
    args = ap.parse_args()
    data = Path(args.data).resolve()
    extra = (["--cycles", "1", "--no-adp"] if args.fast else []) + (
        ["--region-atoms", str(args.region_atoms)] if args.region_atoms else [])
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-dask-night-") as tmp:
        tmp = Path(tmp)
        from rerefine.harvester import sample_archive

        sample_archive.build(tmp / "archive", data)
        if args.tiled:
            make_tiled(tmp / "archive", args.tiled)
        for name in args.order.split(","):
            workers = {"pool": 1, "dask": 2}[name]
            runs[name] = night(tmp / "archive", tmp / f"data-{name}", data, workers, extra)
            print(name, json.dumps(runs[name], indent=1), flush=True)
    pool, dask = runs["pool"]["entries"], runs["dask"]["entries"]
    same = {k: all(pool[k][f] == dask[k][f] for f in ("status", "verdict", "cc_mask_after", "cc_mask_input_b_after"))
            for k in pool}
    out = {"options": extra, "tiled_entries": args.tiled, "runs": runs,
           "wall_ratio_dask_over_pool": round(runs["dask"]["wall_seconds"] / runs["pool"]["wall_seconds"], 3),
           "identical_results": same,
           "note": "one night each in one invocation on the same mirror; wall of the whole CLI process"}
    print(json.dumps({k: out[k] for k in ("wall_ratio_dask_over_pool", "identical_results")}, indent=1))
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / f"dask_night{'_tiled' + str(args.tiled) if args.tiled else ''}.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
