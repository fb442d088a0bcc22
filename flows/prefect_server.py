"""A Prefect API server of the run's own: ``prefect server start`` as a subprocess.

``rerefine nightly --workers N`` runs its entries on a local Dask cluster whose worker processes
must report to the same Prefect API as the flow (otherwise each starts a temporary server of its
own, which outlives the cluster). :func:`temporary_server` starts that server the documented way
(https://docs.prefect.io/v3/how-to-guides/self-hosted/server-cli): the installed ``prefect`` CLI,
``prefect server start --host 127.0.0.1 --port P``, on a free loopback port, with its home and
SQLite database in a temporary folder (the settings ``PREFECT_HOME`` and
``PREFECT_SERVER_DATABASE_CONNECTION_URL``,
https://docs.prefect.io/v3/api-ref/settings-ref), so it shares no database with other commands.
The caller points the flow and the workers at it with ``PREFECT_API_URL``.

The server runs in a process group of its own, stopped as a whole at exit (terminate, then kill
after a bounded wait), also when the body raises. On Linux the server is also told to stop when
the process that started it dies (``PR_SET_PDEATHSIG``, set by a small launcher that then execs the
CLI), so a killed night does not leave it behind either.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from rerefine.common.errors import RerefineError

# Settings of the run's environment that must not reach the private server: its database is its
# own, and it is not a client of another API.
_SERVER_ENV_DROP = ("PREFECT_API_URL", "PREFECT_SERVER_DATABASE_", "PREFECT_API_DATABASE_")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that no process listens on now (the kernel's choice)."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prefect_command() -> list[str]:
    """The installed ``prefect`` CLI: the console script beside the interpreter when there is one
    (a virtual environment's ``bin/``), else ``python -m prefect``."""
    script = Path(sys.executable).with_name("prefect")
    return [str(script)] if script.is_file() and os.access(script, os.X_OK) else [sys.executable, "-m", "prefect"]


def _tail(path: Path, lines: int = 6, chars: int = 600) -> str:
    """The last non-empty ``lines`` of a text file, joined into one line of at most ``chars``."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
    return " | ".join(kept)[-chars:]


def _answers(url: str) -> bool:
    """True when ``url`` answers 200 (no proxy: the server is on the loopback)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2.0) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop(proc: subprocess.Popen, seconds: float) -> None:
    """Terminate the server's whole process group, wait up to ``seconds``, then kill the group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pass
    # Anything left of the group (the leader if it ignored SIGTERM, or a child it started).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=seconds)


@contextlib.contextmanager
def temporary_server(startup_seconds: float = 180.0, stop_seconds: float = 10.0, attempts: int = 3):
    """Run ``prefect server start`` on a free loopback port for the duration of the context.

    Parameters
    ----------
    startup_seconds : float
        How long to wait for ``/api/health`` to answer (a first start creates the database,
        10-20 s on a busy 2-core machine).
    stop_seconds : float
        How long the server may take to end after SIGTERM before its group is killed.
    attempts : int
        Starts tried when the chosen port was taken in the meantime (the server then exits early).

    Yields
    ------
    str
        The API's address, ``http://127.0.0.1:P/api``: the value for ``PREFECT_API_URL``.

    Raises
    ------
    RerefineError
        The server exited or did not answer in time; the one-line message ends with the tail of
        its standard error.
    """
    with tempfile.TemporaryDirectory(prefix="rerefine-prefect-") as tmp:
        home = Path(tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SERVER_ENV_DROP)}
        env.update(PREFECT_HOME=str(home),
                   PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{home / 'prefect.db'}")
        err_path = home / "server.err"
        proc = None
        try:
            for attempt in range(attempts):
                port = free_port()
                api_url = f"http://127.0.0.1:{port}/api"
                cmd = [*prefect_command(), "server", "start", "--host", "127.0.0.1", "--port", str(port),
                       "--no-ui", "--no-scheduler", "--no-late-runs", "--analytics-off", "--log-level", "WARNING"]
                if sys.platform.startswith("linux"):
                    cmd = [sys.executable, "-m", "rerefine.flows.prefect_server", str(os.getpid()), *cmd]
                with open(err_path, "wb") as err:
                    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=err, start_new_session=True)
                deadline = time.monotonic() + startup_seconds
                while proc.poll() is None and time.monotonic() < deadline and not _answers(f"{api_url}/health"):
                    time.sleep(0.1)
                if proc.poll() is None and time.monotonic() < deadline:
                    break
                tail = _tail(err_path)
                rc = proc.poll()
                _stop(proc, stop_seconds)
                if rc is not None and "address already in use" in tail.lower() and attempt + 1 < attempts:
                    continue
                state = f"exited with code {rc}" if rc is not None else f"did not answer within {startup_seconds:g} s"
                raise RerefineError(f"Prefect server (prefect server start, {api_url}) {state}; "
                                    f"its stderr ends: {tail or '(empty)'}")
            yield api_url
        finally:
            if proc is not None:
                _stop(proc, stop_seconds)


def _exec_with_parent_death_signal(parent: int, argv: list[str]) -> None:
    """Ask Linux to send SIGTERM to this process when its parent dies (``PR_SET_PDEATHSIG`` = 1,
    kept across ``execv``), then become ``argv``. Exits at once if ``parent`` is already gone."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    if os.getppid() != parent:
        sys.exit(0)
    os.execv(argv[0], argv)


if __name__ == "__main__":  # the launcher of temporary_server on Linux: PARENT_PID COMMAND...
    _exec_with_parent_death_signal(int(sys.argv[1]), sys.argv[2:])
