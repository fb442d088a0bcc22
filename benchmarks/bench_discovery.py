"""Benchmark: mirror discovery at archive scale (issue 17, item 5).

Run: ``nice -n 10 .venv/bin/python benchmarks/bench_discovery.py [--entries 230000] [--new 100]``
-> ``benchmarks/results/discovery.json``.

A synthetic local mirror of ``--entries`` correctly named model files
(``pdb/data/structures/divided/mmCIF/{key}/{id}.cif.gz``), each a tiny gzipped mmCIF stating
``_exptl.method 'X-RAY DIFFRACTION'`` (as most of the PDB: judged from the record alone), is
discovered as the nightly does (:func:`rerefine.harvester.harvest.discover` with ``only_changed``,
the skips recorded in a project database by :func:`rerefine.flows.nightly.record_judgements`, then
:meth:`~rerefine.harvester.harvest.Discovery.remember`) three times with one download cache: the
first night (empty index: every file parsed and judged), a night after ``--new`` files were added,
and a night with no change. Reported per night: wall seconds of discovery, files parsed (counted),
entries judged (returned) and left out as judged before, project-database runs written and the
seconds that took, and the state file's size.

With ``--done N`` (issue 17, item 5: entries already done) the scenario is instead a mirror of
``N`` accepted EM entries (tiny mmCIF stating EM, 3.5 Å and an EMDB id; an EMDB header JSON copied
from the sample archive's EMD-30342 with the id changed; every map a hard link of its 338 KB map),
each with a ``done`` run in the project database made through ``reports.store.store_result`` (the
run key of the real files: model and map SHA-256). A first night judges them; then a night without
change is timed as the nightly hands entries over: discovery, ``record_judgements`` and
``leave_done`` (its one database query timed on its own). *Before* (main's code, every accepted
entry handed to a ``process_entry_task`` that fetches, checksums and finds it cached) is measured on
``--task-sample`` entries in one Prefect flow with the night's task runner for ``--workers 1`` after a
warm-up, and extrapolated to ``N`` (stated).
Result: ``benchmarks/results/discovery_done.json``.

Recording is timed on every row written, except on the first night, where only ``--record-sample``
rows are written (its total is that sample's seconds per row times the rows it would write). With
``--old`` a night of the previous behaviour (``only_changed=False``: every entry judged and every
skip written, as each night before) is measured on the same mirror for comparison.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

from rerefine.harvester import harvest
from rerefine.reports import db
from rerefine.harvester import mirror as mirror_mod
from rerefine.harvester.mirror import Mirror

REPO = Path(__file__).resolve().parent.parent
ALNUM = "0123456789abcdefghijklmnopqrstuvwxyz"


def pdb_ids():
    for d, a, b, c in itertools.product("123456789", ALNUM, ALNUM, ALNUM):
        yield f"{d}{a}{b}{c}"


def write_models(root: Path, pids) -> None:
    for pid in pids:
        p = root / Mirror.model_rel(pid)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(gzip.compress(f"data_{pid.upper()}\n_exptl.method 'X-RAY DIFFRACTION'\n".encode(), 1, mtime=0))


def night(root: Path, cache: Path, engine, *, only_changed: bool = True, record_sample: int | None = None) -> dict:
    from rerefine.flows import nightly as nightly_mod

    parsed = []
    real = mirror_mod.model_record

    def counting(path, pid):
        parsed.append(pid)
        return real(path, pid)

    mirror_mod.model_record = counting
    try:
        t = time.perf_counter()
        cands = harvest.discover(mirror=root, cache_dir=cache, only_changed=only_changed)
        seconds = time.perf_counter() - t
    finally:
        mirror_mod.model_record = real
    skips = [c for c in cands if c.status != "accepted"]
    sample = skips if record_sample is None else skips[:record_sample]
    todo = harvest.Discovery(sample, unchanged=cands.unchanged)
    todo.index_path, todo.root, todo.pending, todo.forget = cands.index_path, cands.root, [], []
    summary = {"rejected": [], "failed": []}
    t = time.perf_counter()
    nightly_mod.record_judgements(engine, todo, {}, summary)
    record_s = time.perf_counter() - t
    per_row = record_s / len(sample) if sample else 0.0
    t = time.perf_counter()
    kept = cands.remember() if only_changed else 0
    remember_s = time.perf_counter() - t
    return {"seconds": round(seconds, 2), "parsed": len(parsed), "judged": len(cands),
            "judged_before": cands.unchanged,
            "rejected": sum(c.status == "rejected" for c in cands),
            "db_rows_written": len(skips), "db_rows_timed": len(sample),
            "db_record_seconds": round(per_row * len(skips), 2), "db_seconds_per_row": round(per_row, 5),
            "judgements_kept": kept, "remember_seconds": round(remember_s, 2)}


def write_em_entries(root: Path, sample: Path, pids) -> list[str]:
    """Accepted EM entries: tiny model, EMDB header and a hard-linked map each; returns the ids."""
    header = json.loads((sample / Mirror.header_rels("EMD-30342")[1]).read_text())
    header.pop("_rerefine_sample", None)
    map_src = sample / Mirror.map_rel("EMD-30342", header["map"]["file"])
    out = []
    for i, pid in enumerate(pids):
        eid = f"EMD-{10000 + i}"
        fname = f"emd_{10000 + i}.map.gz"
        model = root / Mirror.model_rel(pid)
        model.parent.mkdir(parents=True, exist_ok=True)
        model.write_bytes(gzip.compress(
            (f"data_{pid.upper()}\n_exptl.method 'ELECTRON MICROSCOPY'\n_em_3d_reconstruction.resolution 3.5\n"
             f"_entity.type polymer\nloop_\n_pdbx_database_related.db_name\n_pdbx_database_related.db_id\n"
             f"_pdbx_database_related.content_type\nEMDB {eid} 'associated EM volume'\n").encode(), 1, mtime=0))
        h = root / Mirror.header_rels(eid)[1]
        h.parent.mkdir(parents=True, exist_ok=True)
        h.write_text(json.dumps({**header, "emdb_id": eid, "map": {**header["map"], "file": fname},
                                 "crossreferences": {"pdb_list": {"pdb_reference": [{"pdb_id": pid}]}}}))
        m = root / Mirror.map_rel(eid, fname)
        m.parent.mkdir(parents=True, exist_ok=True)
        os.link(map_src, m)
        out.append(pid)
    return out


def done_nights(args) -> dict:
    """The ``--done`` scenario (module docstring)."""
    import datetime as dt

    from rerefine.flows.prefect_home import configure_prefect

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        configure_prefect(tmp / "data", quiet=True)  # before Prefect is imported
        from prefect import flow

        from rerefine.flows import nightly as nightly_mod
        from rerefine.flows.pipeline import PipelineParams, file_sha256
        from rerefine.harvester import sample_archive
        from rerefine.reports import store

        root, cache, sample = tmp / "mirror", tmp / "cache", tmp / "sample"
        sample_archive.build(sample, Path(os.environ.get("RR_TEST_DATA", REPO.parent / "shared" / "data")))
        database = f"sqlite:///{tmp / 'rerefine.sqlite'}"
        db.upgrade(database)
        engine = db.make_engine(database)
        params = PipelineParams().to_dict()
        t = time.perf_counter()
        pids = write_em_entries(root, sample, itertools.islice(pdb_ids(), args.done))
        build_s = time.perf_counter() - t

        def hand_off():
            t0 = time.perf_counter()
            found = harvest.discover(mirror=root, cache_dir=cache, only_changed=True)
            t1 = time.perf_counter()
            summary = {"rejected": [], "failed": []}
            accepted = nightly_mod.record_judgements(engine, found, params, summary)
            t2 = time.perf_counter()
            todo = nightly_mod.leave_done(engine, found, accepted, params, summary)
            t3 = time.perf_counter()
            return todo, {"accepted": len(accepted), "handed_to_tasks": len(todo),
                          "done_before": summary["done_before"], "discovery_seconds": round(t1 - t0, 2),
                          "record_judgements_seconds": round(t2 - t1, 2), "leave_done_seconds": round(t3 - t2, 3),
                          "db_query_seconds": summary["done_query_seconds"], "seconds": round(t3 - t0, 2)}

        first_todo, first = hand_off()
        assert first["accepted"] == args.done, first
        t = time.perf_counter()
        map_sha = file_sha256(sample / Mirror.map_rel("EMD-30342", "emd_30342.map.gz"))
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        for c in first_todo:
            files = [{"role": "model", "path": c["pdb_id"],
                      "sha256": file_sha256(root / Mirror.model_rel(c["pdb_id"]))},
                     {"role": "map", "path": c["emdb_id"], "sha256": map_sha}]
            store.store_result(engine, entry={"pdb_id": c["pdb_id"], "emdb_id": c["emdb_id"]},
                               pipeline_version=nightly_mod.__version__, params=params, status="done",
                               input_files=files, started_at=now, finished_at=now)
        store_s = time.perf_counter() - t
        _todo, after = hand_off()
        _todo, after2 = hand_off()

        ctx = {"database": database, "out_root": str(tmp / "data"), "monlib": None, "top8000": None,
               "version": nightly_mod.__version__, "params": params, "force": False, "cache_dir": str(cache),
               "mirror": str(root), "files_url": None, "emdb_files_url": None, "max_map_mb": 2048.0,
               "user_agent": "rerefine-bench", "http_timeout": 10.0, "http_total_timeout": 60.0,
               "entry_memory_mb": 0.0, "entry_seconds": 0.0}
        warm, timed = first_todo[:5], first_todo[5:5 + args.task_sample]

        # the night's own task runner for one worker (threads, one at a time)
        @flow(name="bench-old-hand-off", task_runner=nightly_mod.make_task_runner(1, None))
        def old_hand_off(warm, timed, ctx):
            [f.result() for f in [nightly_mod.process_entry_task.submit(c, ctx) for c in warm]]
            t0 = time.perf_counter()
            res = [f.result() for f in [nightly_mod.process_entry_task.submit(c, ctx) for c in timed]]
            return time.perf_counter() - t0, res

        with nightly_mod.without_heartbeats():
            task_s, res = old_hand_off(warm, timed, ctx)
        statuses = sorted({r["status"] for r in res})
        per_entry = task_s / len(timed)
        engine.dispose()
    return {"done_entries": args.done, "mirror_build_seconds": round(build_s, 1),
            "store_done_runs_seconds": round(store_s, 1), "load_average": os.getloadavg(),
            "first_night": first, "night_without_change": after, "night_without_change_again": after2,
            "before": {"how": f"main's code: every accepted entry handed to process_entry_task; {len(timed)} "
                              f"entries timed in one flow after {len(warm)} warm-up, extrapolated to {args.done}",
                       "task_statuses": statuses, "sample_seconds": round(task_s, 2),
                       "seconds_per_entry": round(per_entry, 4),
                       "night_seconds_extrapolated": round(after["discovery_seconds"]
                                                           + after["record_judgements_seconds"]
                                                           + per_entry * args.done, 1)}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--done", type=int, default=0,
                    help="instead: a night over this many accepted entries already done (see the docstring)")
    ap.add_argument("--task-sample", type=int, default=100, help="--done: entries timed through the old tasks")
    ap.add_argument("--entries", type=int, default=230_000)
    ap.add_argument("--new", type=int, default=100)
    ap.add_argument("--record-sample", type=int, default=2000,
                    help="rows recorded (and timed) in the database on the first night")
    ap.add_argument("--old", action="store_true", help="also a night of the previous behaviour (all judged)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "discovery.json"))
    args = ap.parse_args()
    if args.done:
        out = done_nights(args)
        path = Path(args.out).with_name("discovery_done.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1))
        print(json.dumps(out, indent=1))
        return
    ids = pdb_ids()
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "mirror", Path(tmp) / "cache"
        database = f"sqlite:///{Path(tmp) / 'rerefine.sqlite'}"
        db.upgrade(database)
        engine = db.make_engine(database)
        t = time.perf_counter()
        write_models(root, itertools.islice(ids, args.entries))
        build_s = time.perf_counter() - t
        first = night(root, cache, engine, record_sample=args.record_sample)
        write_models(root, itertools.islice(ids, args.new))
        later = night(root, cache, engine)
        unchanged = night(root, cache, engine)
        old = night(root, cache, engine, only_changed=False, record_sample=args.record_sample) if args.old else None
        index_mb = os.path.getsize(cache / harvest.MODEL_INDEX_NAME) / 2**20
        engine.dispose()
    out = {"entries": args.entries, "new": args.new, "mirror_build_seconds": round(build_s, 1),
           "load_average": os.getloadavg(),
           "first_night": first, "night_with_new_files": later, "night_without_change": unchanged,
           "old_night_without_change": old, "index_mb": round(index_mb, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
