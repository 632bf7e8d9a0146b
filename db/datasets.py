"""A parsed dataset's arrays into blobs, and its facts onto the row: shared by built-ins (API) and ingestion (worker).

Also the ingestion's lease (db.leases): who ingests a `processing` dataset, and when to give up.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from core.dataset_arrays import ParsedDataset, to_npy_bytes
from db import leases
from db.blobs import put_blob, put_blob_file
from db.models import Dataset


def store_arrays(session: Session, dataset: Dataset, parsed: ParsedDataset) -> None:
    """Store the parsed arrays as blobs (the images streamed from their file) and fill the dataset's fields."""
    images = parsed.images
    if parsed.images_path is not None:
        dataset.images_blob = put_blob_file(session, parsed.images_path)
    else:
        dataset.images_blob = put_blob(session, to_npy_bytes(images))
    dataset.targets_blob = put_blob(session, to_npy_bytes(parsed.targets))
    if parsed.files is not None:
        dataset.files_blob = put_blob(session, json.dumps(parsed.files).encode())
    dataset.class_names = list(parsed.classes) if parsed.classes is not None else None
    dataset.task = parsed.task
    dataset.num_samples, dataset.height, dataset.width, dataset.channels = (int(n) for n in images.shape)
    dataset.num_classes, dataset.max_label = parsed.num_classes, parsed.max_label


def claim_ingestion(
    session: Session, dataset_id: str, worker: str, stale_after: timedelta, max_attempts: int
) -> leases.Lease | None:
    """Take a `processing` dataset's ingestion (or one whose worker went silent); None if it is not ours.

    One started `max_attempts` times without finishing becomes invalid instead: its worker
    died each time (killed, out of memory, past the hard time limit), so it must not come back.
    """
    def give_up(dataset: Dataset) -> dict[str, Any]:
        error = (f"ingesting the dataset file '{dataset.filename or 'upload'}' was started {dataset.ingest_attempts} "
                 "times and never finished: its worker died or was killed each time (out of memory, or past "
                 "SHIFTSCORE_TASK_HARD_TIME_LIMIT); upload a smaller file, or the same one once the workers "
                 "have more memory")
        # The upload is released: nothing will read it again, and the reclaim frees its space.
        return {"error": error, "upload_blob": None}

    return leases.take(session, leases.INGESTION, dataset_id, worker, stale_after, max_attempts, give_up)
