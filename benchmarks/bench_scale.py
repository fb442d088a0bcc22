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

With ``--entry``: the whole per-entry pipeline instead, `rerefine entry 5ME2 --mirror ARCHIVE`, on a
sample archive (:func:`rerefine.harvester.sample_archive.build`) whose 5ME2 model and EMD-3488 map
are replaced by case N (the entry's own records kept). Reported per stage: the wall seconds the
pipeline stores (``timings``) and the peak resident MiB of the entry's guarded stage worker
(``stage_peak_mb``, :func:`rerefine.flows.guard.stage_peaks`; the refinement's region processes
are not in it), and for the whole run the largest sum of resident memory over the process tree
(sampled every 0.5 s) and the main process's own peak (load and box run there). The entry's
memory budget is ``RR_ENTRY_MEMORY_MB`` (``--entry-memory-mb``; the settings' default otherwise).
The case has no half-maps, so the cross-validation stage does not run.

With ``--stages``: each per-entry stage but the refinement (sharpen, placement, metrics, CCmask
with input B, validation, difference map) once on case N's box, in one guarded stage worker
(:func:`rerefine.flows.guard.entry_guard`), the deposited model standing in for the refined one:
per stage its wall seconds and the worker's peak resident MiB (its start-up size given apart),
in minutes rather than the entry's hour.

    python benchmarks/bench_scale.py --n 1 2               # correctness at small N
    python benchmarks/bench_scale.py --n 1 2 3 --copies --compare-workers 3   # issue 17's figures
    python benchmarks/bench_scale.py --n 1 2 3 4           # the full set (N=4: ~290,000 atoms)
    python benchmarks/bench_scale.py --entry --n 2 3        # per-stage table of `rerefine entry`
    python benchmarks/bench_scale.py --stages --n 2 3       # the stages but refinement, one worker

N=1 and 2 before N=3 in one command also fill the numba cache (set ``NUMBA_CACHE_DIR``), so the
N=3 workers start warm: a cold cache recompiles the kernels in every worker process.

Results: benchmarks/results/scale.json (merged by N with earlier runs of this benchmark); with
``--entry`` benchmarks/results/scale_entry.json, with ``--stages`` benchmarks/results/scale_stages.json.
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
RESULTS_ENTRY = ROOT / "benchmarks" / "results" / "scale_entry.json"
RESULTS_STAGES = ROOT / "benchmarks" / "results" / "scale_stages.json"
COPY_CHAINS = 4  # 5ME2 has chains A-D; tiled_pair names them copy by copy


def write_case(n: int, folder: Path) -> tuple[Path, Path, int]:
    st, big = tiled_pair(reps=(n, n, n), box=(100 * n,) * 3)
    model = folder / f"tiled{n}.cif"
    mp = folder / f"tiled{n}.mrc"
    modelio.write_model(model, st, program="bench_scale", version="0")
    mapio.write_map(mp, big)
    return model, mp, st[0].count_atom_sites()


def write_archive_case(n: int, folder: Path) -> tuple[Path, int]:
    """A sample archive under ``folder`` whose 5ME2 entry holds case ``n`` (model records and the
    EMDB header kept; the header's grid and size updated). Returns (archive root, atoms)."""
    import gzip

    import gemmi

    from rerefine.harvester import sample_archive

    root = folder / "archive"
    recs = sample_archive.build(root, DATA)
    rec = next(r for r in recs if r.get("emdb_id") == "EMD-3488")
    st, big = tiled_pair(reps=(n, n, n), box=(100 * n,) * 3)
    doc = gemmi.cif.read(str(root / rec["model"]))
    st.update_mmcif_block(doc.sole_block())
    (root / rec["model"]).write_bytes(gzip.compress(doc.as_string().encode(), compresslevel=1))
    raw = mapio.write_map(folder / "tiled.mrc", big)
    with open(raw, "rb") as src, gzip.open(root / rec["map"], "wb", compresslevel=1) as dst:
        while chunk := src.read(1 << 24):
            dst.write(chunk)
    header = json.loads((root / rec["header"]).read_text())
    header["map"]["dimensions"] = {"col": big.shape[2], "row": big.shape[1], "sec": big.shape[0]}
    header["map"]["spacing"] = {"x": big.shape[2], "y": big.shape[1], "z": big.shape[0]}
    header["map"]["size_kbytes"] = int(round(raw.stat().st_size / 1000))
    (root / rec["header"]).write_text(json.dumps(header, indent=2))
    raw.unlink()
    return root, st[0].count_atom_sites()


def _proc_rss(pid: int) -> int:
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return 0


def run_entry(archive: Path, data_dir: Path, memory_mb: float | None) -> dict:
    """One `rerefine entry 5ME2` child on ``archive``: wall, per-stage seconds and peak memory."""
    rerefine = Path(sys.executable).with_name("rerefine")
    js = data_dir / "entry.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RR_"))}
    env.update(RR_DATA_DIR=str(data_dir), RR_TEST_DATA=str(DATA), RR_MONOMER_LIB=str(DATA / "monomers"))
    if memory_mb is not None:
        env["RR_ENTRY_MEMORY_MB"] = str(memory_mb)
    cmd = [str(rerefine), "entry", "5ME2", "--mirror", str(archive), "--force", "--json", str(js)]
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    peak = {"tree": 0, "main": 0}
    series = []
    stop = threading.Event()

    def sample():
        while not stop.wait(0.5):
            tree, main = _tree_rss(proc.pid), _proc_rss(proc.pid)
            peak["tree"] = max(peak["tree"], tree)
            peak["main"] = max(peak["main"], main)
            series.append((round(time.perf_counter() - t0, 1), round(tree / 2**20)))

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    lines = [line.rstrip() for line in proc.stderr]
    proc.wait()
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    rep = json.loads(js.read_text()) if js.exists() else {}
    return {"wall_seconds": round(wall, 1), "exit": proc.returncode, "status": rep.get("status"),
            "reason": rep.get("reason"), "entry_memory_mb": memory_mb,
            "peak_rss_mb_tree_sampled": round(peak["tree"] / 2**20, 1),
            "peak_rss_mb_main_sampled": round(peak["main"] / 2**20, 1),
            "stage_seconds": rep.get("timings"), "stage_peak_mb": rep.get("stage_peak_mb"),
            "cc_mask_before": rep.get("cc_mask_before"), "cc_mask_after": rep.get("cc_mask_after"),
            "cc_mask_input_b_after": rep.get("cc_mask_input_b_after"), "verdict": rep.get("verdict"),
            "overlapped_write_seconds": rep.get("overlapped_write_seconds"),
            "load_before": [round(x, 2) for x in load0], "load_after": [round(x, 2) for x in os.getloadavg()],
            "tree_rss_mb_series": series[::4], "stderr_tail": lines[-8:] if proc.returncode else []}


