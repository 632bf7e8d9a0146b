"""Turn an uploaded dataset file into its canonical arrays (core.dataset_arrays), told apart by content.

An NPZ is read here; image folders in core.ingest_archives.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from core import ingest_archives
from core.dataset_arrays import LIMITS, DatasetError, Limits, NpyWriter, ParsedDataset, check_arrays
from core.preprocess import Preprocess

_CENTRAL_ENTRY = b"PK\x01\x02"  # every zip central-directory entry starts with it
_NPY_MAGIC = b"\x93NUMPY"


def images_file(path: Path, out: Path | None) -> Path:
    """Where a parse writes the images' .npy: `out`, or beside the upload."""
    return out if out is not None else path.with_name(f".{path.name}.images.npy")


def parse_dataset(path: Path, limits: Limits = LIMITS, out: Path | None = None,
                  preprocess: Preprocess | None = None) -> ParsedDataset:
    """Read an NPZ, a .zip or .tar(.gz) image folder, told apart by content, not by name.

    The images are written to the .npy `out` (default: beside `path`) a block at a time;
    `preprocess` (resize, center_crop) applies to image folders only.
    """
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


def size_problem(path: Path, limits: Limits = LIMITS, preprocess: Preprocess | None = None) -> str | None:
    """For an image folder, the first reason its images would not store at one size (read from their
    headers: fast, while the client waits); None for anything else, which the ingestion checks in full."""
    with path.open("rb") as handle:
        head = handle.read(512)
    try:
        if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
            with open_zip(path, limits) as archive:
                files = [info.filename for info in archive.infolist() if not info.is_dir()]
                if files and all(name.endswith(".npy") for name in files):
                    return None
                return ingest_archives.zip_size_problem(archive, limits, preprocess)
        if head.startswith(b"\x1f\x8b") or head[257:262] == b"ustar":
            return ingest_archives.tar_size_problem(path, limits, preprocess, gzipped=head.startswith(b"\x1f\x8b"))
    except DatasetError:
        return None  # a damaged or hostile archive: the ingestion says what is wrong with it
    return None


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


def digits() -> ParsedDataset:
    """scikit-learn's 8×8 digits, pixel values v in 0–16 stored as round(v · 255 / 16)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * 255 / 16).astype(np.uint8)
    return check_arrays(images, bunch.target, "classification")
