"""Faults of issue 18, each reproduced on loopback (or on the real files) and shown to be handled.

Items: (2) a failed fetch never masks an earlier result, permanent failures are not recomputed;
(3) bounds: endless answers, endless gzip, gzip bombs, caps on the actual bytes; (4) a cache that
verifies before it trusts; (6) one nightly at a time, concurrent ``db upgrade`` on PostgreSQL;
(7) a stalled server ends within the time limit; (8) the smaller ones (contour validation, leftover
temporary files, a corrupt database in one line, NaN coordinates). The nightly-level ones (memory of
a night under hostile answers, entries sharing one map with two workers) are at the end.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from rerefine.common.errors import ArchiveError, InputError
from rerefine.harvester import emdb
from rerefine.harvester.http import HttpClient, NotFound
from rerefine.harvester.loopback import LoopbackArchive
from fastclient import cache_objects, fast_client, serve_real_map  # noqa: E402  (tests/ is on sys.path under pytest)

MiB = 1 << 20


def _client(**kw) -> HttpClient:
    return fast_client(**{"retries": 2, **kw})


@pytest.fixture(scope="module")
def served(tmp_path_factory, test_data):
    root = tmp_path_factory.mktemp("served")
    serve_real_map(root, test_data)
    # A 20 MB gzip bomb: 200 members of 100 MB of zeros each (inflates to 20 GB).
    member = gzip.compress(bytes(100 * 10**6), compresslevel=9, mtime=0)
    with open(root / "bomb.map.gz", "wb") as fh:
        for _ in range(20 * 10**6 // len(member)):
            fh.write(member)
    return root




def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- item 3: bounds ---------------------------------------------------------------------------

def test_endless_answer_is_cut_at_the_answer_cap():
    with LoopbackArchive(routes={"/api/entry/EMD-1": b"{}"}) as srv:
        srv.add_fault("/api/entry/EMD-1", "endless", b"[" * 65536, times=None)
        c = _client(max_answer_bytes=4 * MiB)
        t = time.perf_counter()
        with pytest.raises(ArchiveError, match="answer larger than 4194304 bytes") as ei:
            c.get_json(srv.url + "/api/entry/EMD-1", what="EMD-1: EMDB entry metadata")
        assert time.perf_counter() - t < 10
        assert srv.bytes_sent["/api/entry/EMD-1"] < 64 * MiB  # the client stopped reading
    assert not ei.value.transient and "\n" not in str(ei.value)


def test_endless_gzip_map_stops_at_the_cap_of_actual_bytes(tmp_path):
    cache = tmp_path / "cache"
    with LoopbackArchive(routes={"/emd_1.map.gz": b""}) as srv:
        srv.add_fault("/emd_1.map.gz", "endless_gzip", times=None)
        with pytest.raises(ArchiveError, match="inflates to more than 16 MiB|more than the 16 MiB limit") as ei:
            _client().download(srv.url + "/emd_1.map.gz", cache, what="1abc: map EMD-1",
                               max_bytes=16 * MiB, max_inflated=16 * MiB)
    assert str(ei.value).startswith("1abc: map EMD-1:") and not ei.value.transient
    assert cache_objects(cache) == [] and not list((cache / "partial").glob("*.part"))


def test_gzip_bomb_stops_at_the_inflate_cap_with_flat_memory(served, tmp_path):
    """20 MB of gzip inflating to 20 GB: the check inflates in 64 KiB pieces and stops at the cap;
    the process's peak RSS grows by less than 100 MB."""
    before = _peak_rss_mb()
    cache = tmp_path / "cache"
    with LoopbackArchive(served) as srv:
        with pytest.raises(ArchiveError, match="inflates to more than 64 MiB"):
            _client().download(srv.url + "/bomb.map.gz", cache, max_bytes=2048 * MiB, max_inflated=64 * MiB)
        assert srv.bytes_sent["/bomb.map.gz"] < 4 * MiB  # stopped after the first members
    assert cache_objects(cache) == []
    assert _peak_rss_mb() - before < 100


