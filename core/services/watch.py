"""Change notification for long polls: Postgres triggers NOTIFY on visible job/sweep changes.

A trigger (migration 0030 spells out its SQL) sends `NOTIFY softlabel_job, '<job id>'` when
a column a client sees changes (not on lease heartbeats), and `softlabel_sweep, '<sweep id>'`
for the sweep of a changed trial and for changes of the sweep row, and `softlabel_key,
'<key hash>'` when an API key is revoked or deleted (migration 0041, which also covers every
column of the job's JSON and deletions). Delivery is at commit.
"""

from __future__ import annotations

CHANNEL_JOB = "softlabel_job"
CHANNEL_SWEEP = "softlabel_sweep"
JOB_VISIBLE_COLUMNS = (
    "status", "cancel_requested", "attempt", "max_attempts", "progress", "failure_reason",
    "failure_message", "queued_at", "started_at", "finished_at", "exports", "tags",
)  # fmt: skip
SWEEP_VISIBLE_COLUMNS = ("status", "report", "exports", "finished_at", "tags")
CHANNEL_KEY = "softlabel_key"  # an API key changed (revoked, deleted): its hash
