"""Benchmark: start-up and stop of the Prefect server that ``rerefine nightly --workers N`` shares
with its local Dask cluster, the current way against the previous one.

* ``cli``: :func:`rerefine.flows.prefect_server.temporary_server`, i.e. ``prefect server start``
  (the installed CLI) on a free loopback port with its home and database in a fresh temporary
  folder, so its database is created and migrated at every start.
* ``asgi_warm`` / ``asgi_fresh``: the previous way, ``prefect.server.api.server.SubprocessASGIServer``
  (Prefect's own temporary server; not in Prefect's documented API, kept here only to time it),
  whose database is the run's ``PREFECT_HOME`` (``rerefine-data/prefect``): already migrated on
  every night but the first (``warm``), or a new home as on a first night (``fresh``).

Each start runs in a new interpreter (as a night does), timed from before the import of the
module that starts the server to the first answer of ``/api/health`` (``up``), with the import
itself reported apart; then the stop. The three ways alternate within each repeat; medians.

    python benchmarks/bench_prefect_server.py [--repeat 3]

Results: benchmarks/results/prefect_server.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = {
    "cli": """
import json, time
t0 = time.perf_counter()
from rerefine.flows.prefect_server import temporary_server
t1 = time.perf_counter()
with temporary_server():
    t2 = time.perf_counter()
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "up": t2 - t0, "stop": t3 - t2}))
""",
    "asgi": """
import json, time
t0 = time.perf_counter()
from prefect.server.api.server import SubprocessASGIServer
t1 = time.perf_counter()
server = SubprocessASGIServer()
server.start()
t2 = time.perf_counter()
server.stop()
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "up": t2 - t0, "stop": t3 - t2}))
""",
}


def start_once(way: str, home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    # the night's Prefect settings (flows/prefect_home.configure_prefect)
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    out = subprocess.run([sys.executable, "-c", CHILD[way]], env=env, capture_output=True, text=True,
                         timeout=600, check=True).stdout
    return {k: round(v, 3) for k, v in json.loads(out.strip().splitlines()[-1]).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"cli": [], "asgi_warm": [], "asgi_fresh": []}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        warm = Path(tmp) / "warm"
        start_once("asgi", warm)  # migrate the warm home once, as the first night did
        for r in range(args.repeat):
            loads.append(round(os.getloadavg()[0], 2))
            runs["asgi_warm"].append(start_once("asgi", warm))
            runs["cli"].append(start_once("cli", Path(tmp) / f"unused{r}"))
            runs["asgi_fresh"].append(start_once("asgi", Path(tmp) / f"fresh{r}"))
            print(r, {k: v[-1] for k, v in runs.items()}, "load", loads[-1], flush=True)
    med = {way: {k: round(statistics.median(x[k] for x in v), 3) for k in v[0]} for way, v in runs.items()}
    res = {"repeat": args.repeat, "load": loads, "median": med, "runs": runs,
           "up_ratio_cli_vs_asgi_warm": round(med["cli"]["up"] / med["asgi_warm"]["up"], 3),
           "up_ratio_cli_vs_asgi_fresh": round(med["cli"]["up"] / med["asgi_fresh"]["up"], 3)}
    out = ROOT / "benchmarks" / "results" / "prefect_server.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps({k: res[k] for k in ("median", "up_ratio_cli_vs_asgi_warm", "up_ratio_cli_vs_asgi_fresh",
                                          "load")}, indent=2))
    print(out)


if __name__ == "__main__":
    main()
