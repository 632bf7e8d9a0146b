"""Celery tasks: thin wrappers that take ids and call the domain code in worker.evaluations."""

from __future__ import annotations

import os
import socket

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init

from core.celery_app import (
    DELIVER_WEBHOOK,
    INGEST_DATASET,
    RUN_CHUNK,
    RUN_EVALUATION,
    VALIDATE_MODEL,
    get_celery,
)
from core.settings import get_settings
from db import webhooks
from db.session import dispose_engine
from worker.webhooks import DeliveryFailed, deliver

app = get_celery()


@worker_process_init.connect
def _init_child(**_: object) -> None:
    # Torch is first touched here, in the forked child: a parent that ran a torch
    # op before forking leaves its children hanging in libgomp.
    import torch

    torch.set_num_threads(get_settings().torch_threads)
    dispose_engine()


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@app.task(name=RUN_EVALUATION)
def run_evaluation(evaluation_id: str) -> None:
    from worker import evaluations

    evaluations.run_evaluation(evaluation_id, _worker_name(), (SoftTimeLimitExceeded,))


@app.task(name=RUN_CHUNK)
def run_chunk(evaluation_id: str, index: int) -> None:
    from worker import evaluations

    # The message stands for one queued chunk; the worker runs whichever is next in fair order.
    evaluations.run_next_chunk(_worker_name(), (evaluation_id, index), (SoftTimeLimitExceeded,))


@app.task(name=VALIDATE_MODEL)
def validate_model(model_id: str) -> None:
    from worker import validation

    validation.validate_uploaded_model(model_id, _worker_name())


@app.task(name=INGEST_DATASET)
def ingest_dataset(dataset_id: str) -> None:
    from worker import ingestion

    ingestion.ingest_dataset(dataset_id, _worker_name())


@app.task(
    name=DELIVER_WEBHOOK, bind=True, autoretry_for=(DeliveryFailed,), retry_backoff=webhooks.BACKOFF_FACTOR_S,
    retry_backoff_max=webhooks.BACKOFF_MAX_S, retry_jitter=True, max_retries=webhooks.MAX_ATTEMPTS - 1,
)
def deliver_webhook(self, evaluation_id: str, first_attempt: int) -> None:
    # Celery counts this message's retries; the attempt number is what the database counts.
    deliver(evaluation_id, first_attempt + self.request.retries)
