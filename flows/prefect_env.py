"""Prefect set-up for rerefine: ephemeral mode (no server) with its home under the data directory.

This must run before :mod:`prefect` is first imported, because Prefect reads its settings at
import time. When ``PREFECT_API_URL`` is already set (a real Prefect server), it is left alone.
"""

from __future__ import annotations

import os
from pathlib import Path


def configure_prefect(data_dir: Path, *, quiet: bool = False) -> None:
    """Point Prefect at ``data_dir/prefect`` and keep it local and quiet by default."""
    home = Path(data_dir).resolve() / "prefect"
    home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(home))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_ALLOW_EPHEMERAL_MODE", "true")
    # The temporary server can take more than Prefect's default 20 s to start on a busy machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # Results of our tasks live in the project's database, not in Prefect's result storage.
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "false")
    # The ephemeral server is an API for this process only; its web UI is never opened.
    os.environ.setdefault("PREFECT_UI_ENABLED", "false")
    # Dask workers are separate processes: our CLI's logging set-up does not reach them.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    if quiet:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
