"""Put work on the queue. Torch-free: the API calls these after committing the job row."""

from __future__ import annotations

from worker.celery_app import RUN_EVALUATION, VALIDATE_MODEL, get_celery


def enqueue_evaluation(evaluation_id: str) -> None:
    """Queue a sweep; the evaluation's id is the task id, one id everywhere."""
    get_celery().send_task(RUN_EVALUATION, args=[evaluation_id], task_id=evaluation_id)


def enqueue_model_validation(model_id: str) -> None:
    """Queue the load-and-check of an uploaded model."""
    get_celery().send_task(VALIDATE_MODEL, args=[model_id], task_id=f"validate-{model_id}")
