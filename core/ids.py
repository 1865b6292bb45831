"""Random, unguessable, prefixed identifiers."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    """Return an id such as `job_3q8v...` (128 random bits, URL-safe)."""
    return f"{prefix}_{secrets.token_hex(16)}"
