"""Turn an uploaded dataset file into canonical arrays: images N×H×W×C uint8, targets int64."""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_PIXELS = 2_000_000_000  # N·H·W·C bytes once decoded
MAX_CLASSES = 100_000


class DatasetError(ValueError):
    """The upload is not a dataset we can use; the message says what to fix."""


@dataclass(frozen=True)
class ParsedDataset:
    images: np.ndarray  # N×H×W×C uint8
    targets: np.ndarray  # N labels, or N×H×W masks for segmentation
    task: str

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


def _check_npz_members(path: Path) -> None:
    # np.load inflates a member whole: bound the inflated sizes before it does.
    try:
        with zipfile.ZipFile(path) as archive:
            total = sum(info.file_size for info in archive.infolist())
    except zipfile.BadZipFile as exc:
        raise DatasetError(f"the file is not a valid NPZ (zip) archive: {exc}") from None
    if total > MAX_PIXELS + 100_000_000:
        raise DatasetError(
            f"the NPZ inflates to {total} bytes, more than the {MAX_PIXELS} bytes allowed"
        )


def parse_npz(path: Path) -> ParsedDataset:
    """Read an NPZ with `images` and `labels` (or `masks`), never unpickling anything."""
    _check_npz_members(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            if "images" not in keys:
                raise DatasetError(f"the NPZ has no 'images' array (it has: {', '.join(sorted(keys)) or 'nothing'})")
            if "labels" not in keys and "masks" not in keys:
                raise DatasetError("the NPZ needs a 'labels' array (or 'masks' for segmentation)")
            images = npz["images"]
            task = "classification" if "labels" in keys else "segmentation"
            targets = npz["labels"] if task == "classification" else npz["masks"]
    except DatasetError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DatasetError("the NPZ holds object arrays (pickles), which are never loaded; "
                               "save plain numeric arrays") from None
        raise DatasetError(f"the NPZ could not be read: {exc}") from None
    except Exception as exc:  # noqa: BLE001 — a corrupt upload is the client's problem
        raise DatasetError(f"the NPZ could not be read: {type(exc).__name__}: {exc}") from None
    return check_arrays(images, targets, task)


def check_arrays(images: np.ndarray, targets: np.ndarray, task: str) -> ParsedDataset:
    """Check shapes and types, and give images their channel axis."""
    if images.dtype != np.uint8:
        raise DatasetError(f"'images' must be uint8 (0–255), got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[3] not in (1, 3, 4):
        raise DatasetError(
            f"'images' must be N×H×W or N×H×W×C with C in 1, 3, 4; got shape {images.shape}"
        )
    count = images.shape[0]
    if count == 0:
        raise DatasetError("the dataset has no images")
    if not np.issubdtype(targets.dtype, np.integer):
        name = "labels" if task == "classification" else "masks"
        raise DatasetError(f"'{name}' must be integers, got {targets.dtype}")
    if task == "classification":
        if targets.ndim != 1 or targets.shape[0] != count:
            raise DatasetError(f"'labels' must have one entry per image: {count} images, "
                               f"labels of shape {targets.shape}")
    elif targets.shape != images.shape[:3]:
        raise DatasetError(f"'masks' must be N×H×W like the images ({images.shape[:3]}), "
                           f"got {targets.shape}")
    if targets.min() < 0:
        raise DatasetError("labels must be non-negative class indices")
    if targets.max() >= MAX_CLASSES:
        raise DatasetError(f"labels must be below {MAX_CLASSES}")
    return ParsedDataset(np.ascontiguousarray(images), targets.astype(np.int64), task)


def digits() -> ParsedDataset:
    """scikit-learn's 8×8 digits, pixel values v in 0–16 stored as round(v · 255 / 16)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * 255 / 16).astype(np.uint8)
    return check_arrays(images, bunch.target, "classification")
