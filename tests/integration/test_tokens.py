"""API tokens through the CLI and HTTP: listed without their secret, revoked, expiring."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from tests.stack import Stack, running_stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("tokens-stack"), workers=0, scheduler=False) as stack:
        yield stack


def _get(stack: Stack, token: str) -> requests.Response:
    return requests.get(stack.url + "/v1/tenant", headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _rows(stack: Stack, *tenant: str) -> list[dict[str, str]]:
    header, *lines = stack.cli("token", "list", *tenant).stdout.splitlines()
    names = header.lower().split()
    return [dict(zip(names, line.split())) for line in lines]


def test_list_shows_each_token_by_id_and_prefix_never_the_secret(stack):
    first, second = stack.token("list-a"), stack.token("list-a")
    other = stack.token("list-b")
    listing = stack.cli("token", "list").stdout
    for token in (first, second, other):
        assert token not in listing and token[11:] not in listing
    rows = _rows(stack, "list-a")
    assert [row["prefix"] for row in rows] == [first[:11], second[:11]]
    assert {row["tenant"] for row in rows} == {"list-a"}
    assert all(row["state"] == "active" and row["expires"] == "-" and row["revoked"] == "-" for row in rows)
    assert [row["prefix"] for row in _rows(stack, "list-b")] == [other[:11]]


def test_a_revoked_token_answers_401_and_the_tenants_other_tokens_still_work(stack):
    kept, revoked = stack.token("revoke-a"), stack.token("revoke-a")
    assert _get(stack, revoked).status_code == 200
    result = stack.cli("token", "revoke", revoked[:11])
    assert result.stdout.startswith("revoked: ")
    response = _get(stack, revoked)
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/problem+json"
    assert "revoked" in response.json()["detail"] and "shiftscore token create revoke-a" in response.json()["detail"]
    assert _get(stack, kept).json()["name"] == "revoke-a"
    row = next(r for r in _rows(stack, "revoke-a") if r["prefix"] == revoked[:11])
    assert row["state"] == "revoked" and row["revoked"] != "-"
    assert stack.cli("token", "revoke", row["id"]).stdout.startswith("already revoked: ")
    by_id = stack.token("revoke-a")
    assert stack.cli("token", "revoke", next(r["id"] for r in _rows(stack, "revoke-a")
                                              if r["prefix"] == by_id[:11])[:13]).returncode == 0
    assert _get(stack, by_id).status_code == 401


def test_revoke_refuses_unknown_or_too_short_names_and_revokes_nothing(stack):
    token = stack.token("unknown")
    for name, message in (("ss_nothing-like-it", "no token"), ("ss_", "at least 6"), ("00000000-0000", "no token")):
        result = stack.cli("token", "revoke", name, check=False)
        assert result.returncode == 1 and message in result.stderr, result.stderr
    assert _get(stack, token).status_code == 200


def test_a_token_with_an_expiry_works_until_then_and_answers_401_after(stack):
    token = stack.cli("token", "create", "expiring", "--expires-in", "3s").stdout.strip()
    assert _get(stack, token).status_code == 200
    row = _rows(stack, "expiring")[0]
    assert row["expires"] != "-" and row["state"] == "active"
    time.sleep(3.2)
    response = _get(stack, token)
    assert response.status_code == 401
    assert "expired at" in response.json()["detail"]
    assert _rows(stack, "expiring")[0]["state"] == "expired"

    dated = stack.cli("token", "create", "expiring", "--expires-at", "2099-01-01T00:00:00Z").stdout.strip()
    assert _get(stack, dated).status_code == 200
    assert "2099-01-01T00:00:00Z" in stack.cli("token", "list", "expiring").stdout


@pytest.mark.parametrize("args, message", [
    (["--expires-in", "30x"], "not a duration"), (["--expires-at", "yesterday"], "not an ISO 8601 time"),
    (["--expires-at", "2020-01-01"], "in the past"), (["--expires-in", "1d", "--expires-at", "2099-01-01"], "not allowed"),
])
def test_bad_expiries_are_refused_with_a_hint(stack, args, message):
    result = stack.cli("token", "create", "bad-expiry", *args, check=False)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "bad-expiry" not in stack.cli("token", "list").stdout
