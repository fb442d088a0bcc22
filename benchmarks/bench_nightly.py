"""Benchmark: the nightly flow end to end on the sample archive (issue 10's figures).

Runs ``rerefine nightly --mirror <sample archive>`` in a fresh data directory (full default
pipeline parameters; ``--workers`` as given) and reports wall time per entry and per stage, the
fraction of the run spent outside our stages (Prefect, Dask and process start-up), entries per
core-hour, and the cluster size needed to re-refine an archive of N entries in a week.

    python benchmarks/bench_nightly.py [--workers 1] [--repeat 1] [--archive-size 30000] [--copies N]

``--copies N`` adds N more entries to the mirror, each the real 7CEC model under a local id
(``loc_7cec_copyK``) pointing at the same real EMD-30342 map, to show how Prefect's fixed start-up
cost amortises over a longer night (the per-entry work is real; only the entry count is made up).

Results: benchmarks/results/nightly.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


STARTUP = """
import time, sys
t0 = time.perf_counter()
import rerefine.flows.cli, rerefine.flows.pipeline, rerefine.refine.metrics, rerefine.refine.realspace
t1 = time.perf_counter()
if sys.argv[1] == "prefect":
    from rerefine.flows.prefect_env import configure_prefect
    configure_prefect(sys.argv[2])
    from prefect import flow
    @flow
    def empty():
        return 1
    empty()
print(time.perf_counter() - t0, t1 - t0)
"""


def startup_seconds(with_prefect: bool, data_dir: Path) -> float:
    """Process start, imports and (optionally) Prefect's temporary server and one empty flow run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RR_"))}
    r = subprocess.run([sys.executable, "-c", STARTUP, "prefect" if with_prefect else "bare", str(data_dir)],
                       env=env, capture_output=True, text=True, check=True)
    return float(r.stdout.split()[-2])


def add_copies(archive: Path, n: int) -> None:
    """``n`` extra entries: 7CEC's model file under local ids (the map is shared)."""
    from rerefine.harvester.mirror import Mirror

    src = archive / Mirror.model_rel("7cec")
    for k in range(n):
        dst = archive / Mirror.model_rel(f"loc_7cec_copy{k}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())


def one_run(workers: int, data: Path, copies: int = 0) -> dict:
    with tempfile.TemporaryDirectory(prefix="rr-bench-nightly-") as tmp:
        tmp = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RR_"))}
        env.update(RR_DATA_DIR=str(tmp / "data"), RR_TEST_DATA=str(data))
        env.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba-cache"))
        cli = [sys.executable, "-m", "rerefine.flows.cli"]
        subprocess.run(cli + ["sample-archive", "--data", str(data), "--out", str(tmp / "archive")], env=env,
                       check=True, capture_output=True)
        add_copies(tmp / "archive", copies)
        # Run twice in the same data directory: the second run (--force: redo every entry) sees
        # Prefect's home already initialised, as every night after the first does.
        for extra in ([], ["--force"]):
            t0 = time.perf_counter()
            r = subprocess.run(cli + ["nightly", "--mirror", str(tmp / "archive"), "--workers", str(workers),
                                      "--json", str(tmp / "s.json"), *extra], env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                raise SystemExit(r.stderr[-3000:])
            if not extra:
                first_wall = wall
        s = json.loads((tmp / "s.json").read_text())
    done = [e for e in s["entries"] if e["status"] == "done"]
    stage_total = sum(sum(e["timings"].values()) for e in done)
    with tempfile.TemporaryDirectory(prefix="rr-bench-prefect-") as t2:
        bare = startup_seconds(False, Path(t2))
        startup_seconds(True, Path(t2))  # initialise Prefect's home, as the first night does
        with_prefect = startup_seconds(True, Path(t2))
    in_flow_overhead = s["seconds"] - stage_total - s["harvest_seconds"] - s["site_seconds"]
    prefect_s = (with_prefect - bare) + in_flow_overhead
    return {
        "first_night_wall_seconds": first_wall,
        "prefect_seconds": round(prefect_s, 2),
        "prefect_fraction": prefect_s / wall,
        "prefect_startup_seconds": round(with_prefect - bare, 2),
        "prefect_in_flow_seconds": round(in_flow_overhead, 2),
        "harvest_seconds": s["harvest_seconds"],
        "site_seconds": s["site_seconds"],
        "wall_seconds": wall,
        "flow_seconds": s["seconds"],
        "entries_done": len(done),
        "per_entry": {e["pdb_id"]: {"seconds": round(sum(e["timings"].values()), 2), "verdict": e.get("verdict"),
                                    "cc_mask_before": e.get("cc_mask_before"), "cc_mask_after": e.get("cc_mask_after"),
                                    "timings": e["timings"]} for e in done},
        "stage_seconds": s["stage_seconds"],
        "failed": s["failed"],
        "rejected": s["rejected"],
        # Everything outside our stages: Prefect's ephemeral server and task bookkeeping, Dask,
        # interpreter start-up, harvest and the site build.
        # (one worker only: with several, stages overlap in time)
        "fraction_outside_stages": 1.0 - stage_total / wall if workers == 1 else None,
        "fraction_outside_stages_of_flow": 1.0 - stage_total / s["seconds"] if workers == 1 else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--archive-size", type=int, default=30000, help="EM entries with a model to re-refine")
    ap.add_argument("--copies", type=int, default=0, help="extra entries (copies of 7CEC under local ids)")
    ap.add_argument("--data", default=os.environ.get("RR_TEST_DATA", str(ROOT.parent / "shared" / "data")))
    args = ap.parse_args()
    runs = [one_run(args.workers, Path(args.data), args.copies) for _ in range(args.repeat)]
    walls = [r["wall_seconds"] for r in runs]
    per_entry = statistics.median(
        [v["seconds"] for r in runs for v in r["per_entry"].values()]) if runs[0]["per_entry"] else None
    cores_per_entry = 1  # one entry is one single-process task
    entries_per_core_hour = 3600.0 / per_entry / cores_per_entry if per_entry else None
    week_core_hours = args.archive_size / entries_per_core_hour if entries_per_core_hour else None
    out = {
        "workers": args.workers,
        "extra_copies": args.copies,
        "runs": runs,
        "wall_seconds_median": statistics.median(walls),
        "median_seconds_per_entry": per_entry,
        "entries_per_core_hour": entries_per_core_hour,
        "archive_size": args.archive_size,
        "core_hours_for_archive": week_core_hours,
        "cores_for_archive_in_one_week": week_core_hours / (7 * 24) if week_core_hours else None,
    }
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / ("nightly.json" if not args.copies else f"nightly_copies{args.copies}.json")).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=2))
    for r in runs:
        print(json.dumps({k: r[k] for k in ("wall_seconds", "flow_seconds", "stage_seconds", "harvest_seconds",
                                             "site_seconds", "prefect_seconds", "prefect_fraction",
                                             "prefect_startup_seconds", "prefect_in_flow_seconds",
                                             "fraction_outside_stages", "per_entry")}, indent=1))


if __name__ == "__main__":
    main()
