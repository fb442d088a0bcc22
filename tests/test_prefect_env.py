"""The nightly run's own Prefect API server (rerefine.flows.prefect_env).

Each test runs a small flow in a fresh interpreter (Prefect reads its settings at import; the
server sets PREFECT_API_URL), with Prefect's home under the test's own directory, then reads what
the server left in Prefect's SQLite database.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

SCRIPT = textwrap.dedent("""
    import json, os, sys
    from pathlib import Path
    from rerefine.flows.prefect_env import configure_prefect, start_local_server

    data = Path(sys.argv[1])
    configure_prefect(data, quiet=True)
    server = start_local_server(data)
    from prefect import flow, task

    @task(name="double")
    def double(x):
        return 2 * x

    @flow(name="probe")
    def probe(n):
        return sum(double(i) for i in range(n))

    server.wait_ready()
    import urllib.request
    with urllib.request.urlopen(server.api_url + "/admin/settings") as r:
        settings = json.load(r)
    print(json.dumps({"result": probe(3), "migrations": server.migrations, "pid": server.process.pid,
                      "triggers": settings["server"]["services"]["triggers"]["enabled"],
                      "task_run_recorder": settings["server"]["services"]["task_run_recorder"]["enabled"],
                      "register_blocks": settings["server"]["register_blocks_on_start"]}))
""")


def _run(data: Path, **extra_env) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RR_"))}
    env.update(extra_env)
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(data)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _states(db: Path) -> tuple[list, list]:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tasks = con.execute("SELECT name, state_type FROM task_run ORDER BY name").fetchall()
        flows = con.execute("SELECT name, state_type FROM flow_run").fetchall()
    finally:
        con.close()
    return tasks, flows


def test_own_server_records_every_task_state_and_stops(tmp_path):
    out = _run(tmp_path)
    assert out["result"] == 6
    assert out["migrations"] is True  # a new Prefect home: Prefect migrates its database
    assert not psutil.pid_exists(out["pid"])  # the server ended with the run
    # Only what a one-shot run does not use is off; the task-run recorder stays on...
    assert out["task_run_recorder"] is True
    assert out["triggers"] is False and out["register_blocks"] is False
    # ...so every task's final state reached Prefect's database before the server stopped.
    tasks, flows = _states(tmp_path / "prefect" / "prefect.db")
    assert [s for _, s in tasks] == ["COMPLETED"] * 3 and all(n.startswith("double") for n, _ in tasks)
    assert flows == [(flows[0][0], "COMPLETED")]

    # The next run finds the database migrated by this Prefect version and skips the check.
    again = _run(tmp_path)
    assert again["migrations"] is False and again["result"] == 6
    tasks, flows = _states(tmp_path / "prefect" / "prefect.db")
    assert len(tasks) == 6 and len(flows) == 2


def test_user_settings_win_over_the_servers_defaults(tmp_path):
    out = _run(tmp_path, PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED="true")
    assert out["triggers"] is True and out["result"] == 6
