"""export status on jobs and sweeps (exports.mlflow)

Revision ID: 0030
Revises: 0001
Create Date: 2026-12-01 20:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0030"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    """Add job.exports and sweep.exports (status of each export, e.g. to MLflow)."""
    for table in ("job", "sweep"):
        op.add_column(
            table,
            sa.Column("exports", JSON_DOC, nullable=False, server_default=sa.text("'{}'")),
        )


def downgrade() -> None:
    """Drop the export status columns."""
    for table in ("sweep", "job"):
        op.drop_column(table, "exports")
