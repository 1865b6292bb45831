"""artifact_chunk: large artifacts' bytes as fixed-size chunk rows (streamed, no 1 GB bytea cap)

Revision ID: 0043
Revises: 0041
Create Date: 2026-12-02 03:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0043"
down_revision: str | None = "0041"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create artifact_chunk (artifact_id, seq, data), deleted with its artifact."""
    op.create_table(
        "artifact_chunk",
        sa.Column("artifact_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["artifact_id"], ["artifact.id"],
                                name=op.f("fk_artifact_chunk_artifact_id_artifact"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("artifact_id", "seq", name=op.f("pk_artifact_chunk")),
    )


def downgrade() -> None:
    """Put chunked bytes back inline (Postgres; under bytea's 1 GB cap), drop artifact_chunk."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "UPDATE artifact SET data = (SELECT string_agg(c.data, ''::bytea ORDER BY c.seq) "
            "FROM artifact_chunk c WHERE c.artifact_id = artifact.id) "
            "WHERE data IS NULL AND EXISTS "
            "(SELECT 1 FROM artifact_chunk c WHERE c.artifact_id = artifact.id)"
        )
    op.drop_table("artifact_chunk")
