"""Benchmark of automatic sharpening (rerefine.refine.sharpen) on the real maps in ../shared/data.

Writes benchmarks/results/sharpen.json with
* per map and method: resolution, B_iso before/after (Å²), target 5.9 d², CCmask (phenix.map_model_cc
  definition, rerefine.refine.mapcc) against the deposited model before/after;
* blur test: B_iso of a copy blurred by B = +150 Å² in Fourier space, and B_iso after sharpening it;
* speed: median of 3 runs sharpening a 256³ map (EMD-3488 tiled periodically, 1.05 Å voxels, 3.2 Å),
  and the ratio to one rfftn + irfftn round trip of the same map measured in the same run;
* memory: peak of numpy/scipy allocations during that run (tracemalloc), as a multiple of the map size.

Run: /work/main/.venv/bin/python benchmarks/bench_sharpen.py
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from rerefine.refine import fsc, mapcc, mapio, mask, modelio, modelmap, sharpen

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("RR_TEST_DATA", REPO.parent / "shared" / "data")) / "maps_models"
PAIRS = {
    "EMD-3488": ("emd_3488_5me2/emd_3488.mrc", "emd_3488_5me2/5me2.pdb", 3.2),
    "EMD-30342 zone": ("emd_30342_zone_7cec_chainA/390_emd_30342_A_z4.mrc",
                       "emd_30342_zone_7cec_chainA/390_7cec_A.cif", 3.9),
    "EMD-20026 box": ("emd_20026_box_3ajo_refined/emd20026_prot.mrc",
                      "emd_20026_box_3ajo_refined/3ajo_fitted_refined.pdb", 1.75),
}
METHODS = ["target_b", "adjusted_sa", "model"]


def quality_table() -> list[dict]:
    rows = []
    for name, (mp, mo, res) in PAIRS.items():
        dmap = mapio.read_map(DATA / mp)
        st = modelio.read_model(DATA / mo)
        calc = modelmap.model_map(st, dmap, res).data
        msk = mask.molecular_mask(st, dmap)
        cc0 = mapcc.five_cc(dmap.data, calc, msk)["cc_mask"]
        blurred = sharpen.blur(dmap, 150.0)
        for method in METHODS:
            kw = {"model": st} if method == "model" else {"target": method}
            r = sharpen.auto_sharpen(dmap, res, **kw)
            rb = sharpen.auto_sharpen(blurred, res, **kw)
            rows.append({
                "map": name, "method": method, "resolution": res,
                "b_iso_before": round(r.b_iso_before, 1), "b_iso_after": round(r.b_iso_after, 1),
                "target_b_iso": round(sharpen.target_b_iso(res), 1),
                "cc_mask_before": round(cc0, 4),
                "cc_mask_after": round(mapcc.five_cc(r.map.data, calc, msk)["cc_mask"], 4),
                "blurred_b_iso": round(rb.b_iso_before, 1),
                "blur_seen": round(rb.b_iso_before - r.b_iso_before, 1),
                "blurred_b_iso_after": round(rb.b_iso_after, 1),
                "blurred_minus_original_after": round(rb.b_iso_after - r.b_iso_after, 1),
                "mean_model_b": round(float(np.mean([c.atom.b_iso for c in st[0].all()])), 1),
                "seconds": round(r.seconds, 3),
            })
            print({k: rows[-1][k] for k in ("map", "method", "b_iso_before", "b_iso_after", "cc_mask_before",
                                            "cc_mask_after", "blur_seen", "blurred_minus_original_after")})
    return rows


def big_map() -> mapio.DensityMap:
    dmap = mapio.read_map(DATA / PAIRS["EMD-3488"][0])
    data = np.tile(dmap.data, (3, 3, 3))[:256, :256, :256]
    import gemmi
    v = float(dmap.voxel_size[0])
    return mapio.DensityMap(np.ascontiguousarray(data), gemmi.UnitCell(256 * v, 256 * v, 256 * v, 90, 90, 90),
                            (256, 256, 256), name="EMD-3488 tiled 256^3")


def speed(n_runs: int = 3) -> dict:
    m = big_map()
    sharpen.auto_sharpen(mapio.DensityMap(m.data[:64, :64, :64].copy(), m.cell, m.sampling), 3.2)  # warm-up
    times, fft_times = [], []
    for _ in range(n_runs):
        t = time.perf_counter()
        c = fsc.rfft_map(m.data)
        fsc.irfft_map(c, m.shape)
        fft_times.append(time.perf_counter() - t)
        del c
        t = time.perf_counter()
        sharpen.auto_sharpen(m, 3.2)
        times.append(time.perf_counter() - t)
    med, fmed = statistics.median(times), statistics.median(fft_times)
    return {"map": m.name, "workers": fsc.fft_workers(), "seconds_median": round(med, 3),
            "seconds_all": [round(x, 3) for x in times], "fft_roundtrip_median": round(fmed, 3),
            "ratio_to_fft_roundtrip": round(med / fmed, 2), "goal_seconds": 10.0}


def memory() -> dict:
    """Peak of memory allocated through Python/numpy during one run (tracemalloc), over the map size."""
    import tracemalloc
    m = big_map()
    sharpen.auto_sharpen(mapio.DensityMap(m.data[:64, :64, :64].copy(), m.cell, m.sampling), 3.2)
    tracemalloc.start()
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    sharpen.auto_sharpen(m, 3.2)
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return {"map_bytes": m.data.nbytes, "peak_bytes": peak, "peak_over_map": round(peak / m.data.nbytes, 2),
            "goal_over_map": 4.0,
            "note": "tracemalloc sees numpy and scipy.fft output arrays, not pocketfft scratch or numba NRT arrays"}


def main() -> None:
    result = {"quality": quality_table(), "speed_256": speed(), "memory_256": memory()}
    print(json.dumps({k: result[k] for k in ("speed_256", "memory_256")}, indent=1))
    out = REPO / "benchmarks" / "results" / "sharpen.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
