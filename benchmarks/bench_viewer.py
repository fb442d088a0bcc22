"""Benchmark: size and write time of the entry page's 3D-view data (issue 20, part 1).

Run: ``.venv/bin/python benchmarks/bench_viewer.py [--copies 64]``; writes
``benchmarks/results/viewer.json``.

* 5ME2 (4,468 atoms) with 5NI1 as the second model, in EMD-3488 (100³ voxels of 1.05 Å), with
  its difference map: the size of ``{id}_viewer.js`` and of each part of its archive.
* A ~100,000-atom entry: the 3AJO-derived model (water-free, 1,425 atoms) and its EMD-20026 box
  repeated ``--copies`` times side by side (``bench_douse.tiled``), the model standing in for
  both the deposited and the re-refined one, the box for the map and the difference map.
* Site build cost of the entry page's 3D-view and ordered-water sections: full builds of
  ``--entries`` synthetic entries (tests/test_site.py's generator, 300 residues each) with the
  templates as they are and with the two includes removed (and no Mol* copy), alternated,
  medians of ``--repeats``; the ratio is what they add (``bench_site.py`` times 10,000 entries).
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


def site_build_cost(n: int, repeats: int) -> dict:
    import shutil
    import statistics
    from importlib import resources

    import jinja2

    from rerefine.reports import site, site_sources
    from test_site import make_entries

    entries = make_entries(n, seed=3, n_res=300)
    orig_tpl = Path(str(resources.files("rerefine.site"))) / "templates"
    orig_env, orig_copy = site.make_environment, site.copy_viewer_assets

    def bare_env():
        env = orig_env()
        env.loader = jinja2.FileSystemLoader(str(bare))
        return env

    times = {"with": [], "without": []}
    with tempfile.TemporaryDirectory() as tmp:
        bare = Path(tmp) / "tpl"
        shutil.copytree(orig_tpl, bare)
        page = bare / "entry.html"
        page.write_text(page.read_text().replace('{% include "waters.html" %}\n', "")
                        .replace('{% include "viewer.html" %}\n', ""))
        try:
            for rep in range(repeats):
                for mode in ("without", "with"):
                    site.make_environment = bare_env if mode == "without" else orig_env
                    site.copy_viewer_assets = (lambda *a: False) if mode == "without" else orig_copy
                    out = Path(tmp) / f"{mode}-{rep}"
                    t0 = time.perf_counter()
                    site.build_site(site_sources.DictSource(entries), out, full=True)
                    times[mode].append(time.perf_counter() - t0)
                    shutil.rmtree(out)
        finally:
            site.make_environment, site.copy_viewer_assets = orig_env, orig_copy
    med = {k: statistics.median(v) for k, v in times.items()}
    row = {"entries": n, "seconds_with": round(med["with"], 2), "seconds_without": round(med["without"], 2),
           "ratio": round(med["with"] / med["without"], 3), "runs": times}
    print(row, flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--copies", type=int, default=64)
    ap.add_argument("--entries", type=int, default=1500)
    ap.add_argument("--repeats", type=int, default=3)
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
    out = {"entries": rows, "site_build": site_build_cost(args.entries, args.repeats)}
    res_dir = REPO / "benchmarks" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / "viewer.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
