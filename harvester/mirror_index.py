"""The state file of a local mirror's discovery: parsed model records and earlier judgements.

At archive scale (~230,000 models) a local mirror is not re-read, nor re-judged, each night.
:class:`ModelIndex` (one SQLite file in the download cache) keeps

* per model file: its path, size and modification time with its
  :func:`rerefine.harvester.mirror.model_record`, so :func:`mirror_records` parses only the
  files that are new or changed since (one directory walk with ``stat`` for the rest);
* per entry: the judgement of the selection rules (status, reason, the accepted candidate)
  with what it was made from: the model file's size and time, a key of the settings that decide
  it (:func:`judgement_key`) and the size and time of every other mirror file it read (the EMDB
  header, the map). :meth:`ModelIndex.unchanged` finds in one query the entries whose inputs are
  all as they were, so a night judges only new or changed entries.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sqlite3
import stat
from pathlib import Path

from rerefine.common.errors import InputError

from . import mirror as mirror_mod
from .rcsb import ModelInfo

#: Statuses whose judgement is kept: "failed" (metadata not had) is always judged again.
KEPT_STATUSES = ("accepted", "rejected")
_MODEL_NAME = re.compile(r"^((?:[0-9][a-z0-9]{3})|(?:pdb_[a-z0-9]{8})|(?:loc_[a-z0-9_]{1,24}))\.cif\.gz$")
_CHUNK = 900  # SQLite's default limit on bound parameters is 999


def judgement_key(**settings) -> str:
    """A stable key of the settings a judgement depends on: SHA-256 (first 16 hex digits) of the
    keyword values as sorted JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_stat(path: Path) -> tuple[int, int]:
    """``(size, mtime_ns)`` of a file, ``(-1, -1)`` when it does not exist (or is not a file)."""
    try:
        st = path.stat()
    except OSError:
        return -1, -1
    return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else (-1, -1)


