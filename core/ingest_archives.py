"""Image-folder datasets: a .zip or .tar(.gz) with one sub-folder of PNG or JPEG images per class.

Nothing is extracted to disk: members are read into memory one at a time, within the
limits, and decoded with Pillow. Labels are the positions of the class folders' names
in sorted order (Python string order, as torchvision's ImageFolder), counting only
folders that hold at least one image. Samples are ordered by class, then by path, so
the same files give the same arrays whatever order the archive stores them in.
"""

from __future__ import annotations

import gzip
import io
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, TypeVar

import numpy as np

from core.dataset_arrays import DatasetError, Limits, NpyWriter, ParsedDataset, check_arrays
from core.preprocess import Preprocess, apply_preprocess, check_crop, output_size

_GRAY_MODES = {"1", "L", "LA", "La"}
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}  # more than 8 bits per channel
_ABSOLUTE = re.compile(r"^([/\\]|[A-Za-z]:)")
T = TypeVar("T")


def _is_junk(parts: tuple[str, ...]) -> bool:
    # Hidden files and the folders macOS adds to every zip it makes.
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _parts(name: str) -> tuple[str, ...]:
    """The member's path components, refusing any that would leave the archive's folder."""
    if _ABSOLUTE.match(name):
        raise DatasetError(f"the archive member '{name}' has an absolute path; "
                           "archive the class folders with relative paths")
    parts = tuple(part for part in re.split(r"[/\\]", name) if part not in ("", "."))
    if ".." in parts:
        raise DatasetError(f"the archive member '{name}' points outside the archive ('..'); remove it")
    return parts


def _zip_members(archive: zipfile.ZipFile, limits: Limits, *, read: int = -1) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of each file, folders and junk aside: its first `read` bytes (-1: all of them)."""
    infos = sorted(archive.infolist(), key=lambda info: info.filename)
    # Every name is checked before any member is inflated.
    for info in infos:
        _parts(info.filename)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DatasetError(f"the archive member '{info.filename}' is a symbolic link; "
                               "archives may hold only folders and image files")
        if info.flag_bits & 0x1:
            raise DatasetError(f"the archive member '{info.filename}' is encrypted")
    for info in infos:
        if info.is_dir() or _is_junk(_parts(info.filename)):
            continue
        if info.file_size > limits.max_member_bytes:
            raise DatasetError(f"'{info.filename}' inflates to {info.file_size} bytes; "
                               f"one image may take at most {limits.max_member_bytes}")
        try:
            if read:
                with archive.open(info) as member:
                    data = member.read(read)
            else:
                data = b""
        except Exception as exc:  # noqa: BLE001 — CRC errors, unknown compression: a damaged upload
            raise DatasetError(f"'{info.filename}' could not be read from the zip: {exc}") from None
        yield info.filename, data


class _Bounded(io.RawIOBase):
    """A read-only stream that fails once more than `limit` bytes come out of it."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        super().__init__()
        self.stream, self.limit, self.seen = stream, limit, 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(self.limit + 1 - self.seen if size is None or size < 0 else size)
        self.seen += len(data)
        if self.seen > self.limit:
            raise DatasetError(f"the archive inflates to more than {self.limit} bytes")
        return data

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _tar_members(stream: IO[bytes], limits: Limits, *, read: int = -1) -> Iterator[tuple[str, bytes]]:
    # Stream mode ("r|"): members are read in order, never seeking, never extracted.
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for count, member in enumerate(archive, start=1):
            if count > limits.max_entries:
                raise DatasetError(f"the archive has more than {limits.max_entries} entries")
            parts = _parts(member.name)
            if member.issym():
                raise DatasetError(f"the archive member '{member.name}' is a symbolic link; "
                                   "archives may hold only folders and image files")
            if member.islnk():
                raise DatasetError(f"the archive member '{member.name}' is a hard link; "
                                   "archives may hold only folders and image files")
            if member.isdir() or (member.isreg() and _is_junk(parts)):
                continue
            if not member.isreg():
                raise DatasetError(f"the archive member '{member.name}' is a device, pipe or other "
                                   "special file; archives may hold only folders and image files")
            if member.size > limits.max_member_bytes:
                raise DatasetError(f"'{member.name}' is {member.size} bytes; "
                                   f"one image may take at most {limits.max_member_bytes}")
            handle = archive.extractfile(member) if read else None
            yield member.name, handle.read(read) if handle is not None else b""


def zip_image_folder(archive: zipfile.ZipFile, limits: Limits, out: Path,
                     preprocess: Preprocess | None = None) -> ParsedDataset:
    """The dataset in an open zip of class folders, its images written to the .npy `out`."""
    names = [name for name, _ in _zip_members(archive, limits, read=0)]
    return _image_folder(_zip_members(archive, limits), _Folder(limits, names, out, preprocess))


