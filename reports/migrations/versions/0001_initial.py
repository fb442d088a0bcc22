"""Initial schema: entries, pipeline versions, runs, input files, metrics (+ full JSON), residue metrics, artefacts.

Revision ID: 0001_initial
Revises:
Create Date: 2026-05-09
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

# Written out here (not imported from db.py) so this revision stays what it was when
# later revisions change the model.
JSONType = sa.JSON().with_variant(JSONB(), "postgresql")
METRIC_COLUMNS = (
    "cc_mask", "cc_box", "cc_peaks", "cc_volume",
    "q_score", "q_score_expected",
    "atom_inclusion", "atom_inclusion_backbone", "contour",
    "bond_rmsd", "angle_rmsd", "chirality_rmsd", "planarity_rmsd", "nonbonded_overlaps",
)


def upgrade() -> None:
    op.create_table(
        "entries",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("pdb_id", sa.String(16), nullable=False),
        sa.Column("emdb_id", sa.String(24)),
        sa.Column("title", sa.Text()),
        sa.Column("release_date", sa.Date()),
        sa.Column("resolution", sa.Float()),
        sa.Column("method", sa.String(64)),
        sa.Column("method_details", JSONType),
        sa.Column("deposited", JSONType),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("pdb_id"),
    )
    op.create_index("ix_entries_emdb_id", "entries", ["emdb_id"])
    op.create_index("ix_entries_release_date", "entries", ["release_date"])
    op.create_index("ix_entries_resolution", "entries", ["resolution"])

    op.create_table(
        "pipeline_versions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("git_commit", sa.String(64)),
        sa.Column("params_hash", sa.String(64), nullable=False),
        sa.Column("params", JSONType, nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("version", "params_hash", name="uq_pipeline_version_params"),
    )
    op.create_index("ix_pipeline_versions_version", "pipeline_versions", ["version"])

    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("entry_id", sa.Integer(), sa.ForeignKey("entries.id", ondelete="CASCADE"), nullable=False),
        sa.Column("pipeline_version_id", sa.Integer(),
                  sa.ForeignKey("pipeline_versions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("inputs_hash", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("verdict", sa.String(16)),
        sa.Column("timings", JSONType),
        sa.Column("host", sa.String(255)),
        sa.Column("started_at", sa.DateTime()),
        sa.Column("finished_at", sa.DateTime()),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("entry_id", "pipeline_version_id", "inputs_hash", name="uq_run_key"),
        sa.CheckConstraint("status IN ('queued','running','done','failed','skipped')", name="ck_run_status"),
        sa.CheckConstraint("verdict IS NULL OR verdict IN ('improved','unchanged','worse')",
                           name="ck_run_verdict"),
    )
    op.create_index("ix_runs_entry_status", "runs", ["entry_id", "status"])
    op.create_index("ix_runs_version_entry_status", "runs", ["pipeline_version_id", "entry_id", "status"])

    op.create_table(
        "input_files",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger()),
        sa.Column("sha256", sa.String(64)),
    )
    op.create_index("ix_input_files_run_id", "input_files", ["run_id"])

    metric_cols = [sa.Column(f"{n}_{s}", sa.Float()) for n in METRIC_COLUMNS for s in ("before", "after")]
    op.create_table(
        "metrics",
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("sharpening_method", sa.String(64)),
        *metric_cols,
        sa.Column("b_iso_before", sa.Float()),
        sa.Column("b_iso_after", sa.Float()),
        sa.Column("b_sharpen", sa.Float()),
    )
    op.create_index("ix_metrics_cc_mask_after", "metrics", ["cc_mask_after"])
    op.create_index("ix_metrics_q_score_after", "metrics", ["q_score_after"])

    op.create_table(
        "metrics_full",
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("before", JSONType),
        sa.Column("after", JSONType),
    )

    op.create_table(
        "residue_metrics",
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("n_residues", sa.Integer(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
    )

    op.create_table(
        "artefacts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger()),
        sa.Column("sha256", sa.String(64)),
    )
    op.create_index("ix_artefacts_run_id", "artefacts", ["run_id"])


def downgrade() -> None:
    for name in ("artefacts", "residue_metrics", "metrics_full", "metrics", "input_files", "runs", "pipeline_versions", "entries"):
        op.drop_table(name)
