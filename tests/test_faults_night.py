"""Whole nights (the real CLI in a subprocess) against a loopback archive mirror made from the real
test data, with the faults of issue 18 injected: hostile answers (items 3 and 7) and entries sharing
one EMDB map with two workers, a transient failure after a good night (items 5, 2 and 8).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import gemmi
import pytest
import sqlalchemy as sa

from rerefine.harvester import sample_archive
from rerefine.harvester.loopback import LoopbackArchive
from rerefine.harvester.mirror import Mirror

FAST = ["--cycles", "1", "--no-adp"]
# Runs the night as its child and prints the peak RSS of the largest process of the night (KiB).
PEAK = ("import json, resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(json.dumps({'rc': r.returncode, 'peak_rss_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")


def _env(data_dir: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RR_"))}
    env["RR_DATA_DIR"] = str(data_dir)
    env["RR_TEST_DATA"] = os.environ.get("RR_TEST_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    env["RR_MONOMER_LIB"] = str(Path(env["RR_TEST_DATA"]) / "monomers")  # the test subset, asked for
    env.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".numba-cache"))
    env.update(extra)
    return env


def _night(data_dir: Path, mirror_url: str, summary: Path, *args, **env) -> dict:
    cmd = [sys.executable, "-m", "rerefine.flows.cli", "nightly", "--mirror", mirror_url, *FAST, *args,
           "--json", str(summary)]
    r = subprocess.run([sys.executable, "-c", PEAK, *cmd], env=_env(data_dir, **env), capture_output=True,
                       text=True, timeout=1500)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["rc"] == 0, r.stderr[-3000:]
    out["summary"] = json.loads(summary.read_text())
    return out


def _with_emdb_ref(path: Path, eid: str, release: str) -> None:
    """Make a mirror model name ``eid`` as its associated map and carry a release date (5NI1's
    file states neither; its authors fitted it to EMD-3488's particles, like 5ME2)."""
    doc = gemmi.cif.read(str(path))
    block = doc.sole_block()
    loop = block.init_loop("_pdbx_database_related.", ["db_name", "db_id", "content_type"])
    loop.add_row(["EMDB", eid, "'associated EM volume'"])
    hist = block.init_loop("_pdbx_audit_revision_history.", ["ordinal", "revision_date"])
    hist.add_row(["1", release])
    path.write_bytes(gzip.compress(doc.as_string().encode(), 6, mtime=0))


def _runs(data_dir: Path) -> dict:
    eng = sa.create_engine(f"sqlite:///{data_dir / 'rerefine.sqlite'}")
    with eng.connect() as c:
        rows = c.execute(sa.text("SELECT e.pdb_id, r.status, r.reason, r.inputs_hash FROM runs r "
                                 "JOIN entries e ON e.id = r.entry_id ORDER BY r.id")).all()
    eng.dispose()
    out: dict = {}
    for pid, status, reason, ih in rows:
        out.setdefault(pid.lower(), []).append((status, reason, ih))
    return out


@pytest.mark.slow
def test_night_under_hostile_answers_completes_with_bounded_memory_and_time(test_data, tmp_path):
    """One night, four hostile answers: 5ME2's map is an endless valid gzip stream, 7CEC's EMDB
    header an endless answer, 5NI1's map a 20 MB gzip bomb, and the local model trickles one byte
    every 0.5 s. Each entry fails alone with its cause; the night ends (exit 0, site built) with
    every process below 1 GB and the trickle cut at the 4 s limit."""
    mirror = tmp_path / "archive"
    sample_archive.build(mirror, test_data)
    _with_emdb_ref(mirror / Mirror.model_rel("5ni1"), "EMD-20026", "2017-07-05")
    bomb = gzip.compress(bytes(100 * 10**6), 9, mtime=0)
    with open(mirror / "emdb/structures/EMD-20026/map/emd_20026.map.gz", "wb") as fh:
        for _ in range(20 * 10**6 // len(bomb)):
            fh.write(bomb)
    data = tmp_path / "data"
    with LoopbackArchive(mirror) as srv:
        srv.add_fault("/emdb/structures/EMD-3488/map/emd_3488.map.gz", "endless_gzip", times=None)
        srv.add_fault("/emdb/structures/EMD-30342/header/emd-30342.json", "endless", b"{" * 65536, times=None)
        srv.add_fault("/" + Mirror.model_rel("loc_3ajo_fitted"), "trickle", 0.5, times=None)
        t = time.perf_counter()
        out = _night(data, srv.url, tmp_path / "s.json", "--workers", "1",
                     RR_MAX_MAP_MB="64", RR_HTTP_TIMEOUT="3", RR_HTTP_TOTAL_TIMEOUT="4")
        wall = time.perf_counter() - t
    s = out["summary"]
    failed = {f["pdb_id"]: f["reason"] for f in s["failed"]}
    assert set(failed) == {"5me2", "7cec", "5ni1", "loc_3ajo_fitted"}, s
    assert "more than the 64 MiB limit" in failed["5me2"] or "inflates to more than 64 MiB" in failed["5me2"]
    assert "answer larger than" in failed["7cec"]
    assert "inflates to more than 64 MiB" in failed["5ni1"]
    assert "took longer than the 4 s limit" in failed["loc_3ajo_fitted"]
    assert all("\n" not in r for r in failed.values())
    assert Path(s["site"]).is_file()
    peak_mb = out["peak_rss_kib"] / 1024
    print(f"hostile night: peak RSS {peak_mb:.0f} MB, harvest {s['harvest_seconds']:.1f} s, wall {wall:.0f} s")
    assert peak_mb < 1024
    assert s["harvest_seconds"] < 4 + 20  # the trickle's 4 s limit plus reading three mirror records


@pytest.mark.slow
def test_entries_sharing_one_map_with_two_workers_then_a_transient_failure(test_data, tmp_path):
    """5ME2 and 5NI1 both name EMD-3488: with --workers 2 both complete (no lost entry, no '?').
    Outputs are readable by a web server; a leftover temp file is removed. The next night the map
    answers 404: both fail at fetch, yet the index still shows their done results, with the
    failure in the history."""
    mirror = tmp_path / "archive"
    sample_archive.build(mirror, test_data)
    for pid in ("7cec", "loc_3ajo_fitted"):
        (mirror / Mirror.model_rel(pid)).unlink()
    _with_emdb_ref(mirror / Mirror.model_rel("5ni1"), "EMD-3488", "2017-07-05")
    data = tmp_path / "data"
    leftover = data / "entries" / "5me2" / ".tmp-killed.mrc"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a map")
    os.utime(leftover, (time.time() - 3600, time.time() - 3600))
    with LoopbackArchive(mirror) as srv:
        s = _night(data, srv.url, tmp_path / "s1.json", "--workers", "2")["summary"]
        assert s["processed"] == 2 and s["failed"] == [], s
        assert sorted(e["pdb_id"] for e in s["entries"]) == ["5me2", "5ni1"]
        assert not leftover.exists()
        for pid in ("5me2", "5ni1"):
            model = data / "entries" / pid / f"{pid}_rerefined.cif"
            assert model.stat().st_mode & 0o777 == 0o644
        downloads = [p for p in Path(s["site"]).parent.rglob("*_rerefined.cif*")]
        assert downloads and all(p.stat().st_mode & 0o044 == 0o044 for p in downloads)
        # night 2: the shared map is gone from the mirror (and from a fresh download cache)
        (mirror / "emdb/structures/EMD-3488/map/emd_3488.map.gz").unlink()
        shutil.rmtree(data / "work")
        s2 = _night(data, srv.url, tmp_path / "s2.json", "--workers", "1")["summary"]
    assert sorted(f["pdb_id"] for f in s2["failed"]) == ["5me2", "5ni1"]
    assert all("not found" in f["reason"] for f in s2["failed"])
    runs = _runs(data)
    for pid in ("5me2", "5ni1"):
        assert [r[0] for r in runs[pid]] == ["done", "failed"]
    index = (Path(s2["site"]).parent / "data" / "index.json")
    text = index.read_text() if index.is_file() else Path(s2["site"]).read_text()
    from rerefine.reports import db, queries

    eng = db.make_engine(f"sqlite:///{data / 'rerefine.sqlite'}")
    latest = {r["pdb_id"]: r["status"] for r in queries.latest_results(eng)}
    eng.dispose()
    assert latest == {"5ME2": "done", "5NI1": "done"}
    assert "5me2" in text.lower()
