"""A dataset's canonical arrays (images N×H×W×C uint8, targets int64), the bounds on making them, and their checks.

Shared by every reader of an upload (core.ingest: NPZ and the dispatch by content;
core.ingest_archives: image folders) and by core.preprocess; it imports none of them.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

MAX_PIXELS = 2_000_000_000  # N·H·W·C bytes once decoded (the default of direct calls; see upload_limits)
MAX_CLASSES = 100_000


class DatasetError(ValueError):
    """The upload is not a dataset we can use; the message says what to fix."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what an upload may make the API read, inflate and decode."""

    max_entries: int = 100_000  # members of one archive, folders included
    max_inflated_bytes: int = 2 * 1024**3  # bytes read out of one archive in all
    max_member_bytes: int = 64 * 1024**2  # one image file inside an archive
    max_decoded_bytes: int = MAX_PIXELS  # N·H·W·C of the images
    max_side: int = 4096  # image height and width, as for a model's declared input


LIMITS = Limits()


def upload_limits(max_decoded_bytes: int) -> Limits:
    """The limits of an upload ingested by a worker (SHIFTSCORE_MAX_DECODED_BYTES).

    An NPZ inflates to about its images' size, so the inflation bound follows the decoded one.
    """
    return Limits(max_decoded_bytes=max_decoded_bytes,
                  max_inflated_bytes=max(Limits.max_inflated_bytes, max_decoded_bytes + (1 << 30)))


@dataclass(frozen=True)
class ParsedDataset:
    images: np.ndarray  # N×H×W×C uint8 (memory-mapped from `images_path` when parsed from a file)
    targets: np.ndarray  # N labels, or N×H×W masks for segmentation
    task: str
    classes: tuple[str, ...] | None = None  # class names in label order (a folder's, or an NPZ's `class_names`)
    images_path: Path | None = None  # the images' stored .npy, written a block at a time
    files: tuple[str, ...] | None = None  # each sample's path in its folder (or an NPZ's `files`)

    @property
    def num_classes(self) -> int:
        return int(np.unique(self.targets).size)

    @property
    def max_label(self) -> int:
        return int(self.targets.max())


def to_npy_bytes(array: np.ndarray) -> bytes:
    """The canonical stored form: an uncompressed .npy, which workers memory-map."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


class NpyWriter:
    """A C-order .npy file written in place, rows at a time, never mapped: memory stays at what a write holds.

    np.empty or a writable memmap would hold the whole array in the process (anonymous
    pages, or dirty file pages counted in its RSS); plain writes leave it to the page cache.
    """

    def __init__(self, path: Path, shape: tuple[int, ...], dtype: np.dtype = np.dtype(np.uint8)) -> None:
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {
            "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
        self.path, self.shape, self.dtype = path, tuple(shape), dtype
        self.offset = len(header.getvalue())
        self.row_bytes = math.prod(shape[1:]) * dtype.itemsize
        self.nbytes = shape[0] * self.row_bytes
        self.handle = path.open("wb")
        self.handle.write(header.getvalue())
        self.handle.truncate(self.offset + self.nbytes)

    def write_row(self, row: int, values: np.ndarray) -> None:
        os.pwrite(self.handle.fileno(), np.ascontiguousarray(values, self.dtype).tobytes(),
                  self.offset + row * self.row_bytes)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        self.handle.flush()
        data = os.pread(self.handle.fileno(), (stop - start) * self.row_bytes, self.offset + start * self.row_bytes)
        return np.frombuffer(data, self.dtype).reshape((stop - start, *self.shape[1:]))

    def copy_from(self, stream: IO[bytes]) -> int:
        """Fill the array from `stream` a block at a time; the bytes copied."""
        self.handle.seek(self.offset)
        done = 0
        while done < self.nbytes:
            block = stream.read(min(1 << 24, self.nbytes - done))
            if not block:
                break
            self.handle.write(block)
            done += len(block)
        return done

    def close(self) -> np.ndarray:
        """The written array, memory-mapped read-only (pages are read only where touched)."""
        self.handle.close()
        return np.load(self.path, mmap_mode="r")


def check_arrays(images: np.ndarray, targets: np.ndarray, task: str, limits: Limits = LIMITS,
                 images_path: Path | None = None) -> ParsedDataset:
    """Check shapes and types, and give images their channel axis (`images_path`: their stored .npy)."""
    if images.dtype != np.uint8:
        raise DatasetError(f"'images' must be uint8 (0–255), got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim == 4 and images.shape[1] in (1, 3, 4) and images.shape[3] not in (1, 3, 4):
        # PyTorch's layout: the most common way to get here.
        raise DatasetError(
            f"'images' of shape {images.shape} look channels-first (N×C×H×W); store them channels-last, "
            "N×H×W×C: images.transpose(0, 2, 3, 1)"
        )
    if images.ndim != 4 or images.shape[3] not in (1, 3, 4):
        raise DatasetError(
            f"'images' must be N×H×W or N×H×W×C with C in 1, 3, 4; got shape {images.shape}"
        )
    count, height, width = images.shape[:3]
    if count == 0:
        raise DatasetError("the dataset has no images")
    if not (1 <= height <= limits.max_side and 1 <= width <= limits.max_side):
        raise DatasetError(f"images must be 1 to {limits.max_side} pixels high and wide; got {height}×{width}")
    if images.nbytes > limits.max_decoded_bytes:
        raise DatasetError(f"the images take {images.nbytes} bytes; the limit is {limits.max_decoded_bytes}")
    name = "labels" if task == "classification" else "masks"
    if not np.issubdtype(targets.dtype, np.integer):
        raise DatasetError(f"'{name}' must be integers, got {targets.dtype}")
    if task == "classification":
        if targets.ndim != 1 or targets.shape[0] != count:
            raise DatasetError(f"'labels' must have one entry per image: {count} images, "
                               f"labels of shape {targets.shape}")
    elif targets.shape != images.shape[:3]:
        raise DatasetError(f"'masks' must be N×H×W like the images ({images.shape[:3]}), "
                           f"got {targets.shape}")
    if targets.min() < 0:
        raise DatasetError(f"{name} must be non-negative class indices")
    if targets.max() >= MAX_CLASSES:
        raise DatasetError(f"{name} must be below {MAX_CLASSES}")
    # A mapped array is already C-ordered: no copy of it is made here.
    return ParsedDataset(np.ascontiguousarray(images) if images_path is None else images,
                         targets.astype(np.int64), task, images_path=images_path)