def test_metadata_size_is_not_trusted(served, tmp_path):
    """The cap holds on the actual bytes whatever the EMDB size said (size_kbytes -1 is ignored)."""
    info = emdb.parse_entry({"emdb_id": "EMD-3488", "map": {"file": "emd_3488.map.gz", "size_kbytes": "-1"}})
    assert info.map_size_bytes is None and "size_kbytes" in info.warnings[0]
    with LoopbackArchive(served) as srv:
        with pytest.raises(ArchiveError, match="inflates to more than 1 MiB"):
            _client().download(srv.url + "/emd_3488.map.gz", tmp_path / "c", max_inflated=MiB)
        with pytest.raises(ArchiveError, match=r"announces 1\.5 MiB, over the 1 MiB limit"):
            _client().download(srv.url + "/emd_3488.map.gz", tmp_path / "c", max_bytes=MiB)


# ---- item 7: time limits ------------------------------------------------------------------------

def test_stalled_server_ends_within_the_total_time_limit(served, tmp_path):
    """One byte every 0.2 s never trips the 2 s idle timeout; the 1.5 s total limit ends the call."""
    with LoopbackArchive(served) as srv:
        srv.add_fault("/emd_3488.map.gz", "trickle", 0.2, times=None)
        t = time.perf_counter()
        with pytest.raises(ArchiveError, match="took longer than the 1.5 s limit") as ei:
            _client(total_timeout=1.5).download(srv.url + "/emd_3488.map.gz", tmp_path / "c", what="5me2: map")
        took = time.perf_counter() - t
    assert took < 1.5 + 1.0  # limit + one trickled byte + scheduling slack on a loaded machine
    assert not ei.value.transient  # not retried tonight (tomorrow's night tries again)
    # the bytes received are kept for a resume
    assert [p.stat().st_size > 0 for p in (tmp_path / "c" / "partial").glob("*.part")] == [True]


# ---- item 4: the cache ----------------------------------------------------------------------------

def test_two_writers_of_one_url_with_a_server_ignoring_range(served, tmp_path):
    """Two downloads of one URL at once, the server ignoring Range and dropping the first answers:
    one writer at a time, both get the verified object."""
    name = "/emd_3488.map.gz"
    raw = (served / name[1:]).read_bytes()
    cache = tmp_path / "cache"
    results, errors = [], []
    with LoopbackArchive(served) as srv:
        srv.add_fault(name, "drop", 300_000)
        srv.add_fault(name, "ignore_range", times=None)

        def fetch():
            try:
                results.append(_client(chunk_size=65536).download(srv.url + name, cache))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=fetch) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert errors == [] and len(results) == 2
    assert {r.sha256 for r in results} == {hashlib.sha256(raw).hexdigest()}
    assert sorted(r.from_cache for r in results) == [False, True]
    assert results[0].path.read_bytes() == raw


def test_corrupt_cache_object_is_removed_and_fetched_again(served, tmp_path):
    name = "/emd_3488.map.gz"
    raw = (served / name[1:]).read_bytes()
    cache = tmp_path / "cache"
    with LoopbackArchive(served) as srv:
        r = _client().download(srv.url + name, cache)
        assert oct(r.path.stat().st_mode & 0o777) == "0o444"  # sealed
        os.chmod(r.path, 0o644)
        with open(r.path, "r+b") as fh:  # the poisoning of item 4: the first MiB zeroed, size unchanged
            fh.write(bytes(MiB))
        r2 = _client().download(srv.url + name, cache)
        assert not r2.from_cache and srv.bytes_sent[name] == 2 * len(raw)
    assert r2.path.read_bytes() == raw and r2.sha256 == hashlib.sha256(raw).hexdigest()


def test_404_is_a_notfound_type(served, tmp_path):
    with LoopbackArchive(served) as srv:
        with pytest.raises(NotFound):
            _client().download(srv.url + "/nothing.map.gz", tmp_path / "c")
        assert _client().get_bytes(srv.url + "/nothing", what="x", missing_ok=True) is None


