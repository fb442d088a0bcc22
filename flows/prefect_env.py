"""Prefect set-up for rerefine: a local, temporary API server with its home under the data directory.

:func:`configure_prefect` must run before :mod:`prefect` is first imported, because Prefect reads
its settings at import time; so must :func:`start_local_server`, which starts Prefect's API server
for this run in the background (``rerefine nightly``; other commands let Prefect start its own
temporary server at their first flow call). When ``PREFECT_API_URL`` is already set (a real
Prefect server), both leave it alone.
"""

from __future__ import annotations

import contextlib
import gc
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
    if os.environ["PREFECT_RESULTS_PERSIST_BY_DEFAULT"].strip().lower() in ("false", "0", "no", "off"):
        # Without persisted results Prefect's input-hash cache can never hit, yet each task still
        # hashed its inputs (maps, models) for the cache key. Finished entries are skipped by our
        # own record instead: input file checksums + pipeline version (store.is_done).
        os.environ.setdefault("PREFECT_TASKS_DEFAULT_NO_CACHE", "true")
    # The ephemeral server is an API for this process only; its web UI is never opened.
    os.environ.setdefault("PREFECT_UI_ENABLED", "false")
    # Dask workers are separate processes: our CLI's logging set-up does not reach them.
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    if quiet:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


# ---- Prefect's API server, started by us ------------------------------------------------
#
# Without PREFECT_API_URL, Prefect starts a temporary API server itself, at the first flow call:
# it imports its whole server package in our process only to launch it (about 1.2 s of CPU), then
# waits for it (interpreter start, imports, an Alembic upgrade check of its database: 2-6 s on
# this machine) with nothing else to do. Starting the same server (Prefect's own ASGI app, run by
# uvicorn as Prefect does) ourselves, first thing, lets that start-up run on the second core while
# this process imports Prefect and our scientific stack and upgrades our own database.

_MIGRATED_MARKER = "rerefine-prefect-migrated.json"
_DB_URL_VARS = ("PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")


def _prefect_version() -> str:
    from importlib.metadata import version

    return version("prefect")


def _db_revision(db_path: Path) -> str | None:
    """The Alembic revision Prefect's SQLite database is at (None if there is none yet)."""
    import sqlite3

    if not db_path.is_file():
        return None
    try:
        con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def _migrations_needed(home: Path) -> bool:
    """False only if this Prefect version already migrated this very database to its head.

    Prefect checks its ~100 Alembic revisions on every server start (2-3 s here) even when
    nothing is to be done. We record the revision it left after a successful start, keyed on
    the installed Prefect version: a Prefect upgrade, a new or replaced database, or a database
    URL set by the user always runs Prefect's own migrations.
    """
    import json

    if any(os.environ.get(v) for v in _DB_URL_VARS):
        return True
    try:
        mark = json.loads((home / _MIGRATED_MARKER).read_text())
    except (OSError, ValueError):
        return True
    rev = _db_revision(home / "prefect.db")
    return not (rev and mark.get("prefect") == _prefect_version() and mark.get("revision") == rev)


class RetryBusyMiddleware:
    """ASGI wrapper around Prefect's API: retry a request the app answered 503 for, at once.

    With SQLite, Prefect's API answers 503 when a write meets ``database is locked`` (a write
    transaction of its own task-run recorder in the way; Prefect issue #18934), and its client
    retries after 2 s. Here that hit the creation of every per-entry sub-flow: 2 s per entry.
    The failed transaction was rolled back, so replaying the request is what the client's retry
    does, only 30 ms later. After ``budget`` seconds the 503 goes to the client, which then
    backs off as usual.
    """

    def __init__(self, app, budget: float = 3.0, pause: float = 0.03):
        self.app, self.budget, self.pause = app, budget, pause

    def __getattr__(self, name):  # uvicorn and Prefect look at the app's attributes
        return getattr(self.app, name)

    async def __call__(self, scope, receive, send):
        import asyncio
        import time

        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        body, more = [], True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":  # the client went away
                return
            body.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = b"".join(body)
        t0 = time.monotonic()
        while True:
            sent = False

            async def replay():
                nonlocal sent
                if sent:
                    return await receive()  # waits for a disconnect, as the app expects
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            held = []

            async def hold(msg):
                # Hold back a 503's response until we know it will not be retried.
                if held or (msg["type"] == "http.response.start" and msg["status"] == 503):
                    held.append(msg)
                else:
                    await send(msg)

            try:
                # a copy: Starlette's routing rewrites the scope it is given (path, root_path)
                await self.app(dict(scope), replay, hold)
            except Exception:
                # Starlette re-raises an exception after its handler has sent the 503 for it.
                if not held:
                    raise
            if not held or time.monotonic() - t0 > self.budget:
                for msg in held:
                    await send(msg)
                return
            await asyncio.sleep(self.pause)


