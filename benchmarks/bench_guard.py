"""Benchmark for the per-entry limits' cost model (issue 17, guards): peak memory and seconds of
one entry's stages against atoms and box voxels.

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_guard.py [--tiles 1 2]`` ->
``benchmarks/results/guard.json``.

Each case runs the nightly's per-entry stages (load, box, sharpen, placement, refinement with B
refinement on and ``--cycles`` coordinate macro-cycles (default 1; the nightly's 5 repeat the same
arrays, so they change the seconds, not the peak memory), douse, metrics before and after, CCmask with input B, validation
before and after, difference map) with :func:`rerefine.flows.guard.run` in one
:class:`rerefine.flows.guard.StageWorker` without limits, and reads the worker's peak resident
memory (``VmHWM``) above its start-up size. Cases: the three real pairs of the test data, and
5ME2 in EMD-3488 tiled N×N×N (one model copy per tile, chains renamed; N from ``--tiles``).
The fit ``peak - start = c + a·box_voxels + b·atoms`` (least squares) gives the fixed bytes
and the bytes per voxel and per atom; the worker's CPU seconds (user + system, all threads:
on a shared machine wall seconds measure the load) are fitted the same way. The coefficients in
:mod:`rerefine.flows.guard` are these, rounded up.
"""

from __future__ import annotations

import argparse
import json
import os
import math
import sys
import tempfile
import time
from pathlib import Path

import gemmi
import numpy as np

from rerefine.flows import guard, pipeline
from rerefine.flows.pipeline import EntryJob, PipelineParams
from rerefine.refine import mapio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from realdata import DATA, MONLIB, PAIRS, REPO  # noqa: E402

MM = DATA / "maps_models"
TOP8000 = DATA / "validation" / "top8000"


