"""Benchmark: refinement of a ~54,000-atom model in a 300×300×300 box — wall time and peak memory.

The model is 12 copies of 5ME2 (4,468 atoms each; 3×2×2) placed into the real EMD-3488 map tiled
3×2×2, each copy shifted by the tile edge so that it sits in its own real density; the map is then
padded with zeros to 300³ voxels of 1.05 Å. Coordinates and B are refined with the default automatic weight; the peak resident
memory of the process is read from the kernel (ru_maxrss). Issue 6 asks for < 2 GB.

    python benchmarks/bench_refine_memory.py

Results: benchmarks/results/refine_memory.json
"""

from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from rerefine.refine import mapio, modelio
from rerefine.refine.realspace import refine_model

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RR_TEST_DATA", ROOT.parent / "shared" / "data"))


def tiled_pair(reps=(3, 2, 2), box=(300, 300, 300)):
    dmap = mapio.read_map(DATA / "maps_models/emd_3488_5me2/emd_3488.mrc")
    st = modelio.read_model(DATA / "maps_models/emd_3488_5me2/5me2.pdb")
    big = replace(dmap, data=np.ascontiguousarray(np.tile(dmap.data, reps)),
                  sampling=tuple(s * r for s, r in zip(dmap.sampling, reps)))
    big = replace(big, cell=type(dmap.cell)(*(big.voxel_size * 0 + np.array(
        [dmap.cell.a * reps[0], dmap.cell.b * reps[1], dmap.cell.c * reps[2]])), 90, 90, 90))
    edge = dmap.extent
    model = st[0]
    names = iter(f"{a}{b}" for a in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" for b in "0123456789")
    base = [ch.clone() for ch in model]
    while len(model):
        del model[0]
    for i in range(reps[0]):
        for j in range(reps[1]):
            for k in range(reps[2]):
                shift = edge * np.array([i, j, k])
                for ch in base:
                    c = ch.clone()
                    c.name = next(names)
                    for res in c:
                        for at in res:
                            at.pos = type(at.pos)(at.pos.x + shift[0], at.pos.y + shift[1], at.pos.z + shift[2])
                    model.add_chain(c)
    st.setup_entities()
    padded = np.zeros(box, np.float32)
    padded[: big.shape[0], : big.shape[1], : big.shape[2]] = big.data
    vox = big.voxel_size
    big = replace(big, data=padded, sampling=box,
                  cell=type(dmap.cell)(box[0] * vox[0], box[1] * vox[1], box[2] * vox[2], 90, 90, 90))
    return st, big


def main() -> dict:
    st, big = tiled_pair()
    n = st[0].count_atom_sites()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    r = refine_model(st, big, 3.2, DATA / "monomers", adp=True)
    before = {k: r.geometry_before.get(k) for k in ("bond_rmsd", "angle_rmsd", "nonbonded_overlaps")}
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"n_atoms": int(n), "map_shape": list(big.shape), "map_mb": big.data.nbytes / 2**20,
           "seconds": round(dt, 1), "status": r.status, "cycles": r.cycles,
           "geometry_before": before,
           "geometry_after": {k: r.geometry_after.get(k) for k in ("bond_rmsd", "angle_rmsd", "nonbonded_overlaps")},
           "peak_rss_mb": round(rss, 1), "rss_before_refine_mb": round(rss0, 1), "goal_mb": 2048,
           "goal_met": rss < 2048}
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "refine_memory.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
