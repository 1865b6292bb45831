"""job cost estimate

Revision ID: 0020
Revises: 0030
Create Date: 2026-12-01 20:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0020"
down_revision: str | None = "0030"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add job.cost (the estimate made at submission)."""
    cost = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    op.add_column("job", sa.Column("cost", cost, nullable=True))


def downgrade() -> None:
    """Drop job.cost."""
    op.drop_column("job", "cost")
