"""Turn an uploaded dataset file into canonical arrays: images N×H×W×C uint8, targets int64."""

from __future__ import annotations

import io
import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from core.preprocess import Preprocess

import numpy as np

MAX_PIXELS = 2_000_000_000  # N·H·W·C bytes once decoded (the default of direct calls; see upload_limits)
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


def images_file(path: Path, out: Path | None) -> Path:
    """Where a parse writes the images' .npy: `out`, or beside the upload."""
    return out if out is not None else path.with_name(f".{path.name}.images.npy")


def parse_dataset(path: Path, limits: Limits = LIMITS, out: Path | None = None,
                  preprocess: "Preprocess | None" = None) -> ParsedDataset:
    """Read an NPZ, a .zip or .tar(.gz) image folder, told apart by content, not by name.

    The images are written to the .npy `out` (default: beside `path`) a block at a time;
    `preprocess` (resize, center_crop) applies to image folders only.
    """
    # Imported here: the image-folder reader builds on this module (and loads Pillow).
    from core import ingest_archives

    out = images_file(path, out)
    with path.open("rb") as handle:
        head = handle.read(512)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        with open_zip(path, limits) as archive:
            files = [info.filename for info in archive.infolist() if not info.is_dir()]
            if files and all(name.endswith(".npy") for name in files):
                if preprocess:
                    raise DatasetError("'preprocess' applies to image folders only; resize an NPZ's "
                                       "images before saving it")
                return npz_arrays(archive, limits, out)
            return ingest_archives.zip_image_folder(archive, limits, out, preprocess)
    if head.startswith(b"\x1f\x8b"):
        return ingest_archives.tar_image_folder(path, limits, out, preprocess, gzipped=True)
    if head[257:262] == b"ustar":
        return ingest_archives.tar_image_folder(path, limits, out, preprocess, gzipped=False)
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


def parse_npz(path: Path, limits: Limits = LIMITS, out: Path | None = None) -> ParsedDataset:
    """Read an NPZ with `images` and `labels` (or `masks`), never unpickling anything."""
    with open_zip(path, limits) as archive:
        return npz_arrays(archive, limits, images_file(path, out))


def npz_arrays(archive: zipfile.ZipFile, limits: Limits, out: Path) -> ParsedDataset:
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
    images = _read_npy(archive, members["images"], "images", limits, out)
    targets = _read_npy(archive, members[key], key, limits)
    names = {name: _names(_read_npy(archive, members[name], name, limits), name)
             for name in ("class_names", "files") if name in members}
    parsed = check_arrays(images, targets, task, limits, out)
    return _with_names(parsed, names.get("class_names"), names.get("files"))


def _names(array: np.ndarray, key: str) -> tuple[str, ...]:
    if array.ndim != 1:
        raise DatasetError(f"'{key}' must be a 1-D array of strings, got shape {array.shape}")
    return tuple(str(value) for value in array.tolist())


def _with_names(parsed: ParsedDataset, classes: tuple[str, ...] | None,
                files: tuple[str, ...] | None) -> ParsedDataset:
    if classes is not None and len(classes) <= parsed.max_label:
        raise DatasetError(f"'class_names' has {len(classes)} names but the labels go up to {parsed.max_label}; "
                           "give one name per class index")
    if files is not None and len(files) != parsed.images.shape[0]:
        raise DatasetError(f"'files' has {len(files)} entries for {parsed.images.shape[0]} images; give one per image")
    return ParsedDataset(parsed.images, parsed.targets, parsed.task, classes, parsed.images_path, files)


def _read_header(member: IO[bytes], key: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(member)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(member)
    raise DatasetError(f"'{key}' uses .npy format {version}; save plain numeric arrays")


def _read_npy(archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, limits: Limits,
              out: Path | None = None) -> np.ndarray:
    """One .npy member; with `out` (the images) copied into that .npy a block at a time and mapped.

    Its header decides dtype and size before anything is allocated.
    """
    try:
        with archive.open(info) as member:
            shape, fortran, dtype = _read_header(member, key)
            _check_dtype(key, dtype)
            nbytes = math.prod(shape) * dtype.itemsize
            bound = limits.max_decoded_bytes if key in ("images", "labels", "masks") else limits.max_member_bytes
            if nbytes > bound:
                raise DatasetError(f"'{key}' of shape {shape} would take {nbytes} bytes; the limit is {bound}")
            if member.tell() + nbytes != info.file_size:
                raise DatasetError(f"'{key}' is damaged: its header declares shape {shape} ({nbytes} bytes) "
                                   f"but the member holds {info.file_size - member.tell()} bytes")
            if out is not None and not fortran and len(shape) in (3, 4):
                # Copied straight into the stored form; N×H×W gains its channel axis in the header only.
                writer = NpyWriter(out, shape if len(shape) == 4 else (*shape, 1), dtype)
                copied = writer.copy_from(member)
                array = writer.close()
                if copied != nbytes:
                    raise DatasetError(f"'{key}' is damaged: it ends before its {nbytes} bytes")
                return array
            data = member.read(nbytes)
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 — a damaged member is the client's problem
        raise DatasetError(f"'{key}' could not be read from the NPZ: {type(exc).__name__}: {exc}") from None
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    if out is not None:
        # A Fortran-order (or odd-rank) images array: rare, and checked and written whole.
        np.save(out, np.ascontiguousarray(array[..., None] if array.ndim == 3 else array), allow_pickle=False)
    return array


def _check_dtype(key: str, dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise DatasetError(f"'{key}' is an object array (a pickle), which is never loaded; "
                           "save plain numeric arrays")
    if dtype.names is not None or dtype.subdtype is not None:
        raise DatasetError(f"'{key}' has a structured dtype {dtype}; save plain numeric arrays")
    if key in ("class_names", "files"):
        if dtype.kind != "U":
            raise DatasetError(f"'{key}' must be an array of strings (numpy.array(names)), got {dtype}")
        return
    if key == "images" and dtype != np.uint8:
        raise DatasetError(f"'images' must be uint8 (0–255), got {dtype}")
    if key != "images" and dtype.kind not in "iu":
        raise DatasetError(f"'{key}' must be integers, got {dtype}")


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


def digits() -> ParsedDataset:
    """scikit-learn's 8×8 digits, pixel values v in 0–16 stored as round(v · 255 / 16)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * 255 / 16).astype(np.uint8)
    return check_arrays(images, bunch.target, "classification")
