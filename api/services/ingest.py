"""Turn an uploaded dataset file into canonical arrays: images N×H×W×C uint8, targets int64."""

from __future__ import annotations

import io
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

MAX_PIXELS = 2_000_000_000  # N·H·W·C bytes once decoded
MAX_CLASSES = 100_000
_CENTRAL_ENTRY = b"PK\x01\x02"  # every zip central-directory entry starts with it
_NPY_MAGIC = b"\x93NUMPY"


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
    """The limits of an upload parsed inside an API process (SHIFTSCORE_MAX_DECODED_BYTES)."""
    return Limits(max_decoded_bytes=max_decoded_bytes)


@dataclass(frozen=True)
class ParsedDataset:
    images: np.ndarray  # N×H×W×C uint8
    targets: np.ndarray  # N labels, or N×H×W masks for segmentation
    task: str
    classes: tuple[str, ...] | None = None  # an image folder's class names, label order
    # The stored .npy of `images` when they were decoded straight into it (`npy_array`).
    images_npy: memoryview | None = None

    def stored_images(self) -> bytes | memoryview:
        """The images in their stored form, without another copy when they already are."""
        return self.images_npy if self.images_npy is not None else to_npy_bytes(self.images)

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


def npy_array(shape: tuple[int, ...], dtype: np.dtype) -> tuple[memoryview, np.ndarray]:
    """A .npy file in memory and the C-order array inside it: filling one fills the other.

    Uploads are decoded straight into their stored form, so the API never holds the images
    twice more (a stacked array, then its serialisation). np.empty, unlike bytearray, leaves
    the pages uncommitted until they are written.
    """
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {
        "descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)})
    offset = len(header.getvalue())
    data = np.empty(offset + math.prod(shape) * dtype.itemsize, np.uint8)
    data[:offset] = np.frombuffer(header.getvalue(), np.uint8)
    return memoryview(data), data[offset:].view(dtype).reshape(shape)


def parse_dataset(path: Path, limits: Limits = LIMITS) -> ParsedDataset:
    """Read an NPZ, a .zip or .tar(.gz) image folder, told apart by content, not by name."""
    # Imported here: the image-folder reader builds on this module (and loads Pillow).
    from api.services import ingest_archives

    with path.open("rb") as handle:
        head = handle.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        with open_zip(path, limits) as archive:
            files = [info.filename for info in archive.infolist() if not info.is_dir()]
            if files and all(name.endswith(".npy") for name in files):
                return npz_arrays(archive, limits)
            return ingest_archives.zip_image_folder(archive, limits)
    if head.startswith(b"\x1f\x8b"):
        return ingest_archives.tar_image_folder(path, limits, gzipped=True)
    if head[257:262] == b"ustar":
        return ingest_archives.tar_image_folder(path, limits, gzipped=False)
    if head.startswith(_NPY_MAGIC):
        raise DatasetError("this is a single .npy array; save an NPZ with "
                           "numpy.savez(path, images=images, labels=labels)")
    raise DatasetError("the file is neither an NPZ nor a .zip / .tar.gz image folder "
                       "(one sub-folder of PNG or JPEG images per class)")


def _central_entries(path: Path) -> int:
    """An upper bound on the entries of a zip, found without parsing its directory."""
    count, tail = 0, b""
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            window = tail + block
            count += window.count(_CENTRAL_ENTRY)
            # Carry 3 bytes over: a signature split across blocks is then seen once.
            tail = window[-3:]
    return count


def open_zip(path: Path, limits: Limits = LIMITS) -> zipfile.ZipFile:
    """A zip whose entry count and declared inflated size are within the limits."""
    # zipfile builds an object per entry as it opens: count them before it does.
    if _central_entries(path) > limits.max_entries:
        raise DatasetError(f"the archive has more than {limits.max_entries} entries")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise DatasetError(f"the file is not a valid zip archive (truncated or damaged?): {exc}") from None
    infos = archive.infolist()
    # zipfile never inflates a member past its declared size (it stops and fails
    # the CRC), so the declared sizes bound what reading can produce.
    total = sum(info.file_size for info in infos)
    if len(infos) > limits.max_entries or total > limits.max_inflated_bytes:
        archive.close()
        raise DatasetError(
            f"the archive inflates to {total} bytes in {len(infos)} entries; the limits are "
            f"{limits.max_inflated_bytes} bytes and {limits.max_entries} entries"
        )
    return archive


def parse_npz(path: Path, limits: Limits = LIMITS) -> ParsedDataset:
    """Read an NPZ with `images` and `labels` (or `masks`), never unpickling anything."""
    with open_zip(path, limits) as archive:
        return npz_arrays(archive, limits)


def npz_arrays(archive: zipfile.ZipFile, limits: Limits = LIMITS) -> ParsedDataset:
    """The arrays of an open NPZ, each header checked before a byte of data is read."""
    members = {info.filename[:-4]: info for info in archive.infolist() if info.filename.endswith(".npy")}
    if "images" not in members:
        keys = ", ".join(sorted(members)) or "nothing"
        raise DatasetError(f"the NPZ has no 'images' array (it has: {keys})")
    if "labels" in members:
        task, key = "classification", "labels"
    elif "masks" in members:
        task, key = "segmentation", "masks"
    else:
        raise DatasetError("the NPZ needs a 'labels' array (or 'masks' for segmentation)")
    images, stored = _read_npy(archive, members["images"], "images", limits)
    targets, _ = _read_npy(archive, members[key], key, limits)
    return check_arrays(images, targets, task, limits, stored)


def _read_npy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str,
              limits: Limits) -> tuple[np.ndarray, memoryview | None]:
    """One .npy member, and its stored .npy when read straight into one (images).

    Its header decides dtype and size before anything is allocated.
    """
    try:
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
            else:
                raise DatasetError(f"'{key}' uses .npy format {version}; save plain numeric arrays")
            _check_dtype(key, dtype)
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > limits.max_decoded_bytes:
                raise DatasetError(f"'{key}' of shape {shape} would take {nbytes} bytes; "
                                   f"the limit is {limits.max_decoded_bytes}")
            if member.tell() + nbytes != info.file_size:
                raise DatasetError(f"'{key}' is damaged: its header declares shape {shape} ({nbytes} bytes) "
                                   f"but the member holds {info.file_size - member.tell()} bytes")
            if key == "images" and not fortran and len(shape) in (3, 4):
                # Read straight into the stored form; N×H×W gains its channel axis in the header only.
                stored, array = npy_array(shape if len(shape) == 4 else (*shape, 1), dtype)
                if _read_into(member, memoryview(stored)[len(stored) - nbytes:]) != nbytes:
                    raise DatasetError(f"'{key}' is damaged: it ends before its {nbytes} bytes")
                return array, stored
            data = member.read(nbytes)
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 — a damaged member is the client's problem
        raise DatasetError(f"'{key}' could not be read from the NPZ: {type(exc).__name__}: {exc}") from None
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C"), None


