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

def row_list(prefix: str, columns: str) -> str:
    """`OLD.a, OLD.b, …` for the comma-separated column names."""
    return ", ".join(f"{prefix}.{c.strip()}" for c in columns.split(","))


def job_trigger_sql(columns: str, *, deletions: bool) -> str:
    """softlabel_notify_job() and its trigger: notify when any of `columns` changes.

    With `deletions`, a deleted job (and its sweep) notifies too, and so does the sweep a job
    moves out of.
    """
    on_delete = """
  IF TG_OP = 'DELETE' THEN
    PERFORM pg_notify('softlabel_job', OLD.id);
    IF OLD.sweep_id IS NOT NULL THEN
      PERFORM pg_notify('softlabel_sweep', OLD.sweep_id);
    END IF;
    RETURN NULL;
  END IF;""" if deletions else ""
    moved_out = """
    IF TG_OP = 'UPDATE' AND OLD.sweep_id IS DISTINCT FROM NEW.sweep_id
       AND OLD.sweep_id IS NOT NULL THEN
      PERFORM pg_notify('softlabel_sweep', OLD.sweep_id);
    END IF;""" if deletions else ""
    events = "INSERT OR UPDATE OR DELETE" if deletions else "INSERT OR UPDATE"
    return f"""
CREATE OR REPLACE FUNCTION softlabel_notify_job() RETURNS trigger AS $$
DECLARE changed boolean;
BEGIN{on_delete}
  IF TG_OP = 'INSERT' THEN
    changed := true;
  ELSE
    changed := ({row_list("OLD", columns)}) IS DISTINCT FROM ({row_list("NEW", columns)});
  END IF;
  IF changed THEN
    PERFORM pg_notify('softlabel_job', NEW.id);
    IF NEW.sweep_id IS NOT NULL THEN
      PERFORM pg_notify('softlabel_sweep', NEW.sweep_id);
    END IF;{moved_out}
  END IF;
  RETURN NULL;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS job_notify ON job;
CREATE TRIGGER job_notify AFTER {events} ON job
  FOR EACH ROW EXECUTE FUNCTION softlabel_notify_job();"""


UPGRADE_SQL = job_trigger_sql(JOB_COLUMNS, deletions=True) + """
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
DROP FUNCTION IF EXISTS softlabel_notify_sweep_deleted();""" + job_trigger_sql(
    OLD_VISIBLE, deletions=False
) + "\n"

def upgrade() -> None:
    """Notify on every change of a job's JSON, on deletions, and on API key changes."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(UPGRADE_SQL)


def downgrade() -> None:
    """Back to notifying on visible job columns and sweep changes only."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(DOWNGRADE_SQL)
