"""A parsed dataset's arrays into blobs, and its facts onto the row: shared by built-ins (API) and ingestion (worker).

Also the ingestion's lease (db.leases): who ingests a `processing` dataset, and when to give up.
"""

from __future__ import annotations

import io
import json
import math
from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from core.dataset_arrays import ParsedDataset, to_npy_bytes
from db import leases
from db.blobs import put_blob, put_blob_file, read_blob_range
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


# A stored .npy's header fits in its first 64 KiB (format 1.0 caps it there; ours are ~128 bytes).
_NPY_HEAD_BYTES = 1 << 16


def stored_image(session: Session, images_blob: str, index: int) -> np.ndarray:
    """Image `index` (H×W×C) of a dataset's stored images, read from the chunk rows holding it, not the whole blob."""
    head = io.BytesIO(read_blob_range(session, images_blob, 0, _NPY_HEAD_BYTES))
    version = np.lib.format.read_magic(head)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read_header(head)
    if fortran or not 0 <= index < shape[0]:
        raise ValueError(f"blob {images_blob} holds no C-ordered image {index} (shape {shape})")
    row_bytes = math.prod(shape[1:]) * dtype.itemsize
    data = read_blob_range(session, images_blob, head.tell() + index * row_bytes, row_bytes)
    return np.frombuffer(data, dtype).reshape(shape[1:])


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
