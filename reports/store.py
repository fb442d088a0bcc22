"""Writing results: one entry result in one transaction, idempotent per run key.

A run is identified by its **key**: entry × pipeline version (version string plus the
hash of its parameter set) × the checksums of its input files. Storing a result for a
key that already has one replaces that run's metrics, residues, inputs and artefacts in
the same transaction, so re-running the same entry with the same pipeline version and
inputs leaves exactly one run with the newest figures.

Crash safety: :func:`mark_running` commits a ``running`` row before the work starts;
:func:`store_result` writes everything of the result in one transaction (all or
nothing). A process killed mid-entry therefore leaves either the previous committed
state or a ``running`` run with no result rows — never half a result — and
:func:`recover_interrupted` turns such runs into ``failed`` (retryable) ones.

Length: one job, the write path of results; its functions are the parts of one transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import socket
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine

from rerefine.common.errors import InputError
from rerefine.reports import db
from rerefine.reports.numbers import finite_float
from rerefine.reports.verdict import decide

FINISHED = ("done", "failed", "skipped")
#: Ends the reason of a failure that may not happen again (a full disk, memory, an interrupted run):
#: such runs are retried on the next night; any other failure of the same inputs and version is final.
TRANSIENT_NOTE = " (transient: retried next night)"
_ENTRY_KEYS = ("pdb_id", "emdb_id", "title", "release_date", "resolution", "method",
               "method_details", "deposited")
# Per-residue values are rounded: CC, Q-score and inclusion to 1e-4 (well below their
# reproducibility of ~1e-3), B to 0.01 Å²; this keeps the per-run document compact.
_RESIDUE_DIGITS = {"cc": 4, "q_score": 4, "atom_inclusion": 4, "b_iso": 2}


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays made plain and non-finite floats made ``None``."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (dt.date, dt.datetime)):
        return obj.isoformat()
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return jsonable(obj.tolist())  # numpy scalar or array
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "__fspath__"):
        return str(obj)
    return obj


def params_hash(params: Mapping | None) -> str:
    """SHA-256 of the canonical JSON (sorted keys, no spaces) of a parameter set."""
    text = json.dumps(jsonable(params or {}), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def inputs_hash(input_files: Iterable[Mapping] | None) -> str:
    """SHA-256 over the sorted ``role:sha256`` of the input files ('' when none are given)."""
    items = sorted(f"{f.get('role') or f.get('kind') or ''}:{_checksum(f) or ''}" for f in input_files or ())
    if not items:
        return ""
    return hashlib.sha256("\n".join(items).encode()).hexdigest()


def _checksum(f: Mapping) -> str | None:
    return f.get("sha256") or f.get("checksum")


def normalise_pdb_id(pdb_id: str) -> str:
    p = str(pdb_id or "").strip().upper()
    if not p:
        raise InputError("entry has no PDB id")
    return p


def normalise_emdb_id(emdb_id) -> str | None:
    if emdb_id in (None, ""):
        return None
    e = str(emdb_id).strip().upper()
    return f"EMD-{e}" if e.isdigit() else e


def _date(v) -> dt.date | None:
    if v in (None, ""):
        return None
    if isinstance(v, dt.datetime):
        return v.date()
    if isinstance(v, dt.date):
        return v
    try:
        return dt.date.fromisoformat(str(v)[:10])
    except ValueError:
        raise InputError(f"release date {v!r} is not an ISO date") from None


def _entry_row(entry: Mapping) -> dict:
    pdb_id = normalise_pdb_id(entry.get("pdb_id") or entry.get("pdb"))
    extra = {k: v for k, v in entry.items() if k not in _ENTRY_KEYS and k != "pdb"}
    details = dict(entry.get("method_details") or {})
    details.update(extra)  # unknown keys are kept, with the method details
    return {
        "pdb_id": pdb_id,
        "emdb_id": normalise_emdb_id(entry.get("emdb_id")),
        "title": entry.get("title"),
        "release_date": _date(entry.get("release_date")),
        "resolution": finite_float(entry.get("resolution")),
        "method": entry.get("method"),
        "method_details": jsonable(details) or None,
        "deposited": jsonable(entry.get("deposited")) if entry.get("deposited") else None,
        "updated_at": _utcnow(),
    }


def _insert(dialect: str, table):
    return pg_dialect.insert(table) if dialect == "postgresql" else sqlite_dialect.insert(table)


# Upsert statements are built once per shape and reused (building ``excluded`` each time
# costs more than executing the statement); values are bound at execution.
_STATEMENTS: dict[tuple, Any] = {}


def _entry_stmt(dialect: str, given: frozenset):
    key = ("entry", dialect, given)
    if key not in _STATEMENTS:
        stmt = _insert(dialect, db.T_ENTRIES)
        upd = {k: stmt.excluded[k] for k in given | {"updated_at"}}
        _STATEMENTS[key] = stmt.on_conflict_do_update(index_elements=["pdb_id"], set_=upd) \
            .returning(db.T_ENTRIES.c.id)
    return _STATEMENTS[key]


def _upsert_entry(conn: Connection, entry: Mapping) -> int:
    row = _entry_row(entry)
    # Only overwrite what the caller told us: a later call without a title keeps it.
    given = {k for k in _ENTRY_KEYS if entry.get(k) not in (None, "")} - {"pdb_id"}
    if any(k not in _ENTRY_KEYS and k != "pdb" for k in entry):
        given.add("method_details")
    return conn.execute(_entry_stmt(conn.dialect.name, frozenset(given)), row).scalar_one()


def _version_stmt(dialect: str, with_commit: bool):
    key = ("version", dialect, with_commit)
    if key not in _STATEMENTS:
        t = db.T_VERSIONS
        stmt = _insert(dialect, t)
        # A no-op update (git_commit kept unless newly known) so RETURNING yields the id.
        _STATEMENTS[key] = stmt.on_conflict_do_update(
            index_elements=["version", "params_hash"],
            set_={"git_commit": stmt.excluded.git_commit if with_commit else t.c.git_commit},
        ).returning(t.c.id)
    return _STATEMENTS[key]


def _upsert_version(conn: Connection, version: str, params: Mapping | None, git_commit: str | None) -> int:
    if not version:
        raise InputError("pipeline version string is empty")
    row = {"version": str(version), "git_commit": git_commit, "params_hash": params_hash(params),
           "params": jsonable(params or {}), "created_at": _utcnow()}
    return conn.execute(_version_stmt(conn.dialect.name, bool(git_commit)), row).scalar_one()


def _run_stmt(dialect: str, keys: tuple, keep_started: bool):
    key = ("run", dialect, keys, keep_started)
    if key not in _STATEMENTS:
        t = db.T_RUNS
        stmt = _insert(dialect, t)
        upd = {k: stmt.excluded[k] for k in keys}
        if keep_started:
            upd["started_at"] = t.c.started_at  # keep the time mark_running recorded
        _STATEMENTS[key] = stmt.on_conflict_do_update(
            index_elements=["entry_id", "pipeline_version_id", "inputs_hash"], set_=upd).returning(t.c.id)
    return _STATEMENTS[key]


def _claim_run(conn: Connection, entry_id: int, version_id: int, ihash: str, values: dict) -> int:
    """Insert or update the run with this key; adopt a key-less placeholder if one is waiting."""
    t = db.T_RUNS
    if ihash:
        # mark_running may have been called before the input checksums were known.
        found = conn.execute(
            select(t.c.id, t.c.inputs_hash, t.c.status)
            .where(t.c.entry_id == entry_id, t.c.pipeline_version_id == version_id,
                   t.c.inputs_hash.in_(("", ihash)))).all()
        placeholder = next((r.id for r in found if r.inputs_hash == "" and r.status in ("queued", "running")),
                           None)
        taken = next((r.id for r in found if r.inputs_hash == ihash), None)
        if placeholder is not None:
            if taken is None:
                conn.execute(update(t).where(t.c.id == placeholder).values(inputs_hash=ihash))
            else:
                conn.execute(delete(t).where(t.c.id == placeholder))
    stmt = _run_stmt(conn.dialect.name, tuple(sorted(values)), values.get("started_at") is None)
    row = {"entry_id": entry_id, "pipeline_version_id": version_id, "inputs_hash": ihash, **values}
    return conn.execute(stmt, row).scalar_one()


def mark_running(engine: Engine, *, entry: Mapping, pipeline_version: str, params: Mapping | None = None,
                 input_files: Sequence[Mapping] = (), git_commit: str | None = None,
                 host: str | None = None, status: str = "running") -> int:
    """Record (and commit) that an entry's run has started; returns the run id.

    Called before the work so that a crash leaves a visible ``running`` run (turned into
    a retryable ``failed`` one by :func:`recover_interrupted`). Any earlier result of the
    same run key is cleared in the same transaction. ``status`` may be ``"queued"``.
    """
    if status not in ("queued", "running"):
        raise InputError(f"mark_running: status {status!r} is not queued/running")
    now = _utcnow()
    with db.writer(engine) as conn, conn.begin():
        eid = _upsert_entry(conn, entry)
        vid = _upsert_version(conn, pipeline_version, params, git_commit)
        rid = _claim_run(conn, eid, vid, inputs_hash(input_files), {
            "status": status, "reason": None, "verdict": None, "verdict_gate": None, "timings": None,
            "host": host or socket.gethostname(), "started_at": now if status == "running" else None,
            "finished_at": None, "updated_at": now,
        })
        _clear_children(conn, rid)
        _insert_inputs(conn, rid, input_files)
    return rid


def _clear_children(conn: Connection, run_id: int) -> None:
    for t in (db.T_METRICS, db.T_METRICS_FULL, db.T_RESIDUES, db.T_ARTEFACTS, db.T_INPUTS):
        conn.execute(delete(t).where(t.c.run_id == run_id))


def _insert_inputs(conn: Connection, run_id: int, input_files: Sequence[Mapping]) -> None:
    rows = [{"run_id": run_id, "role": str(f.get("role") or f.get("kind") or "input"),
             "path": str(f.get("path") or ""), "size": f.get("size"), "sha256": _checksum(f)}
            for f in input_files or ()]
    if rows:
        conn.execute(db.T_INPUTS.insert(), rows)


def _sharpening(sharpening: Mapping | None, after: Mapping | None, before: Mapping | None) -> dict:
    src: dict = {}
    for d in (before or {}, after or {}):
        src.update({k: d[k] for k in ("b_iso_before", "b_iso_after", "b_sharpen", "method",
                                      "sharpening_method") if k in d})
        if isinstance(d.get("sharpening"), Mapping):
            src.update(d["sharpening"])
    src.update(sharpening or {})
    return {
        "b_iso_before": finite_float(src.get("b_iso_before")),
        "b_iso_after": finite_float(src.get("b_iso_after")),
        "b_sharpen": finite_float(src.get("b_sharpen")),
        "sharpening_method": src.get("method") or src.get("sharpening_method"),
    }


def metrics_row(run_id: int, before: Mapping | None, after: Mapping | None,
                sharpening: Mapping | None = None) -> dict:
    """The ``metrics`` row of a run: scalar columns and sharpening."""
    row: dict = {"run_id": run_id}
    for stage, d in (("before", before), ("after", after)):
        for name in db.METRIC_COLUMNS:
            row[f"{name}_{stage}"] = finite_float((d or {}).get(name))
    row.update(_sharpening(sharpening, after, before))
    return row


def metrics_full_row(run_id: int, before: Mapping | None, after: Mapping | None) -> dict:
    """The ``metrics_full`` row: the whole metric dicts (without ``per_residue``) as JSON."""
    row: dict = {"run_id": run_id}
    for stage, d in (("before", before), ("after", after)):
        row[stage] = jsonable({k: v for k, v in d.items() if k != "per_residue"}) if d is not None else None
    return row


def _residue_keys(rows: Sequence[Mapping]) -> list[tuple]:
    return [(str(r.get("chain", "")), int(r.get("seq", 0)), str(r.get("icode") or "").strip()) for r in rows]


def _column(rows: Sequence[Mapping], field: str) -> "np.ndarray":
    """Float array of one field (NaN where missing or not a finite number)."""
    vals = [r.get(field) for r in rows]
    try:
        arr = np.array(vals, dtype=float)  # None becomes NaN
    except (TypeError, ValueError):
        arr = np.array([finite_float(v) for v in vals], dtype=float)
    arr[~np.isfinite(arr)] = np.nan
    return arr


def pack_residues(before: Sequence[Mapping] | None, after: Sequence[Mapping] | None) -> dict | None:
    """Per-residue rows before/after packed into one column-oriented dict.

    Residues are matched by (chain, seq, icode) and kept in model order (the ``before``
    order, then residues only ``after`` has). Layout::

        {"chain": [...], "seq": [...], "icode": [...], "resname": [...],
         "cc_before": [...], "cc_after": [...], "q_score_before": [...], ...}

    Fields: :data:`rerefine.reports.db.RESIDUE_FIELDS`; a field absent on both sides
    is left out, a value absent on one side (or not finite) is ``null``. Values are
    rounded (CC, Q-score, inclusion to 1e-4; B to 0.01 Å²). Returns ``None`` when both
    lists are empty.
    """
    before, after = list(before or ()), list(after or ())
    if not before and not after:
        return None
    kb, ka = _residue_keys(before), _residue_keys(after)
    if kb == ka or not ka:
        keys, ids = kb, before
        where = {"before": None, "after": None}  # identity: same order on both sides
    else:
        order: dict[tuple, int] = {}
        ids = []
        where = {}
        for stage, rows, ks in (("before", before, kb), ("after", after, ka)):
            idx = []
            for r, k in zip(rows, ks):
                j = order.get(k)
                if j is None:
                    j = order[k] = len(ids)
                    ids.append(r)
                idx.append(j)
            where[stage] = np.asarray(idx, dtype=np.intp)
        keys = list(order)
    n = len(keys)
    out: dict[str, list] = {
        "chain": [k[0] for k in keys], "seq": [k[1] for k in keys],
        "icode": [k[2] for k in keys], "resname": [str(r.get("resname", "")) for r in ids],
    }
    for stage, rows in (("before", before), ("after", after)):
        if not rows:
            continue
        for f in db.RESIDUE_FIELDS:
            vals = _column(rows, f)
            if np.isnan(vals).all():
                continue
            if where[stage] is not None:
                col = np.full(n, np.nan)
                col[where[stage]] = vals
            else:
                col = vals
            col = np.round(col, _RESIDUE_DIGITS[f]).tolist()
            out[f"{f}_{stage}"] = [None if v != v else v for v in col]
    return out


def store_result(engine: Engine, *, entry: Mapping, pipeline_version: str, params: Mapping | None = None,
                 status: str = "done", reason: str | None = None, timings: Mapping | None = None,
                 metrics_before: Mapping | None = None, metrics_after: Mapping | None = None,
                 per_residue_before: Sequence[Mapping] | None = None,
                 per_residue_after: Sequence[Mapping] | None = None,
                 artefacts: Sequence[Mapping] = (), input_files: Sequence[Mapping] = (),
                 sharpening: Mapping | None = None, git_commit: str | None = None,
                 host: str | None = None, started_at: dt.datetime | None = None,
                 finished_at: dt.datetime | None = None, transient: bool = False) -> int:
    """Store one entry's result in one transaction; returns the run id.

    Parameters
    ----------
    engine : Engine
        From :func:`rerefine.reports.db.make_engine` (schema upgraded).
    entry : mapping
        ``pdb_id`` (required), ``emdb_id``, ``title``, ``release_date`` (ISO string or
        date), ``resolution`` (Å), ``method``, ``method_details`` (dict), ``deposited``
        (dict of the authors' deposited metrics). Other keys are kept in
        ``method_details``. Keys left out (or ``None``) do not overwrite stored values.
    pipeline_version, params : str, mapping
        Version string and the parameter set it ran with (hashed; see :func:`params_hash`).
    status : {"done", "failed", "skipped", "queued", "running"}
    reason : str, optional
        Why it failed or was skipped (one line).
    transient : bool
        A failure that may not recur (full disk, memory): its reason gets :data:`TRANSIENT_NOTE`
        and the run is retried on the next night (see :func:`previous_outcome`).
    timings : mapping, optional
        Seconds per stage, e.g. ``{"fetch": 3.1, "sharpen": 9.0, "refine": 41.2}``.
    metrics_before, metrics_after : mapping, optional
        The metric dicts of the deposited and the re-refined model (keys
        :data:`rerefine.reports.db.METRIC_COLUMNS` become columns; the whole dict,
        without ``per_residue``, is kept as JSON).
    per_residue_before, per_residue_after : sequence of mapping, optional
        Rows with ``chain``, ``seq``, ``icode``, ``resname``, ``cc``, ``q_score``,
        ``atom_inclusion`` and optionally ``b_iso`` (Å²). When not given, the metric
        dicts' own ``per_residue`` lists are used.
    artefacts : sequence of mapping
        ``kind`` (e.g. ``refined_model``, ``sharpened_map``, ``difference_map``),
        ``path``, ``size`` (bytes), ``sha256``.
    input_files : sequence of mapping
        ``role`` (e.g. ``model``, ``map``, ``half_map_1``), ``path``, ``size``,
        ``sha256`` (or ``checksum``). Their checksums are part of the run key.
    sharpening : mapping, optional
        ``b_iso_before``, ``b_iso_after``, ``b_sharpen`` (Å²), ``method``; also taken
        from the metric dicts (flat keys or a ``sharpening`` sub-dict) when present.
    git_commit, host : str, optional
    started_at, finished_at : datetime, optional
        UTC; ``finished_at`` defaults to now for finished statuses, ``started_at`` to the
        time :func:`mark_running` recorded.

    Notes
    -----
    The verdict (:func:`rerefine.reports.verdict.decide`) is computed and stored for
    ``done`` runs. Everything is written in one transaction: after a crash either the
    whole result is there or none of it.
    """
    if status not in db.RUN_STATUSES:
        raise InputError(f"run status {status!r} is not one of {', '.join(db.RUN_STATUSES)}")
    if per_residue_before is None and metrics_before:
        per_residue_before = metrics_before.get("per_residue")
    if per_residue_after is None and metrics_after:
        per_residue_after = metrics_after.get("per_residue")
    now = _utcnow()
    if status == "failed" and transient and not str(reason or "").endswith(TRANSIENT_NOTE):
        reason = f"{reason or 'failed'}{TRANSIENT_NOTE}"
    judged = decide(metrics_before, metrics_after) if status == "done" else None
    verdict = judged.verdict if judged is not None else None
    run_values = {
        "status": status, "reason": reason, "verdict": verdict,
        "verdict_gate": judged.gate if verdict is not None else None,
        "timings": jsonable(timings) if timings else None,
        "host": host or socket.gethostname(), "started_at": started_at,
        "finished_at": finished_at or (now if status in FINISHED else None), "updated_at": now,
    }
    packed = pack_residues(per_residue_before, per_residue_after)
    with db.writer(engine) as conn, conn.begin():
        eid = _upsert_entry(conn, entry)
        vid = _upsert_version(conn, pipeline_version, params, git_commit)
        rid = _claim_run(conn, eid, vid, inputs_hash(input_files), run_values)
        _clear_children(conn, rid)
        _insert_inputs(conn, rid, input_files)
        if metrics_before is not None or metrics_after is not None or sharpening:
            conn.execute(db.T_METRICS.insert(), [metrics_row(rid, metrics_before, metrics_after, sharpening)])
            conn.execute(db.T_METRICS_FULL.insert(), [metrics_full_row(rid, metrics_before, metrics_after)])
        if packed is not None:
            conn.execute(db.T_RESIDUES.insert(), [{"run_id": rid, "n_residues": len(packed["seq"]),
                                                   "data": packed}])
        arts = [{"run_id": rid, "kind": str(a.get("kind") or "file"), "path": str(a.get("path") or ""),
                 "size": a.get("size"), "sha256": _checksum(a)} for a in artefacts or ()]
        if arts:
            conn.execute(db.T_ARTEFACTS.insert(), arts)
    return rid


def mark_failed(engine: Engine, run_id: int, reason: str) -> None:
    """Set a run to ``failed`` with a one-line reason (its result rows are removed)."""
    now = _utcnow()
    with db.writer(engine) as conn, conn.begin():
        n = conn.execute(update(db.T_RUNS).where(db.T_RUNS.c.id == run_id).values(
            status="failed", reason=reason, verdict=None, verdict_gate=None, finished_at=now,
            updated_at=now)).rowcount
        if not n:
            raise InputError(f"run {run_id} does not exist")
        _clear_children(conn, run_id)


def recover_interrupted(engine: Engine, *, older_than: dt.timedelta | None = None,
                        host: str | None = None) -> int:
    """Turn ``running`` runs left by a dead process into ``failed`` ones; returns how many.

    Only runs started more than ``older_than`` ago (all when ``None``) and, when given,
    on ``host`` are touched — call it at flow start, when no other worker of that host
    is running.
    """
    t = db.T_RUNS
    now = _utcnow()
    cond = [t.c.status == "running"]
    if older_than is not None:
        cond.append(t.c.started_at < now - older_than)
    if host is not None:
        cond.append(t.c.host == host)
    with db.writer(engine) as conn, conn.begin():
        ids = conn.execute(select(t.c.id).where(*cond)).scalars().all()
        if ids:
            conn.execute(update(t).where(t.c.id.in_(ids)).values(
                status="failed", reason="interrupted: the process ended while the run was in progress" + TRANSIENT_NOTE,
                finished_at=now, updated_at=now))
            for rid in ids:
                _clear_children(conn, rid)
    return len(ids)


def is_done(engine: Engine, *, pdb_id: str, pipeline_version: str, params: Mapping | None = None,
            input_files: Sequence[Mapping] = ()) -> bool:
    """Whether this run key already has a ``done`` (or ``skipped``) result — the flows skip it."""
    t, v, e = db.T_RUNS, db.T_VERSIONS, db.T_ENTRIES
    stmt = (select(t.c.status).join(e, e.c.id == t.c.entry_id).join(v, v.c.id == t.c.pipeline_version_id)
            .where(e.c.pdb_id == normalise_pdb_id(pdb_id), v.c.version == str(pipeline_version),
                   v.c.params_hash == params_hash(params), t.c.inputs_hash == inputs_hash(input_files)))
    with engine.connect() as conn:
        status = conn.execute(stmt).scalar()
    return status in ("done", "skipped")


def previous_outcome(engine: Engine, *, pdb_id: str, pipeline_version: str, params: Mapping | None = None,
                     input_files: Sequence[Mapping] = ()) -> tuple[str, str | None] | None:
    """(status, reason) of this run key's decisive earlier result, or None when it must run.

    Decisive: ``done`` and ``skipped``, and ``failed`` unless the failure was transient (its reason
    ends with :data:`TRANSIENT_NOTE`): the same inputs and pipeline version would fail again, so the
    flows do not recompute them every night (``--force`` does).
    """
    t, v, e = db.T_RUNS, db.T_VERSIONS, db.T_ENTRIES
    stmt = (select(t.c.status, t.c.reason).join(e, e.c.id == t.c.entry_id)
            .join(v, v.c.id == t.c.pipeline_version_id)
            .where(e.c.pdb_id == normalise_pdb_id(pdb_id), v.c.version == str(pipeline_version),
                   v.c.params_hash == params_hash(params), t.c.inputs_hash == inputs_hash(input_files)))
    with engine.connect() as conn:
        row = conn.execute(stmt).first()
    if row is None or row.status not in FINISHED:
        return None
    if row.status == "failed" and (not inputs_hash(input_files) or str(row.reason or "").endswith(TRANSIENT_NOTE)):
        return None
    return row.status, row.reason


def latest_runs(engine: Engine, *, pipeline_version: str, params: Mapping | None = None
                ) -> dict[str, tuple[str, dt.datetime | None]]:
    """``PDB id -> (status, started_at)`` of each entry's latest run (by ``updated_at``, then id) under
    one pipeline version and parameter set, whatever its inputs: one query for the whole database.

    The nightly's "already done" test for a whole night (an entry whose latest run is ``done`` and
    started after its files last changed need not be handed to a per-entry task).
    ``started_at`` is naive UTC, as stored.
    """
    t, v, e = db.T_RUNS, db.T_VERSIONS, db.T_ENTRIES
    stmt = (select(e.c.pdb_id, t.c.status, t.c.started_at).join(e, e.c.id == t.c.entry_id)
            .join(v, v.c.id == t.c.pipeline_version_id)
            .where(v.c.version == str(pipeline_version), v.c.params_hash == params_hash(params))
            .order_by(t.c.updated_at, t.c.id))
    with engine.connect() as conn:
        return {pid: (status, started) for pid, status, started in conn.execute(stmt)}


def recompute_verdicts(engine: Engine) -> int:
    """Re-apply :func:`rerefine.reports.verdict.decide` to every ``done`` run (after the rule
    changed; the deciding gate too); returns how many verdicts changed. One transaction."""
    t, mf = db.T_RUNS, db.T_METRICS_FULL
    changed = 0
    with db.writer(engine) as conn, conn.begin():
        rows = conn.execute(select(t.c.id, t.c.verdict, t.c.verdict_gate, mf.c.before, mf.c.after)
                            .join(mf, mf.c.run_id == t.c.id).where(t.c.status == "done")).all()
        for rid, old, old_gate, before, after in rows:
            v = decide(before, after)
            gate = v.gate if v.verdict is not None else None
            if (v.verdict, gate) != (old, old_gate):
                conn.execute(update(t).where(t.c.id == rid).values(verdict=v.verdict, verdict_gate=gate,
                                                                   updated_at=_utcnow()))
                changed += v.verdict != old
    return changed
