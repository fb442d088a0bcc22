"""``rerefine db upgrade`` and ``rerefine db stats``: the results database."""

from __future__ import annotations

import logging


def register(sub) -> None:
    p = sub.add_parser("db", help="results database: create/upgrade the schema, show counts")
    p.add_argument("--url", metavar="URL",
                   help="database URL (default: RR_DATABASE_URL, else <data_dir>/rerefine.sqlite)")
    dsub = p.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = dsub.add_parser("upgrade", help="create the schema or migrate it to the newest revision")
    up.set_defaults(func=run_upgrade)
    st = dsub.add_parser("stats", help="counts of entries and runs by status, verdict and pipeline version")
    st.add_argument("--json", metavar="OUT|-", help="write the counts as JSON")
    st.set_defaults(func=run_stats)


def _url(args, settings) -> str:
    return args.url or settings.database


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _quiet_alembic(args) -> None:
    # Alembic logs every step at INFO; the command prints its own one-line summary.
    if not getattr(args, "debug", False):
        logging.getLogger("alembic").setLevel(logging.WARNING)


def _check(engine, url: str) -> None:
    """A corrupt SQLite file (or one that is no database) is reported in one line before anything else."""
    from sqlalchemy.exc import DatabaseError

    from rerefine.common.errors import InputError
    from rerefine.reports import db

    if engine.dialect.name != "sqlite":
        return
    try:
        with engine.connect() as conn:
            db.check_integrity(conn, _redacted(url))
    except DatabaseError as exc:
        raise InputError(f"database {_redacted(url)}: {str(getattr(exc, 'orig', exc)).splitlines()[0]}") from None


def run_upgrade(args, settings) -> int:
    _quiet_alembic(args)
    from rerefine.reports import db

    url = _url(args, settings)
    engine = db.make_engine(url)
    try:
        _check(engine, url)
        before = db.current_revision(engine)
        after = db.upgrade(engine)
        db.analyze(engine)  # fresh planner statistics; cheap, and upgrade is run after big changes
    finally:
        engine.dispose()
    if before == after:
        print(f"{_redacted(url)}: schema already at revision {after}")
    else:
        print(f"{_redacted(url)}: schema upgraded {before or '(empty)'} -> {after}")
    return 0


def run_stats(args, settings) -> int:
    _quiet_alembic(args)
    from rerefine.flows.cli import emit_json
    from rerefine.common.errors import InputError
    from rerefine.reports import db, queries

    url = _url(args, settings)
    engine = db.make_engine(url)
    try:
        _check(engine, url)
        rev = db.current_revision(engine)
        if rev is None:
            raise InputError(f"{_redacted(url)}: no rerefine schema (run `rerefine db upgrade` first)")
        out = queries.stats(engine)
    finally:
        engine.dispose()
    out = {"database": _redacted(url), "revision": rev, **out}
    if args.json != "-":
        print(f"database  {out['database']} (revision {rev})")
        print(f"entries   {out['entries']}, runs {out['runs']}")
        print("status    " + (", ".join(f"{k} {v}" for k, v in sorted(out["by_status"].items())) or "-"))
        print("verdicts  " + (", ".join(f"{k} {v}" for k, v in sorted(out["by_verdict"].items())) or "-"))
        for v in out["by_version"]:
            st = ", ".join(f"{k} {n}" for k, n in sorted(v["by_status"].items()))
            vd = ", ".join(f"{k} {n}" for k, n in sorted(v["by_verdict"].items()))
            print(f"version   {v['version']} @{v['params_hash'][:8]}: {v['n_runs']} runs ({st})"
                  + (f"; {vd}" if vd else ""))
    emit_json(out, args.json)
    return 0
