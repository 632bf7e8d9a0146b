"""`shiftscore report EVAL_ID -o report.html`: save an evaluation's self-contained HTML report.

Exit codes: 0 saved, 2 usage (no URL or token, an unwritable path), 3 the service refused
(no such evaluation, not succeeded yet) or could not be reached.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shiftscore.client import Client, ShiftScoreError


def add_report_parser(commands: argparse._SubParsersAction) -> None:
    """Add the `report` subcommand to the `shiftscore` parser."""
    parser = commands.add_parser(
        "report", help="save an evaluation's report as one self-contained HTML file",
        description="Save GET /v1/evaluations/{id}/report.html: the summary, heatmap, per-class table, fragile "
                    "samples, the sweep and the model's identity, pictures inline, to open or forward offline.")
    parser.add_argument("evaluation_id", help="a succeeded evaluation's id")
    parser.add_argument("-o", "--output", help="file to write (default shiftscore-EVAL_ID.html)")
    parser.add_argument("--url", help="service URL (default SHIFTSCORE_URL)")
    parser.add_argument("--token", help="bearer token (default SHIFTSCORE_TOKEN)")


def run_report(args: argparse.Namespace) -> int:
    """Fetch the report and write it; returns the exit code."""
    output = Path(args.output or f"shiftscore-{args.evaluation_id}.html")
    try:
        client = Client(args.url, args.token, timeout=120)
    except ValueError as exc:
        print(f"shiftscore report: {exc}", file=sys.stderr)
        return 2
    try:
        page = client.report_html(args.evaluation_id)
    except ShiftScoreError as exc:
        print(f"shiftscore report: {exc}", file=sys.stderr)
        return 3
    try:
        output.write_text(page, encoding="utf-8")
    except OSError as exc:
        print(f"shiftscore report: cannot write {output}: {exc.strerror}", file=sys.stderr)
        return 2
    print(output)
    return 0
