"""Run the service's processes: the API under gunicorn, a Celery worker, migrations."""

from __future__ import annotations

import os
import subprocess
import sys

from core.settings import Settings, reset_settings


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


def check_sandbox(settings: Settings) -> str | None:
    """Why models cannot be sandboxed on this machine, or None when they can."""
    from worker.sandbox.pool import cage_config
    from worker.sandbox.probe import probe

    return probe(cage_config(settings))


def run_worker(settings: Settings, concurrency: int | None, loglevel: str) -> None:
    """A Celery worker, once the sandbox is shown to hold here; it fails closed when it does not."""
    import logging

    import redis

    from core.broker import redis_client_url
    from core.sandbox_status import publish
    from worker.tasks import app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("shiftscore.worker")
    reason = check_sandbox(settings)
    client = redis.Redis.from_url(redis_client_url(settings.broker_url), socket_timeout=5)
    publish(client, reason)
    if reason is not None:
        log.error("this worker runs no models: %s", reason)
        raise SystemExit(f"shiftscore worker: the model sandbox is unavailable: {reason}")
    if not settings.sandbox:
        log.warning("SHIFTSCORE_SANDBOX=off: uploaded models run without a sandbox; trusted single-user use only")
    else:
        log.info("model sandbox: bubblewrap namespaces, seccomp, %d MiB memory limit per model",
                 settings.sandbox_memory_bytes >> 20)

    if concurrency:
        # The default threads per process divide the cores among the processes really started.
        os.environ["SHIFTSCORE_WORKER_CONCURRENCY"] = str(concurrency)
        reset_settings()
    app.worker_main(argv=[
        "worker",
        f"--loglevel={loglevel}",
        f"--concurrency={concurrency or settings.worker_concurrency}",
        "--pool=prefork",
        "--without-gossip",
        "--without-mingle",
        "-Q", "shiftscore",
    ])


def run_webhook_worker(settings: Settings, concurrency: int | None, loglevel: str) -> None:
    """A Celery worker for the webhook queue only: threads, since a delivery mostly waits on the network."""
    from core.celery_app import WEBHOOK_QUEUE
    from worker.tasks import app

    app.worker_main(argv=[
        "worker",
        f"--loglevel={loglevel}",
        f"--concurrency={concurrency or settings.webhook_concurrency}",
        "--pool=threads",
        "--without-gossip",
        "--without-mingle",
        "--hostname=webhooks@%h",
        "-Q", WEBHOOK_QUEUE,
    ])


class _Child:
    """A `shiftscore` subcommand kept running beside this process, restarted when it exits."""

    def __init__(self, *args: str) -> None:
        self.command = [sys.executable, "-m", "shiftscore.cli", *args]
        self.process: subprocess.Popen | None = None

    def ensure_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(self.command)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()


def run_scheduler(settings: Settings) -> None:
    """Run the periodic tasks (reconciler, queuing webhooks) and one webhook worker until SIGTERM
    or SIGINT; run exactly one."""
    import logging
    import signal
    import threading

    from worker.scheduler import periodic_tasks, run_periodic

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    tasks = periodic_tasks()
    logging.getLogger("shiftscore.scheduler").info("running %s", ", ".join(tasks) or "no periodic tasks")
    # The scheduler only queues deliveries; this child sends them, so every launcher
    # (scripts/up, docker-compose, the tests) that starts a scheduler delivers webhooks.
    webhook_worker = _Child("webhooks")
    tasks["webhook worker"] = (webhook_worker.ensure_running, 5.0)
    try:
        run_periodic(tasks, stop)
    finally:
        webhook_worker.stop()