def main_entry(args) -> dict:
    RESULTS_ENTRY.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS_ENTRY.read_text()) if RESULTS_ENTRY.exists() else {}
    cases = results.setdefault("cases", {})
    for n in args.n:
        with tempfile.TemporaryDirectory(prefix="bench_scale_entry_") as tmp:
            archive, atoms = write_archive_case(n, Path(tmp))
            print(f"N={n}: {atoms} atoms, map {100 * n}^3: rerefine entry", flush=True)
            row = {"n": n, "atoms": atoms, "box_voxels_approx": (100 * n) ** 3,
                   **run_entry(archive, Path(tmp) / "data", args.entry_memory_mb)}
        cases[str(n)] = row
        RESULTS_ENTRY.write_text(json.dumps(results, indent=2))
        print(json.dumps({k: v for k, v in row.items() if k != "tree_rss_mb_series"}), flush=True)
    return results


def run_stages(n: int) -> dict:
    """Every stage but the refinement on case ``n``'s box in one guarded worker: seconds and
    peak resident MiB per stage."""
    from rerefine.flows import guard, pipeline
    from rerefine.flows.pipeline import EntryJob, PipelineParams

    st, big = tiled_pair(reps=(n, n, n), box=(100 * n,) * 3)
    params = PipelineParams()
    box = pipeline.stage_box(st, big, params.box_padding)
    del big
    job = EntryJob(f"tiled{n}", "", Path("model.cif"), Path("map.mrc"), [], resolution=3.2)
    monlib, top8000 = DATA / "monomers", DATA / "validation" / "top8000"
    seconds: dict = {}
    with guard.entry_guard(job.pdb_id, guard.EntryLimits(seconds=1e9)) as w:
        w.call(np.add, 0, 0)  # start the worker: its start-up size is the reference
        start = _proc_rss(w.proc.pid) / 2**20
        with pipeline.timed(seconds, "sharpen"):
            sharp = guard.run(pipeline.stage_sharpen_entry, job, box, 3.2)
        with pipeline.timed(seconds, "placement"):
            guard.run(pipeline.stage_placement, st, sharp.map, 3.2)
        with pipeline.timed(seconds, "metrics"):
            guard.run(pipeline.stage_metrics, st, box, 3.2, job, params, None)
        with pipeline.timed(seconds, "input_b_fit"):
            guard.run(pipeline.stage_input_b_fit, st, st, box, 3.2)
        with pipeline.timed(seconds, "validation"):
            guard.run(pipeline.stage_validation, st, monlib, top8000)
        with pipeline.timed(seconds, "diffmap"):
            guard.run(pipeline.stage_diffmap, st, box, 3.2)
        peaks = guard.stage_peaks()
    return {"n": n, "atoms": st[0].count_atom_sites(), "box_voxels": int(np.prod(box.shape)),
            "worker_start_mb": round(start, 1), "stage_seconds": seconds, "stage_peak_mb": peaks,
            "stage_growth_mb_per_mvoxel": {k: round((v - start) / (np.prod(box.shape) / 1e6), 1)
                                           for k, v in peaks.items()},
            "load": [round(x, 2) for x in os.getloadavg()]}


def main_stages(args) -> dict:
    RESULTS_STAGES.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS_STAGES.read_text()) if RESULTS_STAGES.exists() else {}
    cases = results.setdefault("cases", {})
    for n in args.n:
        row = run_stages(n)
        cases[str(n)] = row
        RESULTS_STAGES.write_text(json.dumps(results, indent=2))
        print(json.dumps(row), flush=True)
    return results


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
    ap.add_argument("--entry", action="store_true", help="run `rerefine entry` (the whole pipeline) instead")
    ap.add_argument("--entry-memory-mb", type=float, default=None,
                    help="RR_ENTRY_MEMORY_MB for --entry (default: the settings' default)")
    ap.add_argument("--stages", action="store_true", help="each stage but refinement on case N, one worker")
    args = ap.parse_args(argv)
    if args.stages:
        return main_stages(args)
    if args.entry:
        return main_entry(args)
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
