"""Cursors of lists built in Python (the layer profile): pages add up, garbage is a 400."""

from __future__ import annotations

import pytest

from api.http.errors import BadRequest
from api.http.pagination import page_of


def test_pages_of_a_list_add_up_in_order():
    items = [{"position": p} for p in (0, 1, 2, 5, 7, 8, 9)]
    seen, cursor, pages = [], None, 0
    while True:
        page, cursor = page_of(items, lambda item: item["position"], 3, cursor)
        seen += page
        pages += 1
        if cursor is None:
            break
    assert seen == items and pages == 3
    assert page_of(items, lambda item: item["position"], None, None) == (items, None)


@pytest.mark.parametrize("cursor", ["garbage", "e30", "WzEsMl0"])  # not base64 JSON; {}; [1,2]
def test_a_foreign_cursor_is_a_400(cursor):
    with pytest.raises(BadRequest, match="next_cursor"):
        page_of([{"position": 0}], lambda item: item["position"], 1, cursor)
