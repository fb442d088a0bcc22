"""The query layer the site and the CLI read the results database through.

Every function takes an :class:`~sqlalchemy.engine.Engine` and returns plain Python
data (dicts, lists, floats, ``datetime``/``date`` objects) — no ORM objects leak out.

Result rows of a run carry, for each name in
:data:`rerefine.reports.db.METRIC_COLUMNS`, the keys ``<name>_before``,
``<name>_after`` and ``d_<name>`` (after − before, ``None`` unless both are known).

Pipeline versions are named by their version string (``"0.3.1"``); when one version
string ran with several parameter sets, the most recently created one is meant unless
a parameter-hash prefix is given (``"0.3.1@1a2b3c"``).

Functions
---------
latest_results      index table: one row per entry (its latest finished run)
entry_detail        per-entry page: metadata, run, full before/after metrics, residues
per_residue         per-residue rows of one run (profiles along each chain)
versions            pipeline versions with counts by status and verdict
distributions       per version: metric values and deltas, summaries, resolution bins
metric_values       columns of archive-wide scatter plots (CCmask vs Q-score, ...)
compare_versions    entries both versions processed: metric deltas and regressions
regressions         the entries that got worse from version A to version B
stats               counts by status and by version
changed_since       PDB ids whose data changed after a time (incremental site build)
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from typing import Iterable, Sequence

from sqlalchemy import case, func, select
from sqlalchemy.engine import Engine

from rerefine.common.errors import InputError
from rerefine.reports import db
from rerefine.reports.verdict import CC_MARGIN, decide, got_worse

FINISHED = ("done", "failed", "skipped")
#: What the entry page says of a verdict stored before the gates (no ``verdict_gate``).
OLD_RULE = "verdict by the rule of pipeline versions before 0.3 (full CCmask and restraint RMSDs)"
#: Default resolution bins (Å) of :func:`distributions`.
RESOLUTION_BINS = (0.0, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, math.inf)

E, V, R, M, MF = db.T_ENTRIES, db.T_VERSIONS, db.T_RUNS, db.T_METRICS, db.T_METRICS_FULL
_METRIC_COLS = [M.c[f"{n}_{s}"] for n in db.METRIC_COLUMNS for s in ("before", "after")]
_SHARP_COLS = [M.c.b_iso_before, M.c.b_iso_after, M.c.b_sharpen, M.c.sharpening_method]
_ENTRY_COLS = [E.c.pdb_id, E.c.emdb_id, E.c.title, E.c.resolution, E.c.release_date]
_RUN_COLS = [R.c.id.label("run_id"), R.c.status, R.c.reason, R.c.verdict, R.c.verdict_gate, R.c.finished_at,
             R.c.updated_at, V.c.version, V.c.params_hash]


# ----------------------------------------------------------------------------- helpers

def _add_deltas(row: dict) -> dict:
    for n in db.METRIC_COLUMNS:
        b, a = row.get(f"{n}_before"), row.get(f"{n}_after")
        row[f"d_{n}"] = a - b if a is not None and b is not None else None
    return row


def _resolve_version(conn, spec: str) -> dict:
    """The pipeline_versions row named by ``spec`` (``VERSION`` or ``VERSION@HASHPREFIX``)."""
    version, _, prefix = str(spec).partition("@")
    stmt = select(V.c.id, V.c.version, V.c.params_hash, V.c.params, V.c.git_commit, V.c.created_at) \
        .where(V.c.version == version)
    if prefix:
        stmt = stmt.where(V.c.params_hash.like(prefix + "%"))
    rows = conn.execute(stmt.order_by(V.c.created_at.desc(), V.c.id.desc())).mappings().all()
    if not rows:
        known = conn.execute(select(V.c.version).distinct().order_by(V.c.version)).scalars().all()
        raise InputError(f"pipeline version {spec!r} is not in the database "
                         f"(known: {', '.join(known) or 'none'})")
    return dict(rows[0])


def _latest_run_subquery(version_id: int | None = None, finished_only: bool = False):
    """Subquery (entry_id, run_id) of the run that states each entry's state.

    That is the newest *decisive* run: ``done``, ``skipped``, or ``failed`` on known inputs (a
    failure before the inputs were judged - a fetch that failed, metadata that could not be had -
    has an empty ``inputs_hash`` and never masks an earlier result). An entry without one shows
    its newest finished run, and then (unless ``finished_only``) its newest queued/running one.
    (A GROUP BY over the ``runs.entry_id`` index: much cheaper than a window function on SQLite.)
    """
    decisive = R.c.status.in_(("done", "skipped")) | ((R.c.status == "failed") & (R.c.inputs_hash != ""))
    newest_decisive = func.max(case((decisive, R.c.id)))
    newest_finished = func.max(case((R.c.status.in_(FINISHED), R.c.id)))
    if finished_only:
        stmt = select(R.c.entry_id, func.coalesce(newest_decisive, newest_finished).label("run_id")) \
            .where(R.c.status.in_(FINISHED))
    else:
        stmt = select(R.c.entry_id,
                      func.coalesce(newest_decisive, newest_finished, func.max(R.c.id)).label("run_id"))
    if version_id is not None:
        stmt = stmt.where(R.c.pipeline_version_id == version_id)
    return stmt.group_by(R.c.entry_id).subquery()


def _dicts(result) -> list[dict]:
    """Rows as plain dicts (zip over the keys: cheaper than RowMapping for 10,000s of rows)."""
    keys = list(result.keys())
    return [dict(zip(keys, row)) for row in result.all()]


_DELTA_COLS = [(M.c[f"{n}_after"] - M.c[f"{n}_before"]).label(f"d_{n}") for n in db.METRIC_COLUMNS]


# ----------------------------------------------------------------------------- index

def latest_results(engine: Engine, *, version: str | None = None, status: str | None = None,
                   verdict: str | None = None, limit: int | None = None, offset: int = 0) -> list[dict]:
    """Index table: one row per entry with its latest run (optionally of one ``version``).

    Row keys: ``pdb_id``, ``emdb_id``, ``title``, ``resolution`` (Å), ``release_date``,
    ``run_id``, ``status``, ``reason``, ``verdict``, ``finished_at``, ``updated_at``,
    ``version``, ``params_hash``, the metric triplets (``cc_mask_before``,
    ``cc_mask_after``, ``d_cc_mask``, ... for every name of
    :data:`~rerefine.reports.db.METRIC_COLUMNS`), ``b_iso_before``, ``b_iso_after``,
    ``b_sharpen``, ``sharpening_method``. Ordered by PDB id; ``status``/``verdict``
    filter; ``limit``/``offset`` page.
    """
    with engine.connect() as conn:
        vid = _resolve_version(conn, version)["id"] if version else None
        latest = _latest_run_subquery(vid)
        stmt = (select(*_ENTRY_COLS, *_RUN_COLS, *_METRIC_COLS, *_DELTA_COLS, *_SHARP_COLS)
                .select_from(E.join(latest, latest.c.entry_id == E.c.id)
                             .join(R, R.c.id == latest.c.run_id)
                             .join(V, V.c.id == R.c.pipeline_version_id)
                             .outerjoin(M, M.c.run_id == R.c.id)))
        if status:
            stmt = stmt.where(R.c.status == status)
        if verdict:
            stmt = stmt.where(R.c.verdict == verdict)
        if limit is not None or offset:
            stmt = stmt.order_by(E.c.pdb_id).limit(limit).offset(offset)
            return _dicts(conn.execute(stmt))
        # The whole table is sorted here: sorting 10,000 wide rows in SQL spills to disk
        # on PostgreSQL's default work_mem.
        return sorted(_dicts(conn.execute(stmt)), key=lambda r: r["pdb_id"])


# ----------------------------------------------------------------------------- entry page

def _unpack_residues(data: dict | None) -> list[dict]:
    if not data:
        return []
    keys = list(data)
    cols = [data[k] for k in keys]
    return [dict(zip(keys, vals)) for vals in zip(*cols)]


def per_residue(engine: Engine, run_id: int) -> list[dict]:
    """Per-residue rows of a run, in model order.

    Keys: ``chain``, ``seq``, ``icode``, ``resname`` and, where stored,
    ``cc_before``/``cc_after``, ``q_score_before``/``_after``,
    ``atom_inclusion_before``/``_after``, ``b_iso_before``/``_after`` (Å²); a value
    missing on one side is ``None``. Group by ``chain`` for profiles along each chain.
    """
    with engine.connect() as conn:
        data = conn.execute(select(db.T_RESIDUES.c.data).where(db.T_RESIDUES.c.run_id == run_id)).scalar()
    return _unpack_residues(data)


def entry_detail(engine: Engine, pdb_id: str, *, version: str | None = None,
                 run_id: int | None = None) -> dict | None:
    """Everything the per-entry page shows; ``None`` if the entry is unknown.

    Returns
    -------
    dict
        ``entry`` (``pdb_id``, ``emdb_id``, ``title``, ``release_date``, ``resolution``,
        ``method``, ``method_details``, ``deposited``, ``updated_at``);
        ``run`` (the latest run, or of ``version``, or ``run_id``; ``None`` if none:
        ``run_id``, ``status``, ``reason``, ``verdict``, ``recommended``
        (``"rerefined"``/``"deposited"``), ``verdict_gate`` (the deciding gate),
        ``verdict_reasons``, ``verdict_gates`` (each gate's ``name``, ``status``, ``detail``;
        empty for runs judged before the gates existed), ``timings``, ``host``,
        ``started_at``, ``finished_at``, ``version``, ``git_commit``, ``params_hash``,
        ``params``, the metric triplets, sharpening, ``before`` and ``after`` (full
        metric dicts), ``artefacts`` and ``inputs`` (lists of dicts), ``per_residue``
        (rows as :func:`per_residue`));
        ``history`` (every run of the entry, newest first: ``run_id``, ``version``,
        ``status``, ``reason``, ``verdict``, ``cc_mask_before``, ``cc_mask_after``, ``finished_at``).
    """
    from rerefine.reports.store import normalise_pdb_id

    pid = normalise_pdb_id(pdb_id)
    with engine.connect() as conn:
        entry = conn.execute(select(E).where(E.c.pdb_id == pid)).mappings().first()
        if entry is None:
            return None
        entry = dict(entry)
        eid = entry.pop("id")
        history = [dict(r) for r in conn.execute(
            select(R.c.id.label("run_id"), V.c.version, V.c.params_hash, R.c.status, R.c.reason, R.c.verdict,
                   M.c.cc_mask_before, M.c.cc_mask_after, R.c.finished_at)
            .select_from(R.join(V, V.c.id == R.c.pipeline_version_id).outerjoin(M, M.c.run_id == R.c.id))
            .where(R.c.entry_id == eid).order_by(R.c.updated_at.desc(), R.c.id.desc())).mappings()]
        if run_id is None:
            vid = _resolve_version(conn, version)["id"] if version else None
            latest = _latest_run_subquery(vid)
            run_id = conn.execute(select(latest.c.run_id).where(latest.c.entry_id == eid)).scalar()
        run = None
        if run_id is not None:
            row = conn.execute(
                select(*_RUN_COLS, R.c.timings, R.c.host, R.c.started_at, V.c.git_commit, V.c.params,
                       *_METRIC_COLS, *_SHARP_COLS, MF.c.before, MF.c.after)
                .select_from(R.join(V, V.c.id == R.c.pipeline_version_id).outerjoin(M, M.c.run_id == R.c.id)
                             .outerjoin(MF, MF.c.run_id == R.c.id))
                .where(R.c.id == run_id, R.c.entry_id == eid)).mappings().first()
            if row is not None:
                run = _add_deltas(dict(row))
                run["recommended"] = "rerefined" if run["verdict"] == "improved" else "deposited"
                run["verdict_reasons"], run["verdict_gates"] = [], []
                if run["status"] == "done" and run["verdict_gate"] is not None:
                    v = decide(run["before"], run["after"])
                    run["verdict_reasons"] = v.reasons
                    run["verdict_gates"] = [{"name": g.name, "status": g.status, "detail": g.detail}
                                            for g in v.gates]
                elif run["status"] == "done" and run["verdict"] is not None:
                    run["verdict_reasons"] = [OLD_RULE]
                run["artefacts"] = [dict(r) for r in conn.execute(
                    select(db.T_ARTEFACTS.c.kind, db.T_ARTEFACTS.c.path, db.T_ARTEFACTS.c.size,
                           db.T_ARTEFACTS.c.sha256).where(db.T_ARTEFACTS.c.run_id == run_id)
                    .order_by(db.T_ARTEFACTS.c.id)).mappings()]
                run["inputs"] = [dict(r) for r in conn.execute(
                    select(db.T_INPUTS.c.role, db.T_INPUTS.c.path, db.T_INPUTS.c.size, db.T_INPUTS.c.sha256)
                    .where(db.T_INPUTS.c.run_id == run_id).order_by(db.T_INPUTS.c.id)).mappings()]
                data = conn.execute(select(db.T_RESIDUES.c.data)
                                    .where(db.T_RESIDUES.c.run_id == run_id)).scalar()
                run["per_residue"] = _unpack_residues(data)
    return {"entry": entry, "run": run, "history": history}


# ----------------------------------------------------------------------------- versions

def versions(engine: Engine) -> list[dict]:
    """Pipeline versions, oldest first, with ``by_status`` and ``by_verdict`` counts.

    Keys: ``id``, ``version``, ``git_commit``, ``params_hash``, ``params``,
    ``created_at``, ``n_runs``, ``by_status``, ``by_verdict``, ``previous`` (the version
    string created before this one, ``None`` for the first).
    """
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(
            select(V).order_by(V.c.created_at, V.c.id)).mappings()]
        counts = conn.execute(select(R.c.pipeline_version_id, R.c.status, R.c.verdict, func.count())
                              .group_by(R.c.pipeline_version_id, R.c.status, R.c.verdict)).all()
    by_id = {r["id"]: r for r in rows}
    for r in rows:
        r["n_runs"], r["by_status"], r["by_verdict"] = 0, {}, {}
    for vid, status, verdict, n in counts:
        r = by_id[vid]
        r["n_runs"] += n
        r["by_status"][status] = r["by_status"].get(status, 0) + n
        if verdict:
            r["by_verdict"][verdict] = r["by_verdict"].get(verdict, 0) + n
    prev = None
    for r in rows:
        r["previous"] = prev
        prev = r["version"]
    return rows


def _done_stmt(version_id: int | None, metrics: Sequence[str], parts: Sequence[str]):
    """Latest ``done`` run per entry (of a version): pdb_id, title, resolution, verdict, then
    for each metric the parts asked for (``<m>_before``, ``<m>_after``, ``d_<m>``)."""
    latest = _latest_run_subquery(version_id, finished_only=True)
    cols = []
    for n in metrics:
        if "before" in parts:
            cols.append(M.c[f"{n}_before"])
        if "after" in parts:
            cols.append(M.c[f"{n}_after"])
        if "delta" in parts:
            cols.append((M.c[f"{n}_after"] - M.c[f"{n}_before"]).label(f"d_{n}"))
    return (select(E.c.pdb_id, E.c.title, E.c.resolution, R.c.verdict, *cols)
            .select_from(E.join(latest, latest.c.entry_id == E.c.id).join(R, R.c.id == latest.c.run_id)
                         .join(M, M.c.run_id == R.c.id))
            .where(R.c.status == "done"))


def _done_rows(conn, version_id: int | None, metrics: Sequence[str] = db.METRIC_COLUMNS,
               parts: Sequence[str] = ("before", "after", "delta")) -> list[dict]:
    return _dicts(conn.execute(_done_stmt(version_id, metrics, parts)))


def _summary(values: Sequence[float]) -> dict:
    import numpy as np

    v = np.asarray(values, dtype=float)  # None becomes NaN
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"n": 0, "mean": None, "median": None, "q25": None, "q75": None, "min": None, "max": None}
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    return {"n": int(v.size), "mean": float(v.mean()), "median": float(med), "q25": float(q25),
            "q75": float(q75), "min": float(v.min()), "max": float(v.max())}


def bin_label(lo: float, hi: float) -> str:
    """Label of the resolution bin [``lo``, ``hi``) in Å: ``< 2 Å``, ``2–2.5 Å``, ``≥ 5 Å``."""
    if math.isinf(hi):
        return f"≥ {lo:g} Å"
    if lo <= 0:
        return f"< {hi:g} Å"
    return f"{lo:g}–{hi:g} Å"


def distributions(engine: Engine, version: str | None = None, *,
                  metrics: Iterable[str] = ("cc_mask", "q_score", "atom_inclusion", "bond_rmsd", "angle_rmsd"),
                  resolution_bins: Sequence[float] = RESOLUTION_BINS) -> dict:
    """Distributions of metrics and their changes over the ``done`` runs of a version.

    ``version=None`` uses each entry's latest done run (any version).

    Returns
    -------
    dict
        ``version``, ``n`` (entries), ``verdicts`` (counts), ``metrics``:
        name → {``before``, ``after``, ``delta`` (lists aligned with ``pdb_ids``),
        ``summary_before``, ``summary_after``, ``summary_delta`` (n, mean, median,
        q25, q75, min, max)}, ``pdb_ids``, ``resolution`` (list, Å) and
        ``by_resolution``: per bin {``label``, ``lo``, ``hi``, ``n``, ``improved``,
        ``unchanged``, ``worse``, ``median_d_cc_mask``, ``mean_d_cc_mask``}.
    """
    metrics = list(metrics)
    for m in metrics:
        if m not in db.METRIC_COLUMNS:
            raise InputError(f"unknown metric {m!r} (known: {', '.join(db.METRIC_COLUMNS)})")
    with engine.connect() as conn:
        vid = _resolve_version(conn, version)["id"] if version else None
        rows = _done_rows(conn, vid, sorted(set(metrics) | {"cc_mask"}))
    out: dict = {"version": version, "n": len(rows), "pdb_ids": [r["pdb_id"] for r in rows],
                 "resolution": [r["resolution"] for r in rows],
                 "verdicts": dict(Counter(r["verdict"] for r in rows if r["verdict"])), "metrics": {}}
    for m in metrics:
        b = [r[f"{m}_before"] for r in rows]
        a = [r[f"{m}_after"] for r in rows]
        d = [r[f"d_{m}"] for r in rows]
        out["metrics"][m] = {"before": b, "after": a, "delta": d, "summary_before": _summary(b),
                             "summary_after": _summary(a), "summary_delta": _summary(d)}
    bins = []
    for lo, hi in zip(resolution_bins[:-1], resolution_bins[1:]):
        sel = [r for r in rows if r["resolution"] is not None and lo <= r["resolution"] < hi]
        verd = Counter(r["verdict"] for r in sel)
        s = _summary([r["d_cc_mask"] for r in sel])
        bins.append({"label": bin_label(lo, hi), "lo": lo, "hi": hi, "n": len(sel),
                     "improved": verd.get("improved", 0), "unchanged": verd.get("unchanged", 0),
                     "worse": verd.get("worse", 0), "median_d_cc_mask": s["median"],
                     "mean_d_cc_mask": s["mean"]})
    out["by_resolution"] = bins
    return out


def metric_values(engine: Engine, *, version: str | None = None) -> dict[str, list]:
    """Column lists over the entries' latest done runs, for archive-wide scatter plots.

    Keys: ``pdb_id``, ``resolution``, ``verdict`` and every metric triplet
    (``cc_mask_before``, ``cc_mask_after``, ``d_cc_mask``, ``q_score_before``, ...).
    """
    with engine.connect() as conn:
        vid = _resolve_version(conn, version)["id"] if version else None
        rows = _done_rows(conn, vid)
    keys = ["pdb_id", "resolution", "verdict"] + [f"{p}{n}{s}" for n in db.METRIC_COLUMNS
                                                  for p, s in (("", "_before"), ("", "_after"), ("d_", ""))]
    return {k: [r[k] for r in rows] for k in keys}


# ----------------------------------------------------------------------------- comparison

def compare_versions(engine: Engine, version_a: str, version_b: str, *, margin: float = CC_MARGIN) -> dict:
    """Compare two pipeline versions over the entries both processed to ``done``.

    Returns
    -------
    dict
        ``version_a``, ``version_b`` (resolved: version, params_hash), ``n_common``,
        ``rows`` (per entry: ``pdb_id``, ``title``, ``resolution``, ``verdict_a``,
        ``verdict_b``, and for each metric ``<m>_a``, ``<m>_b`` (after re-refinement),
        ``d_<m>`` (B − A)), ``summary`` (metric → n/mean/median/... of B − A),
        ``verdicts_a``/``verdicts_b`` (counts), ``worse`` (rows of the entries that got
        worse under B, with ``why``; rule: :func:`rerefine.reports.verdict.got_worse`).
    """
    with engine.connect() as conn:
        va, vb = _resolve_version(conn, version_a), _resolve_version(conn, version_b)
        # Two plain per-version queries joined here by PDB id: joining two grouped
        # subqueries in SQL makes SQLite fall back to nested loops over 10,000s of rows.
        ta = conn.execute(_done_stmt(va["id"], db.METRIC_COLUMNS, ("after",))).all()
        tb = conn.execute(_done_stmt(vb["id"], db.METRIC_COLUMNS, ("after",))).all()
    # Tuples, not dicts, until the final rows: this is the hot loop of the comparison page.
    by_pdb = {t[0]: t for t in ta}
    names = db.METRIC_COLUMNS
    keys = (["pdb_id", "title", "resolution", "verdict_a", "verdict_b"] + [f"{n}_a" for n in names]
            + [f"{n}_b" for n in names] + [f"d_{n}" for n in names])
    i_cc = 4 + names.index("cc_mask")
    rows, deltas, worse = [], [], []
    for b_ in sorted(tb):
        a_ = by_pdb.get(b_[0])
        if a_ is None:
            continue
        av, bv = a_[4:], b_[4:]
        d = tuple(y - x if x is not None and y is not None else None for x, y in zip(av, bv))
        row = dict(zip(keys, (b_[0], b_[1], b_[2], a_[3], b_[3], *av, *bv, *d)))
        rows.append(row)
        deltas.append(d)
        why = got_worse({"cc_mask_after": a_[i_cc], "verdict": a_[3]},
                        {"cc_mask_after": b_[i_cc], "verdict": b_[3]}, margin)
        if why:
            worse.append({**row, "why": why})
    dcols = list(zip(*deltas)) if deltas else [() for _ in names]
    return {
        "version_a": {"version": va["version"], "params_hash": va["params_hash"]},
        "version_b": {"version": vb["version"], "params_hash": vb["params_hash"]},
        "n_common": len(rows), "rows": rows,
        "summary": {n: _summary(dcols[j]) for j, n in enumerate(names)},
        "verdicts_a": dict(Counter(r["verdict_a"] for r in rows if r["verdict_a"])),
        "verdicts_b": dict(Counter(r["verdict_b"] for r in rows if r["verdict_b"])),
        "worse": worse,
    }


def regressions(engine: Engine, version_a: str, version_b: str, *, margin: float = CC_MARGIN) -> list[dict]:
    """The entries that got worse from ``version_a`` to ``version_b`` (see :func:`compare_versions`)."""
    return compare_versions(engine, version_a, version_b, margin=margin)["worse"]


# ----------------------------------------------------------------------------- bookkeeping

def stats(engine: Engine) -> dict:
    """Counts: ``entries``, ``runs``, ``by_status``, ``by_verdict`` and ``by_version``
    (list of {``version``, ``params_hash``, ``n_runs``, ``by_status``, ``by_verdict``})."""
    vs = versions(engine)
    with engine.connect() as conn:
        n_entries = conn.execute(select(func.count()).select_from(E)).scalar_one()
    by_status: Counter = Counter()
    by_verdict: Counter = Counter()
    for v in vs:
        by_status.update(v["by_status"])
        by_verdict.update(v["by_verdict"])
    return {
        "entries": n_entries, "runs": sum(by_status.values()),
        "by_status": dict(by_status), "by_verdict": dict(by_verdict),
        "by_version": [{"version": v["version"], "params_hash": v["params_hash"], "n_runs": v["n_runs"],
                        "by_status": v["by_status"], "by_verdict": v["by_verdict"]} for v in vs],
    }


def changed_since(engine: Engine, since: dt.datetime | None) -> list[str]:
    """PDB ids whose entry row or any run changed after ``since`` (UTC; all when ``None``)."""
    with engine.connect() as conn:
        if since is None:
            return list(conn.execute(select(E.c.pdb_id).order_by(E.c.pdb_id)).scalars())
        a = select(E.c.pdb_id).where(E.c.updated_at > since)
        b = select(E.c.pdb_id).join(R, R.c.entry_id == E.c.id).where(R.c.updated_at > since)
        return sorted(set(conn.execute(a).scalars()) | set(conn.execute(b).scalars()))
