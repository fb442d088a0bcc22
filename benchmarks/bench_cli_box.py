"""Benchmark: the model-against-map commands box around the model before computing (issue 17, item 2).

Run: ``.venv/bin/python benchmarks/bench_cli_box.py [--repeats 3]`` -> ``benchmarks/results/cli_box.json``.

EMD-3488 (100³, 1.05 Å) is padded with zeros to 240³ in the same frame (its real voxels in the
middle) and written uncompressed; 5ME2 (4,468 atoms) is measured against it the way
``rerefine metrics`` and ``rerefine diffmap`` did before (the whole map read and passed to the
computation) and do now (:func:`rerefine.flows.commands.metrics.read_map_around`: only the
nightly's box read, memory-mapped). Wall seconds are medians over ``--repeats`` runs after one
warm-up run (numba compiled/cached), read included; the figures of the boxed commands are
compared with the nightly pipeline's (``stage_box`` + ``stage_metrics``, ``stage_diffmap``) on
the same file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from rerefine.flows import pipeline
from rerefine.flows.commands.metrics import read_map_around
from rerefine.flows.pipeline import EntryJob, PipelineParams
from rerefine.refine import diffmap, mapio, metrics, modelio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from realdata import DATA, PAIRS, REPO  # noqa: E402

MM = DATA / "maps_models"
FIT_KEYS = ("cc_mask", "cc_box", "cc_peaks", "cc_volume", "q_score", "atom_inclusion", "contour")


def padded(src: Path, n: int, out: Path) -> Path:
    """``src`` padded with zeros to n³ voxels around its own box, same frame, uncompressed."""
    dmap = mapio.read_map(src)
    lo = [(n - s) // 2 for s in dmap.shape]
    data = np.zeros((n, n, n), np.float32)
    data[lo[0]:lo[0] + dmap.shape[0], lo[1]:lo[1] + dmap.shape[1], lo[2]:lo[2] + dmap.shape[2]] = dmap.data
    big = mapio.DensityMap(data, dmap.cell, dmap.sampling, tuple(s - l for s, l in zip(dmap.start, lo)),
                           dmap.origin_shift, "padded")
    return mapio.write_map(out, big)


PEAK = """
import json, sys
from rerefine.flows.commands.metrics import read_map_around
from rerefine.refine import mapio, metrics, modelio

def status(key):
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith(key))

st = modelio.read_model(sys.argv[1])
metrics.compute_metrics(st, read_map_around(st, sys.argv[2]), float(sys.argv[4]))  # numba compiled/loaded
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
base = status("VmRSS:")
dmap = read_map_around(st, sys.argv[2]) if sys.argv[3] == "boxed" else mapio.read_map(sys.argv[2])
metrics.compute_metrics(st, dmap, float(sys.argv[4]))
print(json.dumps({"before_kib": base, "peak_kib": status("VmHWM:")}))
"""


def peak_mb(model: Path, mp: Path, how: str, res: float) -> float:
    """Peak RSS growth (MB) of one metrics computation in a fresh process: whole map or boxed."""
    r = subprocess.run([sys.executable, "-c", PEAK, str(model), str(mp), how, str(res)], capture_output=True,
                       text=True, check=True)
    d = json.loads(r.stdout.strip().splitlines()[-1])
    return round((d["peak_kib"] - d["before_kib"]) / 1024, 1)


def timed(fn, repeats: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=240)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "cli_box.json"))
    args = ap.parse_args()
    m, p, res = PAIRS["emd_3488_5me2"]
    st = modelio.read_model(MM / m)
    with tempfile.TemporaryDirectory() as tmp:
        big = padded(MM / p, args.size, Path(tmp) / "padded.mrc")
        job = EntryJob("5me2", "EMD-3488", MM / m, big, [], resolution=res)
        params = PipelineParams()
        whole = mapio.read_map(big)
        box = pipeline.stage_box(st, whole, params.box_padding)
        del whole
        nightly = pipeline.stage_metrics(st, box, res, job, params)
        nightly_diff, _peaks = pipeline.stage_diffmap(st, box, res)
        rows = {}
        t_full, full = timed(lambda: metrics.compute_metrics(st, mapio.read_map(big), res), args.repeats)
        t_box, boxed = timed(lambda: metrics.compute_metrics(st, read_map_around(st, big), res), args.repeats)
        rows["metrics"] = {"whole_map_seconds": round(t_full, 3), "boxed_seconds": round(t_box, 3),
                           "speed_up": round(t_full / t_box, 2),
                           "whole_map_figures": {k: full[k] for k in FIT_KEYS},
                           "boxed_figures": {k: boxed[k] for k in FIT_KEYS},
                           "nightly_figures": {k: nightly[k] for k in FIT_KEYS},
                           "boxed_equals_nightly": all(boxed[k] == nightly[k] for k in FIT_KEYS),
                           "whole_map_peak_rss_growth_mb": peak_mb(MM / m, big, "whole", res),
                           "boxed_peak_rss_growth_mb": peak_mb(MM / m, big, "boxed", res)}
        t_full, _ = timed(lambda: diffmap.difference_map(st, mapio.read_map(big), res), args.repeats)
        t_box, (dbox, _info) = timed(lambda: diffmap.difference_map(st, read_map_around(st, big), res),
                                     args.repeats)
        rows["diffmap"] = {"whole_map_seconds": round(t_full, 3), "boxed_seconds": round(t_box, 3),
                           "speed_up": round(t_full / t_box, 2),
                           "boxed_equals_nightly": bool(dbox.shape == nightly_diff.shape
                                                        and np.array_equal(dbox.data, nightly_diff.data))}
        out = {"map_voxels": args.size ** 3, "box_shape": list(box.shape), "atoms": len(modelio.atom_positions(st)),
               "repeats": args.repeats, **rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
