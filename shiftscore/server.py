"""Run the service's processes: the API under gunicorn, a Celery worker, migrations."""

from __future__ import annotations

import os

from shiftscore.settings import Settings


def migrate(settings: Settings) -> None:
    """Apply the schema migrations, then store the built-in datasets."""
    from api.services.datasets import ensure_builtin_datasets
    from db.migrate import upgrade
    from db.session import session_scope

    settings.home.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    with session_scope() as session:
        ensure_builtin_datasets(session)


def run_api(settings: Settings, workers: int, threads: int) -> None:
    """Serve the API with gunicorn on the settings' host and port."""
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{settings.host}:{settings.port}")
            self.cfg.set("workers", workers)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("threads", threads)
            self.cfg.set("timeout", 300)
            self.cfg.set("accesslog", os.environ.get("SHIFTSCORE_ACCESS_LOG") or None)

        def load(self):
            from api import create_app

            return create_app(settings)

    Server().run()


def run_worker(settings: Settings, concurrency: int | None, loglevel: str) -> None:
    """A Celery worker: prefork children that each load torch after the fork."""
    from worker.tasks import app

    app.worker_main(argv=[
        "worker",
        f"--loglevel={loglevel}",
        f"--concurrency={concurrency or settings.worker_concurrency}",
        "--pool=prefork",
        "--without-gossip",
        "--without-mingle",
        "-Q", "shiftscore",
    ])


def run_scheduler(settings: Settings) -> None:
    """Run the periodic tasks (reconciler, webhooks) until SIGTERM or SIGINT; run exactly one."""
    import logging
    import signal
    import threading

    from worker.celery_app import PERIODIC
    from worker.scheduler import run_periodic
    from worker.tasks import app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    tasks = {name: (app.tasks[name].run, seconds) for name, seconds in PERIODIC.items()}
    logging.getLogger("shiftscore.scheduler").info("running %s", ", ".join(tasks) or "no periodic tasks")
    run_periodic(tasks, stop)
