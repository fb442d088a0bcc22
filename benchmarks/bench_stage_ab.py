"""Benchmark (issue 17): the entry stages changed for speed against their previous code, A/B in one process.

On case N of :mod:`bench_scale` (N×N×N copies of 5ME2 in the EMD-3488 map tiled N×N×N), alternately
(A, B, A, B, ...; so both see the same machine load):

* placement check (``pipeline.stage_placement``): A = the previous code, rebuilt here: the overlap
  check with a k-d tree of the whole model per chain, and the map target's transforms on one
  thread (``RR_FFT_WORKERS=1``); B = the code as it is;
* difference peaks (``diffmap.difference_peaks`` on the difference map of the deposited model): A =
  the previous search, ``scipy.ndimage.maximum_filter`` over the whole box; B = as it is;
* validation of a deposited and a refined model: A = two ``pipeline.stage_validation`` calls (the
  restraints built for each), B = ``pipeline.stage_validation_pair`` (built once when the two
  share their topology). The refined model is stood in for by the deposited one with every atom
  moved by a seeded Gaussian of 0.05 Å per axis (more opens chain gaps: then the pair is
  validated separately).
* metrics (``pipeline.stage_metrics`` of the deposited model, no EMDB contour): A = the order
  statistics of CCvolume/CCpeaks and of the default contour by ``np.partition`` (the previous
  code), B = by :func:`rerefine.refine.mapcc.kth_smallest`.

Reported per stage: each run's seconds, the median of A and of B and their ratio, and whether A and
B gave identical results (the placement dict, the peak lists). The load (``os.getloadavg``) is
recorded before and after.

    python benchmarks/bench_stage_ab.py --n 3 --repeats 2 [--stages validation]

Results: benchmarks/results/stage_ab.json (merged by N).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_refine_memory import DATA, ROOT, tiled_pair  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "stage_ab.json"


def _whole_model_overlaps(before, after, group, heavy):
    """The previous overlap count: a k-d tree of every other heavy atom, per chain."""
    from scipy.spatial import cKDTree

    from rerefine.refine.rigidbody import OVERLAP_DIST

    inside = np.zeros(len(before), bool)
    inside[group] = True
    g = group[heavy[group]]
    others = np.nonzero(heavy & ~inside)[0]
    if not len(g) or not len(others):
        return 0
    count = []
    for x in (before, after):
        tree = cKDTree(x[others])
        count.append(sum(len(v) for v in tree.query_ball_point(x[g], OVERLAP_DIST)))
    return count[1] - count[0]


def _maximum_filter_maxima(v, threshold):
    from scipy import ndimage

    loc = (v == ndimage.maximum_filter(v, size=3, mode="nearest")) & (v >= threshold)
    return np.argwhere(loc), v[loc]


def shaken(st, sigma: float = 0.05, seed: int = 0):
    """A copy of ``st`` with every atom moved by a Gaussian of ``sigma`` Å per axis (seeded)."""
    from rerefine.refine.restraints import atom_xyz, set_xyz

    out = st.clone()
    xyz = atom_xyz(out)
    set_xyz(out, xyz + np.random.default_rng(seed).normal(0.0, sigma, xyz.shape))
    return out


STAGES = ("placement", "difference_peaks", "validation", "metrics")


def _partition_kth(x, k):
    """The previous order statistic: ``np.partition`` of the whole array."""
    x = np.ascontiguousarray(x).ravel()
    return float(np.partition(x, int(k))[int(k)])


def run(n: int, repeats: int, which=STAGES) -> dict:
    from rerefine.flows import pipeline
    from rerefine.flows.pipeline import EntryJob, PipelineParams
    from rerefine.refine import diffmap, inclusion, mapcc, rigidbody

    st, big = tiled_pair(reps=(n, n, n), box=(100 * n,) * 3)
    box = pipeline.stage_box(st, big, 8.0)
    del big
    diff = diffmap.difference_map(st, box, 3.2)[0] if "difference_peaks" in which else None
    new_overlaps, new_maxima, new_kth = rigidbody.new_overlaps, diffmap.local_maxima, mapcc.kth_smallest
    env0 = os.environ.get("RR_FFT_WORKERS")

    def set_a(a: bool):
        rigidbody.new_overlaps = _whole_model_overlaps if a else new_overlaps
        diffmap.local_maxima = _maximum_filter_maxima if a else new_maxima
        mapcc.kth_smallest = inclusion.kth_smallest = _partition_kth if a else new_kth
        if a:
            os.environ["RR_FFT_WORKERS"] = "1"
        elif env0 is None:
            os.environ.pop("RR_FFT_WORKERS", None)
        else:
            os.environ["RR_FFT_WORKERS"] = env0

    monlib, top8000 = DATA / "monomers", DATA / "validation" / "top8000"
    moved = shaken(st)

    def validation(side: str):
        if side == "A":
            return [pipeline.stage_validation(st, monlib, top8000), pipeline.stage_validation(moved, monlib, top8000)]
        return list(pipeline.stage_validation_pair(st, moved, monlib, top8000))

    stages = {"placement": lambda side: pipeline.stage_placement(st, box, 3.2),
              "difference_peaks": lambda side: diffmap.difference_peaks(diff, st),
              "validation": validation,
              "metrics": lambda side: {k: v for k, v in pipeline.stage_metrics(
                  st, box, 3.2, EntryJob(f"tiled{n}", "", Path("model.cif"), Path("map.mrc"), [], resolution=3.2),
                  PipelineParams(), None).items() if k != "seconds"}}
    stages = {k: v for k, v in stages.items() if k in which}
    out = {"n": n, "atoms": st[0].count_atom_sites(), "box_voxels": int(np.prod(box.shape)),
           "load_before": [round(x, 2) for x in os.getloadavg()]}
    try:
        for name, fn in stages.items():
            secs = {"A": [], "B": []}
            results = {}
            for _ in range(repeats):
                for side in ("A", "B"):
                    set_a(side == "A")
                    t = time.perf_counter()
                    results[side] = fn(side)
                    secs[side].append(round(time.perf_counter() - t, 2))
            med = {k: float(np.median(v)) for k, v in secs.items()}
            out[name] = {"seconds": secs, "median_a": med["A"], "median_b": med["B"],
                         "ratio_a_over_b": round(med["A"] / med["B"], 3),
                         "identical": json.dumps(results["A"], sort_keys=True, default=str)
                         == json.dumps(results["B"], sort_keys=True, default=str)}
            print(name, json.dumps(out[name]), flush=True)
    finally:
        set_a(False)
    out["load_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[2])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    args = ap.parse_args(argv)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for n in args.n:
        results[str(n)] = {**results.get(str(n), {}), **run(n, args.repeats, args.stages)}
        RESULTS.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
