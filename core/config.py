"""Settings: one class, prefix SOFTLABEL_, embedded defaults when nothing is configured."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """All configuration of the API, the workers and the CLI."""

    model_config = SettingsConfigDict(env_prefix="SOFTLABEL_", extra="ignore")

    database_url: str = Field(
        default="", description="SQLAlchemy URL; empty = embedded SQLite under var_dir"
    )
    broker_url: str = Field(
        default="", description="Celery broker URL; empty = embedded filesystem broker"
    )
    artifact_dir: Path = Field(
        default=Path("var/artifacts"), description="Artifact directory (embedded mode)"
    )
    var_dir: Path = Field(default=Path("var"), description="Where embedded mode keeps its state")

    api_url: str = Field(default="http://127.0.0.1:8000", description="Client: the API base URL")
    api_key: str = Field(default="", description="Client: the API key")

    auth_disabled: bool = Field(
        default=False, description="Local development only: accept requests without a key"
    )
    i_understand_auth_is_off: bool = Field(
        default=False,
        description="Required with auth_disabled on a Postgres database, or the API refuses "
        "to start",
    )
    metrics_key: str = Field(
        default="", description="Bearer key that GET /metrics on the API port requires"
    )
    metrics_bind: str = Field(
        default="",
        description="host:port of a separate, keyless /metrics listener (e.g. 127.0.0.1:9108)",
    )
    max_attempts: int = Field(default=3, ge=1, description="Attempts before worker_lost")
    lease_seconds: float = Field(default=30.0, gt=0, description="Lease length of a running job")
    heartbeat_seconds: float = Field(default=2.0, gt=0, description="Lease renewal period")
    queued_grace_seconds: float = Field(
        default=60.0, gt=0, description="Reconciler: re-enqueue jobs queued longer than this"
    )
    reconcile_interval_seconds: float = Field(
        default=10.0, gt=0, description="How often beat runs the reconciler"
    )
    task_soft_time_limit: int = Field(default=3600, ge=1, description="Seconds (job timeout)")
    task_time_limit: int = Field(default=3660, ge=1, description="Hard limit, seconds")
    max_active_jobs_per_tenant: int = Field(
        default=100, ge=1, description="Queued + running jobs per tenant before 429"
    )
    max_event_streams_per_tenant: int = Field(
        default=20, ge=1, description="Open /v1/jobs/{id}/events streams per tenant per API process"
    )
    event_stream_heartbeat_seconds: float = Field(
        default=15.0, gt=0, description="Idle event streams send a keep-alive comment this often"
    )
    max_running_jobs_per_tenant: int = Field(
        default=4,
        ge=0,
        description="Running jobs per tenant while another tenant waits (0: no cap)",
    )
    max_request_bytes: int = Field(default=1_000_000, ge=1024, description="JSON body limit")
    max_upload_bytes: int = Field(
        default=2_000_000_000, ge=1024,
        description="Dataset upload limit (the body streams to a temporary file)",
    )
    max_dataset_rows: int = Field(default=1_000_000, ge=1, description="Rows per upload")
    max_dataset_columns: int = Field(default=10_000, ge=1, description="Feature columns")
    max_dataset_classes: int = Field(default=1000, ge=2, description="Classes per dataset")
    max_dataset_bytes: int = Field(
        default=4_000_000_000, ge=1024,
        description="Decoded size of an upload's arrays (from its headers, checked before reading)",
    )
    max_model_params: int = Field(
        default=100_000_000, ge=1, description="Parameters per job (a stacked group: all trials)"
    )
    max_epoch_gflop: float = Field(
        default=200_000.0, gt=0, description="Estimated GFLOP per training epoch per job"
    )
    max_activation_bytes: int = Field(
        default=16 * 2**30, ge=1, description="Estimated activation memory of one training batch"
    )
    max_sweep_trials: int = Field(default=64, ge=1, description="Trials per sweep (grid size)")
    idempotency_ttl_hours: float = Field(
        default=24.0, gt=0, description="How long an Idempotency-Key is remembered"
    )
    webhook_allow_private: bool = Field(
        default=False, description="Allow webhook URLs on private/loopback addresses"
    )
    webhook_max_attempts: int = Field(default=6, ge=1, description="Delivery attempts per event")
    webhook_backoff_seconds: float = Field(
        default=5.0, gt=0, description="Delay before the 2nd attempt; doubles each time"
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Total deadline of one delivery attempt, seconds"
    )
    log_json: bool = Field(default=True, description="Structured JSON logs (false: plain text)")
    mlflow_tracking_uri: str = Field(
        default="", description="Workers: export finished jobs and sweeps to this MLflow server"
    )
    mlflow_experiment: str = Field(
        default="softlabel", description="MLflow experiment when a spec names none"
    )
    mlflow_export_max_attempts: int = Field(
        default=5, ge=1, description="MLflow export attempts before its status is failed"
    )
    mlflow_export_backoff_seconds: float = Field(
        default=5.0, gt=0, description="Delay before the 2nd MLflow export attempt; doubles"
    )

    @property
    def embedded(self) -> bool:
        """True when running on the embedded defaults (SQLite)."""
        return self.resolved_database_url.startswith("sqlite")

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to SQLite under var_dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.var_dir / 'softlabel.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        """The broker URL, defaulting to kombu's filesystem transport."""
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        """Folder of the embedded filesystem broker."""
        return (self.var_dir / "broker").resolve()


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
