"""NOTIFY on every change a cached ETag depends on: all of a job's JSON, deletions, API keys

The API caches current ETags per process (api.versions) and trusts them while its LISTEN
connection is up, so every change that alters GET /v1/jobs/{id} (or a sweep's) must notify:
the job trigger now covers every column of the job's JSON and deletions, the sweep trigger
deletions, and a new trigger sends `softlabel_key, '<key hash>'` when an API key is updated
(revoked) or deleted, and `softlabel_key, '*'` (forget everything) when one of those
tables is truncated.

Revision ID: 0041
Revises: 0020
Create Date: 2026-12-02 03:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0041"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_COLUMNS = (
    "status, cancel_requested, attempt, max_attempts, progress, failure_reason, failure_message,"
    " queued_at, started_at, finished_at, exports, tags, spec, cost, sweep_id, created_at,"
    " tenant_id"
)
OLD_JOB = ", ".join(f"OLD.{c.strip()}" for c in JOB_COLUMNS.split(","))
NEW_JOB = ", ".join(f"NEW.{c.strip()}" for c in JOB_COLUMNS.split(","))
UPGRADE_SQL = f"""
CREATE OR REPLACE FUNCTION softlabel_notify_job() RETURNS trigger AS $$
DECLARE changed boolean;
BEGIN
  IF TG_OP = 'DELETE' THEN
    PERFORM pg_notify('softlabel_job', OLD.id);
    IF OLD.sweep_id IS NOT NULL THEN
      PERFORM pg_notify('softlabel_sweep', OLD.sweep_id);
    END IF;
    RETURN NULL;
  END IF;
  IF TG_OP = 'INSERT' THEN
    changed := true;
  ELSE
    changed := ({OLD_JOB}) IS DISTINCT FROM ({NEW_JOB});
  END IF;
  IF changed THEN
    PERFORM pg_notify('softlabel_job', NEW.id);
    IF NEW.sweep_id IS NOT NULL THEN
      PERFORM pg_notify('softlabel_sweep', NEW.sweep_id);
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.sweep_id IS DISTINCT FROM NEW.sweep_id
       AND OLD.sweep_id IS NOT NULL THEN
      PERFORM pg_notify('softlabel_sweep', OLD.sweep_id);
    END IF;
  END IF;
  RETURN NULL;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS job_notify ON job;
CREATE TRIGGER job_notify AFTER INSERT OR UPDATE OR DELETE ON job
  FOR EACH ROW EXECUTE FUNCTION softlabel_notify_job();
CREATE OR REPLACE FUNCTION softlabel_notify_sweep_deleted() RETURNS trigger AS $$
BEGIN
  PERFORM pg_notify('softlabel_sweep', OLD.id);
  RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER sweep_notify_deleted AFTER DELETE ON sweep
  FOR EACH ROW EXECUTE FUNCTION softlabel_notify_sweep_deleted();
CREATE OR REPLACE FUNCTION softlabel_notify_key() RETURNS trigger AS $$
BEGIN
  PERFORM pg_notify('softlabel_key', OLD.key_hash);
  RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER api_key_notify AFTER UPDATE OR DELETE ON api_key
  FOR EACH ROW EXECUTE FUNCTION softlabel_notify_key();
CREATE OR REPLACE FUNCTION softlabel_notify_truncate() RETURNS trigger AS $$
BEGIN
  PERFORM pg_notify('softlabel_key', '*');
  RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER job_truncate_notify AFTER TRUNCATE ON job
  FOR EACH STATEMENT EXECUTE FUNCTION softlabel_notify_truncate();
CREATE TRIGGER sweep_truncate_notify AFTER TRUNCATE ON sweep
  FOR EACH STATEMENT EXECUTE FUNCTION softlabel_notify_truncate();
CREATE TRIGGER api_key_truncate_notify AFTER TRUNCATE ON api_key
  FOR EACH STATEMENT EXECUTE FUNCTION softlabel_notify_truncate();
"""
# Back to revision 0030's job trigger (visible columns only, no deletions).
OLD_VISIBLE = (
    "status, cancel_requested, attempt, max_attempts, progress, failure_reason, failure_message,"
    " queued_at, started_at, finished_at, exports, tags"
)
DOWNGRADE_SQL = """
DROP TRIGGER IF EXISTS api_key_truncate_notify ON api_key;
DROP TRIGGER IF EXISTS sweep_truncate_notify ON sweep;
DROP TRIGGER IF EXISTS job_truncate_notify ON job;
DROP FUNCTION IF EXISTS softlabel_notify_truncate();
DROP TRIGGER IF EXISTS api_key_notify ON api_key;
DROP FUNCTION IF EXISTS softlabel_notify_key();
DROP TRIGGER IF EXISTS sweep_notify_deleted ON sweep;
DROP FUNCTION IF EXISTS softlabel_notify_sweep_deleted();
CREATE OR REPLACE FUNCTION softlabel_notify_job() RETURNS trigger AS $$
DECLARE changed boolean;
BEGIN
  IF TG_OP = 'INSERT' THEN
    changed := true;
  ELSE
    changed := ({old}) IS DISTINCT FROM ({new});
  END IF;
  IF changed THEN
    PERFORM pg_notify('softlabel_job', NEW.id);
    IF NEW.sweep_id IS NOT NULL THEN
      PERFORM pg_notify('softlabel_sweep', NEW.sweep_id);
    END IF;
  END IF;
  RETURN NULL;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS job_notify ON job;
CREATE TRIGGER job_notify AFTER INSERT OR UPDATE ON job
  FOR EACH ROW EXECUTE FUNCTION softlabel_notify_job();
""".format(
    old=", ".join(f"OLD.{c.strip()}" for c in OLD_VISIBLE.split(",")),
    new=", ".join(f"NEW.{c.strip()}" for c in OLD_VISIBLE.split(",")),
)


def upgrade() -> None:
    """Notify on every change of a job's JSON, on deletions, and on API key changes."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(UPGRADE_SQL)


def downgrade() -> None:
    """Back to notifying on visible job columns and sweep changes only."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DOWNGRADE_SQL)
