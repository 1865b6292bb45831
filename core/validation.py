"""Reusable input checks: text Postgres and JSONB accept, URLs that parse, α that cannot underflow.

Torch-, FastAPI- and SQLAlchemy-free: the spec (core/spec.py), the API middleware and the
services all use these, so every bad string is refused the same way before the database.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AfterValidator, BeforeValidator

# Smallest non-zero smoothing α: α/K must stay a normal float32 for K up to 100 000 classes
# (float32's smallest normal is 1.2e-38); anything below is refused rather than underflowing.
MIN_ALPHA = 1e-30


def text_problem(value: str) -> str | None:
    """Why Postgres/JSONB cannot store `value` (NUL, lone surrogate), or None when it can."""
    if "\x00" in value:
        return "must not contain NUL (\\u0000) characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (it contains a lone surrogate)"
    return None


def check_text(value: str) -> str:
    """Return `value` if the database can store it; raise ValueError saying what to change."""
    problem = text_problem(value)
    if problem is not None:
        raise ValueError(f"The text {problem}")
    return value


SafeStr = Annotated[str, AfterValidator(check_text)]
_ISO_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}([Tt ]|$)")


def require_iso_datetime(value: Any) -> Any:
    """Refuse what is not an RFC 3339 / ISO 8601 text (pydantic would read 0.5 as a Unix time)."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not _ISO_DATE_RE.match(value):
        raise ValueError(
            f"Expected an ISO 8601 date-time such as 2026-12-01T12:00:00Z, but got {value!r}"
        )
    return value


IsoDateTime = Annotated[datetime, BeforeValidator(require_iso_datetime)]


def check_http_url(value: str) -> str:
    """Return `value` if it is an absolute http(s) URL that parses (host, port); else ValueError."""
    check_text(value)
    try:
        parts = urlsplit(value)
        host, _port = parts.hostname, parts.port  # .port raises for a bad or out-of-range port
    except ValueError as exc:
        raise ValueError(f"webhook_url is not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError("webhook_url must be an absolute http:// or https:// URL with a host")
    return value


def check_alpha(value: float) -> float:
    """Return α if it is 0 or large enough that α/K cannot underflow; else ValueError."""
    if 0.0 < value < MIN_ALPHA:
        raise ValueError(
            f"Expected argument `alpha` to be 0 or at least {MIN_ALPHA:g} (smaller values "
            f"underflow when divided by the number of classes), but got {value!r}"
        )
    return value


def first_unsafe_text(value: Any, *, path: tuple[str, ...] = ()) -> tuple[str, str] | None:
    """The (dotted path, problem) of the first string (key or value) the database would refuse."""
    stack: list[tuple[tuple[str, ...], Any]] = [(path, value)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, str):
            problem = text_problem(node)
            if problem is not None:
                return ".".join(where) or "value", problem
        elif isinstance(node, dict):
            for key, item in node.items():
                key_text = str(key)
                problem = text_problem(key_text)
                if problem is not None:
                    return ".".join((*where, "<key>")), problem
                stack.append(((*where, key_text), item))
        elif isinstance(node, list | tuple):
            stack.extend(((*where, str(i)), item) for i, item in enumerate(node))
    return None


def check_named_texts(texts: dict[str, str | None]) -> None:
    """Raise ValueError naming the first of `texts` (field name → value) the database refuses."""
    for name, value in texts.items():
        problem = None if value is None else text_problem(value)
        if problem is not None:
            raise ValueError(f"{name} {problem}")
