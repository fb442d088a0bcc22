"""Housekeeping around a nightly run: one run at a time per data directory, and the temporary
files a killed run left behind.

The lock is ``fcntl.flock`` on ``<data_dir>/nightly.lock``: the kernel releases it when the
holding process ends, however it ends (kill -9 included), so a stale lock never blocks the next
night. The file names its holder (pid, host, start time) for the message of a second run.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from rerefine.common.errors import RerefineError

log = logging.getLogger(__name__)

LOCK_NAME = "nightly.lock"


class AlreadyRunning(RerefineError):
    """Another nightly run holds the data directory's lock (the message names it)."""


@contextmanager
def nightly_lock(data_dir: str | os.PathLike, *, wait: bool = False):
    """Hold the data directory's nightly lock for the ``with`` block.

    Raises
    ------
    AlreadyRunning
        Another process holds it and ``wait`` is False (with ``wait`` the call blocks until it is free).
    """
    path = Path(data_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip() or "unknown process"
            raise AlreadyRunning(f"another nightly run holds {path} ({holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (f"pid {os.getpid()} on {socket.gethostname()} since "
                       f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M:%S} UTC\n").encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def clean_temp_files(root: str | os.PathLike, *, older_than: float = 600.0, skip: tuple[str, ...] = ("prefect",)) -> int:
    """Remove ``.tmp-*`` files (atomic writes a killed process never renamed) under ``root`` that are
    older than ``older_than`` seconds; sub-folders named in ``skip`` are left alone. Returns the count."""
    root, cutoff, n = Path(root), time.time() - older_than, 0
    if not root.is_dir():
        return 0
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            p = Path(dirpath) / name
            try:
                if name.startswith(".tmp-") and p.lstat().st_mtime < cutoff:
                    p.unlink()
                    n += 1
            except OSError:
                continue
    if n:
        log.info("removed %d leftover temporary files under %s", n, root)
    return n
