"""Results database: schema/migrations, store, queries, verdict, crash safety, CLI.

Every database test runs on SQLite and on a real PostgreSQL server started by
pytest-postgresql from Debian's binaries (``/usr/lib/postgresql/*/bin/pg_ctl``); the
PostgreSQL variants are skipped, saying why, only when no ``pg_ctl`` exists (and fail
under CI, where a missing server is a broken set-up).
"""

from __future__ import annotations

import glob
import json
import math
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ci import missing  # noqa: E402  (tests/ is on sys.path under pytest)
from rerefine.common.errors import InputError
from rerefine.reports import db, queries, store
from rerefine.reports.verdict import decide, got_worse

PG_CTLS = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
PG_CTL = PG_CTLS[-1] if PG_CTLS else None
NO_PG = ("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/pg_ctl); "
         "install Debian's `postgresql` package (.ci/run does) to run the PostgreSQL tests")


# ----------------------------------------------------------------------------- PostgreSQL server

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if PG_CTL and os.geteuid() != 0:
    from pytest_postgresql import factories

    postgresql_server = factories.postgresql_proc(executable=PG_CTL, host="127.0.0.1", port=None)
else:
    @pytest.fixture(scope="session")
    def postgresql_server():
        """PostgreSQL for a root session: initdb refuses to run as root, so pg_ctl runs as
        the ``postgres`` system user through a wrapper, on a data directory it owns."""
        if not PG_CTL:
            missing(NO_PG)
        from pytest_postgresql.executors import PostgreSQLExecutor

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            missing("running as root and there is no `postgres` user to run the server as")
        base = Path(tempfile.mkdtemp(prefix="rr-pgtest-"))
        os.chmod(base, 0o755)
        (base / "data").mkdir()
        os.chown(base / "data", pw.pw_uid, pw.pw_gid)
        wrapper = base / "pg_ctl"
        wrapper.write_text(f'#!/bin/sh\nexec setpriv --reuid={pw.pw_uid} --regid={pw.pw_gid} '
                           f'--init-groups "{PG_CTL}" "$@"\n')
        wrapper.chmod(0o755)
        log = base / "data" / "server.log"
        executor = PostgreSQLExecutor(
            executable=str(wrapper), host="127.0.0.1", port=_free_port(), user="postgres",
            password=None, dbname="rr_tests", options="", datadir=str(base / "data" / "pg"),
            unixsocketdir=str(base / "data"), logfile=str(log), startparams="-w",
            postgres_options="",
        )
        executor.start()
        executor.wait_for_postgres()
        try:
            yield executor
        finally:
            executor.stop()
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(request, tmp_path):
    """URL of a fresh, empty PostgreSQL database (dropped after the test)."""
    if not PG_CTL:
        missing(NO_PG)
    server = request.getfixturevalue("postgresql_server")
    from pytest_postgresql.janitor import DatabaseJanitor

    name = f"rr_{tmp_path.name.lower().replace('-', '_')[:40]}_{os.getpid()}"
    janitor = DatabaseJanitor(user=server.user, host=server.host, port=server.port, dbname=name,
                              password=server.password)
    janitor.init()
    try:
        yield f"postgresql+psycopg://{server.user}@{server.host}:{server.port}/{name}"
    finally:
        janitor.drop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request, tmp_path):
    if request.param == "sqlite":
        return db.sqlite_url(tmp_path / "results.sqlite")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def engine(url):
    eng = db.make_engine(url)
    db.upgrade(eng)
    yield eng
    eng.dispose()


# ----------------------------------------------------------------------------- synthetic results

