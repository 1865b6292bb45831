"""Keyset pagination, newest first, with opaque cursors (shared by every list)."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from core.errors import ValidationAppError
from core.timeutil import as_utc

RowT = TypeVar("RowT")


def encode_cursor(created_at: datetime, row_id: str) -> str:
    """An opaque cursor pointing after (created_at, id)."""
    stamp = as_utc(created_at)
    if stamp is None:
        raise ValueError("Expected argument `created_at` to be a datetime, but got None")
    raw = f"{stamp.isoformat()}|{row_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of encode_cursor; a malformed cursor is a 422."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        stamp, row_id = base64.urlsafe_b64decode(padded.encode()).decode().split("|", 1)
        return datetime.fromisoformat(stamp), row_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationAppError(
            "cursor is not valid: pass the next_cursor value of a previous page",
            extra={
                "errors": [
                    {
                        "loc": ["query", "cursor"],
                        "field": "cursor",
                        "msg": "malformed cursor",
                        "type": "value_error",
                    }
                ]
            },
        ) from exc


def newest_first_page(
    session: Session, query: Select[Any], model: type[RowT], *, limit: int, cursor: str | None
) -> tuple[list[RowT], str | None]:
    """One page of `query` ordered by (created_at, id) descending, and the next page's cursor."""
    created_at, row_id = model.created_at, model.id  # type: ignore[attr-defined]
    if cursor:
        stamp, last_id = decode_cursor(cursor)
        query = query.where(or_(created_at < stamp, and_(created_at == stamp, row_id < last_id)))
    rows = list(session.scalars(query.order_by(created_at.desc(), row_id.desc()).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(last.created_at, last.id)  # type: ignore[attr-defined]