def tiled_case(n: int, out: Path) -> tuple[Path, Path]:
    """5ME2 and EMD-3488 tiled n×n×n (the map's cell edge apart), written under ``out``."""
    m, p, _res = PAIRS["emd_3488_5me2"]
    dmap = mapio.read_map(MM / p)
    st = gemmi.read_structure(str(MM / m))
    st.setup_entities()
    edge = dmap.extent
    big = gemmi.Structure()
    big.cell = gemmi.UnitCell(*(edge * n), 90, 90, 90)
    big.resolution = st.resolution
    model = gemmi.Model(1)
    names = iter(f"{a}{b}" for a in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" for b in "abcdefghijklmnopqrstuvwxyz0123456789")
    for i in range(n):
        for j in range(n):
            for k in range(n):
                shift = gemmi.Position(*(edge * np.array([i, j, k])))
                for ch in st[0]:
                    c = ch.clone()
                    c.name = next(names) if n > 1 else ch.name
                    for res in c:
                        for a in res:
                            a.pos = a.pos + shift
                    model.add_chain(c)
    big.add_model(model)
    big.setup_entities()
    tiled = mapio.DensityMap(np.ascontiguousarray(np.tile(dmap.data, (n, n, n))),
                             gemmi.UnitCell(*(edge * n), 90, 90, 90), tuple(s * n for s in dmap.shape))
    mp = mapio.write_map(out / f"tile{n}.mrc", tiled)
    mod = out / f"tile{n}.cif"
    doc = big.make_mmcif_document()
    doc.write_file(str(mod))
    return mod, mp


def peak_rss(worker: guard.StageWorker) -> int:
    """The worker's peak resident memory so far, bytes (``VmHWM``)."""
    for line in Path(f"/proc/{worker.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def rss(worker: guard.StageWorker) -> int:
    for line in Path(f"/proc/{worker.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(worker: guard.StageWorker) -> float:
    """User + system CPU seconds of the worker so far (all its threads; ``/proc/PID/stat``)."""
    fields = Path(f"/proc/{worker.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_case(name: str, model: Path, mp: Path, res: float, cycles: int) -> dict:
    params = PipelineParams(macro_cycles=cycles)
    job = EntryJob(name, "", model, mp, [], resolution=res)
    est = guard.precheck(name, model, mp, guard.EntryLimits(), params.box_padding)
    timings: dict = {}
    t0 = time.perf_counter()
    with guard.entry_guard(name, guard.EntryLimits(seconds=1e9)) as w:
        w.call(np.add, 0, 0)  # start the worker: its start-up size is the reference
        start = rss(w)
        cpu0 = cpu_seconds(w)
        with pipeline.timed(timings, "load"):
            st, dmap, res = pipeline.stage_load(job)
        with pipeline.timed(timings, "box"):
            box = pipeline.stage_box(st, dmap, params.box_padding)
        del dmap
        with pipeline.timed(timings, "sharpen"):
            sharp = guard.run(pipeline.stage_sharpen_entry, job, box, res)
        with pipeline.timed(timings, "placement"):
            guard.run(pipeline.stage_placement, st, sharp.map, res)
        with pipeline.timed(timings, "refine"):
            ref = guard.run(pipeline.stage_refine, st, sharp.map, box, res, MONLIB, params, TOP8000)
        with pipeline.timed(timings, "douse"):
            refined, _w, _g = guard.run(pipeline.stage_douse, ref.structure, sharp.map, box, res, MONLIB, params)
        with pipeline.timed(timings, "metrics"):
            guard.run(pipeline.stage_metrics, st, box, res, job, params, None)
            guard.run(pipeline.stage_metrics, refined, box, res, job, params, None)
            guard.run(pipeline.stage_input_b_fit, ref.structure, st, box, res)
        with pipeline.timed(timings, "validation"):
            guard.run(pipeline.stage_validation, st, MONLIB, TOP8000)
            guard.run(pipeline.stage_validation, refined, MONLIB, TOP8000)
        with pipeline.timed(timings, "diffmap"):
            guard.run(pipeline.stage_diffmap, refined, box, res)
        peak = peak_rss(w)
        cpu = cpu_seconds(w) - cpu0
    seconds = time.perf_counter() - t0
    e = est.as_dict()
    row = {"case": name, "n_atoms": est.n_atoms, "map_voxels": est.map_voxels, "box_voxels": est.box_voxels,
           "estimated_mb": e["memory_mb"], "estimated_seconds": e["seconds"],
           "box_voxels_actual": int(math.prod(box.shape)),
           "worker_start_mb": round(start / 2**20, 1), "worker_peak_mb": round(peak / 2**20, 1),
           "growth_mb": round((peak - start) / 2**20, 1), "seconds": round(seconds, 1),
           "worker_cpu_seconds": round(cpu, 1), "timings": timings}
    print(json.dumps(row), flush=True)
    return row


def fit(rows: list[dict], key: str) -> dict:
    """Least squares ``y = fixed + per_box_voxel·box_voxels + per_atom·atoms`` (exact with three cases)."""
    a = np.array([[1.0, r["box_voxels"], r["n_atoms"]] for r in rows], float)
    y = np.array([r[key] for r in rows], float)
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    pred = a @ coef
    return {"fixed": float(coef[0]), "per_box_voxel": float(coef[1]), "per_atom": float(coef[2]),
            "max_ratio_measured_to_fit": float(np.max(y / pred))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiles", type=int, nargs="*", default=[2])
    ap.add_argument("--cycles", type=int, default=1, help="refinement macro-cycles (nightly: 5); B refinement on")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "guard.json"))
    args = ap.parse_args()
    rows = []

    def save() -> dict:  # after every case: a long run interrupted keeps what it measured
        for r in rows:
            r["growth_bytes"] = r["growth_mb"] * 2**20
        model = {"fixed_bytes": guard.FIXED_BYTES, "bytes_per_box_voxel": guard.BYTES_PER_BOX_VOXEL,
                 "bytes_per_atom": guard.BYTES_PER_ATOM, "fixed_seconds": guard.FIXED_SECONDS,
                 "seconds_per_atom": guard.SECONDS_PER_ATOM, "seconds_per_box_voxel": guard.SECONDS_PER_BOX_VOXEL}
        out = {"cases": rows, "cycles": args.cycles, "model_in_use": model}
        if len(rows) >= 2:
            out.update({"memory_fit_bytes": fit(rows, "growth_bytes"), "time_fit_seconds": fit(rows, "seconds"),
                        "cpu_fit_seconds": fit(rows, "worker_cpu_seconds")})
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
        return out

    for name, (m, p, res) in PAIRS.items():
        rows.append(run_case(name, MM / m, MM / p, res, args.cycles))
        save()
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.tiles:
            mod, mp = tiled_case(n, Path(tmp))
            rows.append(run_case(f"5me2_tiled_{n}", mod, mp, PAIRS["emd_3488_5me2"][2], args.cycles))
            save()
    out = save()
    print(json.dumps({k: out.get(k) for k in ("memory_fit_bytes", "time_fit_seconds", "cpu_fit_seconds")}, indent=1))


if __name__ == "__main__":
    main()
