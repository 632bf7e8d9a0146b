"""Opaque cursors for every `items` list: keyset pages, stable under inserts.

Resource lists (models, datasets, evaluations) page newest first by (created_at, id); an
evaluation's result tables (shifts, classes, examples, layers) page in their own order by
the integer key that orders them. Either way the client only passes back `next_cursor`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, tuple_
from sqlalchemy.orm import InstrumentedAttribute, Session

from api.http.errors import BadRequest

T = TypeVar("T")
_INVALID = "the cursor is not valid; pass the 'next_cursor' of a previous page of the same list"


def _pack(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _unpack(cursor: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except Exception:  # noqa: BLE001 — any garbage in a cursor is the client's
        raise BadRequest(_INVALID, errors=[{"field": "cursor", "message": "not a cursor this API issued"}]) from None


def _encode(created_at: datetime, row_id: str) -> str:
    return _pack([created_at.isoformat(), row_id])


def _decode(cursor: str) -> tuple[datetime, str]:
    try:
        created, row_id = _unpack(cursor)
        return datetime.fromisoformat(created), str(row_id)
    except BadRequest:
        raise
    except Exception:  # noqa: BLE001
        raise BadRequest(_INVALID, errors=[{"field": "cursor", "message": "not a cursor this API issued"}]) from None


def paginate(session: Session, stmt: Select, entity: Any, limit: int, cursor: str | None) -> tuple[list[Any], str | None]:
    """One page of `stmt` over `entity` (which has created_at and id), newest first, and the next cursor."""
    if cursor:
        created, row_id = _decode(cursor)
        stmt = stmt.where(tuple_(entity.created_at, entity.id) < tuple_(created, row_id))
    stmt = stmt.order_by(entity.created_at.desc(), entity.id.desc()).limit(limit + 1)
    rows = list(session.execute(stmt).scalars())
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, _encode(rows[-1].created_at, rows[-1].id)


def _after(cursor: str | None) -> int | None:
    """The key a result-table cursor resumes after."""
    if not cursor:
        return None
    value = _unpack(cursor)
    if not (isinstance(value, dict) and isinstance(value.get("after"), int)):
        raise BadRequest(_INVALID, errors=[{"field": "cursor", "message": "not a cursor this API issued"}])
    return value["after"]


def paginate_by_key(session: Session, stmt: Select, key: InstrumentedAttribute, limit: int | None,
                    cursor: str | None) -> tuple[list[Any], str | None]:
    """One page of `stmt` in ascending order of the integer column `key`; `limit=None` is every row."""
    after = _after(cursor)
    if after is not None:
        stmt = stmt.where(key > after)
    stmt = stmt.order_by(key)
    if limit is not None:
        stmt = stmt.limit(limit + 1)
    rows = list(session.execute(stmt).scalars())
    if limit is None or len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, _pack({"after": getattr(rows[-1], key.key)})


def page_of(items: Sequence[T], key: Callable[[T], int], limit: int | None,
            cursor: str | None) -> tuple[list[T], str | None]:
    """The same paging over a list already in ascending order of `key` (built in Python)."""
    after = _after(cursor)
    rest = [item for item in items if after is None or key(item) > after]
    if limit is None or len(rest) <= limit:
        return rest, None
    page = rest[:limit]
    return page, _pack({"after": key(page[-1])})
