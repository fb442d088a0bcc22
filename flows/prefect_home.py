"""Prefect's settings for rerefine's commands: a local home under the data directory.

Prefect is used the supported way. Without ``PREFECT_API_URL`` it starts its own temporary
("ephemeral") API server at the first flow call and stops it at exit; with ``PREFECT_API_URL``
the flows report to that server. :func:`configure_prefect` only sets defaults of Prefect's public
settings (environment variables, documented at https://docs.prefect.io/v3/api-ref/settings-ref):
any ``PREFECT_...`` variable the user set wins. It must run before :mod:`prefect` is first
imported, because Prefect reads its settings then.
"""

from __future__ import annotations

import os
from pathlib import Path


def configure_prefect(data_dir: Path, *, quiet: bool = False) -> None:
    """Point Prefect's home at ``data_dir/prefect`` and keep it local and quiet by default.

    Parameters
    ----------
    data_dir : path
        rerefine's data directory (``RR_DATA_DIR``); Prefect's database goes to its ``prefect/``.
    quiet : bool
        Log only warnings from Prefect (used when the command's JSON goes to standard output).
    """
    home = Path(data_dir).resolve() / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true")
    # Prefect's default of 20 s for its temporary server to start is short on a busy machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # Results of our tasks live in the project's database, not in Prefect's result storage; and
    # without persisted results Prefect's input-hash cache cannot hit, so tasks need not hash
    # their inputs (maps, models). Finished entries are skipped by our own record instead.
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "false")
    os.environ.setdefault("PREFECT_TASKS_DEFAULT_NO_CACHE", "true")
    os.environ.setdefault("PREFECT_UI_ENABLED", "false")
    # Dask workers are separate processes: our CLI's logging set-up does not reach them.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    if quiet:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