def residues(n: int, rng: random.Random, chains: str = "AB") -> list[dict]:
    out = []
    per = max(1, n // len(chains))
    for i in range(n):
        out.append({"chain": chains[min(i // per, len(chains) - 1)], "seq": i % per + 1, "icode": "",
                    "resname": rng.choice(["ALA", "GLY", "SER", "PHE"]), "cc": rng.uniform(0.3, 0.9),
                    "q_score": rng.uniform(0.2, 0.8), "atom_inclusion": rng.uniform(0.5, 1.0),
                    "b_iso": rng.uniform(20, 120)})
    return out


def metrics(rng: random.Random, cc: float, **over) -> dict:
    m = {"cc_mask": cc, "cc_box": cc - 0.08, "cc_peaks": cc - 0.1, "cc_volume": cc - 0.03,
         "q_score": 0.5, "q_score_expected": 0.55, "atom_inclusion": rng.uniform(0.6, 0.95),
         "atom_inclusion_backbone": rng.uniform(0.7, 0.99), "contour": 0.02, "bond_rmsd": 0.008,
         "angle_rmsd": 1.1, "chirality_rmsd": 0.05, "planarity_rmsd": 0.004, "nonbonded_overlaps": 12,
         "resolution": 3.0, "per_chain": {"A": {"cc": cc, "q_score": 0.5}},
         # the verdict's other figures (reports/verdict.py): the coordinates' own fit follows
         # CCmask here, the validation stays as it was
         "cc_mask_input_b": cc, "rama_favored_pct": 96.0, "rama_outliers": 1, "rotamer_outliers_pct": 1.0,
         "cbeta_outliers": 0, "clashscore": 4.0}
    m.update(over)
    return m


def entry(i: int, **over) -> dict:
    e = {"pdb_id": f"X{i:04d}", "emdb_id": str(10000 + i), "title": f"Entry {i}",
         "release_date": "2024-03-01", "resolution": 2.0 + (i % 30) / 10, "method": "single particle",
         "deposited": {"cc_mask": 0.7}}
    e.update(over)
    return e


def store_one(engine, i, version="1.0", params=None, cc0=0.70, cc1=0.75, rng=None, n_res=20, **kw):
    rng = rng or random.Random(i)
    kw.setdefault("input_files", [{"role": "model", "path": f"/d/{i}.cif", "size": 10, "sha256": f"m{i}"},
                                  {"role": "map", "path": f"/d/{i}.map", "size": 99, "sha256": f"p{i}"}])
    return store.store_result(
        engine, entry=entry(i), pipeline_version=version, params={"cycles": 5} if params is None else params,
        status=kw.pop("status", "done"), timings={"refine": 1.5, "metrics": 0.5},
        metrics_before=metrics(rng, cc0), metrics_after=metrics(rng, cc1),
        per_residue_before=residues(n_res, rng), per_residue_after=residues(n_res, rng),
        artefacts=[{"kind": "refined_model", "path": f"/o/{i}.cif", "size": 5, "sha256": "ab"}],
        sharpening={"b_iso_before": 95.0, "b_iso_after": 20.0, "b_sharpen": -75.0, "method": "auto"}, **kw)


def count(engine, table) -> int:
    with engine.connect() as c:
        return c.execute(select(func.count()).select_from(table)).scalar_one()


# ----------------------------------------------------------------------------- schema

def test_upgrade_creates_the_models_schema_and_is_repeatable(engine):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    assert db.current_revision(engine) == db.head_revision() == "0002_fit_validation"
    with engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), db.metadata)
    assert diff == [], f"migration and models disagree: {diff}"
    assert db.upgrade(engine) == "0002_fit_validation"  # second upgrade is a no-op


def test_upgrade_of_a_populated_0001_database(url):
    """The first upgrade of an existing database: a database written at revision 0001 (the schema
    of pipeline 0.2.x), with an entry, a version, a done run with its metrics, full metrics,
    residues, inputs and artefacts and a failed run, is upgraded to head; every row survives, the
    new columns exist (NULL for the old runs), the old verdict is kept, and the upgraded database
    takes new results and serves the site's queries."""
    import sqlalchemy as sa

    eng = db.make_engine(url)
    assert db.upgrade(eng, "0001_initial") == "0001_initial"
    meta = sa.MetaData()
    meta.reflect(eng)  # the tables as revision 0001 made them, not as db.py now describes them
    t = meta.tables
    assert "verdict_gate" not in t["runs"].c and "clashscore_after" not in t["metrics"].c
    now = store._utcnow()
    before = {"cc_mask": 0.70, "q_score": 0.50, "bond_rmsd": 0.008, "angle_rmsd": 1.1,
              "per_chain": {"A": {"cc": 0.7, "q_score": 0.5}}}
    after = {**before, "cc_mask": 0.75}
    with db.writer(eng) as c, c.begin():  # no explicit ids: PostgreSQL's sequences must advance
        eid = c.execute(t["entries"].insert().values(pdb_id="7OLD", emdb_id="EMD-1", title="old <b>",
                                                     resolution=3.1, updated_at=now)).inserted_primary_key[0]
        vid = c.execute(t["pipeline_versions"].insert().values(
            version="0.2.1", params_hash="h", params={"cycles": 5}, created_at=now)).inserted_primary_key[0]
        run = {"entry_id": eid, "pipeline_version_id": vid, "finished_at": now, "updated_at": now}
        c.execute(t["runs"].insert().values(**run, inputs_hash="b", status="failed",
                                            reason="7OLD: map is truncated"))
        rid = c.execute(t["runs"].insert().values(**run, inputs_hash="a", status="done", verdict="improved",
                                                  timings={"refine": 3.0})).inserted_primary_key[0]
        c.execute(t["metrics"].insert().values(run_id=rid, cc_mask_before=0.70, cc_mask_after=0.75,
                                               q_score_before=0.50, q_score_after=0.50, bond_rmsd_after=0.008))
        c.execute(t["metrics_full"].insert().values(run_id=rid, before=before, after=after))
        c.execute(t["residue_metrics"].insert().values(run_id=rid, n_residues=2, data={
            "chain": ["A", "A"], "seq": [1, 2], "icode": ["", ""], "resname": ["ALA", "GLY"],
            "cc_before": [0.5, 0.6], "cc_after": [0.55, 0.65]}))
        c.execute(t["input_files"].insert().values(run_id=rid, role="model", path="/i/m.cif", size=1, sha256="x"))
        c.execute(t["artefacts"].insert().values(run_id=rid, kind="refined_model", path="/o/m.cif", size=2))

    assert db.upgrade(eng) == "0002_fit_validation"
    with eng.connect() as c:
        cols = {x["name"] for x in sa.inspect(c).get_columns("metrics")}
        assert {"cc_mask_input_b_after", "fsc_avg_free_before", "clashscore_after", "rama_outliers_before"} <= cols
        assert "verdict_gate" in {x["name"] for x in sa.inspect(c).get_columns("runs")}
        assert c.execute(sa.select(func.count()).select_from(db.T_RUNS)).scalar() == 2
    d = queries.entry_detail(eng, "7old")
    run = d["run"]
    assert d["entry"]["title"] == "old <b>" and run["run_id"] == rid and run["status"] == "done"
    assert (run["verdict"], run["verdict_gate"]) == ("improved", None)  # judged by its own version's rule
    assert run["verdict_reasons"] == [queries.OLD_RULE]
    assert run["cc_mask_after"] == pytest.approx(0.75) and run["clashscore_after"] is None
    assert run["before"]["per_chain"] == before["per_chain"] and run["timings"] == {"refine": 3.0}
    assert [r["cc_after"] for r in run["per_residue"]] == [0.55, 0.65]
    assert run["inputs"][0]["sha256"] == "x" and run["artefacts"][0]["kind"] == "refined_model"
    assert [h["status"] for h in d["history"]] == ["done", "failed"]
    # new results go into the upgraded database, with the new figures and the deciding gate
    rid = store_one(eng, 2, version="0.3.0")
    new = queries.entry_detail(eng, entry(2)["pdb_id"])["run"]
    assert new["run_id"] == rid and new["verdict_gate"] is not None and new["clashscore_after"] == 4.0
    assert len(queries.latest_results(eng)) == 2
    eng.dispose()


def test_sqlite_connection_settings(tmp_path):
    eng = db.make_engine(db.sqlite_url(tmp_path / "sub" / "x.sqlite"))
    with eng.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    db.upgrade(eng)
    with pytest.raises(Exception):  # a run pointing at no entry is refused (foreign keys on)
        with db.writer(eng) as c, c.begin():
            c.execute(db.T_RUNS.insert().values(entry_id=99, pipeline_version_id=99, inputs_hash="",
                                                status="done", updated_at=store._utcnow()))
    eng.dispose()


def test_make_engine_rejects_bad_urls():
    with pytest.raises(InputError, match="empty"):
        db.make_engine("")
    with pytest.raises(InputError, match="only sqlite and postgresql"):
        db.make_engine("mysql://x@y/z")
    assert db.make_engine("postgresql://u@h/d").url.drivername == "postgresql+psycopg"


# ----------------------------------------------------------------------------- store + queries

def test_store_and_read_back(engine):
    rng = random.Random(1)
    before, after = metrics(rng, 0.70, q_score=0.45), metrics(rng, 0.76, q_score=0.50)
    rb, ra = residues(30, rng), residues(30, rng)
    rid = store.store_result(
        engine, entry=entry(1, title="<script>alert(1)</script>"), pipeline_version="1.0",
        params={"cycles": 5, "weight": "auto"}, status="done", timings={"refine": 12.0},
        metrics_before=before, metrics_after=after, per_residue_before=rb, per_residue_after=ra,
        artefacts=[{"kind": "refined_model", "path": "/o/a.cif", "size": 5, "sha256": "ab"},
                   {"kind": "difference_map", "path": "/o/d.mrc", "size": 7, "sha256": "cd"}],
        input_files=[{"role": "model", "path": "/i/a.cif", "size": 3, "sha256": "ef"}],
        sharpening={"b_iso_before": 95.0, "b_iso_after": 20.0, "b_sharpen": -75.0, "method": "auto"},
        git_commit="abc123", host="node1")
    rows = queries.latest_results(engine)
    assert len(rows) == 1
    r = rows[0]
    assert (r["pdb_id"], r["emdb_id"], r["status"], r["run_id"]) == ("X0001", "EMD-10001", "done", rid)
    assert r["title"] == "<script>alert(1)</script>"  # stored verbatim; escaping is the site's job
    assert r["cc_mask_before"] == pytest.approx(0.70) and r["cc_mask_after"] == pytest.approx(0.76)
    assert r["d_cc_mask"] == pytest.approx(0.06) and r["d_q_score"] == pytest.approx(0.05)
    assert r["verdict"] == "improved" and r["b_sharpen"] == -75.0 and r["sharpening_method"] == "auto"

    d = queries.entry_detail(engine, "x0001")
    assert d["entry"]["resolution"] == pytest.approx(2.1) and str(d["entry"]["release_date"]) == "2024-03-01"
    run = d["run"]
    assert run["recommended"] == "rerefined" and run["git_commit"] == "abc123" and run["host"] == "node1"
    assert run["params"] == {"cycles": 5, "weight": "auto"} and run["timings"] == {"refine": 12.0}
    assert run["before"]["per_chain"] == before["per_chain"] and "per_residue" not in run["before"]
    assert [a["kind"] for a in run["artefacts"]] == ["refined_model", "difference_map"]
    assert run["inputs"] == [{"role": "model", "path": "/i/a.cif", "size": 3, "sha256": "ef"}]
    res = run["per_residue"]
    assert len(res) == 30 and res == queries.per_residue(engine, rid)
    for got, b, a in zip(res, rb, ra):
        assert (got["chain"], got["seq"], got["resname"]) == (b["chain"], b["seq"], b["resname"])
        assert got["cc_before"] == pytest.approx(b["cc"], abs=5e-5)
        assert got["q_score_after"] == pytest.approx(a["q_score"], abs=5e-5)
        assert got["b_iso_after"] == pytest.approx(a["b_iso"], abs=5e-3)
    assert [h["run_id"] for h in d["history"]] == [rid]
    assert queries.entry_detail(engine, "NONE") is None


def test_real_reference_figures_round_trip(engine, test_data):
    """cctbx's figures for the real pairs (reference JSON) survive storage unchanged."""
    ref = json.loads((test_data / "reference" / "cctbx_reference.json").read_text())
    for i, (name, r) in enumerate((k, v) for k, v in ref.items() if not k.startswith("_")):
        per_res = [{"chain": x["chain"], "seq": x["resseq"], "icode": x["icode"], "resname": x["resname"],
                    "cc": x["cc"], "q_score": x["q"]} for x in r["per_residue"]]
        m = {k: r[k] for k in ("cc_mask", "cc_box", "cc_volume", "cc_peaks", "q_score")}
        store.store_result(engine, entry={"pdb_id": f"R{i:03d}", "title": name, "resolution": r["resolution"]},
                           pipeline_version="ref", params={"tool": "cctbx"}, status="done",
                           metrics_before=m, metrics_after=m, per_residue_before=per_res)
        d = queries.entry_detail(engine, f"R{i:03d}")
        for k in m:
            assert d["run"][f"{k}_before"] == pytest.approx(r[k], abs=1e-12)
        assert d["run"]["verdict"] == "unchanged"  # identical before/after: ΔCCmask 0 < 0.01
        got = d["run"]["per_residue"]
        assert len(got) == len(per_res)
        assert max(abs(g["q_score_before"] - x["q_score"]) for g, x in zip(got, per_res)) <= 5e-5
        assert [(g["chain"], g["seq"]) for g in got] == [(x["chain"], x["seq"]) for x in per_res]


def test_non_finite_and_numpy_values_are_stored_as_null(engine):
    np = pytest.importorskip("numpy")
    m = {"cc_mask": np.float32(0.7), "q_score": float("nan"), "arr": np.arange(3), "bond_rmsd": math.inf}
    store.store_result(engine, entry=entry(2), pipeline_version="1", status="done",
                       metrics_before=m, metrics_after=dict(m, cc_mask=np.float64(0.8)))
    d = queries.entry_detail(engine, entry(2)["pdb_id"])["run"]
    assert d["cc_mask_before"] == pytest.approx(0.7) and d["q_score_before"] is None
    assert d["bond_rmsd_after"] is None and d["before"]["arr"] == [0, 1, 2] and d["before"]["q_score"] is None


def test_same_key_is_idempotent_and_other_inputs_or_params_are_new_runs(engine):
    r1 = store_one(engine, 1, cc1=0.75)
    r2 = store_one(engine, 1, cc1=0.80)  # same entry, version, params and inputs: replaced
    assert r1 == r2
    assert [count(engine, t) for t in (db.T_RUNS, db.T_METRICS, db.T_RESIDUES, db.T_ARTEFACTS, db.T_INPUTS)] \
        == [1, 1, 1, 1, 2]
    assert queries.latest_results(engine)[0]["cc_mask_after"] == pytest.approx(0.80)
    r3 = store_one(engine, 1, input_files=[{"role": "model", "path": "x", "sha256": "other"}])
    r4 = store_one(engine, 1, params={"cycles": 10})
    assert len({r1, r3, r4}) == 3 and count(engine, db.T_VERSIONS) == 2 and count(engine, db.T_ENTRIES) == 1
    assert store.is_done(engine, pdb_id=entry(1)["pdb_id"], pipeline_version="1.0", params={"cycles": 5},
                         input_files=[{"role": "map", "sha256": "p1"}, {"role": "model", "sha256": "m1"}])
    assert not store.is_done(engine, pdb_id=entry(1)["pdb_id"], pipeline_version="1.1")
    # a later call without a title keeps the stored one
    store.store_result(engine, entry={"pdb_id": entry(1)["pdb_id"]}, pipeline_version="1.0", status="skipped",
                       reason="no map")
    assert queries.entry_detail(engine, entry(1)["pdb_id"])["entry"]["title"] == "Entry 1"


def test_running_then_crash_is_recovered_as_failed_and_retry_completes(engine):
    files = [{"role": "model", "path": "/d/a.cif", "sha256": "aa"}]
    rid = store.mark_running(engine, entry=entry(3), pipeline_version="1.0", params={}, input_files=files)
    row = queries.latest_results(engine)[0]
    assert row["status"] == "running" and row["cc_mask_after"] is None
    assert store.recover_interrupted(engine) == 1
    d = queries.entry_detail(engine, entry(3)["pdb_id"])
    assert d["run"]["status"] == "failed" and "interrupted" in d["run"]["reason"]
    again = store.mark_running(engine, entry=entry(3), pipeline_version="1.0", params={}, input_files=files)
    assert again == rid
    done = store_one(engine, 3, params={}, input_files=files)
    assert done == rid and count(engine, db.T_RUNS) == 1
    assert queries.entry_detail(engine, entry(3)["pdb_id"])["run"]["status"] == "done"


def test_placeholder_without_checksums_is_adopted(engine):
    rid = store.mark_running(engine, entry=entry(4), pipeline_version="1.0", params={"cycles": 5})
    assert store_one(engine, 4) == rid and count(engine, db.T_RUNS) == 1
    store.mark_failed(engine, rid, "refinement diverged (energy NaN)")
    d = queries.entry_detail(engine, entry(4)["pdb_id"])["run"]
    assert d["status"] == "failed" and d["verdict"] is None and d["per_residue"] == [] and d["artefacts"] == []


def test_bad_input_is_a_one_line_error(engine):
    with pytest.raises(InputError, match="status 'finished'"):
        store.store_result(engine, entry=entry(1), pipeline_version="1", status="finished")
    with pytest.raises(InputError, match="no PDB id"):
        store.store_result(engine, entry={"title": "x"}, pipeline_version="1", status="done")
    with pytest.raises(InputError, match="not an ISO date"):
        store.store_result(engine, entry=entry(1, release_date="March"), pipeline_version="1", status="done")
    with pytest.raises(InputError, match="version string is empty"):
        store.store_result(engine, entry=entry(1), pipeline_version="", status="done")
    with pytest.raises(InputError, match=r"pipeline version '9' is not in the database \(known: none\)"):
        queries.compare_versions(engine, "9", "10")
    assert count(engine, db.T_ENTRIES) == 0  # failed calls wrote nothing


# ----------------------------------------------------------------------------- verdict

def test_got_worse():
    assert got_worse({"cc_mask_after": 0.80, "verdict": "improved"}, {"cc_mask_after": 0.79, "verdict": "improved"})
    assert not got_worse({"cc_mask_after": 0.80, "verdict": "improved"},
                         {"cc_mask_after": 0.795, "verdict": "improved"})
    assert got_worse({"cc_mask_after": 0.8, "verdict": "improved"}, {"cc_mask_after": 0.8, "verdict": "unchanged"})


# ----------------------------------------------------------------------------- versions, distributions

def _two_versions(engine, n=120):
    """Version 1.0 and 2.0 over n entries; every 7th entry regresses under 2.0; 2.0 skips every 10th."""
    expect_worse = set()
    for i in range(n):
        cc0 = 0.60 + 0.002 * (i % 50)
        store_one(engine, i, version="1.0", cc0=cc0, cc1=cc0 + 0.02, n_res=5)
        if i % 10 == 9:
            continue
        if i % 7 == 0:
            store_one(engine, i, version="2.0", cc0=cc0, cc1=cc0 - 0.02, n_res=5)
            expect_worse.add(entry(i)["pdb_id"])
        else:
            store_one(engine, i, version="2.0", cc0=cc0, cc1=cc0 + 0.025, n_res=5)
    return expect_worse


def test_compare_versions_finds_exactly_the_regressions(engine):
    expect_worse = _two_versions(engine)
    c = queries.compare_versions(engine, "1.0", "2.0")
    assert c["n_common"] == 108
    assert {r["pdb_id"] for r in c["worse"]} == expect_worse
    assert {r["pdb_id"] for r in queries.regressions(engine, "1.0", "2.0")} == expect_worse
    assert all("verdict improved -> worse" in r["why"] for r in c["worse"])
    # 16 of 108 common entries drop 0.04, the other 92 gain 0.005 (less than the margin)
    assert c["summary"]["cc_mask"]["mean"] == pytest.approx((92 * 0.005 - 16 * 0.04) / 108)
    assert c["verdicts_a"] == {"improved": 108} and c["verdicts_b"] == {"improved": 92, "worse": 16}
    assert queries.compare_versions(engine, "2.0", "1.0")["worse"] == []  # 1.0 is never 0.01 below 2.0
    assert len(queries.latest_results(engine, version="1.0")) == 120
    latest = queries.latest_results(engine)
    assert len(latest) == 120 and {r["version"] for r in latest} == {"1.0", "2.0"}
    assert len(queries.latest_results(engine, verdict="worse")) == 16
    assert len(queries.latest_results(engine, limit=50, offset=100)) == 20


def test_recompute_verdicts(engine):
    store_one(engine, 1, cc0=0.70, cc1=0.75)
    with db.writer(engine) as c, c.begin():
        c.execute(db.T_RUNS.update().values(verdict="worse"))
    assert store.recompute_verdicts(engine) == 1 and store.recompute_verdicts(engine) == 0
    assert queries.latest_results(engine)[0]["verdict"] == "improved"


def test_distributions_versions_stats(engine):
    _two_versions(engine, n=60)
    d = queries.distributions(engine, "2.0")
    assert d["n"] == 54 and sum(b["n"] for b in d["by_resolution"]) == 54
    assert sum(d["verdicts"].values()) == 54 == len(d["metrics"]["cc_mask"]["delta"])
    assert d["metrics"]["cc_mask"]["summary_delta"]["max"] == pytest.approx(0.025)
    vs = queries.versions(engine)
    assert [v["version"] for v in vs] == ["1.0", "2.0"] and vs[1]["previous"] == "1.0"
    assert vs[0]["by_status"] == {"done": 60} and vs[1]["by_verdict"] == {"improved": 46, "worse": 8}
    s = queries.stats(engine)
    assert (s["entries"], s["runs"], s["by_status"]) == (60, 114, {"done": 114})
    mv = queries.metric_values(engine)
    assert len(mv["pdb_id"]) == 60 and len(mv["d_q_score"]) == 60
    assert set(queries.changed_since(engine, None)) == set(mv["pdb_id"])
    with pytest.raises(InputError, match="unknown metric"):
        queries.distributions(engine, metrics=["rfree"])


# ----------------------------------------------------------------------------- crash safety

WRITER = textwrap.dedent("""
    import random, sys, time
    from sqlalchemy import event
    sys.path.insert(0, {tests!r})
    from test_db import store_one, entry
    from rerefine.reports import db, store
    engine = db.make_engine({url!r})
    kill_at = {kill_at}
    state = {{"i": -1}}

    @event.listens_for(engine, "before_cursor_execute")
    def pause(conn, cursor, statement, params, context, executemany):
        # Stop inside the transaction of entry kill_at, after its run, metrics and
        # residue rows were sent but before COMMIT: the parent kills us here.
        if state["i"] == kill_at and statement.lstrip().upper().startswith("INSERT INTO ARTEFACTS"):
            print("MID", flush=True)
            time.sleep(120)

    for i in range(kill_at + 5):
        state["i"] = i
        store.mark_running(engine, entry=entry(i), pipeline_version="1.0", params={{"cycles": 5}},
                           input_files=[{{"role": "model", "path": f"/d/{{i}}.cif", "size": 10, "sha256": f"m{{i}}"}},
                                        {{"role": "map", "path": f"/d/{{i}}.map", "size": 99, "sha256": f"p{{i}}"}}])
        store_one(engine, i, n_res=300)
        print("COMMITTED", entry(i)["pdb_id"], flush=True)
""")


@pytest.mark.slow
def test_killed_writer_loses_nothing_committed_and_leaves_no_partial_entry(engine, url, tmp_path):
    kill_at = 6
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(Path(__file__).parent), url=url, kill_at=kill_at))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    committed = []
    deadline = time.monotonic() + 60
    try:
        for line in proc.stdout:
            if line.startswith("COMMITTED"):
                committed.append(line.split()[1])
            elif line.startswith("MID"):
                proc.send_signal(signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "writer did not reach the kill point"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert len(committed) == kill_at
    victim = entry(kill_at)["pdb_id"]

    eng = db.make_engine(url)
    try:
        if eng.dialect.name == "sqlite":
            with eng.connect() as c:
                assert c.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        rows = {r["pdb_id"]: r for r in queries.latest_results(eng)}
        assert set(rows) == set(committed) | {victim}
        for pid in committed:  # everything committed is there, complete
            d = queries.entry_detail(eng, pid)["run"]
            assert d["status"] == "done" and len(d["per_residue"]) == 300 and len(d["artefacts"]) == 1
            assert d["cc_mask_after"] == pytest.approx(0.75) and len(d["inputs"]) == 2
        # the entry being written when killed: its committed 'running' marker, nothing of the result
        d = queries.entry_detail(eng, victim)["run"]
        assert d["status"] == "running" and d["per_residue"] == [] and d["artefacts"] == []
        assert d["before"] is None and d["cc_mask_after"] is None
        with eng.connect() as c:
            assert c.execute(select(func.count()).select_from(db.T_METRICS)).scalar_one() == kill_at
            assert c.execute(select(func.count()).select_from(db.T_RESIDUES)).scalar_one() == kill_at
        # retryable: recovered as failed, then the retry completes it
        assert store.recover_interrupted(eng) == 1
        assert queries.entry_detail(eng, victim)["run"]["status"] == "failed"
        store_one(eng, kill_at, n_res=300)
        assert queries.entry_detail(eng, victim)["run"]["status"] == "done"
        assert count(eng, db.T_RUNS) == kill_at + 1
    finally:
        eng.dispose()


# ----------------------------------------------------------------------------- CLI

def test_cli_db_upgrade_stats_and_compare(tmp_path, capsys):
    from rerefine.flows.cli import main

    url = db.sqlite_url(tmp_path / "cli.sqlite")
    assert main(["db", "--url", url, "upgrade"]) == 0
    assert "(empty) -> 0002_fit_validation" in capsys.readouterr().out
    assert main(["db", "--url", url, "upgrade"]) == 0
    assert "already at revision 0002_fit_validation" in capsys.readouterr().out
    eng = db.make_engine(url)
    expect_worse = _two_versions(eng, n=30)
    eng.dispose()
    assert main(["db", "--url", url, "stats", "--json", str(tmp_path / "s.json")]) == 0
    s = json.loads((tmp_path / "s.json").read_text())
    assert (s["entries"], s["runs"], s["revision"]) == (30, 57, "0002_fit_validation")
    assert "version   2.0" in capsys.readouterr().out
    assert main(["compare", "1.0", "2.0", "--url", url]) == 0
    out = capsys.readouterr().out
    assert "27 entries processed by both" in out and f"entries worse under 2.0: {len(expect_worse)}" in out
    assert all(pid in out for pid in expect_worse)
    assert main(["compare", "1.0", "2.0", "--url", url, "--json", "-"]) == 0
    c = json.loads(capsys.readouterr().out)
    assert {r["pdb_id"] for r in c["worse"]} == expect_worse
    assert main(["compare", "1.0", "3.0", "--url", url]) == 1
    assert "pipeline version '3.0' is not in the database (known: 1.0, 2.0)" in capsys.readouterr().err
    assert main(["db", "--url", db.sqlite_url(tmp_path / "empty.sqlite"), "stats"]) == 1
    assert "run `rerefine db upgrade` first" in capsys.readouterr().err


# ----------------------------------------------------------------------------- packaging, concurrency

def test_migrations_ship_as_package_data_and_run_from_any_cwd(tmp_path):
    """Every migration file ships with a non-editable install (a module of a listed package, or
    package data of it in pyproject), and `rerefine db upgrade` needs no alembic.ini in the cwd."""
    import fnmatch
    import tomllib

    root = Path(__file__).resolve().parent.parent
    cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    files = [p.relative_to(root / "reports") for p in (root / "reports" / "migrations").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]
    assert Path("migrations/env.py") in files and any(f.parent.name == "versions" for f in files)
    for f in files:
        package = ".".join(("rerefine", "reports", *f.parent.parts))
        assert package in cfg["packages"], f
        assert f.suffix == ".py" or any(fnmatch.fnmatch(f.name, g) for g in cfg["package-data"].get(package, ())), f
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    url = db.sqlite_url(tmp_path / "x.sqlite")
    r = subprocess.run([sys.executable, "-m", "rerefine.flows.cli", "db", "--url", url, "upgrade"],
                       cwd=cwd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "-> 0002_fit_validation" in r.stdout and not list(cwd.iterdir())


CONCURRENT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_db import store_one
    from rerefine.reports import db
    engine = db.make_engine({url!r})
    for i in range({start}, {start} + 25):
        store_one(engine, i, n_res=50)
""")


def test_two_concurrent_writers(engine, url, tmp_path):
    procs = []
    for k in range(2):
        script = tmp_path / f"w{k}.py"
        script.write_text(CONCURRENT.format(tests=str(Path(__file__).parent), url=url, start=25 * k))
        procs.append(subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    rows = queries.latest_results(engine)
    assert len(rows) == 50 and all(r["status"] == "done" for r in rows)
    assert count(engine, db.T_VERSIONS) == 1 and count(engine, db.T_RESIDUES) == 50


def test_pack_residues_matches_by_residue_and_keeps_model_order():
    b = [{"chain": "A", "seq": 1, "icode": "", "resname": "ALA", "cc": 0.5, "q_score": None},
         {"chain": "A", "seq": 2, "icode": "", "resname": "GLY", "cc": float("nan"), "q_score": 0.3}]
    a = [{"chain": "A", "seq": 2, "icode": "", "resname": "GLY", "cc": 0.61234, "q_score": 0.4},
         {"chain": "B", "seq": 1, "icode": "A", "resname": "HOH", "cc": 0.2, "q_score": 0.1}]
    p = store.pack_residues(b, a)
    assert list(zip(p["chain"], p["seq"], p["icode"], p["resname"])) == [
        ("A", 1, "", "ALA"), ("A", 2, "", "GLY"), ("B", 1, "A", "HOH")]
    assert p["cc_before"] == [0.5, None, None] and p["q_score_before"] == [None, 0.3, None]
    assert p["cc_after"] == [None, 0.6123, 0.2] and "b_iso_before" not in p and "atom_inclusion_after" not in p
    assert store.pack_residues([], None) is None
