"""Put work on the queue. Torch-free: the API calls these after committing the job row."""

from __future__ import annotations

from core.celery_app import (
    DELIVER_WEBHOOK,
    INGEST_DATASET,
    QUEUE,
    RUN_CHUNK,
    RUN_EVALUATION,
    VALIDATE_MODEL,
    WEBHOOK_QUEUE,
    get_celery,
)


def enqueue_evaluation(evaluation_id: str) -> None:
    """Queue a sweep; the evaluation's id is the task id, one id everywhere."""
    get_celery().send_task(RUN_EVALUATION, args=[evaluation_id], task_id=evaluation_id)


def enqueue_model_validation(model_id: str) -> None:
    """Queue the load-and-check of an uploaded model."""
    get_celery().send_task(VALIDATE_MODEL, args=[model_id], task_id=f"validate-{model_id}")


def enqueue_dataset_ingestion(dataset_id: str) -> None:
    """Queue the parse-check-convert of an uploaded dataset."""
    get_celery().send_task(INGEST_DATASET, args=[dataset_id], task_id=f"ingest-{dataset_id}")


def enqueue_chunk(evaluation_id: str, index: int) -> None:
    """Queue one chunk of a planned sweep, for whichever worker is free."""
    get_celery().send_task(RUN_CHUNK, args=[evaluation_id, index], task_id=f"{evaluation_id}.{index}")


def enqueue_webhook(evaluation_id: str, attempt: int) -> None:
    """Queue attempt number `attempt` of an evaluation's webhook on the webhook queue."""
    get_celery().send_task(DELIVER_WEBHOOK, args=[evaluation_id, attempt], queue=WEBHOOK_QUEUE,
                           task_id=f"webhook-{evaluation_id}.{attempt}")


def queue_depth() -> int:
    """Messages waiting in the work queue (not counting those a worker holds); raises if the broker is unreachable.

    The one count of the queue: the reconciler compares it with the work waiting, /metrics reports it.
    """
    app = get_celery()
    with app.connection_for_write() as connection:
        # No retries: both callers ask again at their next pass or scrape rather than wait here.
        connection.ensure_connection(max_retries=0)
        channel = connection.default_channel
        # Declared again first: a broker restarted without persistence has forgotten the
        # queue's routing, and nothing sent to it would arrive.
        queue = app.amqp.queues[QUEUE].bind(channel)
        queue.declare()
        return queue.queue_declare().message_count