def tar_image_folder(path: Path, limits: Limits, out: Path, preprocess: Preprocess | None = None, *,
                     gzipped: bool) -> ParsedDataset:
    """The dataset in a .tar.gz (or plain .tar) of class folders, its images written to the .npy `out`."""
    # A first pass lists the files without decoding any (inflating is cheap next to decoding).
    names = _read_tar(path, limits, gzipped,
                      lambda stream: [name for name, _ in _tar_members(stream, limits, read=0)])
    folder = _Folder(limits, names, out, preprocess)
    return _read_tar(path, limits, gzipped, lambda stream: _image_folder(_tar_members(stream, limits), folder))


def zip_size_problem(archive: zipfile.ZipFile, limits: Limits, preprocess: Preprocess | None) -> str | None:
    """The first of the folder's size problems (`size_problem`), from its images' headers."""
    return size_problem(_zip_members(archive, limits, read=HEADER_BYTES), limits, preprocess)


def tar_size_problem(path: Path, limits: Limits, preprocess: Preprocess | None, *, gzipped: bool) -> str | None:
    """The first of the folder's size problems (`size_problem`), from its images' headers."""
    return _read_tar(path, limits, gzipped,
                     lambda stream: size_problem(_tar_members(stream, limits, read=HEADER_BYTES), limits, preprocess))


# PNG's size is in its first chunk, JPEG's in the frame header after at most a 64 KiB EXIF segment.
HEADER_BYTES = 1 << 17


def size_problem(heads: Iterator[tuple[str, bytes]], limits: Limits, preprocess: Preprocess | None) -> str | None:
    """What makes the images not store at one size, read from their headers (no pixel decoded), or None.

    An image smaller than the crop, sizes that differ after `preprocess`, or differ without
    one: the problems a client is told at once (a 422). Anything else wrong with the folder
    (a damaged image, a bad member) is found, and told, by the ingestion.
    """
    from PIL import Image

    first: tuple[str, tuple[int, int]] | None = None
    for name, head in heads:
        try:
            with Image.open(io.BytesIO(head), formats=("PNG", "JPEG")) as image:
                width, height = image.size
        except Exception:  # noqa: BLE001 — not an image, or a header past HEADER_BYTES: the ingestion says
            continue
        if width > limits.max_side or height > limits.max_side:
            return None  # over the limit: the ingestion refuses the image itself, saying so
        stored_w, stored_h = output_size(preprocess, width, height)
        try:
            check_crop(preprocess, width, height, name)
        except DatasetError as exc:
            return str(exc)
        if first is None:
            first = (name, (stored_h, stored_w))
        elif (stored_h, stored_w) != first[1]:
            return _size_mismatch(first, name, (stored_h, stored_w), preprocess)
    return None


def _read_tar(path: Path, limits: Limits, gzipped: bool, read: Callable[[IO[bytes]], T]) -> T:
    """`read` applied to the archive's inflated stream, bounded; a damaged archive is the client's problem."""
    with path.open("rb") as raw:
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if gzipped else raw
        bounded = io.BufferedReader(_Bounded(stream, limits.max_inflated_bytes), 1 << 16)
        try:
            return read(bounded)
        except DatasetError:
            raise
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise DatasetError(f"the tar archive is truncated or damaged: {exc}") from None


