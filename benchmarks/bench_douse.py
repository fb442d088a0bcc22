"""Benchmark: ordered waters placed the douse way (issue 20, part 2).

Run: ``.venv/bin/python benchmarks/bench_douse.py [--repeats 3] [--tiles 1,2,4,8,16]``;
writes ``benchmarks/results/douse.json`` and prints a table.

* **Recovery** on the 1.75 Å EMD-20026 box with its 3AJO-derived model: the 229 deposited
  waters are removed, :func:`rerefine.refine.douse.douse` places waters again, in the deposited
  map and in our automatically sharpened one (what the nightly pipeline gives it). Precision =
  fraction of placed waters within 0.5 Å (and 1.0 Å) of a deposited one; recall = fraction of
  deposited waters with a placed one within 0.5 Å (1.0 Å).
* **Existing waters**: the deposited model as it is: how many of its waters are kept.
* **3.2 Å**: 5ME2 in EMD-3488, above the 3.0 Å cut-off (skipped) and forced (``max_resolution
  3.5``): how many waters it adds.
* **Scaling**: the EMD-20026 map and water-free model repeated ``k`` times (copies side by side
  along x, y, z in turn): wall time of douse (median of ``--repeats``), and of its part after the
  difference map, per 1,000 atoms. Proportional time means a flat column.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from realdata import DATA, PAIRS, REPO  # noqa: E402


def dry(st):
    from rerefine.refine.douse import without_waters

    return without_waters(st)


def waters(st) -> np.ndarray:
    return np.array([r[0].pos.tolist() for ch in st[0] for r in ch if r.is_water()], float).reshape(-1, 3)


def recovery(dep: np.ndarray, added: np.ndarray) -> dict:
    from scipy.spatial import cKDTree

    if len(added) == 0:
        return {"added": 0, "precision_0.5": 0.0, "recall_0.5": 0.0, "precision_1.0": 0.0, "recall_1.0": 0.0}
    da, _ = cKDTree(dep).query(added)
    dd, _ = cKDTree(added).query(dep)
    return {"added": int(len(added)),
            "precision_0.5": round(float(np.mean(da < 0.5)), 3), "recall_0.5": round(float(np.mean(dd < 0.5)), 3),
            "precision_1.0": round(float(np.mean(da < 1.0)), 3), "recall_1.0": round(float(np.mean(dd < 1.0)), 3)}


def tiled(st, dmap, k: int):
    """``k`` copies (k a power of two) of model and map side by side along x, y, z in turn."""
    import gemmi

    reps = [1, 1, 1]
    axis = 0
    n = 1
    while n < k:
        reps[axis] *= 2
        axis = (axis + 1) % 3
        n *= 2
    data = np.tile(dmap.data, reps)
    ext = dmap.extent
    model = gemmi.Model("1")
    for ix in range(reps[0]):
        for iy in range(reps[1]):
            for iz in range(reps[2]):
                c = st.clone()
                shift = gemmi.Vec3(ix * ext[0], iy * ext[1], iz * ext[2])
                c[0].transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), shift))
                for ch in c[0]:
                    ch.name = f"{ch.name}{ix}{iy}{iz}"
                    model.add_chain(ch)
    big = gemmi.Structure()
    big.add_model(model)
    big.setup_entities()
    cell = gemmi.UnitCell(dmap.cell.a * reps[0], dmap.cell.b * reps[1], dmap.cell.c * reps[2], 90, 90, 90)
    sampling = tuple(s * r for s, r in zip(dmap.sampling, reps))
    return big, replace(dmap, data=np.ascontiguousarray(data), cell=cell, sampling=sampling)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiles", default="1,2,4,8,16")
    args = ap.parse_args()
    from rerefine.refine import diffmap, douse, mapio, modelio, sharpen

    out: dict = {}
    model, mp, res = PAIRS["emd_20026_box_3ajo_refined"]
    mm = DATA / "maps_models"
    st, dmap = modelio.read_model(mm / model), mapio.read_map(mm / mp)
    dep = waters(st)
    d = dry(st)
    sharp = sharpen.auto_sharpen(dmap, res).map
    for name, m in (("deposited_map", dmap), ("sharpened_map", sharp)):
        r = douse.douse(d, m, res)
        out[f"recovery_{name}"] = {**recovery(dep, np.array([w["xyz"] for w in r.added]).reshape(-1, 3)),
                                   "rejected": r.rejected, "n_peaks": r.n_peaks}
        kept = douse.douse(st, m, res)
        out[f"existing_{name}"] = {"deposited": int(len(dep)), "kept": len(kept.kept), "removed": len(kept.removed),
                                   "added": len(kept.added)}
    m2, p2, r2 = PAIRS["emd_3488_5me2"]
    st2, map2 = modelio.read_model(mm / m2), mapio.read_map(mm / p2)
    out["emd_3488_5me2"] = {"default": douse.douse(st2, map2, r2).status,
                            "forced_added": len(douse.douse(st2, map2, r2, max_resolution=3.5).added),
                            "n_atoms": int(st2[0].count_atom_sites())}
    rows = []
    for k in [int(x) for x in args.tiles.split(",")]:
        big, bmap = tiled(d, dmap, k)
        n_atoms = int(big[0].count_atom_sites())
        times, diff_times, n_added = [], [], 0
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            r = douse.douse(big, bmap, res)
            times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            diffmap.difference_map(big, bmap, res)
            diff_times.append(time.perf_counter() - t0)
            n_added = len(r.added)
        t, td = statistics.median(times), statistics.median(diff_times)
        rows.append({"copies": k, "atoms": n_atoms, "voxels": int(np.prod(bmap.shape)), "added": n_added,
                     "seconds": round(t, 3), "seconds_diffmap": round(td, 3),
                     "seconds_per_1000_atoms": round(1000 * t / n_atoms, 4),
                     "seconds_without_diffmap_per_1000_atoms": round(1000 * max(t - td, 0) / n_atoms, 4)})
        print(rows[-1], flush=True)
    out["scaling"] = rows
    res_dir = REPO / "benchmarks" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / "douse.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "scaling"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
