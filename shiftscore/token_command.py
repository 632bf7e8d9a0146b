"""`shiftscore token create|list|revoke`: API tokens, managed on the server's database."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import datetime, timedelta, timezone

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _duration(text: str) -> timedelta:
    match = re.fullmatch(r"(\d+)([smhdw])", text.strip())
    if not match or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90m, 12h, 30d or 2w")
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time such as 2027-01-31 or "
                                         "2027-01-31T12:00:00+00:00") from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def add_token_parser(commands: argparse._SubParsersAction) -> None:
    token = commands.add_parser("token", help="API tokens: create, list, revoke")
    token_commands = token.add_subparsers(dest="token_command", required=True)
    create = token_commands.add_parser("create", help="print a new token for TENANT (and nothing else)")
    create.add_argument("tenant")
    expiry = create.add_mutually_exclusive_group()
    expiry.add_argument("--expires-in", type=_duration, metavar="DURATION",
                        help="valid for this long: 90m, 12h, 30d, 2w (default: until revoked)")
    expiry.add_argument("--expires-at", type=_moment, metavar="TIME",
                        help="valid until this ISO 8601 time (UTC unless it names an offset)")
    listing = token_commands.add_parser("list", help="the tokens (of TENANT): id, prefix, dates; never the secret")
    listing.add_argument("tenant", nargs="?")
    revoke = token_commands.add_parser("revoke", help="revoke a token: it answers 401 from then on")
    revoke.add_argument("token", metavar="TOKEN_ID_OR_PREFIX",
                        help="the id or prefix shown by 'shiftscore token list' (at least 6 characters)")


def _when(moment: datetime | None) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if moment else "-"


def run_token(args: argparse.Namespace) -> int:
    from db.models import utcnow
    from db.session import session_scope
    from db.tenants import create_token, list_tokens, revoke_token

    if args.token_command == "create":
        expires_at = args.expires_at or (utcnow() + args.expires_in if args.expires_in else None)
        if expires_at is not None and expires_at <= utcnow():
            print(f"shiftscore: --expires-at {expires_at.isoformat()} is in the past", file=sys.stderr)
            return 2
        with session_scope() as session:
            print(create_token(session, args.tenant, expires_at))
        return 0
    if args.token_command == "list":
        with session_scope() as session:
            tokens = list_tokens(session, args.tenant)
        rows = [("ID", "PREFIX", "TENANT", "CREATED", "EXPIRES", "REVOKED", "STATE")]
        rows += [(t.id, t.prefix or "-", t.tenant, _when(t.created_at), _when(t.expires_at), _when(t.revoked_at),
                  t.state) for t in tokens]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
        return 0
    with session_scope() as session:
        try:
            token, newly = revoke_token(session, args.token)
        except LookupError as exc:
            print(f"shiftscore: {exc}", file=sys.stderr)
            return 1
    print(f"{'revoked' if newly else 'already revoked'}: {token.id} ({token.prefix or 'no prefix'}) "
          f"of tenant {token.tenant}")
    return 0
