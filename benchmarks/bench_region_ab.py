"""Benchmark (issue 17): CPU seconds of one boxed-refinement region, code tree A against tree B.

One region of case N of :mod:`bench_scale` (N×N×N copies of 5ME2 in the EMD-3488 map tiled N×N×N;
at N=2 each region is one 4,468-atom copy with no fixed atom, as at N=4) is refined as the pool
runs it: :func:`rerefine.refine.boxed.refine_region` on the pickled
:class:`~rerefine.refine.boxed.RegionTask` the parent builds (``fixed_b_free``, the pipeline's
``adp`` and ``macro_cycles``; settings a tree does not know are left out), in one child process
per tree that stays up. Each child refines the region once untimed (it loads numba's disk cache,
as the first region of a pool worker does), then the children refine it in turn, one at a time
(A, B, B, A, A, B, ...), so every tree sees the same machine load; each refinement reports its CPU
seconds (``time.process_time``).

A tree is a checkout of this repository (``--tree NAME=PATH``; default ``main=`` the repository
itself); the child imports ``rerefine`` from it through a temporary folder of links
(the editable install is left alone; ``$TMPDIR/rerefine_region_ab/NAME``, kept between runs with
its own ``NUMBA_CACHE_DIR``, so a second invocation starts with the kernels compiled).

Reported: each run's CPU and wall seconds, the median CPU per tree and each tree's ratio to the
first, and whether each tree's refined positions, B and occupancies equal the first tree's
bit for bit (else the largest differences). The load (``os.getloadavg``) is recorded before and
after.

    python benchmarks/bench_region_ab.py --tree old=/work/wt-old --tree new=. --repeats 2

Results: benchmarks/results/region_ab.json.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_refine_memory import DATA, ROOT  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "region_ab.json"
PACKAGES = ("common", "flows", "harvester", "refine", "reports", "site")

CHILD = r"""
import dataclasses, json, pickle, sys, time
import numpy as np
from rerefine.refine import boxed
from rerefine.refine.refine_params import RefineParameters
task = pickle.load(open(sys.argv[1], "rb"))
# a tree older than a setting runs without it (fixed_b_free does nothing without fixed atoms)
names = {f.name for f in dataclasses.fields(RefineParameters)}
task.options = {k: v for k, v in task.options.items() if k in names}
for line in sys.stdin:  # one refinement per line the parent sends
    t, c = time.perf_counter(), time.process_time()
    out = boxed.refine_region(task)
    cpu, wall = time.process_time() - c, time.perf_counter() - t
    np.savez(sys.argv[2], xyz=out.xyz, b=out.b, occ=out.occ)
    print(json.dumps({"cpu": cpu, "wall": wall, "status": out.status, "cycles": out.cycles,
                      "weight": out.weight, "module": boxed.__file__}), flush=True)
"""


def make_task(n: int, region: int, path: Path) -> dict:
    """Pickle region ``region`` of case ``n``'s task (built by this checkout's code) to ``path``."""
    from bench_refine_memory import tiled_pair

    from rerefine.flows.pipeline import PipelineParams
    from rerefine.refine.boxed import BOX_PADDING, RegionTask
    from rerefine.refine.mapio import cut_box
    from rerefine.refine.regions import MARGIN, REGION_ATOMS, split_regions, sub_model

    st, big = tiled_pair(reps=(n, n, n), box=(100 * n,) * 3)
    xyz = np.array([c.atom.pos.tolist() for c in st[0].all()])
    regions = split_regions(st, REGION_ATOMS, MARGIN, xyz=xyz)
    reg = regions[region]
    pp = PipelineParams()
    opts = dict(fixed_b_free=True, adp=pp.refine_adp, cycles=pp.macro_cycles, top8000_dir=None)
    box = cut_box(big, xyz[reg.atoms], BOX_PADDING)  # as boxed.refine_boxed cuts a region's boxes
    task = RegionTask(label=reg.label, model=sub_model(st, reg.atoms), dmap=box, fit_map=box,
                      fixed=~np.isin(reg.atoms, reg.core), resolution=3.2, monlib_dir=DATA / "monomers",
                      options=opts)
    path.write_bytes(pickle.dumps(task))
    return {"atoms": int(len(regions[region].atoms)), "fixed": int(len(regions[region].margin)),
            "regions": len(regions)}


def link_tree(src: Path, dst: Path) -> None:
    """``dst/rerefine/<package>`` links to ``src``'s packages (replaced if there)."""
    (dst / "rerefine").mkdir(parents=True, exist_ok=True)
    (dst / "rerefine" / "__init__.py").write_text("")
    for p in PACKAGES:
        link = dst / "rerefine" / p
        if link.is_symlink():
            link.unlink()
        link.symlink_to(src.resolve() / p)


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", default=[], help="NAME=PATH of a checkout (first is the reference)")
    ap.add_argument("--n", type=int, default=2)
    ap.add_argument("--region", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2)
    a = ap.parse_args()
    trees = [t.split("=", 1) for t in a.tree] or [["main", str(ROOT)]]
    out: dict = {"n": a.n, "region": a.region, "trees": {k: v for k, v in trees},
                 "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out.update(make_task(a.n, a.region, tmp / "task.pkl"))
        links = Path(tempfile.gettempdir()) / "rerefine_region_ab"  # a fixed path: numba's cache is kept
        for name, path in trees:
            link_tree(Path(path), links / name)
        runs: dict = {name: [] for name, _ in trees}
        results: dict = {}
        procs = {}
        for name, _ in trees:
            env = dict(os.environ, PYTHONPATH=str(links / name), NUMBA_CACHE_DIR=str(links / name / "numba"))
            procs[name] = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp / "task.pkl"), str(tmp / f"{name}.npz")],
                                           env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=tmp)

        def once(name: str) -> dict:
            p = procs[name]
            p.stdin.write("go\n")
            p.stdin.flush()
            line = p.stdout.readline()
            if not line:
                raise SystemExit(f"{name}: child failed (exit {p.wait()})")
            return json.loads(line)

        try:
            for name, _ in trees:  # the first refinement of a child loads (or compiles) the kernels
                out.setdefault("first_cpu", {})[name] = once(name)["cpu"]
            for rep in range(a.repeats):
                for name, _ in (trees if rep % 2 == 0 else trees[::-1]):
                    runs[name].append(once(name))
                    print(name, rep, runs[name][-1], flush=True)
        finally:
            for p in procs.values():
                p.stdin.close()
                p.wait()
        for name, _ in trees:
            d = np.load(tmp / f"{name}.npz")
            results[name] = {k: d[k] for k in ("xyz", "b", "occ")}
        ref = trees[0][0]
        out["runs"] = runs
        out["median_cpu"] = {k: statistics.median(r["cpu"] for r in v) for k, v in runs.items()}
        out["ratio_to_" + ref] = {k: out["median_cpu"][k] / out["median_cpu"][ref] for k in runs}
        out["identical_to_" + ref] = {
            k: {f: bool(np.array_equal(results[k][f], results[ref][f])) for f in ("xyz", "b", "occ")}
            for k in runs}
        out["max_diff_to_" + ref] = {
            k: {f: float(np.max(np.abs(results[k][f] - results[ref][f]))) for f in ("xyz", "b", "occ")}
            for k in runs}
    out["load_after"] = os.getloadavg()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1))
    print(json.dumps({k: out[k] for k in out if k != "runs"}, indent=1))
    return out


if __name__ == "__main__":
    main()