@contextlib.contextmanager
def no_gc_passes():
    """No cyclic GC passes over what big imports (Prefect, its server, numba, scipy) create.

    Modules, classes and pydantic schemas live as long as the process, yet the collector walked
    them again and again while they were being created and at every full pass after: 10-20 % of
    those imports' time here (~20 % of the server's start-up). So the collector is off inside
    the block, and what exists at its end is frozen (moved out of the collector's generations,
    as for a pre-fork server).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


def create_server_app():
    """Prefect's API server app (what its temporary server runs) with :class:`RetryBusyMiddleware`."""
    from prefect.server.api.server import create_app

    return RetryBusyMiddleware(create_app())


def serve(fd: int) -> None:
    """The server process: Prefect's app, served by uvicorn on the listening socket ``fd``.

    Not ``uvicorn --fd``: uvicorn wraps such a descriptor as an AF_UNIX socket, so asyncio does
    not set TCP_NODELAY on the connections it accepts, and every response whose body is written
    after its headers waited for the client's delayed ACK (40 ms per API call here).
    """
    import socket

    # Importing Prefect's server creates ~10^6 objects that live as long as the process.
    with no_gc_passes():
        import uvicorn

        import prefect.server.api.server  # noqa: F401

        gc.freeze()  # later collections (one in create_app, the serving process's) skip them
        app = create_server_app()
    sock = socket.socket(fileno=fd)  # family (AF_INET) read from the descriptor
    uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on")).run(sockets=[sock])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the server gets SIGTERM when the rerefine process dies, even by SIGKILL."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


# Prefect settings for the server of one run that nobody else talks to. What stays on: the API,
# the task-run recorder and event persister (every flow and task state is kept in Prefect's
# database, for its UI later) and the event vacuum (keeps that database to Prefect's retention).
SERVER_DEFAULTS = {
    # Block types are for deployments and storage, which the nightly run does not use. Checking
    # that they are registered imported every Prefect collection (prefect-dask, hence Dask's
    # distributed) and hashed all block schemas: 0.2-0.3 s of every start; registering them,
    # seconds of the first.
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START": "false",
    "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION": "false",
    # Automations (reactive/proactive triggers and their actions): none are set up for this
    # server, and the actions service alone imported ~0.3 s of modules at start and then looked
    # at every event of the run.
    "PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED": "false",
}


def _wait_exit(proc, timeout: float) -> bool:
    """Wait for a child process to end; False on timeout.

    On Linux the wait wakes when the child exits (a pidfd); ``Popen.wait(timeout)`` polls with
    sleeps of up to 50 ms instead.
    """
    import select
    import subprocess

    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not ready:
        return False
    proc.wait()
    return True


