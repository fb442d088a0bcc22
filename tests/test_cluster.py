"""The nightly on a Dask cluster end to end (issue 17: one entry's regions on many workers), and the
run's own Prefect server that the local cluster's workers report to
(:func:`rerefine.flows.prefect_server.temporary_server`).

A real night through the CLI on the sample archive made from the real test data, on the local
Dask cluster of ``rerefine nightly --workers 2`` (two worker processes, one thread each). 5ME2
(4,468 atoms) is refined in boxes through ``--region-atoms 2200`` (boxed from 4,400 atoms), so its
regions are tasks of the cluster; refinement is cut to one macro-cycle without B to stay within
the CI time. 7CEC's map is truncated in the mirror, so that entry fails with its reason while the
night goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest

from procs import processes_with  # tests/ is on sys.path under pytest
from rerefine.common.errors import RerefineError
from rerefine.flows.prefect_server import temporary_server
from rerefine.harvester import sample_archive


def _env(data_dir: Path, test_data: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RR_"))}
    env.update(RR_DATA_DIR=str(data_dir), RR_TEST_DATA=str(test_data), RR_MONOMER_LIB=str(test_data / "monomers"))
    env.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".numba-cache"))
    return env


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process checks read /proc")
def test_dask_night_spreads_one_entrys_regions_over_both_workers(test_data, tmp_path):
    mirror = tmp_path / "archive"
    sample_archive.build(mirror, test_data)
    bad = mirror / "emdb/structures/EMD-30342/map/emd_30342.map.gz"
    bad.write_bytes(bad.read_bytes()[:4096])
    data_dir = tmp_path / "data"
    out = tmp_path / "summary.json"
    log = tmp_path / "nightly.log"
    with open(log, "w") as fh:  # a file, not a pipe: a process left behind cannot hold the test up
        rc = subprocess.run([sys.executable, "-m", "rerefine.flows.cli", "nightly", "--mirror", str(mirror),
                             "--workers", "2", "--cycles", "1", "--no-adp", "--region-atoms", "2200",
                             "--no-site", "--json", str(out)], env=_env(data_dir, test_data), stdout=fh,
                            stderr=subprocess.STDOUT, timeout=600).returncode
    assert rc == 0, log.read_text()[-3000:]
    # the run's log records reached the server before it stopped (sent at exit, they found it gone:
    # "--- Error logging to API --- All connection attempts failed" ended every such night)
    assert "Error logging to API" not in log.read_text()
    s = json.loads(out.read_text())
    assert s["processed"] == 1
    # the broken entry is recorded with a one-line reason naming it; the night went on
    assert [f["pdb_id"] for f in s["failed"]] == ["7cec"]
    reason = s["failed"][0]["reason"]
    assert reason.startswith("7cec") and "\n" not in reason
    (entry,) = [e for e in s["entries"] if e["pdb_id"] == "5me2"]
    assert entry["status"] == "done"
    # the refinement ran in the entry's guarded worker (its limits hold), not in the Dask worker
    assert "refine_on_cluster" in entry["stage_peak_mb"]
    with sqlite3.connect(data_dir / "rerefine.sqlite") as db:
        (after,) = db.execute('SELECT "after" FROM metrics_full').fetchone()
        runs = {k.lower(): v for k, v in db.execute(
            "SELECT e.pdb_id, r.status FROM runs r JOIN entries e ON e.id = r.entry_id")}
    assert runs["5me2"] == "done" and runs["7cec"] == "failed"
    workers = json.loads(after)["refinement"]["region_workers"]
    # each region task reports the Dask worker it ran on: 5ME2's four chains make at least two
    # regions (cores of at most 2,200 atoms), and both workers refined some of them
    assert len(workers) == 2 and all(n >= 1 for n in workers.values()), workers
    # nothing of the run is left: no stage worker, region process, Dask worker or Prefect server
    # (before flows/nightly.shared_temporary_server, each Dask worker's own server outlived it)
    assert processes_with(f"RR_DATA_DIR={data_dir}") == []


def _marked(monkeypatch) -> str:
    """An environment entry that every process started from here on inherits."""
    marker = f"RR_TEST_SERVER={uuid.uuid4().hex}"
    monkeypatch.setenv(*marker.split("=", 1))
    return marker


def _health(api_url: str) -> bytes:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{api_url}/health", timeout=10) as r:
        return r.read()


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process checks read /proc")
@pytest.mark.parametrize("body_raises", [False, True])
def test_temporary_server_answers_and_its_group_is_gone_after_exit(monkeypatch, body_raises):
    marker = _marked(monkeypatch)
    with pytest.raises(RuntimeError, match="the night failed") if body_raises else contextlib.nullcontext():
        with temporary_server() as api_url:
            assert api_url.startswith("http://127.0.0.1:") and api_url.endswith("/api")
            # Prefect's health route answers JSON true (REST API reference: GET /api/health)
            assert json.loads(_health(api_url)) is True
            pids = processes_with(marker)
            assert pids, "no server process carries the run's environment"
            # the server runs in a process group of its own, not in ours, so it can be stopped whole
            groups = {os.getpgid(p) for p in pids}
            assert len(groups) == 1 and os.getpgrp() not in groups
            if body_raises:
                raise RuntimeError("the night failed")
    assert processes_with(marker) == []
    with pytest.raises(OSError):
        _health(api_url)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process checks read /proc")
def test_temporary_server_not_answering_in_time_is_one_line_and_leaves_nothing(monkeypatch):
    marker = _marked(monkeypatch)
    # Prefect's CLI alone takes seconds to import, so nothing answers within 0.2 s
    with pytest.raises(RerefineError) as err:
        with temporary_server(startup_seconds=0.2):
            pytest.fail("the body ran without a server")
    msg = str(err.value)
    assert "\n" not in msg and "did not answer within 0.2 s" in msg and "stderr ends:" in msg
    assert processes_with(marker) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process checks read /proc")
def test_temporary_server_that_exits_names_the_cause_in_one_line(monkeypatch):
    marker = _marked(monkeypatch)
    # an invalid documented server setting (an integer, settings reference): the CLI exits at once
    monkeypatch.setenv("PREFECT_SERVER_API_KEEPALIVE_TIMEOUT", "notanumber")
    with pytest.raises(RerefineError) as err:
        with temporary_server():
            pytest.fail("the body ran without a server")
    msg = str(err.value)
    assert "\n" not in msg and "exited with code" in msg and "keepalive_timeout" in msg
    assert processes_with(marker) == []