# ---- item 2: the entry's state is the last decisive run --------------------------------------------

def _engine(tmp_path):
    from rerefine.reports import db

    engine = db.make_engine(f"sqlite:///{tmp_path / 'r.sqlite'}")
    db.upgrade(engine)
    return engine


def test_failed_fetch_never_masks_an_earlier_result(tmp_path):
    from rerefine.reports import queries, store

    engine = _engine(tmp_path)
    entry = {"pdb_id": "7cec", "emdb_id": "EMD-30342", "resolution": 3.9}
    inputs = [{"role": "model", "sha256": "a" * 64}, {"role": "map", "sha256": "b" * 64}]
    m = {"cc_mask": 0.80, "bond_rmsd": 0.01, "angle_rmsd": 1.0}
    # night 1 done; night 2 the map is missing (fetch failed, no inputs); night 3 cached (nothing stored)
    store.store_result(engine, entry=entry, pipeline_version="1", status="done", input_files=inputs,
                       metrics_before=m, metrics_after=dict(m, cc_mask=0.82))
    store.store_result(engine, entry=entry, pipeline_version="1", status="failed",
                       reason="7cec: map EMD-30342: not found (HTTP 404 ...)")
    (row,) = queries.latest_results(engine)
    assert row["status"] == "done" and row["cc_mask_after"] == pytest.approx(0.82)
    detail = queries.entry_detail(engine, "7cec")
    assert detail["run"]["status"] == "done"
    assert [h["status"] for h in detail["history"]] == ["failed", "done"]  # the failure beside it
    assert "not found" in detail["history"][0]["reason"]
    assert store.previous_outcome(engine, pdb_id="7cec", pipeline_version="1", input_files=inputs)[0] == "done"


def test_permanent_failures_are_not_recomputed_transient_ones_are(tmp_path):
    from rerefine.reports import queries, store

    engine = _engine(tmp_path)
    a = [{"role": "model", "sha256": "a" * 64}]
    b = [{"role": "model", "sha256": "c" * 64}]
    store.store_result(engine, entry={"pdb_id": "5me2"}, pipeline_version="1", status="failed", input_files=a,
                       reason="5me2: only 3% of the model lies inside map emd_3488")
    store.store_result(engine, entry={"pdb_id": "7cec"}, pipeline_version="1", status="failed", input_files=b,
                       reason="7cec: No space left on device (I/O)", transient=True)
    assert store.previous_outcome(engine, pdb_id="5me2", pipeline_version="1", input_files=a)[0] == "failed"
    assert store.previous_outcome(engine, pdb_id="5me2", pipeline_version="2", input_files=a) is None
    assert store.previous_outcome(engine, pdb_id="5me2", pipeline_version="1", input_files=b) is None
    assert store.previous_outcome(engine, pdb_id="7cec", pipeline_version="1", input_files=b) is None
    # an interrupted run is transient too
    store.mark_running(engine, entry={"pdb_id": "1abc"}, pipeline_version="1", input_files=a)
    store.recover_interrupted(engine)
    assert store.previous_outcome(engine, pdb_id="1abc", pipeline_version="1", input_files=a) is None
    assert {r["pdb_id"]: r["status"] for r in queries.latest_results(engine)}["1ABC"] == "failed"


# ---- item 6: one nightly at a time; concurrent db upgrade ------------------------------------------

def _env(data_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RR_"))}
    env["RR_DATA_DIR"] = str(data_dir)
    env["RR_TEST_DATA"] = os.environ.get("RR_TEST_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    env["RR_MONOMER_LIB"] = str(Path(env["RR_TEST_DATA"]) / "monomers")  # the test subset, asked for
    env.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".numba-cache"))
    return env


