"""Results database benchmark: insert 10,000 synthetic entries (~300 residues each) and time
the site's main queries, on SQLite and on PostgreSQL.

Run: ``/work/main/.venv/bin/python benchmarks/bench_db.py [--n 10000] [--pg-url URL | --no-pg]``.
Writes ``benchmarks/results/db.json``.

Goals (issue 8): the 10,000 inserts (one transaction per entry, through
:func:`rerefine.reports.store.store_result`) in under 60 s on SQLite; the index table,
the per-entry page and the version comparison each under 200 ms on that database.

Without ``--pg-url`` a throw-away PostgreSQL server is started from Debian's binaries
(``/usr/lib/postgresql/*/bin/pg_ctl``; as the ``postgres`` user when run as root).

Timings are medians of several runs. Because the machine is shared, each backend also
times a *reference*: the same payload (one entry row plus one JSON blob of its
residues, packed and JSON-encoded as ours is) written through the bare DB-API driver,
one commit per entry; the ratio
ours/reference is the part of the cost our layer adds and is less noisy than seconds.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import pwd
import random
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

from rerefine.reports import db, queries, store

HERE = Path(__file__).resolve().parent
RESNAMES = ("ALA", "GLY", "SER", "LEU", "PHE", "LYS", "GLU", "ASP", "VAL", "ILE")


def residue_pool(rng: random.Random, n_res: int, size: int = 16) -> list[tuple[list, list]]:
    """A few per-residue lists (before, after) reused round-robin: the DB does not care."""
    pool = []
    for _ in range(size):
        chains = "ABC"
        per = n_res // len(chains) + 1
        before, after = [], []
        for i in range(n_res):
            key = {"chain": chains[i // per], "seq": i % per + 1, "icode": "", "resname": rng.choice(RESNAMES)}
            cc, q, ai, b = rng.uniform(0.3, 0.9), rng.uniform(0.2, 0.8), rng.uniform(0.4, 1.0), rng.uniform(20, 150)
            before.append({**key, "cc": cc, "q_score": q, "atom_inclusion": ai, "b_iso": b})
            after.append({**key, "cc": min(cc + rng.gauss(0.02, 0.02), 1.0), "q_score": q + rng.gauss(0.01, 0.02),
                          "atom_inclusion": ai, "b_iso": b * rng.uniform(0.8, 1.1)})
        pool.append((before, after))
    return pool


def metric_set(rng: random.Random, cc: float, geometry_scale: float = 1.0) -> dict:
    return {"cc_mask": cc, "cc_box": cc - rng.uniform(0.05, 0.15), "cc_peaks": cc - rng.uniform(0.05, 0.2),
            "cc_volume": cc - rng.uniform(0.0, 0.05), "q_score": rng.uniform(0.2, 0.8), "q_score_expected": 0.55,
            "atom_inclusion": rng.uniform(0.5, 0.98), "atom_inclusion_backbone": rng.uniform(0.6, 0.99),
            "contour": rng.uniform(0.01, 0.1), "bond_rmsd": 0.008 * geometry_scale,
            "angle_rmsd": 1.1 * geometry_scale, "chirality_rmsd": 0.06, "planarity_rmsd": 0.004,
            "nonbonded_overlaps": rng.randint(0, 80), "resolution": 3.0, "q_sigma": 0.6,
            "contour_source": "emdb", "per_chain": {"A": {"cc": cc, "q_score": 0.5}}}


def synthetic_result(i: int, version: str, rng: random.Random, pool) -> dict:
    # The deposited model's figures depend only on the entry; the change depends on the
    # version: 1.1 gains 0.005 CCmask over 1.0 on most entries and loses on every 20th.
    erng = random.Random(i)
    res = 1.8 + (i * 7919 % 3300) / 1000.0  # 1.8-5.1 Å
    cc0 = erng.uniform(0.45, 0.85)
    d = erng.gauss(0.015, 0.01)
    before_metrics = metric_set(erng, cc0)
    if version != "1.0":
        d = -0.03 if i % 20 == 0 else d + 0.005 + rng.gauss(0, 0.002)
    before, after = pool[i % len(pool)]
    after_metrics = metric_set(rng, cc0 + d, 0.95)
    after_metrics["nonbonded_overlaps"] = max(0, before_metrics["nonbonded_overlaps"] - 2)
    return dict(
        entry={"pdb_id": f"B{i:05d}", "emdb_id": str(10000 + i),
               "title": f"Synthetic complex {i} <with> & escapes", "release_date": f"20{18 + i % 7}-0{1 + i % 9}-15",
               "resolution": res, "method": "single particle", "deposited": {"cc_mask": cc0}},
        pipeline_version=version, params={"cycles": 5, "weight": "auto", "version": version},
        git_commit="0123456789abcdef", status="done" if i % 50 else "failed",
        reason=None if i % 50 else "map download failed: HTTP 503",
        timings={"fetch": 2.0, "sharpen": 8.0, "refine": 40.0, "metrics": 5.0},
        metrics_before=before_metrics, metrics_after=after_metrics,
        per_residue_before=before, per_residue_after=after,
        sharpening={"b_iso_before": rng.uniform(50, 150), "b_iso_after": 20.0, "b_sharpen": -60.0, "method": "auto"},
        artefacts=[{"kind": k, "path": f"/data/{i}/{k}", "size": 1000 + i, "sha256": "a" * 64}
                   for k in ("refined_model", "sharpened_map", "difference_map")],
        input_files=[{"role": r, "path": f"/in/{i}/{r}", "size": 5000 + i, "sha256": f"{r}{i:060d}"[:64]}
                     for r in ("model", "map")],
    )


def insert_all(engine, n: int, version: str, rng: random.Random, pool) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        store.store_result(engine, **synthetic_result(i, version, rng, pool))
    return time.perf_counter() - t0


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    fn()  # warm-up (statement compilation, page cache)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts


def reference_insert(url: str, n: int, pool) -> float:
    """The same payload through the bare driver: entry row + residues JSON, commit per entry."""
    # Packing and JSON-encoding the residues is part of the necessary work: done per entry.
    def blob(i: int) -> str:
        b, a = pool[i % len(pool)]
        return json.dumps(store.pack_residues(b, a))

    if url.startswith("sqlite"):
        import sqlite3

        path = Path(url.split("///", 1)[1])
        path.unlink(missing_ok=True)
        con = sqlite3.connect(path, isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        con.execute("CREATE TABLE e (id INTEGER PRIMARY KEY, pdb TEXT UNIQUE, cc REAL)")
        con.execute("CREATE TABLE r (id INTEGER PRIMARY KEY REFERENCES e(id), data TEXT)")
        t0 = time.perf_counter()
        for i in range(n):
            con.execute("BEGIN")
            eid = con.execute("INSERT INTO e (pdb, cc) VALUES (?, ?) RETURNING id", (f"R{i}", 0.5)).fetchone()[0]
            con.execute("INSERT INTO r (id, data) VALUES (?, ?)", (eid, blob(i)))
            con.execute("COMMIT")
        dt = time.perf_counter() - t0
        con.close()
        return dt
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as con:
        con.execute("DROP TABLE IF EXISTS ref_r; DROP TABLE IF EXISTS ref_e")
        con.execute("CREATE TABLE ref_e (id SERIAL PRIMARY KEY, pdb TEXT UNIQUE, cc REAL)")
        con.execute("CREATE TABLE ref_r (id INTEGER PRIMARY KEY REFERENCES ref_e(id), data JSON)")
        con.commit()
        t0 = time.perf_counter()
        for i in range(n):
            eid = con.execute("INSERT INTO ref_e (pdb, cc) VALUES (%s, %s) RETURNING id", (f"R{i}", 0.5)).fetchone()[0]
            con.execute("INSERT INTO ref_r (id, data) VALUES (%s, %s)", (eid, blob(i)))
            con.commit()
        dt = time.perf_counter() - t0
        con.execute("DROP TABLE ref_r; DROP TABLE ref_e")
        con.commit()
        return dt


def bench_backend(name: str, url: str, n: int, n_res: int, repeats: int, ref_n: int) -> dict:
    rng = random.Random(8)
    pool = residue_pool(rng, n_res)
    engine = db.make_engine(url)
    db.upgrade(engine)
    out: dict = {"backend": name, "n_entries": n, "residues_per_entry": n_res}
    out["insert_v1_s"] = insert_all(engine, n, "1.0", rng, pool)
    out["insert_v1_per_entry_ms"] = 1000 * out["insert_v1_s"] / n
    out["insert_v2_s"] = insert_all(engine, n, "1.1", rng, pool)
    t0 = time.perf_counter()
    db.analyze(engine)  # what autovacuum (PostgreSQL) would do after the bulk load; timed separately
    out["analyze_s"] = time.perf_counter() - t0
    print(f"[{name}] inserted {n} entries: {out['insert_v1_s']:.1f} s (v1.0), {out['insert_v2_s']:.1f} s (v1.1)",
          flush=True)
    ids = [r["pdb_id"] for r in queries.latest_results(engine, limit=n)]
    picks = random.Random(1).sample(ids, min(50, len(ids)))
    it = iter(picks * (repeats + 2))

    timed = {
        "index_table_all": lambda: queries.latest_results(engine),
        "index_table_page100": lambda: queries.latest_results(engine, limit=100, offset=n // 2),
        "entry_page": lambda: queries.entry_detail(engine, next(it)),
        "version_comparison": lambda: queries.compare_versions(engine, "1.0", "1.1"),
        "distributions": lambda: queries.distributions(engine, "1.1"),
        "metric_values": lambda: queries.metric_values(engine),
        "versions": lambda: queries.versions(engine),
        "stats": lambda: queries.stats(engine),
    }
    out["queries_ms"] = {}
    for key, fn in timed.items():
        med, ts = median_time(fn, repeats)
        out["queries_ms"][key] = {"median": 1000 * med, "runs": [round(1000 * t, 2) for t in ts]}
        print(f"[{name}] {key:<22} median {1000 * med:8.1f} ms", flush=True)
    # entry page over many different entries (cold-ish rows): median of 50 distinct ids
    ts = []
    for pid in picks:
        t0 = time.perf_counter()
        queries.entry_detail(engine, pid)
        ts.append(time.perf_counter() - t0)
    out["queries_ms"]["entry_page_50_distinct"] = {"median": 1000 * statistics.median(ts),
                                                   "max": 1000 * max(ts)}
    # Reference for the query figures: the bare driver fetching n rows of the metrics table
    # (same row count as the index, half its columns), timed in the same minutes.
    def ref_fetch():
        with engine.connect() as c:
            cur = c.connection.dbapi_connection.cursor()
            cur.execute(f"SELECT * FROM metrics LIMIT {n}")
            cur.fetchall()
            cur.close()

    med, _ = median_time(ref_fetch, repeats)
    out["queries_ms"]["reference_fetch_metrics"] = {"median": 1000 * med}
    out["query_ratios_over_reference"] = {
        k: out["queries_ms"][k]["median"] / (1000 * med)
        for k in ("index_table_all", "entry_page", "version_comparison")}
    cmp = queries.compare_versions(engine, "1.0", "1.1")
    out["comparison"] = {"n_common": cmp["n_common"], "n_worse": len(cmp["worse"])}
    if name == "sqlite":
        path = Path(url.split("///", 1)[1])
        out["db_size_mb"] = round(sum(p.stat().st_size for p in path.parent.glob(path.name + "*")) / 2**20, 1)
    engine.dispose()

    ref_url = url if name == "postgresql" else db.sqlite_url(Path(url.split("///", 1)[1]).with_name("ref.sqlite"))
    ref = reference_insert(ref_url, ref_n, pool)
    ours_per = out["insert_v1_s"] / n
    out["reference_insert"] = {"n": ref_n, "seconds": ref, "per_entry_ms": 1000 * ref / ref_n,
                               "ratio_ours_over_reference": ours_per / (ref / ref_n)}
    out["goals"] = {
        "insert_10k_under_60s": out["insert_v1_s"] * 10000 / n < 60.0,
        "index_entry_comparison_under_200ms": all(
            out["queries_ms"][k]["median"] < 200 for k in ("index_table_all", "entry_page", "version_comparison")),
    }
    return out


def start_postgres(workdir: Path):
    """A throw-away PostgreSQL server; returns (executor, url) or (None, reason)."""
    ctls = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not ctls:
        return None, "no /usr/lib/postgresql/*/bin/pg_ctl"
    from pytest_postgresql.executors import PostgreSQLExecutor

    exe = ctls[-1]
    data = workdir / "pg"
    data.mkdir(parents=True)
    user = pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() == 0:  # initdb refuses root: run the server as the postgres user
        pw = pwd.getpwnam("postgres")
        for d in (workdir.parent, workdir):  # our own temp dirs: let the server user traverse them
            os.chmod(d, 0o755)
        os.chown(data, pw.pw_uid, pw.pw_gid)
        wrapper = workdir / "pg_ctl"
        wrapper.write_text(f'#!/bin/sh\nexec setpriv --reuid={pw.pw_uid} --regid={pw.pw_gid} --init-groups "{exe}" "$@"\n')
        wrapper.chmod(0o755)
        exe, user = str(wrapper), "postgres"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ex = PostgreSQLExecutor(executable=exe, host="127.0.0.1", port=port, user=user, password=None,
                            dbname="bench", options="", datadir=str(data / "cluster"), unixsocketdir=str(data),
                            logfile=str(data / "server.log"), startparams="-w", postgres_options="")
    ex.start()
    ex.wait_for_postgres()
    import psycopg

    with psycopg.connect(f"postgresql://{user}@127.0.0.1:{port}/postgres", autocommit=True) as con:
        con.execute("CREATE DATABASE rr_bench")
    return ex, f"postgresql+psycopg://{user}@127.0.0.1:{port}/rr_bench"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--residues", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--ref-n", type=int, default=2000, help="entries in the reference insert")
    ap.add_argument("--pg-url", help="use this (empty) PostgreSQL database instead of starting one")
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "db.json"))
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rr-benchdb-"))
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "platform": platform.platform()},
                     "settings": vars(args), "backends": {}}
    try:
        results["backends"]["sqlite"] = bench_backend("sqlite", db.sqlite_url(work / "bench.sqlite"), args.n,
                                                      args.residues, args.repeats, args.ref_n)
        if not args.no_pg:
            executor, pg = (None, args.pg_url) if args.pg_url else start_postgres(work / "pgwork")
            if executor is None and not args.pg_url:
                results["backends"]["postgresql"] = {"skipped": pg}
                print(f"[postgresql] skipped: {pg}")
            else:
                try:
                    results["backends"]["postgresql"] = bench_backend("postgresql", pg, args.n, args.residues,
                                                                      args.repeats, args.ref_n)
                finally:
                    if executor is not None:
                        executor.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
