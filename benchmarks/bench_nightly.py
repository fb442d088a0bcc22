"""Benchmark: the nightly flow end to end, and Prefect's share of it (issues 10 and 19).

Each repeat makes the sample archive (``rerefine sample-archive``) and a fresh data directory, then
runs ``rerefine nightly --mirror <archive> --workers N`` several nights in a row in that directory:
night 1 starts with no Prefect home and no database (Prefect creates and migrates its database),
later nights (``--force``: redo every entry) find both in place, as every real night after the
first does. Full default pipeline parameters. Prefect is used the supported way: no
``PREFECT_API_URL``, so Prefect starts its own temporary API server at the first flow call.

Time in Prefect, per night (nothing is left out: whatever we do not time is counted as Prefect's)::

    prefect = wall - ours
    ours    = bare + setup + harvest + sum(stage timings of every entry) + site build

``wall`` is the ``rerefine nightly`` process as a whole (interpreter start to exit, measured here);
``bare`` is the same interpreter starting the same CLI and exiting (``rerefine --version``: our
imports and argument parser, no Prefect); ``setup`` is our own start-up work timed in-process
(option parsing, database upgrade, importing the stage modules); the stage timings are the
pipeline's own (``fetch``, ``load``, ... ``store``). So Prefect's share includes importing
Prefect, starting its temporary server, flow and task orchestration, and its shutdown at exit.
The itemised parts are reported too.

    python benchmarks/bench_nightly.py [--workers 1] [--repeat 3] [--nights 3] [--copies N] [--tiled N]

``--copies N`` adds N entries to the mirror, each the real 7CEC model under a local id
(``loc_7cec_copyK``) on the same real EMD-30342 map. ``--tiled N`` makes a night of realistic
size instead: the mirror holds only N entries of 35,744 atoms each, every one the real 5ME2 model
tiled 2×2×2 (8 copies, each shifted by the map edge into its own copy of the density) in the real
EMD-3488 map tiled 2×2×2 (200³ voxels of 1.05 Å), ``5me2`` plus ``loc_5me2x8_K`` local ids sharing
that map. The per-entry work is real; only the entry count and the tiling are made up.

Results: benchmarks/results/nightly.json (nightly_copiesN.json / nightly_tiledN.json)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _env(data_dir: Path, data: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RR_"))}
    env.update(RR_DATA_DIR=str(data_dir), RR_TEST_DATA=str(data), RR_MONOMER_LIB=str(data / "monomers"))
    env.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba-cache"))
    return env


CLI = [sys.executable, "-m", "rerefine.flows.cli"]


def bare_seconds(env: dict, n: int = 5) -> float:
    """Median wall time of the CLI starting and exiting without Prefect (``--version``)."""
    walls = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(CLI + ["--version"], env=env, check=True, capture_output=True)
        walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def add_copies(archive: Path, n: int) -> None:
    """``n`` extra entries: 7CEC's model file under local ids (the map is shared)."""
    from rerefine.harvester.mirror import Mirror

    src = archive / Mirror.model_rel("7cec")
    for k in range(n):
        dst = archive / Mirror.model_rel(f"loc_7cec_copy{k}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())


TILES = (2, 2, 2)


def make_tiled(archive: Path, n: int) -> None:
    """Replace the mirror's entries by ``n`` tiled 5ME2/EMD-3488 entries (see the module docstring)."""
    import gzip
    import shutil

    import gemmi

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_refine_memory import tiled_pair

    from rerefine.harvester.mirror import Mirror
    from rerefine.refine import mapio

    src = archive / Mirror.model_rel("5me2")
    doc = gemmi.cif.read(str(src))  # keeps the records discovery reads (release, EMDB link, resolution)
    box = tuple(100 * t for t in TILES)
    st, big = tiled_pair(TILES, box)
    st.update_mmcif_block(doc.sole_block())
    cif = gzip.compress(doc.as_string().encode(), mtime=0)
    mdir = archive / Mirror.model_rel("5me2").split("/")[0]
    shutil.rmtree(mdir)  # every sample entry goes
    for k in range(n):
        dst = archive / Mirror.model_rel("5me2" if k == 0 else f"loc_5me2x8_{k}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(cif)
    map_path = archive / Mirror.map_rel("EMD-3488", "emd_3488.map.gz")
    with tempfile.TemporaryDirectory() as tmp:
        raw = mapio.write_map(Path(tmp) / "tiled.mrc", big)
        map_path.write_bytes(gzip.compress(Path(raw).read_bytes(), mtime=0))
    head_path = archive / Mirror.header_rels("EMD-3488")[1]
    head = json.loads(head_path.read_text())
    head["map"]["dimensions"] = {"col": box[0], "row": box[1], "sec": box[2]}
    head["map"]["spacing"] = {"x": box[0], "y": box[1], "z": box[2]}
    head["map"]["size_kbytes"] = int(round((1024 + 4 * np.prod(box)) / 1000))
    head["_rerefine_sample"]["note"] = f"EMD-3488 tiled {TILES} for bench_nightly --tiled (not an EMDB map)"
    head_path.write_text(json.dumps(head, indent=2))


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def account(wall: float, bare: float, s: dict, workers: int) -> dict:
    """Split one night's wall time into ours and Prefect's (see the module docstring)."""
    done = [e for e in s["entries"] if e["status"] in ("done", "cached", "failed")]
    stages = sum(sum(e.get("timings", {}).values()) for e in done)
    setup = sum(s["setup_seconds"].values())
    ours = bare + setup + s["harvest_seconds"] + stages + s["site_seconds"]
    ps = s["prefect_startup"]
    parts = {
        "import": ps.get("import_seconds", 0.0),
        # Prefect starts its temporary server inside the flow call
        "flow_call_outside_flow_body": s["flow_call_seconds"] - s["seconds"],
        "in_flow_outside_entries": s["seconds"] - s["harvest_seconds"] - s["site_seconds"]
        - sum(e.get("wall_seconds", sum(e.get("timings", {}).values())) for e in done),
    }
    if workers == 1:
        parts["per_entry_orchestration"] = sum(e["wall_seconds"] - sum(e["timings"].values())
                                               for e in done if "wall_seconds" in e)
    accounted = bare + sum(s["setup_seconds"].values()) + ps.get("import_seconds", 0.0) + s["flow_call_seconds"]
    parts["exit_and_unaccounted"] = wall - accounted
    prefect = wall - ours
    return {"wall": round(wall, 3), "ours": round(ours, 3), "prefect": round(prefect, 3),
            "prefect_fraction": round(prefect / wall, 4), "bare": round(bare, 3),
            "setup": s["setup_seconds"], "harvest": s["harvest_seconds"], "site": s["site_seconds"],
            "stages_total": round(stages, 3), "prefect_parts": {k: round(v, 3) for k, v in parts.items()},
            "entries_done": sum(e["status"] == "done" for e in s["entries"]),
            "per_entry": {e["pdb_id"]: {"seconds": round(sum(e["timings"].values()), 3),
                                        "wall": e.get("wall_seconds"), "verdict": e.get("verdict"),
                                        "cc_mask_before": e.get("cc_mask_before"),
                                        "cc_mask_after": e.get("cc_mask_after"),
                                        "timings": e["timings"]} for e in s["entries"] if e["status"] == "done"},
            "stage_seconds": s["stage_seconds"], "failed": s["failed"], "rejected": s["rejected"]}


def one_repeat(workers: int, data: Path, copies: int, tiled: int, nights: int) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="rr-bench-nightly-") as tmp:
        tmp = Path(tmp)
        env = _env(tmp / "data", data)
        subprocess.run(CLI + ["sample-archive", "--data", str(data), "--out", str(tmp / "archive")], env=env,
                       check=True, capture_output=True)
        add_copies(tmp / "archive", copies)
        if tiled:
            make_tiled(tmp / "archive", tiled)
        bare = bare_seconds(env)
        out = []
        for night in range(1, nights + 1):
            load = loadavg()
            t0 = time.perf_counter()
            r = subprocess.run(CLI + ["nightly", "--mirror", str(tmp / "archive"), "--workers", str(workers),
                                      "--json", str(tmp / "s.json"), *(["--force"] if night > 1 else [])],
                               env=env, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if r.returncode != 0:
                raise SystemExit(r.stderr[-3000:])
            rec = account(wall, bare, json.loads((tmp / "s.json").read_text()), workers)
            rec.update(night=night, loadavg_before=load, loadavg_after=loadavg())
            out.append(rec)
            print(f"night {night}: wall {wall:.2f} s, Prefect {rec['prefect']:.2f} s "
                  f"({100 * rec['prefect_fraction']:.1f} %), parts {rec['prefect_parts']}, load {load}, "
                  f"done {rec['entries_done']}, failed {rec['failed']}", file=sys.stderr, flush=True)
        return out


def _prefect_version() -> str:
    from importlib.metadata import version

    return version("prefect")


def _median(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 4) if xs else None


def summarise(nights: list[dict]) -> dict:
    """Medians over repeats of one kind of night."""
    out = {k: _median([n[k] for n in nights]) for k in ("wall", "ours", "prefect", "prefect_fraction", "bare",
                                                          "harvest", "site", "stages_total")}
    out["prefect_parts"] = {k: _median([n["prefect_parts"].get(k) for n in nights])
                            for k in nights[0]["prefect_parts"]}
    out["setup"] = {k: _median([n["setup"][k] for n in nights]) for k in nights[0]["setup"]}
    ids = sorted({i for n in nights for i in n["per_entry"]})
    out["per_entry_seconds"] = {i: _median([n["per_entry"][i]["seconds"] for n in nights if i in n["per_entry"]])
                                for i in ids}
    stages = sorted({k for n in nights for k in n["stage_seconds"]})
    out["per_stage_seconds"] = {k: _median([n["stage_seconds"].get(k, 0.0) for n in nights]) for k in stages}
    out["n"] = len(nights)
    out["loadavg"] = [n["loadavg_before"] for n in nights]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--nights", type=int, default=3, help="nights per repeat (the first on a fresh data dir)")
    ap.add_argument("--archive-size", type=int, default=30000, help="EM entries with a model to re-refine")
    ap.add_argument("--copies", type=int, default=0, help="extra entries (copies of 7CEC under local ids)")
    ap.add_argument("--tiled", type=int, default=0, help="a night of this many tiled 35,744-atom entries only")
    ap.add_argument("--data", default=os.environ.get("RR_TEST_DATA", str(ROOT.parent / "shared" / "data")))
    args = ap.parse_args()
    runs = []
    for _ in range(args.repeat):
        runs += one_repeat(args.workers, Path(args.data), args.copies, args.tiled, args.nights)
    out = {"workers": args.workers, "extra_copies": args.copies, "tiled_entries": args.tiled,
           "repeat": args.repeat, "nights": args.nights, "cpu_count": os.cpu_count(),
           "prefect": _prefect_version(), "results": {}}
    first = [r for r in runs if r["night"] == 1]
    later = [r for r in runs if r["night"] > 1]
    out["results"] = {"first_night": summarise(first), "later_nights": summarise(later) if later else None}
    basis = out["results"]["later_nights"] or out["results"]["first_night"]
    if basis and basis["per_entry_seconds"]:
        per_entry = statistics.median(list(basis["per_entry_seconds"].values()))
        eph = 3600.0 / per_entry  # one entry is one single-process task
        out["median_seconds_per_entry"] = per_entry
        out["entries_per_core_hour"] = eph
        out["archive_size"] = args.archive_size
        out["core_hours_for_archive"] = args.archive_size / eph
        out["cores_for_archive_in_one_week"] = args.archive_size / eph / (7 * 24)
    out["runs"] = runs
    res = ROOT / "benchmarks" / "results"
    res.mkdir(parents=True, exist_ok=True)
    name = (f"nightly_tiled{args.tiled}.json" if args.tiled else f"nightly_copies{args.copies}.json"
            if args.copies else "nightly.json")
    (res / name).write_text(json.dumps(out, indent=2))
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