def _decode(name: str, data: bytes, limits: Limits, count: int, preprocess: Preprocess | None) -> np.ndarray:
    """One PNG or JPEG of a folder of `count` files as H×W (grayscale) or H×W×3 (colour) uint8."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data), formats=("PNG", "JPEG")) as image:
            width, height = image.size
            if width > limits.max_side or height > limits.max_side:
                raise DatasetError(f"'{name}' is {width}×{height} pixels; images may be at most "
                                   f"{limits.max_side} pixels high and wide")
            # Every image is stored at one size, so its header alone tells what the folder would
            # decode to: refused before a pixel is decoded (3 bytes a pixel, as colour, the worst case).
            stored_w, stored_h = output_size(preprocess, width, height)
            if count * stored_w * stored_h * 3 > limits.max_decoded_bytes:
                raise DatasetError(f"the images decode to more than {limits.max_decoded_bytes} bytes: "
                                   f"{count} files of {stored_w}×{stored_h} pixels would take "
                                   f"{count * stored_w * stored_h * 3}; upload fewer or smaller images")
            if image.mode in _WIDE_MODES:
                raise DatasetError(f"'{name}' has {image.mode} pixels (more than 8 bits); save 8-bit images")
            image.load()
            # Alpha is dropped; palette and CMYK images become RGB.
            mode = "L" if image.mode in _GRAY_MODES else "RGB"
            converted = image if image.mode == mode else image.convert(mode)
            return np.asarray(apply_preprocess(converted, preprocess, name))
    except DatasetError:
        raise
    except UnidentifiedImageError:
        raise DatasetError(f"'{name}' is not a PNG or JPEG image; an image folder may hold only "
                           "PNG and JPEG files") from None
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"'{name}' is too large to decode: {exc}") from None
    except Exception as exc:  # noqa: BLE001 — truncated or corrupt image data
        raise DatasetError(f"'{name}' could not be decoded (truncated or corrupt?): {exc}") from None


class _Folder:
    """What is known of an image folder before any image is decoded: its files, their rows, the output."""

    def __init__(self, limits: Limits, names: list[str], out: Path, preprocess: Preprocess | None) -> None:
        if not names:
            raise DatasetError("the archive holds no PNG or JPEG images; put them in one sub-folder per class")
        self.limits, self.names, self.out, self.preprocess = limits, names, out, preprocess
        self.keyed = _class_paths([_parts(name) for name in names])
        self.classes = tuple(sorted({cls for cls, _ in self.keyed}))
        self.order = sorted(range(len(names)), key=lambda i: self.keyed[i])
        self.rows = {i: row for row, i in enumerate(self.order)}

    def labels(self) -> np.ndarray:
        index = {cls: label for label, cls in enumerate(self.classes)}
        return np.array([index[self.keyed[i][0]] for i in self.order], dtype=np.int64)

    def files(self) -> tuple[str, ...]:
        # Relative to the class folders' parent: a shared root folder is left out.
        return tuple("/".join(self.keyed[i][1][-2:]) for i in self.order)


def _image_folder(members: Iterator[tuple[str, bytes]], folder: _Folder) -> ParsedDataset:
    """The dataset of an archive whose files (folders and junk aside) `members` yields as `folder.names` listed them.

    The names fix each image's row before any is decoded, so each is decoded, written to its
    row of the stored .npy and let go: memory holds one image, whatever the folder's size.
    """
    names = folder.names
    writer: NpyWriter | None = None
    first: tuple[str, tuple[int, int]] | None = None
    read = 0
    for i, (name, data) in enumerate(members):
        if i >= len(names) or name != names[i]:
            raise DatasetError("the archive reads differently the second time; upload it again")
        read += 1
        image = _decode(name, data, folder.limits, len(names), folder.preprocess)
        size = image.shape[:2]
        if first is None:
            first = (name, size)
        elif size != first[1]:
            raise DatasetError(_size_mismatch(first, name, size, folder.preprocess))
        channels = 3 if image.ndim == 3 else 1
        if writer is None or channels > writer.shape[3]:
            # A folder that mixes grayscale and colour images is stored as colour: the rows so far
            # (H×W×1) are copied into a colour file.
            writer = _widen(writer, (len(names), *size, channels), folder.out)
        pixels = image if image.ndim == 3 else image[..., None]
        if pixels.shape[2] != writer.shape[3]:
            pixels = np.repeat(pixels, writer.shape[3], axis=2)
        writer.write_row(folder.rows[i], pixels)
    if writer is None or read != len(names):
        raise DatasetError("the archive reads differently the second time; upload it again")
    parsed = check_arrays(writer.close(), folder.labels(), "classification", folder.limits, folder.out)
    return ParsedDataset(parsed.images, parsed.targets, parsed.task, folder.classes, folder.out, folder.files())


def _size_mismatch(first: tuple[str, tuple[int, int]], name: str, size: tuple[int, ...],
                   preprocess: Preprocess | None) -> str:
    sizes = (f"'{first[0]}' is {first[1][1]}×{first[1][0]} but '{name}' is {size[1]}×{size[0]} (width×height)")
    if preprocess:
        return (f"after preprocess all images must have one size: {sizes}; declare a center_crop "
                "so that every image ends at one size")
    return (f"all images must have one size: {sizes}; declare a preprocess to store them at one size, "
            'e.g. preprocess={"resize": 256, "center_crop": 224} (shorter side to 256, then the central 224×224)')


def _widen(writer: NpyWriter | None, shape: tuple[int, int, int, int], out: Path) -> NpyWriter:
    if writer is None:
        return NpyWriter(out, shape)
    old = writer.path.with_name(writer.path.name + ".gray")
    writer.handle.close()
    writer.path.rename(old)
    widened = NpyWriter(out, shape)
    with old.open("rb") as source:
        source.seek(writer.offset)
        for row in range(shape[0]):
            pixels = np.frombuffer(source.read(writer.row_bytes), np.uint8).reshape(writer.shape[1:])
            widened.write_row(row, np.repeat(pixels, shape[3], axis=2))
    old.unlink()
    return widened


def _class_paths(paths: list[tuple[str, ...]]) -> list[tuple[str, tuple[str, ...]]]:
    """(class, path) of each image: `class/file`, or `root/class/file` with one shared root."""
    depths = {len(parts) for parts in paths}
    roots = {parts[0] for parts in paths}
    if depths == {3} and len(roots) == 1:
        return [(parts[1], parts) for parts in paths]
    if depths == {2}:
        return [(parts[0], parts) for parts in paths]
    odd = next("/".join(parts) for parts in paths if len(parts) != 2)
    raise DatasetError(f"put the images in one sub-folder per class (cat/1.png, dog/2.png, …); "
                       f"'{odd}' is not in such a folder")