def _rerefine(args, data_dir, timeout=900, extra_env=None):
    env = _env(data_dir)
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "rerefine.flows.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_second_nightly_says_who_holds_the_lock_and_exits_0(tmp_path):
    from rerefine.flows.runlock import nightly_lock

    data = tmp_path / "data"
    with nightly_lock(data):
        t = time.perf_counter()
        r = _rerefine(["nightly", "--mirror", str(tmp_path)], data, timeout=120)
        assert time.perf_counter() - t < 60  # before any Prefect start-up
    assert r.returncode == 0, r.stderr
    assert f"another nightly run holds {data / 'nightly.lock'} (pid {os.getpid()}" in r.stderr
    assert "not starting a second one" in r.stderr


def test_a_killed_holder_releases_the_lock(tmp_path):
    from rerefine.flows.runlock import AlreadyRunning, nightly_lock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from rerefine.flows.runlock import "
                               "nightly_lock\nwith nightly_lock(sys.argv[1]):\n    print('held', flush=True); "
                               "time.sleep(600)", str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(AlreadyRunning, match=f"pid {holder.pid} "):
            with nightly_lock(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with nightly_lock(tmp_path):  # kill -9 released it
        pass


from test_db import pg_url, postgresql_server  # noqa: E402,F401 - the PostgreSQL fixtures of the db tests


@pytest.mark.postgres
def test_concurrent_db_upgrade_on_postgresql(pg_url):
    from rerefine.reports import db

    out, errors = [], []

    def up():
        try:
            out.append(db.upgrade(pg_url))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=up) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == [] and out == [db.head_revision()] * 3


# ---- item 8: the smaller ones ----------------------------------------------------------------------

def test_corrupt_sqlite_is_one_line(tmp_path):
    data = tmp_path / "data"
    assert _rerefine(["db", "upgrade"], data, timeout=120).returncode == 0
    p = data / "rerefine.sqlite"
    raw = bytearray(p.read_bytes())
    raw[8192:8192 + 3000] = b"\x5a" * 3000  # a damaged page in the middle; the header is intact
    p.write_bytes(bytes(raw))
    for args in (["db", "upgrade"], ["db", "stats"]):
        r = _rerefine(args, data, timeout=120)
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "is corrupt" in lines[0] and "Traceback" not in r.stderr


def test_garbage_contour_is_ignored_with_its_source_recorded(pairs):
    from rerefine.flows.pipeline import contour_outside_map
    from rerefine.refine import mapio

    for level in ("NaN", "1e39", "inf"):
        info = emdb.parse_entry({"emdb_id": "EMD-3488", "map": {"contour_list": {"contour": [
            {"primary": True, "level": level}]}}})
        assert info.contour_level is None and "contour level" in info.warnings[0]
    dmap = mapio.read_map(pairs["emd_3488_5me2"][1])
    lo, hi = float(dmap.data.min()), float(dmap.data.max())
    assert contour_outside_map(hi * 2, dmap) and contour_outside_map(lo - 1, dmap)
    assert not contour_outside_map(0.5 * (lo + hi), dmap)


def test_leftover_temporary_files_are_removed(tmp_path):
    from rerefine.flows.runlock import clean_temp_files

    old, new = tmp_path / "entries" / "7cec" / ".tmp-abc.mrc", tmp_path / "site" / ".tmp-x.html"
    keep, prefect = tmp_path / "entries" / "7cec" / "7cec_rerefined.cif", tmp_path / "prefect" / ".tmp-y"
    for p in (old, new, keep, prefect):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    os.utime(prefect, (time.time() - 3600, time.time() - 3600))
    assert clean_temp_files(tmp_path) == 1
    assert not old.exists() and new.exists() and keep.exists() and prefect.exists()


def test_nan_coordinates_are_reported_as_such(pairs, tmp_path):
    import gemmi

    from rerefine.flows.pipeline import EntryJob, stage_load

    model, mp, _res = pairs["emd_30342_zone_7cec_chainA"]
    st = gemmi.read_structure(str(model))
    st[0][0][0][0].pos = gemmi.Position(float("nan"), 1.0, 2.0)
    bad = tmp_path / "nan.pdb"
    st.write_pdb(str(bad))
    with pytest.raises(InputError, match="non-finite coordinates"):
        stage_load(EntryJob("7cec", "EMD-30342", bad, mp, resolution=3.9))
