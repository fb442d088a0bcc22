"""Prefect the supported way (rerefine.flows.prefect_home): no PREFECT_API_URL, so Prefect starts
its own temporary API server at the first flow call, with its home (and database) under the data
directory; a user's own PREFECT_... settings win.

Each test runs a small flow in a fresh interpreter (Prefect reads its settings at import) and then
reads what Prefect left in its SQLite database.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from rerefine.flows.prefect_home import configure_prefect

    configure_prefect(Path(sys.argv[1]), quiet=True)
    from prefect import flow, task

    @task(name="double")
    def double(x):
        return 2 * x

    @flow(name="probe")
    def probe(n):
        return sum(double(i) for i in range(n))

    print(json.dumps({"result": probe(3), "home": os.environ["PREFECT_HOME"],
                      "api_url": os.environ.get("PREFECT_API_URL")}))
""")


def _run(data: Path, **extra_env) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RR_"))}
    env.update(extra_env)
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(data)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _flow_runs(db: Path) -> list:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return con.execute("SELECT name, state_type FROM flow_run").fetchall()
    finally:
        con.close()


@pytest.mark.slow
def test_prefect_starts_its_own_server_with_its_home_in_the_data_dir(tmp_path):
    out = _run(tmp_path)
    assert out["result"] == 6 and out["api_url"] is None
    assert Path(out["home"]) == (tmp_path / "prefect").resolve()
    # the flow run went through Prefect's temporary server into its database under our data dir
    runs = _flow_runs(tmp_path / "prefect" / "prefect.db")
    assert len(runs) == 1 and runs[0][1] == "COMPLETED"
    # a second run reuses that database
    assert _run(tmp_path)["result"] == 6
    assert [s for _, s in _flow_runs(tmp_path / "prefect" / "prefect.db")] == ["COMPLETED"] * 2


@pytest.mark.slow
def test_user_settings_win(tmp_path):
    home = tmp_path / "my-prefect-home"
    out = _run(tmp_path / "data", PREFECT_HOME=str(home))
    assert out["result"] == 6 and Path(out["home"]) == home
    assert (home / "prefect.db").is_file()
    assert not (tmp_path / "data" / "prefect" / "prefect.db").exists()
