"""The Celery application. No torch here: the API imports this module to enqueue work."""

from __future__ import annotations

from celery import Celery

from core.broker import celery_broker_url
from core.settings import Settings, get_settings

QUEUE = "shiftscore"
# Webhook deliveries have a queue and workers of their own (`shiftscore webhooks`, a thread
# pool the scheduler starts): a slow receiver never waits behind a sweep, nor a sweep behind it.
WEBHOOK_QUEUE = "shiftscore.webhooks"
RUN_EVALUATION = "shiftscore.run_evaluation"
VALIDATE_MODEL = "shiftscore.validate_model"
INGEST_DATASET = "shiftscore.ingest_dataset"
RUN_CHUNK = "shiftscore.run_chunk"
DELIVER_WEBHOOK = "shiftscore.deliver_webhook"


def make_celery(settings: Settings) -> Celery:
    """A Celery app for long sweeps: late acks, one task at a time, bounded run time."""
    app = Celery("shiftscore")
    app.conf.update(
        broker_url=celery_broker_url(settings.broker_url),
        broker_connection_retry_on_startup=True,
        # Redis redelivers an unacknowledged task after this; it must exceed the hard limit.
        broker_transport_options={"visibility_timeout": settings.task_hard_time_limit + 600},
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A new pool child imports torch before it reports up (worker.tasks): on a busy host that takes
        # longer than Celery's 4 s, and the parent killed and restarted it in a loop after a child died.
        worker_proc_alive_timeout=60.0,
        task_soft_time_limit=settings.task_soft_time_limit,
        task_time_limit=settings.task_hard_time_limit,
        task_default_queue=QUEUE,
        task_routes={DELIVER_WEBHOOK: {"queue": WEBHOOK_QUEUE}},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


_app: Celery | None = None
# Set by use_settings (the app factory); until then the process's settings name the broker.
_settings: Settings | None = None


def use_settings(settings: Settings) -> None:
    """Send to `settings`' broker from now on; the Celery app is built at the first use."""
    global _app, _settings
    if settings != _settings:
        _app, _settings = None, settings


def get_celery() -> Celery:
    global _app
    if _app is None:
        _app = make_celery(_settings or get_settings())
    return _app
