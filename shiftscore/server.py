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


def run_scheduler(settings: Settings, loglevel: str) -> None:
    """Celery beat: sends the periodic tasks (exactly one per deployment)."""
    from worker.tasks import app

    schedule = settings.home / "celerybeat-schedule"
    settings.home.mkdir(parents=True, exist_ok=True)
    app.start(argv=["beat", f"--loglevel={loglevel}", f"--schedule={schedule}"])
