"""Benchmark: size and write time of the entry page's 3D-view data (issue 20, part 1).

Run: ``.venv/bin/python benchmarks/bench_viewer.py [--copies 64]``; writes
``benchmarks/results/viewer.json``.

* 5ME2 (4,468 atoms) with 5NI1 as the second model, in EMD-3488 (100³ voxels of 1.05 Å), with
  its difference map: the size of ``{id}_viewer.js`` and of each part of its archive.
* A ~100,000-atom entry: the 3AJO-derived model (water-free, 1,425 atoms) and its EMD-20026 box
  repeated ``--copies`` times side by side (``bench_douse.tiled``), the model standing in for
  both the deposited and the re-refined one, the box for the map and the difference map.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_douse import dry, tiled  # noqa: E402
from realdata import DATA, PAIRS, REPO  # noqa: E402  (bench_douse puts tests/ on the path)


def measure(name, st, other, dmap, diff, out: Path) -> dict:
    from rerefine.reports import viewer

    level = float(dmap.data.mean() + 2 * dmap.data.std())
    t0 = time.perf_counter()
    p = viewer.write_viewer_data(out / f"{name}_viewer.js", st, other, dmap, diff, level)
    seconds = time.perf_counter() - t0
    _, info = viewer.build_archive(st, other, dmap, diff, level)
    row = {"entry": name, "atoms": int(st[0].count_atom_sites()), "map_voxels": int(dmap.data.size),
           "viewer_js_bytes": p.stat().st_size, "viewer_js_mb": round(p.stat().st_size / 2**20, 2),
           "uncompressed_parts_bytes": info["sizes"], "write_seconds": round(seconds, 2)}
    print(row, flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=64)
    args = ap.parse_args()
    from rerefine.refine import diffmap, mapio, modelio

    mm = DATA / "maps_models"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        m, p, res = PAIRS["emd_3488_5me2"]
        st, dmap = modelio.read_model(mm / m), mapio.read_map(mm / p)
        other = modelio.read_model(mm / "emd_3488_5me2" / "5ni1_updated.cif")
        diff, _ = diffmap.difference_map(st, dmap, res)
        rows.append(measure("5me2", st, other, dmap, diff, out))
        m, p, res = PAIRS["emd_20026_box_3ajo_refined"]
        st, dmap = modelio.read_model(mm / m), mapio.read_map(mm / p)
        big, bmap = tiled(dry(st), dmap, args.copies)
        rows.append(measure(f"3ajo_x{args.copies}", big, big, bmap, bmap, out))
    res_dir = REPO / "benchmarks" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / "viewer.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
