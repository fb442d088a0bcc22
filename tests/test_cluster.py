"""The nightly on a Dask cluster end to end (issue 17: one entry's regions on many workers).

A real night through the CLI on the sample archive made from the real test data, on the local
Dask cluster of ``rerefine nightly --workers 2`` (two worker processes, one thread each). 5ME2
(4,468 atoms) is refined in boxes through ``--region-atoms 2200`` (boxed from 4,400 atoms), so its
regions are tasks of the cluster; refinement is cut to one macro-cycle without B to stay within
the CI time. 7CEC's map is truncated in the mirror, so that entry fails with its reason while the
night goes on.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from procs import processes_with  # tests/ is on sys.path under pytest
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
