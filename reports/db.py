"""Schema of the results database (SQLAlchemy 2.x declarative) and engine set-up.

Tables
------
``entries``
    One row per PDB entry: identifiers, title, release date, resolution (Å), method
    details and the authors' deposited metrics (JSON, as the archive reports them).
``pipeline_versions``
    A pipeline version string plus the exact parameter set it ran with (``params_hash``
    is the SHA-256 of the canonical JSON of ``params``); the same version string run
    with other parameters is another row.
``runs``
    Entry × pipeline version × input checksums (``inputs_hash``): status
    (queued/running/done/failed/skipped), reason, per-stage timings (s, JSON), host,
    start/finish times, the verdict of :mod:`rerefine.reports.verdict` and the gate that
    decided it (``verdict_gate``).
``input_files``
    The files a run read (role, path, size in bytes, SHA-256).
``metrics``
    One row per run with every scalar metric before and after re-refinement as real
    columns (``cc_mask_before``, ``cc_mask_after``, ...; the site sorts and filters on
    them) plus the sharpening parameters.
``metrics_full``
    The full metric dicts before and after (JSON: per-chain figures, contour source,
    ...). Kept apart from ``metrics`` so that the index and comparison queries, which
    read 10,000s of ``metrics`` rows, scan narrow rows (about 10× fewer pages).
``residue_metrics``
    Per-residue figures of a run in one compact, column-oriented JSON document (see
    :func:`rerefine.reports.store.pack_residues`). Why not one row per residue: the site only ever reads all
    residues of one run at once (profiles along each chain, a CC-versus-Q scatter) and
    no site or CLI query filters or sorts residues across entries. One row per run makes
    that read a primary-key lookup, keeps an entry's write to a handful of statements
    (10,000 entries × 300 residues would otherwise be 3 million rows plus an index), and
    keeps the wide ``runs``/``metrics`` pages free of residue data so the index scans
    stay fast. :func:`rerefine.reports.queries.per_residue` turns it back into rows.
``artefacts``
    Files a run produced (refined model, sharpened map, difference map, ...) with size
    and SHA-256.

SQLite is the default (WAL journal, ``synchronous=NORMAL``, foreign keys on, a busy
timeout; all set on every new connection by a ``connect`` event); PostgreSQL is used
through a ``postgresql+psycopg://`` URL.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from rerefine.common.errors import InputError

RUN_STATUSES = ("queued", "running", "done", "failed", "skipped")
VERDICTS = ("improved", "unchanged", "worse")

# JSONB on PostgreSQL (indexable, compact), plain JSON text elsewhere.
JSONType = JSON().with_variant(JSONB(), "postgresql")

#: Scalar metrics stored as real columns, before and after (``<name>_before``/``_after``).
#: Units: CCs, Q-score and atom inclusion are dimensionless, ``contour`` is in map units,
#: RMSDs in Å (bonds) and degrees (angles, planarity in Å, chirality in Å³), overlaps a count.
METRIC_COLUMNS = (
    "cc_mask", "cc_box", "cc_peaks", "cc_volume",
    "q_score", "q_score_expected",
    "atom_inclusion", "atom_inclusion_backbone", "contour",
    "bond_rmsd", "angle_rmsd", "chirality_rmsd", "planarity_rmsd", "nonbonded_overlaps",
) + (
    # revision 0002: fit figures refinement cannot inflate (CCmask of the coordinates with the
    # input B; FSC average and CCmask against half-map 1 = work and half-map 2 = free, "after" being
    # the model refined against half-map 1 only) and the
    # MolProbity-class validation (percentages in %, counts, clashscore per 1000 atoms, RMSDs
    # of non-H atoms in Å and degrees)
    "cc_mask_input_b", "fsc_avg_work", "fsc_avg_free", "cc_mask_work", "cc_mask_free",
    "rama_favored_pct", "rama_outliers", "rama_outliers_pct", "rotamer_outliers", "rotamer_outliers_pct",
    "cbeta_outliers", "clashscore", "cis_peptides", "twisted_peptides", "cis_nonpro_peptides",
    "twisted_nonpro_peptides", "bond_rmsd_heavy", "angle_rmsd_heavy",
)
#: Sharpening parameters (B in Å²; ``method`` a short name), one set per run.
SHARPENING_COLUMNS = ("b_iso_before", "b_iso_after", "b_sharpen")

#: Per-residue fields kept (each before and after); identifiers are chain, seq, icode, resname.
RESIDUE_FIELDS = ("cc", "q_score", "atom_inclusion", "b_iso")
RESIDUE_KEYS = ("chain", "seq", "icode", "resname")


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map = {dict: JSONType}


class Entry(Base):
    __tablename__ = "entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pdb_id: Mapped[str] = mapped_column(String(16), unique=True)
    emdb_id: Mapped[str | None] = mapped_column(String(24), index=True)
    title: Mapped[str | None] = mapped_column(Text)
    release_date: Mapped[dt.date | None] = mapped_column(Date, index=True)
    resolution: Mapped[float | None] = mapped_column(Float, index=True)
    method: Mapped[str | None] = mapped_column(String(64))
    method_details: Mapped[dict | None] = mapped_column(JSONType)
    deposited: Mapped[dict | None] = mapped_column(JSONType)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow)


class PipelineVersion(Base):
    __tablename__ = "pipeline_versions"
    __table_args__ = (UniqueConstraint("version", "params_hash", name="uq_pipeline_version_params"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[str] = mapped_column(String(64), index=True)
    git_commit: Mapped[str | None] = mapped_column(String(64))
    params_hash: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict] = mapped_column(JSONType)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow)


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        UniqueConstraint("entry_id", "pipeline_version_id", "inputs_hash", name="uq_run_key"),
        CheckConstraint("status IN ('queued','running','done','failed','skipped')", name="ck_run_status"),
        CheckConstraint("verdict IS NULL OR verdict IN ('improved','unchanged','worse')",
                        name="ck_run_verdict"),
        # Both serve the "latest run per entry" GROUP BY (with and without a version);
        # on SQLite they cover it (the rowid is part of every index).
        Index("ix_runs_entry_status", "entry_id", "status"),
        Index("ix_runs_version_entry_status", "pipeline_version_id", "entry_id", "status"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("entries.id", ondelete="CASCADE"))
    pipeline_version_id: Mapped[int] = mapped_column(ForeignKey("pipeline_versions.id", ondelete="CASCADE"))
    inputs_hash: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    verdict: Mapped[str | None] = mapped_column(String(16))
    # revision 0002: the gate that decided the verdict (reports/verdict.py GATES); NULL for runs
    # judged by the rule of pipeline versions before 0.3 (full CCmask and geometry)
    verdict_gate: Mapped[str | None] = mapped_column(String(32))
    timings: Mapped[dict | None] = mapped_column(JSONType)
    host: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=_utcnow)


class InputFile(Base):
    __tablename__ = "input_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))


class Metrics(Base):
    __tablename__ = "metrics"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    sharpening_method: Mapped[str | None] = mapped_column(String(64))


# The scalar columns are generated so the list above stays the one source of truth.
for _name in METRIC_COLUMNS:
    for _stage in ("before", "after"):
        setattr(Metrics, f"{_name}_{_stage}", mapped_column(f"{_name}_{_stage}", Float))
for _name in SHARPENING_COLUMNS:
    setattr(Metrics, _name, mapped_column(_name, Float))
Index("ix_metrics_cc_mask_after", Metrics.__table__.c.cc_mask_after)
Index("ix_metrics_q_score_after", Metrics.__table__.c.q_score_after)


class MetricsFull(Base):
    __tablename__ = "metrics_full"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    before: Mapped[dict | None] = mapped_column(JSONType)
    after: Mapped[dict | None] = mapped_column(JSONType)


class ResidueMetrics(Base):
    __tablename__ = "residue_metrics"

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True)
    n_residues: Mapped[int] = mapped_column(Integer)
    data: Mapped[dict] = mapped_column(JSON)  # plain JSON also on PostgreSQL: read whole, never queried


class Artefact(Base):
    __tablename__ = "artefacts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))


metadata = Base.metadata
T_ENTRIES = Entry.__table__
T_VERSIONS = PipelineVersion.__table__
T_RUNS = Run.__table__
T_INPUTS = InputFile.__table__
T_METRICS = Metrics.__table__
T_METRICS_FULL = MetricsFull.__table__
T_RESIDUES = ResidueMetrics.__table__
T_ARTEFACTS = Artefact.__table__


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets the site build read while the flows write; NORMAL sync in WAL mode is
    # durable against a killed process (only a power loss can drop the last commits).
    # Python's sqlite3 would otherwise open transactions implicitly at its own moments;
    # we take over (isolation_level None) and emit BEGIN in the "begin" event below.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=60000")
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA cache_size=-65536")  # 64 MiB page cache: the index query touches ~10 MB
    cur.close()


def _sqlite_begin(conn) -> None:
    # Writers take the write lock up front (BEGIN IMMEDIATE): two concurrent writers
    # then queue on busy_timeout instead of failing when a read lock would be upgraded.
    if conn.get_execution_options().get("rr_write"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def sqlite_url(path: str | Path) -> str:
    """The SQLAlchemy URL of an SQLite file."""
    return f"sqlite:///{Path(path).resolve()}"


def make_engine(url: str, **kwargs) -> Engine:
    """An engine for ``url`` with rerefine's connection settings.

    Parameters
    ----------
    url : str
        ``sqlite:///path/to/file.sqlite`` (the parent directory is created) or
        ``postgresql+psycopg://user:pw@host:port/db``. A bare ``postgresql://`` URL is
        switched to the psycopg 3 driver.
    **kwargs
        Passed to :func:`sqlalchemy.create_engine`.
    """
    if not url:
        raise InputError("database URL is empty (set RR_DATABASE_URL or RR_DATA_DIR)")
    try:
        u = make_url(url)
    except Exception as exc:  # sqlalchemy.exc.ArgumentError
        raise InputError(f"database URL {url!r}: {exc}") from None
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(u, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if u.get_backend_name() == "postgresql":
        kwargs.setdefault("pool_pre_ping", True)
        return create_engine(u, **kwargs)
    raise InputError(f"database URL {url!r}: only sqlite and postgresql are supported")


def writer(engine: Engine):
    """A connection whose transactions are write transactions (``BEGIN IMMEDIATE`` on SQLite).

    Use as ``with writer(engine) as conn, conn.begin(): ...``.
    """
    return engine.connect().execution_options(rr_write=True)


MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _alembic_config(connection=None, url: str | None = None):
    from alembic.config import Config

    cfg = Config()  # no alembic.ini: everything is set here, so it works from any cwd
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def upgrade(url_or_engine: str | Engine, revision: str = "head") -> str | None:
    """Bring the database schema up to ``revision`` (Alembic migrations); returns the new revision.

    Works from an installed package: the migration scripts ship as package data of
    ``rerefine.reports`` and are located relative to this module.
    """
    from alembic import command
    from sqlalchemy.exc import DatabaseError

    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    try:
        with writer(engine) as conn:
            if engine.dialect.name == "postgresql":
                # Concurrent upgrades of one database take turns (the lock ends with the transaction);
                # the second then finds the schema at head.
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_UPGRADE_LOCK_KEY})")
            else:
                check_integrity(conn, engine.url.render_as_string(hide_password=True))
            command.upgrade(_alembic_config(conn), revision)
            conn.commit()
        return current_revision(engine)
    except DatabaseError as exc:
        msg = str(getattr(exc, "orig", exc)).splitlines()[0]
        raise InputError(f"database {engine.url.render_as_string(hide_password=True)}: cannot be upgraded "
                         f"({msg})") from None
    finally:
        if isinstance(url_or_engine, str):
            engine.dispose()


_UPGRADE_LOCK_KEY = 0x7265726566696E65 >> 1  # "rerefine" as a 63-bit pg advisory-lock key


def check_integrity(conn, name: str) -> None:
    """SQLite's ``PRAGMA quick_check`` (every page and index readable and consistent).

    Raises
    ------
    InputError
        The file is not a database or is corrupt: one line naming it and the first problem.
    """
    from sqlalchemy.exc import DatabaseError

    try:
        rows = [r[0] for r in conn.exec_driver_sql("PRAGMA quick_check").all()]
    except DatabaseError as exc:
        rows = [str(getattr(exc, "orig", exc)).splitlines()[0]]
    if rows != ["ok"]:
        first = " ".join(str(rows[0]).replace("*** in database main ***", "").split())[:200]
        raise InputError(f"database {name} is corrupt ({first}; {len(rows)} problem(s)): restore a "
                         f"backup or move the file away to start a new one")


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (``None`` for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    """The newest revision the installed package knows."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def analyze(engine: Engine) -> None:
    """Refresh the planner statistics (``ANALYZE``) — worth doing after a large batch of
    results: PostgreSQL plans the index and comparison queries badly until its statistics
    know the tables' sizes (autovacuum gets there eventually)."""
    with writer(engine) as conn, conn.begin():
        conn.exec_driver_sql("ANALYZE")
