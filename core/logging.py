"""Structured logging: one JSON object per line, carrying the request id and the job id."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "softlabel_request_id", default=None
)
job_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "softlabel_job_id", default=None
)

# Attributes every LogRecord has; anything else came in through `extra=` and is logged too.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", (), None)).keys() | {"message", "asctime", "taskName"}
)


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON line with time, level, logger, message and context."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record (extra fields and the context variables included)."""
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = request_id_var.get()
        if request_id:
            doc["request_id"] = request_id
        job_id = job_id_var.get()
        if job_id:
            doc["job_id"] = job_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


class ContextFilter(logging.Filter):
    """Copy the request id and job id into records for plain-text formatters."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Attach the context; never drops a record."""
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get() or "-"
        if not hasattr(record, "job_id"):
            record.job_id = job_id_var.get() or "-"
        return True


_configured = False


def configure_logging(*, json_logs: bool, level: int = logging.INFO) -> None:
    """Install one stderr handler on the `softlabel` loggers (idempotent)."""
    global _configured
    if _configured:
        return
    _configured = True
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(JsonFormatter())
    else:
        handler.addFilter(ContextFilter())
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(levelname)s %(name)s [req=%(request_id)s job=%(job_id)s] "
                "%(message)s"
            )
        )
    root = logging.getLogger("softlabel")
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