def _read_into(stream: IO[bytes], view: memoryview) -> int:
    """Fill `view` from `stream` a block at a time (readinto on a zip member reads it whole first)."""
    done = 0
    while done < len(view):
        block = stream.read(min(1 << 24, len(view) - done))
        if not block:
            break
        view[done:done + len(block)] = block
        done += len(block)
    return done


def _check_dtype(key: str, dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise DatasetError(f"'{key}' is an object array (a pickle), which is never loaded; "
                           "save plain numeric arrays")
    if dtype.names is not None or dtype.subdtype is not None:
        raise DatasetError(f"'{key}' has a structured dtype {dtype}; save plain numeric arrays")
    if key == "images" and dtype != np.uint8:
        raise DatasetError(f"'images' must be uint8 (0–255), got {dtype}")
    if key != "images" and dtype.kind not in "iu":
        raise DatasetError(f"'{key}' must be integers, got {dtype}")


def check_arrays(images: np.ndarray, targets: np.ndarray, task: str, limits: Limits = LIMITS,
                 images_npy: memoryview | None = None) -> ParsedDataset:
    """Check shapes and types, and give images their channel axis (`images_npy`: their stored form)."""
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
    return ParsedDataset(np.ascontiguousarray(images), targets.astype(np.int64), task, images_npy=images_npy)


def digits() -> ParsedDataset:
    """scikit-learn's 8×8 digits, pixel values v in 0–16 stored as round(v · 255 / 16)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * 255 / 16).astype(np.uint8)
    return check_arrays(images, bunch.target, "classification")
