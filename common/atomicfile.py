"""Atomic file writes: a temporary file in the destination folder, then ``os.replace``.

Readers (and a crash) never see half a file: either the old content or the new one.
Used by every stage that writes outputs (maps, models, site pages, caches, JSON summaries).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path


def write_atomic(path: str | os.PathLike, data: bytes | str, *, mode: int = 0o644) -> Path:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` atomically; returns the path."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def link_atomic(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Make ``dest`` name the content of ``src``: a hard link where the file system allows, else a
    copy with ``src``'s mode and times, put in place by ``os.replace`` through a temporary name
    unique to this process and thread, so readers never see a partial file; returns ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-{os.getpid()}-{threading.get_ident()}-{dest.name}"
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest
