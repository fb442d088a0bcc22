"""Benchmark of the model-to-map metrics (issue 4): agreement, speed, memory, sensitivity.

Run: ``/work/main/.venv/bin/python benchmarks/bench_metrics.py`` -> ``benchmarks/results/metrics.json``.

* agreement: CC_mask/box/volume/peaks and per-residue CC vs cctbx (reference JSON);
* speed: all metrics for 5ME2 in EMD-3488 Fourier-padded to half its voxel (200^3,
  0.525 Å), median of 5 runs after a warm-up (numba compiled/cached), with a per-stage
  split; if a cctbx interpreter is available (env ``RR_CCTBX_PYTHON``, default
  ``/tmp/cctbxenv/bin/python``) cctbx's map_model_cc is timed on the same file and the
  ratio reported;
* memory: peak RSS growth during compute_metrics (sampled every 2 ms) vs the boxed map;
* sensitivity: which of CC, Q, atom inclusion notice PHE->SER, water on Mg, missing side
  chains, wrong B, 1 Å shift (EMD-20026 / 3AJO model at 1.75 Å);
* Afonine's table: Q (overall / worst residue) and CC_mask of the 3AJO protein against
  its own Fourier map at 1, 2, 3 Å.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import gemmi
import numpy as np
import psutil
import scipy.fft

from rerefine.refine import mapcc, mapio, mask, metrics, modelio, modelmap

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from boxes import box_around  # noqa: E402
from realdata import DATA, PAIRS, REPO  # noqa: E402

MM = DATA / "maps_models"
CCTBX_PY = os.environ.get("RR_CCTBX_PYTHON", "/tmp/cctbxenv/bin/python")


def agreement(ref):
    out = {}
    for name, (m, p, res) in PAIRS.items():
        st, dmap = modelio.read_model(MM / m), mapio.read_map(MM / p)
        calc = modelmap.model_map(st, dmap, res)
        five = mapcc.five_cc(dmap.data, calc.data, mask.molecular_mask(st, dmap))
        row = {k: {"ours": five[k], "cctbx": ref[name][k], "diff": five[k] - ref[name][k]}
               for k in ("cc_mask", "cc_box", "cc_volume", "cc_peaks")}
        full = metrics.compute_metrics(st, dmap, res)
        refres = {}
        for r in ref[name]["per_residue"]:
            refres.setdefault((r["chain"], r["resseq"], r["icode"].strip()), r["cc"])
        d = np.array([x["cc"] - refres[(x["chain"], x["seq"], x["icode"])] for x in full["per_residue"]
                      if (x["chain"], x["seq"], x["icode"]) in refres])
        row["per_residue_cc"] = {"n": int(d.size), "mean_abs_diff": float(np.abs(d).mean()),
                                 "max_abs_diff": float(np.abs(d).max())}
        row["metrics_cc_box_after_boxing"] = full["cc_box"]
        out[name] = row
    return out


def padded_3488() -> mapio.DensityMap:
    """EMD-3488 Fourier-padded to half its voxel size (100^3 at 1.05 Å -> 200^3 at 0.525 Å)."""
    dmap = mapio.read_map(MM / PAIRS["emd_3488_5me2"][1])
    n = np.array(dmap.shape)
    f = scipy.fft.fftn(dmap.data.astype(np.float64))
    f = np.fft.fftshift(f)
    big = np.zeros(tuple(2 * n), complex)
    lo = n // 2
    big[lo[0]:lo[0] + n[0], lo[1]:lo[1] + n[1], lo[2]:lo[2] + n[2]] = f
    data = scipy.fft.ifftn(np.fft.ifftshift(big)).real * 8.0
    return replace(dmap, data=np.ascontiguousarray(data, np.float32),
                   sampling=tuple(int(2 * s) for s in dmap.sampling),
                   start=tuple(int(2 * s) for s in dmap.start), name="emd_3488 padded x2")


class PeakRSS:
    def __init__(self):
        self.proc = psutil.Process()
        self.peak = 0
        self._run = False

    def __enter__(self):
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._run = True
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()
        return self

    def _loop(self):
        while self._run:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._run = False
        self.t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def stage_times(st, dmap, res):
    xyz = modelio.atom_positions(st)
    from rerefine.refine import inclusion, qscore
    t = {}
    t0 = time.perf_counter()
    box = metrics.box_for_cc(dmap, xyz, res)
    t["box"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    calc = modelmap.model_map(st, box, res)
    t["model_map"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    msk = mask.molecular_mask(st, box)
    t["mask"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mapcc.five_cc(box.data, calc.data, msk)
    t["five_cc"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    metrics.cc_metrics(st, box, res)  # includes the above once more; subtract below
    t["per_residue_chain_cc"] = max(0.0, time.perf_counter() - t0 - t["model_map"] - t["mask"] - t["five_cc"])
    heavy = modelio.atom_positions(st, hydrogens=False)
    t0 = time.perf_counter()
    qscore.atom_q_scores(dmap, heavy)
    t["q_score"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    inclusion.atoms_above(dmap, heavy, inclusion.default_contour(dmap, heavy))
    t["inclusion"] = time.perf_counter() - t0
    return t, box.shape


CCTBX_SCRIPT = r"""
import sys, time, iotbx.pdb, iotbx.mrcfile, mmtbx.maps.map_model_cc as mmcc
m = iotbx.mrcfile.map_reader(file_name=sys.argv[2]); md = m.map_data(); cs = m.crystal_symmetry()
h = iotbx.pdb.input(sys.argv[1]).construct_hierarchy()
runs = []
for i in range(3):
    p = mmcc.master_params().extract().map_model_cc
    p.resolution = float(sys.argv[3]); p.compute.fsc = False
    t = time.perf_counter()
    o = mmcc.map_model_cc(map_data=md.deep_copy(), pdb_hierarchy=h, crystal_symmetry=cs, params=p); o.validate(); o.run()
    runs.append(time.perf_counter() - t)
