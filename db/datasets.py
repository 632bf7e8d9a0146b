"""A parsed dataset's arrays into blobs, and its facts onto the row: shared by built-ins (API) and ingestion (worker)."""

from __future__ import annotations

import json

from sqlalchemy.orm import Session

from core.ingest import ParsedDataset, to_npy_bytes
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
