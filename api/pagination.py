"""Keyset pagination with an opaque cursor: newest first, stable under inserts."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import Session

from api.errors import BadRequest


def _encode(created_at: datetime, row_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, row_id = json.loads(raw)
        return datetime.fromisoformat(created), str(row_id)
    except Exception:  # noqa: BLE001 — any garbage in a cursor is the client's
        raise BadRequest("the cursor is not valid; pass the 'next_cursor' of a previous page") from None


def paginate(session: Session, stmt: Select, entity: Any, limit: int, cursor: str | None) -> tuple[list[Any], str | None]:
    """One page of `stmt` over `entity` (which has created_at and id), and the next cursor."""
    if cursor:
        created, row_id = _decode(cursor)
        stmt = stmt.where(tuple_(entity.created_at, entity.id) < tuple_(created, row_id))
    stmt = stmt.order_by(entity.created_at.desc(), entity.id.desc()).limit(limit + 1)
    rows = list(session.execute(stmt).scalars())
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, _encode(rows[-1].created_at, rows[-1].id)