class ModelIndex:
    """State file of a local mirror's discovery (SQLite at ``path``); see the module docstring.

    Tables ``models (root, rel, size, mtime_ns, record)`` and ``judgements (root, pid, size, mtime_ns,
    key, deps, status, reason, candidate)``; ``deps`` is JSON ``[[rel, size, mtime_ns], ...]`` of the
    mirror files other than the model that the judgement read. Writes are transactions, so a night
    killed midway leaves the rows it finished.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path))
        self.db.execute("CREATE TABLE IF NOT EXISTS models (root TEXT, rel TEXT, size INTEGER, mtime_ns INTEGER, "
                        "record TEXT, PRIMARY KEY (root, rel))")
        self.db.execute("CREATE TABLE IF NOT EXISTS judgements (root TEXT, pid TEXT, size INTEGER, "
                        "mtime_ns INTEGER, key TEXT, deps TEXT, status TEXT, reason TEXT, candidate TEXT, "
                        "PRIMARY KEY (root, pid))")

    # -- model records ----------------------------------------------------------------------
    def stamps(self, root: Path) -> dict[str, tuple[int, int]]:
        """``rel -> (size, mtime_ns)`` of every model file indexed under ``root`` (no records read)."""
        rows = self.db.execute("SELECT rel, size, mtime_ns FROM models WHERE root = ?", (str(root),))
        return {rel: (size, mtime) for rel, size, mtime in rows}

    def records(self, root: Path, rels) -> dict[str, str]:
        """``rel -> record JSON`` of the given files (those indexed), in chunked ``IN`` queries."""
        rels = list(rels)
        out: dict[str, str] = {}
        for i in range(0, len(rels), _CHUNK):
            part = rels[i:i + _CHUNK]
            q = f"SELECT rel, record FROM models WHERE root = ? AND rel IN ({','.join('?' * len(part))})"
            out.update(self.db.execute(q, (str(root), *part)))
        return out

    def store(self, root: Path, rows: list[tuple[str, int, int, str]], gone: list[str]) -> None:
        """Insert or replace ``(rel, size, mtime_ns, record JSON)`` rows; delete the ``gone`` files."""
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?)",
                                [(str(root), *r) for r in rows])
            self.db.executemany("DELETE FROM models WHERE root = ? AND rel = ?", [(str(root), g) for g in gone])

    # -- judgements -------------------------------------------------------------------------
    def unchanged(self, root: Path, files: dict[str, tuple[str, int, int]], key: str) -> dict[str, tuple[str, int]]:
        """``pid -> (status, newest mtime_ns)`` of the entries judged before from the same inputs.

        Same inputs: the model file has the size and modification time of ``files[pid]`` (as
        :func:`scan_models` gives it), the settings ``key`` is the same, and every other mirror file
        the judgement read has the size and time it had then. Only entries with such files are
        ``stat``-ed; the rest is one query. The newest modification time (ns since the epoch) of the
        model and those files tells whether a later run can have read them as they are now.
        """
        out: dict[str, tuple[str, int]] = {}
        rows = self.db.execute("SELECT pid, size, mtime_ns, key, deps, status FROM judgements WHERE root = ?",
                               (str(root),))
        for pid, size, mtime, k, deps, status in rows:
            f = files.get(pid)
            if f is None or f[1] != size or f[2] != mtime or k != key:
                continue
            dep_stats = json.loads(deps) if deps != "[]" else []
            if any(file_stat(root / rel) != (s, m) for rel, s, m in dep_stats):
                continue
            out[pid] = (status, max([mtime, *(m for _rel, _s, m in dep_stats)]))
        return out

    def accepted_candidates(self, root: Path, pids) -> dict[str, dict]:
        """``pid -> candidate dict`` stored with the accepted judgements of ``pids``."""
        pids = list(pids)
        out: dict[str, dict] = {}
        for i in range(0, len(pids), _CHUNK):
            part = pids[i:i + _CHUNK]
            q = (f"SELECT pid, candidate FROM judgements WHERE root = ? AND status = 'accepted' "
                 f"AND pid IN ({','.join('?' * len(part))})")
            out.update((pid, json.loads(c)) for pid, c in self.db.execute(q, (str(root), *part)))
        return out

    def store_judgements(self, root: Path, rows: list[tuple], forget: list[str] = ()) -> None:
        """Insert or replace ``(pid, size, mtime_ns, key, deps JSON, status, reason, candidate JSON)``
        rows; delete the judgements of the ``forget`` entries (to be judged again)."""
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO judgements VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                [(str(root), *r) for r in rows])
            self.db.executemany("DELETE FROM judgements WHERE root = ? AND pid = ?",
                                [(str(root), p) for p in forget])

    def close(self) -> None:
        self.db.close()


def scan_models(root: Path) -> dict[str, tuple[str, int, int]]:
    """``pid -> (rel, size, mtime_ns)`` of every ``{id}.cif.gz`` under a local mirror's model folder.

    One ``os.scandir`` walk of the two-level divided layout; names that are not valid ids are skipped.
    """
    base = root / mirror_mod.MODELS_DIR
    out: dict[str, tuple[str, int, int]] = {}
    if not base.is_dir():
        return out
    prefix = mirror_mod.MODELS_DIR + "/"
    match = _MODEL_NAME.match
    with os.scandir(base) as subs:
        for sub in subs:
            if not sub.is_dir():
                continue
            with os.scandir(sub.path) as files:
                for f in files:
                    m = match(f.name)
                    if m is None:
                        continue
                    try:
                        st = f.stat()
                    except OSError:
                        continue
                    out[m.group(1)] = (f"{prefix}{sub.name}/{f.name}", st.st_size, st.st_mtime_ns)
    return out


def mirror_records(mirror, index: ModelIndex, files: dict[str, tuple[str, int, int]] | None = None,
                   pids=None) -> tuple[dict, dict]:
    """The model records of a local mirror, parsing only files new or changed since ``index``.

    Parameters
    ----------
    mirror : Mirror
        A local mirror.
    index : ModelIndex
    files : dict, optional
        :func:`scan_models` of the mirror (walked here when not given).
    pids : iterable of str, optional
        Only these entries' records (all when None). Index rows of files gone from the mirror are
        deleted either way.

    Returns
    -------
    (dict, dict)
        ``pid -> ModelInfo`` of every readable model file asked for, and ``pid -> InputError`` of the
        files that could not be parsed (not indexed: tried again next time).
    """
    if mirror.root is None:
        raise InputError("mirror index: only a local mirror has file sizes and times to compare")
    root = mirror.root
    if files is None:
        files = scan_models(root)
    stamps = index.stamps(root)
    wanted = sorted(files) if pids is None else sorted(p for p in pids if p in files)
    stored = index.records(root, [files[p][0] for p in wanted
                                  if stamps.get(files[p][0]) == (files[p][1], files[p][2])])
    records, errors, new_rows = {}, {}, []
    for pid in wanted:
        rel, size, mtime = files[pid]
        old = stored.get(rel)
        if old is not None:
            records[pid] = ModelInfo(**json.loads(old))
            continue
        try:
            info = mirror_mod.model_record(root / rel, pid)
        except InputError as exc:
            errors[pid] = exc
            continue
        records[pid] = info
        new_rows.append((rel, size, mtime, json.dumps(dataclasses.asdict(info))))
    present = {rel for rel, _s, _m in files.values()}
    index.store(root, new_rows, [rel for rel in stamps if rel not in present])
    return records, errors