r = o.get_results()
print(sorted(runs)[1], r.cc_mask, r.cc_box, r.cc_volume, r.cc_peaks)
"""


def cctbx_time(model_path, map_path, res):
    if not Path(CCTBX_PY).exists():
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as fh:
        fh.write(CCTBX_SCRIPT)
    try:
        p = subprocess.run([CCTBX_PY, fh.name, str(model_path), str(map_path), str(res)],
                           capture_output=True, text=True, timeout=900)
        if p.returncode != 0:
            return {"error": p.stderr.strip().splitlines()[-1] if p.stderr else "failed"}
        vals = [float(x) for x in p.stdout.split()]
        return {"seconds_median_of_3": vals[0], "cc_mask": vals[1], "cc_box": vals[2],
                "cc_volume": vals[3], "cc_peaks": vals[4]}
    finally:
        os.unlink(fh.name)


def speed():
    st = modelio.read_model(MM / PAIRS["emd_3488_5me2"][0])
    big = padded_3488()
    res = 3.2
    metrics.compute_metrics(st, big, res)  # warm-up: numba compile / cache load
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        out = metrics.compute_metrics(st, big, res)
        runs.append(time.perf_counter() - t0)
    stages, box_shape = stage_times(st, big, res)
    with PeakRSS() as mem:
        metrics.compute_metrics(st, big, res)
    box_bytes = int(np.prod(box_shape)) * 4
    small = mapio.read_map(MM / PAIRS["emd_3488_5me2"][1])
    small_runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        metrics.compute_metrics(st, small, res)
        small_runs.append(time.perf_counter() - t0)
    result = {
        "input": {"map": big.name, "grid": list(big.shape), "voxel": float(big.voxel_size[0]),
                  "cc_box_shape": list(box_shape), "atoms": int(st[0].count_atom_sites())},
        "all_metrics_seconds_runs": runs, "all_metrics_seconds_median": statistics.median(runs),
        "stages_seconds": stages,
        "all_metrics_100cubed_median": statistics.median(small_runs),
        "memory": {"peak_rss_growth_mb": (mem.peak - mem.base) / 1e6, "boxed_map_mb": box_bytes / 1e6,
                   "full_map_mb": big.data.nbytes / 1e6,
                   "ratio_to_boxed_map": (mem.peak - mem.base) / box_bytes},
        "cc": {k: out[k] for k in ("cc_mask", "cc_box", "cc_volume", "cc_peaks", "q_score")},
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.mrc"
        mapio.write_map(path, big)
        ct = cctbx_time(MM / PAIRS["emd_3488_5me2"][0], path, res)
        ct_small = cctbx_time(MM / PAIRS["emd_3488_5me2"][0], MM / PAIRS["emd_3488_5me2"][1], res)
    result["cctbx_map_model_cc_200cubed"] = ct
    result["cctbx_map_model_cc_100cubed"] = ct_small
    if ct and "seconds_median_of_3" in ct:
        result["ratio_ours_all_metrics_vs_cctbx_cc_only_200cubed"] = (
            result["all_metrics_seconds_median"] / ct["seconds_median_of_3"])
    if ct_small and "seconds_median_of_3" in ct_small:
        result["ratio_ours_all_metrics_vs_cctbx_cc_only_100cubed"] = (
            result["all_metrics_100cubed_median"] / ct_small["seconds_median_of_3"])
    return result


def sensitivity():
    sys.path.insert(0, str(REPO / "tests"))
    import test_sensitivity as ts  # the same model edits the tests check

    m, p, res = PAIRS["emd_20026_box_3ajo_refined"]
    st, dmap = modelio.read_model(MM / m), mapio.read_map(MM / p)
    base = metrics.compute_metrics(st, dmap, res)
    table = {}
    for name, fn in (("PHE->SER (all 6 PHE)", ts.phe_to_ser), ("water O on Mg 183", ts.water_on_mg),
                     ("side chains deleted (every 5th residue)", ts.missing_side_chains),
                     ("all B = 80 Å²", ts.wrong_b), ("whole model shifted 1 Å", ts.shifted)):
        mut, idx = fn(st)
        out = metrics.compute_metrics(mut, dmap, res)
        loc = {}
        for key in ("cc", "q_score", "atom_inclusion"):
            b = float(np.nanmean([base["per_residue"][i][key] for i in idx]))
            a = float(np.nanmean([out["per_residue"][i][key] for i in idx]))
            loc[key] = {"before": b, "after": a, "delta": a - b}
        glob = {k: {"before": base[k], "after": out[k], "delta": out[k] - base[k]}
                for k in ("cc_mask", "q_score", "atom_inclusion")}
        table[name] = {"n_residues_changed": len(idx), "changed_residues": loc, "whole_model": glob}
    return table


def afonine_table():
    st = modelio.read_model(MM / PAIRS["emd_20026_box_3ajo_refined"][0])
    st.remove_ligands_and_waters()
    st.remove_empty_chains()
    xyz = modelio.atom_positions(st)
    rows = {}
    for d in (1.0, 2.0, 3.0):
        grid = box_around(xyz, d / 3.0, name=f"own {d}")
        own = modelmap.model_map(st, grid, d, padding=20.0)
        out = metrics.compute_metrics(st, own, d)
        qres = [r["q_score"] for r in out["per_residue"]]
        rows[f"{d:g} A"] = {"q_overall": out["q_score"], "q_worst_residue": float(np.nanmin(qres)),
                            "cc_mask": out["cc_mask"]}
    rows["afonine_reported_overall_worst"] = {"1 A": [0.97, 0.90], "2 A": [0.93, 0.83], "3 A": [0.84, 0.76]}
    return rows


def main():
    ref = json.loads((DATA / "reference" / "cctbx_reference.json").read_text())
    results = {"agreement_vs_cctbx": agreement(ref), "speed_memory": speed(),
               "sensitivity": sensitivity(), "own_map_table": afonine_table(),
               "machine": {"cpus": os.cpu_count()}}
    outdir = REPO / "benchmarks" / "results"
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "metrics.json").write_text(json.dumps(results, indent=2, default=float) + "\n")
    print(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
