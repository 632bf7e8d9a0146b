"""The `shiftscore` command."""

from __future__ import annotations

import argparse
import os
import sys

from core.settings import SettingsError, get_settings
from shiftscore.eval_command import add_eval_parser, join_signed_values, run_eval
from shiftscore.report_command import add_report_parser, run_report
from shiftscore.token_command import add_token_parser, run_token


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shiftscore", description="Translation-robustness sweeps as a service.")
    commands = parser.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="API and a worker on the embedded default (SQLite, embedded Redis)")
    up.add_argument("--port", type=int, help="port (default 8000 or SHIFTSCORE_PORT)")

    api = commands.add_parser("api", help="serve the REST API with gunicorn")
    api.add_argument("--port", type=int, help="port (default 8000 or SHIFTSCORE_PORT)")
    api.add_argument("--host", help="address to bind (default 127.0.0.1 or SHIFTSCORE_HOST)")
    api.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    api.add_argument("--threads", type=int, default=8, help="threads per gunicorn worker")

    worker = commands.add_parser("worker", help="run a Celery worker that executes sweeps")
    worker.add_argument("--concurrency", type=int, help="worker processes (default SHIFTSCORE_WORKER_CONCURRENCY)")
    worker.add_argument("--loglevel", default="INFO")

    commands.add_parser("scheduler", help="run the periodic tasks (reconciler, webhooks) and a webhook worker; "
                                          "run exactly one")

    webhooks = commands.add_parser("webhooks", help="run a webhook delivery worker (the scheduler starts one)")
    webhooks.add_argument("--concurrency", type=int, help="deliveries at once (default SHIFTSCORE_WEBHOOK_CONCURRENCY)")
    webhooks.add_argument("--loglevel", default="INFO")

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True)
    db_commands.add_parser("upgrade", help="apply migrations and store the built-in datasets")

    add_token_parser(commands)
    add_eval_parser(commands)
    add_report_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(join_signed_values(sys.argv[1:] if argv is None else argv))
    if args.command == "eval":
        # The client side: it needs no server settings.
        return run_eval(args)
    if args.command == "report":
        return run_report(args)

    for name in ("port", "host"):
        value = getattr(args, name, None)
        if value is not None:
            os.environ[f"SHIFTSCORE_{name.upper()}"] = str(value)
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"shiftscore: {exc}", file=sys.stderr)
        return 2

    if args.command == "up":
        from launcher.up import run_up

        return run_up(settings)
    if args.command == "api":
        from launcher.processes import run_api

        run_api(settings, args.workers, args.threads)
        return 0
    if args.command == "worker":
        from launcher.processes import run_worker

        run_worker(settings, args.concurrency, args.loglevel)
        return 0
    if args.command == "webhooks":
        from launcher.processes import run_webhook_worker

        run_webhook_worker(settings, args.concurrency, args.loglevel)
        return 0
    if args.command == "scheduler":
        from launcher.processes import run_scheduler

        run_scheduler(settings)
        return 0
    if args.command == "db":
        from launcher.processes import migrate

        migrate(settings)
        print("database is up to date", file=sys.stderr)
        return 0
    if args.command == "token":
        return run_token(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
