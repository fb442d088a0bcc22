"""Fit figures refinement cannot inflate, half-map cross-validation, validation; the deciding gate.

Adds to ``metrics`` (each ``_before`` and ``_after``, Float, NULL for existing runs): CCmask of the
coordinates with the input B, FSC average and CCmask against half-map 1 (work) and half-map 2
(free), and the validation figures; adds ``runs.verdict_gate``. Existing rows keep their values
and verdicts (decided by the rule of their own pipeline version; ``verdict_gate`` stays NULL).

Revision ID: 0002_fit_validation
Revises: 0001_initial
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_fit_validation"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

# Written out here (not imported from db.py) so this revision stays what it is when later
# revisions change the model.
NEW_METRICS = (
    "cc_mask_input_b", "fsc_avg_work", "fsc_avg_free", "cc_mask_work", "cc_mask_free",
    "rama_favored_pct", "rama_outliers", "rama_outliers_pct", "rotamer_outliers", "rotamer_outliers_pct",
    "cbeta_outliers", "clashscore", "cis_peptides", "twisted_peptides", "cis_nonpro_peptides",
    "twisted_nonpro_peptides", "bond_rmsd_heavy", "angle_rmsd_heavy",
)


def upgrade() -> None:
    with op.batch_alter_table("metrics") as batch:
        for name in NEW_METRICS:
            for stage in ("before", "after"):
                batch.add_column(sa.Column(f"{name}_{stage}", sa.Float()))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("verdict_gate", sa.String(32)))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("verdict_gate")
    with op.batch_alter_table("metrics") as batch:
        for name in NEW_METRICS:
            for stage in ("before", "after"):
                batch.drop_column(f"{name}_{stage}")
