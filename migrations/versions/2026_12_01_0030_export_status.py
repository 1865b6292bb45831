"""export status on jobs and sweeps (exports.mlflow); NOTIFY on visible changes (long poll)

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

# NOTIFY softlabel_job / softlabel_sweep when a column clients see changes (long polls).
JOB_TRIGGER_SQL = """
CREATE OR REPLACE FUNCTION softlabel_notify_job() RETURNS trigger AS $$
DECLARE changed boolean;
BEGIN
  IF TG_OP = 'INSERT' THEN
    changed := true;
  ELSE
    changed := (OLD.status, OLD.cancel_requested, OLD.attempt, OLD.max_attempts, OLD.progress, OLD.failure_reason, OLD.failure_message, OLD.queued_at, OLD.started_at, OLD.finished_at, OLD.exports, OLD.tags) IS DISTINCT FROM (NEW.status, NEW.cancel_requested, NEW.attempt, NEW.max_attempts, NEW.progress, NEW.failure_reason, NEW.failure_message, NEW.queued_at, NEW.started_at, NEW.finished_at, NEW.exports, NEW.tags);
  END IF;
  IF changed THEN
    PERFORM pg_notify('softlabel_job', NEW.id);
    IF NEW.sweep_id IS NOT NULL THEN
      PERFORM pg_notify('softlabel_sweep', NEW.sweep_id);
    END IF;
  END IF;
  RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER job_notify AFTER INSERT OR UPDATE ON job
  FOR EACH ROW EXECUTE FUNCTION softlabel_notify_job();
CREATE OR REPLACE FUNCTION softlabel_notify_sweep() RETURNS trigger AS $$
DECLARE changed boolean;
BEGIN
  IF TG_OP = 'INSERT' THEN
    changed := true;
  ELSE
    changed := (OLD.status, OLD.report, OLD.exports, OLD.finished_at, OLD.tags) IS DISTINCT FROM (NEW.status, NEW.report, NEW.exports, NEW.finished_at, NEW.tags);
  END IF;
  IF changed THEN
    PERFORM pg_notify('softlabel_sweep', NEW.id);
  END IF;
  RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER sweep_notify AFTER INSERT OR UPDATE ON sweep
  FOR EACH ROW EXECUTE FUNCTION softlabel_notify_sweep();
"""
DROP_TRIGGERS_SQL = """
DROP TRIGGER IF EXISTS sweep_notify ON sweep;
DROP TRIGGER IF EXISTS job_notify ON job;
DROP FUNCTION IF EXISTS softlabel_notify_sweep();
DROP FUNCTION IF EXISTS softlabel_notify_job();
"""
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    """Add job.exports and sweep.exports (status of each export, e.g. to MLflow)."""
    for table in ("job", "sweep"):
        op.add_column(
            table,
            sa.Column("exports", JSON_DOC, nullable=False, server_default=sa.text("'{}'")),
        )
    if op.get_bind().dialect.name == "postgresql":
        op.execute(JOB_TRIGGER_SQL)


def downgrade() -> None:
    """Drop the notify triggers and the export status columns."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DROP_TRIGGERS_SQL)
    for table in ("sweep", "job"):
        op.drop_column(table, "exports")
