"""Benchmark (issue 17): `rerefine refine` on tiled real data at N = 1..4 — wall, peak memory, quality.

Case N: N×N×N copies of 5ME2 (4,468 atoms each) in the EMD-3488 map tiled N×N×N (100N³ voxels of
1.05 Å; :func:`bench_refine_memory.tiled_pair`, each copy in its own real density), so the quality
per copy should not depend on N. For each N the case is written to a temporary folder and
`rerefine refine MODEL MAP --resolution 3.2 --workers W` runs as a child process. Reported: wall
time, peak RSS (ru_maxrss of the child and its waited-for workers, the largest single process;
and the largest sum over the process tree, sampled every 0.5 s), CCmask before/after of the whole
model, the validation summary of the whole model, validation of the first, middle and last copy,
seconds per 1,000 atoms and the exponent of a power-law fit of wall time against atoms. With
``--compare-workers N``: the same case with ``--workers 1`` and ``2`` and their ratio. The load
(``os.getloadavg``) is recorded before and after each run.

    python benchmarks/bench_scale.py --n 1 2               # correctness at small N
    python benchmarks/bench_scale.py --n 1 2 3 --copies --compare-workers 3   # issue 17's figures
    python benchmarks/bench_scale.py --n 1 2 3 4           # the full set (N=4: ~290,000 atoms)

N=1 and 2 before N=3 in one command also fill the numba cache (set ``NUMBA_CACHE_DIR``), so the
N=3 workers start warm: a cold cache recompiles the kernels in every worker process.

Results: benchmarks/results/scale.json (merged by N with earlier runs of this benchmark).
Goals (issue 17): N=3 ≤ 6 min; CCmask within 0.005 of N=1 at every N; --workers 2 ≥ 1.6× faster
than 1 on N=3.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_refine_memory import DATA, ROOT, tiled_pair  # noqa: E402

from rerefine.refine import mapio, modelio  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
COPY_CHAINS = 4  # 5ME2 has chains A-D; tiled_pair names them copy by copy


def write_case(n: int, folder: Path) -> tuple[Path, Path, int]:
    st, big = tiled_pair(reps=(n, n, n), box=(100 * n,) * 3)
    model = folder / f"tiled{n}.cif"
    mp = folder / f"tiled{n}.mrc"
    modelio.write_model(model, st, program="bench_scale", version="0")
    mapio.write_map(mp, big)
    return model, mp, st[0].count_atom_sites()


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and its descendants."""
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_refine(model: Path, mp: Path, out: Path, workers: int) -> dict:
    """One `rerefine refine` child: wall, peak RSS, its JSON report."""
    rerefine = Path(sys.executable).with_name("rerefine")
    js = out.with_suffix(".json")
    cmd = [str(rerefine), "refine", str(model), str(mp), "--resolution", "3.2", "-o", str(out),
           "--json", str(js), "--workers", str(workers), "--monlib", str(DATA / "monomers")]
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.5):
            peak[0] = max(peak[0], _tree_rss(proc.pid))

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    lines = []
    for line in proc.stderr:
        lines.append(line.rstrip())
        if "region" in line or "boxed" in line or "seam" in line:
            print(line.rstrip(), flush=True)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    rep = json.loads(js.read_text()) if js.exists() else {}
    return {"workers": workers, "wall_seconds": round(wall, 1), "exit": proc.returncode,
            # CPU of the child and its waited-for workers (wait4's rusage covers reaped descendants)
            "cpu_seconds_tree": round(ru.ru_utime + ru.ru_stime, 1),
            "peak_rss_mb_largest_process": round(ru.ru_maxrss / 1024, 1),
            "peak_rss_mb_tree_sampled": round(peak[0] / 2**20, 1),
            "load_before": [round(x, 2) for x in load0], "load_after": [round(x, 2) for x in os.getloadavg()],
            "report": rep, "stderr_tail": lines[-5:] if proc.returncode else []}