class LocalPrefectServer:
    """Prefect's API server in a child process on a free local port, for this run only.

    :meth:`start` returns at once (before Prefect is imported) and points ``PREFECT_API_URL`` at
    the server; :meth:`wait_ready` blocks until it answers. The server stops at interpreter exit,
    after Prefect's own exit handlers have flushed their logs and events to it.
    """

    def __init__(self, data_dir: Path):
        self.home = Path(data_dir).resolve() / "prefect"
        self.process = None
        self.api_url = None
        self.migrations = None
        self.ready_after = None  # seconds from start to the first healthy answer
        self._error = None
        self._thread = None
        self._t0 = None

    def start(self) -> "LocalPrefectServer":
        import atexit
        import socket
        import subprocess
        import sys
        import threading
        import time

        self.home.mkdir(parents=True, exist_ok=True)
        self.migrations = _migrations_needed(self.home)
        # Bind the port here and hand the listening socket to uvicorn: no port race, and a health
        # request made before the server is up waits in the backlog instead of failing.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        port = sock.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        # What Prefect sets for its own temporary server: no UI, only the services an ephemeral
        # server needs (task-run recorder, event persister, ...), final app (no re-creation).
        env.update(PREFECT_UI_ENABLED="0", PREFECT__SERVER_EPHEMERAL="1", PREFECT__SERVER_FINAL="1",
                   PREFECT_API_DATABASE_MIGRATE_ON_START="true" if self.migrations else "false")
        for name, value in SERVER_DEFAULTS.items():  # the user's own settings win
            env.setdefault(name, value)
        self._t0 = time.perf_counter()
        # Started from the main thread: PR_SET_PDEATHSIG fires when the creating thread ends.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rerefine.flows.prefect_env", "--fd", str(sock.fileno())],
            env=env, pass_fds=[sock.fileno()], stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(),
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        sock.close()
        self.api_url = f"http://127.0.0.1:{port}/api"
        os.environ["PREFECT_API_URL"] = self.api_url
        atexit.register(self.stop)
        self._thread = threading.Thread(target=self._poll, name="prefect-server-health", daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        import time
        import urllib.request

        proc = self.process
        timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"))
        while time.perf_counter() - self._t0 < timeout:
            if proc.poll() is not None:
                self._error = f"Prefect's API server exited with code {proc.returncode} while starting"
                return
            try:
                with urllib.request.urlopen(self.api_url + "/health", timeout=2) as r:
                    if r.status == 200:
                        self.ready_after = time.perf_counter() - self._t0
                        break
            except OSError:
                time.sleep(0.05)
        else:
            self._error = f"Prefect's API server did not answer within {timeout:.0f} s"
            return
        # The API's first request makes FastAPI build its per-route state for all of Prefect's
        # routers (~0.2 s); the client's first request is this one. Made here, it overlaps with
        # whatever the main thread still has to do.
        try:
            urllib.request.urlopen(self.api_url + "/admin/version", timeout=30).close()
        except OSError:
            pass  # the flow's own first request reports a broken server
        if self.migrations:
            self._record_migrated()

    def _record_migrated(self) -> None:
        import json

        from rerefine.common.atomicfile import write_atomic

        rev = _db_revision(self.home / "prefect.db")
        if rev:
            write_atomic(self.home / _MIGRATED_MARKER,
                         json.dumps({"prefect": _prefect_version(), "revision": rev}) + "\n")

    def wait_ready(self) -> float:
        """Block until the server answers; returns the seconds spent waiting here."""
        import time

        from rerefine.common.errors import RerefineError

        t = time.perf_counter()
        self._thread.join()
        if self._error:
            self.stop()
            raise RerefineError(self._error)
        return time.perf_counter() - t

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # uvicorn shuts down gracefully: services drain their queues
        if not _wait_exit(proc, 10.0):
            proc.kill()
            proc.wait()


def start_local_server(data_dir: Path) -> LocalPrefectServer | None:
    """Start Prefect's API server for this run unless ``PREFECT_API_URL`` names one already.

    Call after :func:`configure_prefect` and before :mod:`prefect` is imported.
    """
    if os.environ.get("PREFECT_API_URL"):
        return None
    return LocalPrefectServer(data_dir).start()


if __name__ == "__main__":  # the server process started by LocalPrefectServer
    import sys

    serve(int(sys.argv[sys.argv.index("--fd") + 1]))