def copy_validation(out: Path, n: int) -> dict:
    """Validation summary of the first, middle and last copy of the refined model."""
    from rerefine.refine.validation import SUMMARY_KEYS, validate

    st = modelio.read_model(out)
    copies = n ** 3
    picks = sorted({0, copies // 2, copies - 1})
    res = {}
    for k in picks:
        sub = st.clone()
        keep = {ch.name for ch in list(st[0])[k * COPY_CHAINS:(k + 1) * COPY_CHAINS]}
        for ci in range(len(sub[0]) - 1, -1, -1):
            if sub[0][ci].name not in keep:
                del sub[0][ci]
        s = validate(sub, DATA / "monomers").summary
        res[f"copy{k}"] = {key: s[key] for key in SUMMARY_KEYS}
    return res


def _region_figures(history: list) -> dict:
    """Per-region wall and CPU seconds (median, max, sum) of a boxed refinement's history."""
    if not history:
        return {}
    wall = np.array([h["seconds"] for h in history])
    cpu = np.array([h.get("cpu_seconds", np.nan) for h in history])
    return {"region_core_atoms_max": int(max(h["core"] for h in history)),
            "region_fixed_atoms_max": int(max(h["atoms"] - h["core"] for h in history)),
            "region_wall_seconds": {"median": round(float(np.median(wall)), 1), "max": round(float(wall.max()), 1),
                                    "sum": round(float(wall.sum()), 1)},
            "region_cpu_seconds": {"median": round(float(np.median(cpu)), 1), "max": round(float(np.max(cpu)), 1),
                                   "sum": round(float(np.sum(cpu)), 1)}}


def summarise(n: int, atoms: int, run: dict) -> dict:
    rep = run["report"]
    b, a = rep.get("before", {}), rep.get("after", {})
    return {"n": n, "atoms": atoms, **{k: v for k, v in run.items() if k != "report"},
            "boxed": rep.get("boxed"), "regions": rep.get("regions"), "refine_seconds": rep.get("refine_seconds"),
            **_region_figures(rep.get("region_history") or []),
            "status": rep.get("status"),
            "cc_mask_before": b.get("cc_mask"), "cc_mask_after": a.get("cc_mask"),
            "validation_before": {k: b.get(k) for k in ("clashscore", "rama_favored_pct", "rama_outliers",
                                                        "rotamer_outliers", "cbeta_outliers", "bond_rmsd",
                                                        "angle_rmsd")},
            "validation_after": {k: a.get(k) for k in ("clashscore", "rama_favored_pct", "rama_outliers",
                                                       "rotamer_outliers", "cbeta_outliers", "bond_rmsd",
                                                       "angle_rmsd")},
            "seconds_per_1000_atoms": round(run["wall_seconds"] / atoms * 1000, 2),
            # throughput model: cores x wall per 100,000 atoms (on a loaded machine an upper bound)
            "core_hours_per_100k_atoms": round(run["wall_seconds"] * run["workers"] / atoms * 1e5 / 3600, 3),
            "warnings": (rep.get("warnings") or [])[:10]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--compare-workers", type=int, metavar="N", default=None,
                    help="also run case N with --workers 1 (and 2) and report the ratio")
    ap.add_argument("--copies", action="store_true", help="validate the first, middle and last copy")
    args = ap.parse_args(argv)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    cases = results.setdefault("cases", {})
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        tmp = Path(tmp)
        made: dict = {}  # n -> (model, map, atoms, run with args.workers)
        for n in args.n:
            model, mp, atoms = write_case(n, tmp)
            print(f"N={n}: {atoms} atoms, map {100 * n}^3", flush=True)
            run = run_refine(model, mp, tmp / f"refined{n}.cif", args.workers)
            made[n] = (model, mp, atoms, run)
            row = summarise(n, atoms, run)
            if args.copies and run["exit"] == 0:
                row["validation_copies"] = copy_validation(tmp / f"refined{n}.cif", n)
            cases[str(n)] = row
            print(json.dumps({k: row.get(k) for k in ("n", "atoms", "wall_seconds", "cpu_seconds_tree", "refine_seconds",
                                                      "regions", "region_cpu_seconds", "peak_rss_mb_tree_sampled",
                                                      "cc_mask_after", "seconds_per_1000_atoms", "load_before")}),
                  flush=True)
            RESULTS.write_text(json.dumps(results, indent=2))
        if args.compare_workers:
            n = args.compare_workers
            # the case-N run above is the 2-worker run when it used 2 workers (same invocation)
            model, mp, atoms, run2 = made.get(n) or (*write_case(n, tmp), None)
            runs = {2: run2 if run2 is not None and args.workers == 2 else run_refine(model, mp, tmp / "w2.cif", 2),
                    1: run_refine(model, mp, tmp / "w1.cif", 1)}
            results["workers"] = {"n": n, "atoms": atoms,
                                  **{f"workers_{w}": {k: v for k, v in r.items() if k != "report"}
                                     for w, r in runs.items()},
                                  "cc_mask_after": {w: r["report"].get("after", {}).get("cc_mask")
                                                    for w, r in runs.items()},
                                  "speedup": round(runs[1]["wall_seconds"] / runs[2]["wall_seconds"], 2),
                                  "goal": 1.6}
            print(json.dumps(results["workers"], indent=1, default=str), flush=True)
    done = sorted((int(k), v) for k, v in cases.items() if v.get("exit") == 0)
    if len(done) >= 2:
        lat = np.log([v["atoms"] for _, v in done])
        lwt = np.log([v["wall_seconds"] for _, v in done])
        results["exponent_wall_vs_atoms"] = round(float(np.polyfit(lat, lwt, 1)[0]), 3)
    if "1" in cases and cases["1"].get("cc_mask_after") is not None:
        ref = cases["1"]["cc_mask_after"]
        results["cc_mask_minus_n1"] = {k: (round(v["cc_mask_after"] - ref, 4) if v.get("cc_mask_after") is not None
                                           else None) for k, v in cases.items()}
    RESULTS.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "cases"}, indent=1))
    return results


if __name__ == "__main__":
    main()
