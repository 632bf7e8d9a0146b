"""Dataset files, good and hostile, written on the spot, each with the outcome it must get.

`outcome` is "ok" for a file the service must accept, else a fragment of the message it must
refuse the file with (a 422 from the API, a DatasetError from the parser).
"""

from __future__ import annotations

import gzip
import io
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Path], Path]  # writes the file into a folder, returns its path
    outcome: str

    def __repr__(self) -> str:
        return self.id


# ---------- building blocks ----------

def gray(value: int, size: tuple[int, int] = (6, 5)) -> np.ndarray:
    """An H×W grayscale image with a gradient, so no two images are alike."""
    height, width = size
    return ((np.arange(height * width).reshape(height, width) * 7 + value) % 256).astype(np.uint8)


def encode(array: np.ndarray | Image.Image, fmt: str = "PNG", **options) -> bytes:
    image = array if isinstance(array, Image.Image) else Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png(value: int, size: tuple[int, int] = (6, 5)) -> bytes:
    return encode(gray(value, size))


def class_files(classes: tuple[str, ...] = ("dog", "cat", "bird"), per_class: int = 3,
                root: str = "") -> dict[str, bytes]:
    """`root/class/i.png` → PNG bytes, distinct images."""
    return {f"{root}{cls}/{i}.png": png(10 * c + i) for c, cls in enumerate(classes) for i in range(per_class)}


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def tar_member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, linkname, len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def tar_header(name: str, size: int) -> bytes:
    """A tar header that declares a member of `size` bytes (the data need not follow)."""
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.GNU_FORMAT)


def write_tar(path: Path, members: list[tuple], gz: bool = True) -> Path:
    with tarfile.open(path, "w:gz" if gz else "w") as archive:
        for info, data in members:
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def tar_files(members: dict[str, bytes]) -> list[tuple]:
    return [tar_member(name, data) for name, data in members.items()]


def npz(path: Path, **arrays: np.ndarray) -> Path:
    with path.open("wb") as handle:
        np.savez(handle, **arrays)
    return path


def npy_bytes(header: dict, data: bytes) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + data


def raw_zip(path: Path, entries: list[tuple[str, bytes, int]], *, flags: int = 0, copies: int = 1) -> Path:
    """A zip written by hand: (name, deflated bytes, declared inflated size) per entry.

    It can declare sizes its data does not have and repeat its central directory entries,
    which zipfile refuses to write.
    """
    local, central = b"", b""
    for name, data, size in entries:
        encoded = name.encode()
        offset = len(local)
        local += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, flags, 8, 0, 0, 0, len(data), size,
                             len(encoded), 0) + encoded + data
        entry = struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, flags, 8, 0, 0, 0, len(data), size,
                            len(encoded), 0, 0, 0, 0, 0, offset) + encoded
        central += entry * copies
    count = len(entries) * copies
    end = struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, min(count, 0xFFFF), min(count, 0xFFFF),
                      len(central), len(local), 0)
    path.write_bytes(local + central + end)
    return path


def deflated_zeros(megabytes: int, prefix: bytes = b"") -> bytes:
    """Raw deflate data of `prefix` then `megabytes` MiB of zeros, made without that much work."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = compressor.compress(prefix) + compressor.flush(zlib.Z_FULL_FLUSH)
    # After a full flush a block needs nothing before it, so copies of one block chain.
    block = compressor.compress(bytes(1 << 20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return head + block * megabytes + compressor.flush()


def gzip_bomb(prefix: bytes, megabytes: int) -> bytes:
    """A gzip file of `prefix` and `megabytes` MiB of zeros (its CRC is left wrong: never reached)."""
    size = (len(prefix) + (megabytes << 20)) & 0xFFFFFFFF
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + deflated_zeros(megabytes, prefix)
            + struct.pack("<2I", 0, size))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width×height pixels and holds almost no data: a pixel bomb."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">2I5B", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _zip_of(members: dict[str, bytes]) -> Callable[[Path], Path]:
    return lambda folder: write_zip(folder / "data.zip", members)


def _tar_of(members: list[tuple], gz: bool = True) -> Callable[[Path], Path]:
    return lambda folder: write_tar(folder / ("data.tar.gz" if gz else "data.tar"), members, gz)


def _npz_of(**arrays: np.ndarray) -> Callable[[Path], Path]:
    return lambda folder: npz(folder / "data.npz", **arrays)


def _bytes(name: str, data: bytes) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        (folder / name).write_bytes(data)
        return folder / name
    return build


def _cut(build: Callable[[Path], Path], keep: float) -> Callable[[Path], Path]:
    def cut(folder: Path) -> Path:
        path = build(folder)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
        return path
    return cut


def _npz_members(**members: bytes) -> Callable[[Path], Path]:
    return lambda folder: write_zip(folder / "data.npz", {f"{k}.npy": v for k, v in members.items()})


def _labels_npy(n: int) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.arange(n) % 3)
    return buffer.getvalue()


def _encrypted_flag(folder: Path) -> Path:
    path = write_zip(folder / "data.zip", class_files())
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")
    data[at + 8] |= 0x1  # general purpose flag bit 0: encrypted
    path.write_bytes(bytes(data))
    return path


def _zip_symlink(folder: Path) -> Path:
    path = folder / "data.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in class_files().items():
            archive.writestr(name, data)
        link = zipfile.ZipInfo("cat/passwd.png")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    return path


def _mixed_modes(folder: Path) -> Path:
    rgb = np.stack([gray(1), gray(2), gray(3)], axis=2)
    members = {
        "a/gray.png": png(5),
        "a/rgb.jpg": encode(rgb, "JPEG", quality=95),
        "b/rgba.png": encode(Image.fromarray(rgb).convert("RGBA")),
        "b/palette.png": encode(Image.fromarray(rgb).convert("P")),
    }
    return write_tar(folder / "data.tar.gz", tar_files(members))


GOOD_LABELS = np.array([0, 1, 2, 1, 0, 2])

CASES: list[Case] = [
    # --- accepted ---
    Case("npz-grayscale", _npz_of(images=np.stack([gray(i, (8, 8)) for i in range(6)]), labels=GOOD_LABELS), "ok"),
    Case("npz-rgb-compressed", lambda f: (np.savez_compressed(f / "d.npz", images=np.zeros((6, 8, 8, 3), np.uint8),
                                                              labels=GOOD_LABELS), f / "d.npz")[1], "ok"),
    Case("zip-class-folders-png", _zip_of(class_files()), "ok"),
    Case("zip-one-root-folder-jpeg", _zip_of({f"photos/{c}/{i}.jpg": encode(np.full((6, 5, 3), 40 * i, np.uint8),
                                                                             "JPEG")
                                              for c in ("x", "y") for i in range(2)}), "ok"),
    Case("zip-with-macos-junk", _zip_of({**class_files(), "__MACOSX/._dog": b"junk", "cat/.DS_Store": b"junk"}),
         "ok"),
    Case("targz-class-folders", _tar_of(tar_files(class_files())), "ok"),
    Case("tar-uncompressed", _tar_of(tar_files(class_files()), gz=False), "ok"),
    Case("targz-mixed-gray-rgb-rgba-palette", _mixed_modes, "ok"),
    # --- NPZ refused ---
    Case("npz-object-images", _npz_of(images=np.array([b"x"] * 6, dtype=object), labels=GOOD_LABELS),
         "object array (a pickle)"),
    Case("npz-object-labels", _npz_of(images=np.zeros((6, 8, 8), np.uint8), labels=np.array([0] * 6, dtype=object)),
         "object array (a pickle)"),
    Case("npz-missing-images", _npz_of(pixels=np.zeros((6, 8, 8), np.uint8), labels=GOOD_LABELS),
         "has no 'images' array (it has: labels, pixels)"),
    Case("npz-missing-labels", _npz_of(images=np.zeros((6, 8, 8), np.uint8)), "needs a 'labels' array"),
    Case("npz-lengths-disagree", _npz_of(images=np.zeros((6, 8, 8), np.uint8), labels=np.arange(5)),
         "6 images, labels of shape (5,)"),
    Case("npz-float-images", _npz_of(images=np.zeros((6, 8, 8), np.float32), labels=GOOD_LABELS),
         "'images' must be uint8"),
    Case("npz-float-labels", _npz_of(images=np.zeros((6, 8, 8), np.uint8), labels=GOOD_LABELS.astype(float)),
         "'labels' must be integers"),
    Case("npz-bool-labels", _npz_of(images=np.zeros((6, 8, 8), np.uint8), labels=GOOD_LABELS > 0),
         "'labels' must be integers"),
    Case("npz-negative-labels", _npz_of(images=np.zeros((6, 8, 8), np.uint8), labels=GOOD_LABELS - 1),
         "non-negative"),
    Case("npz-structured-images", _npz_of(images=np.zeros(6, dtype=[("a", np.uint8)]), labels=GOOD_LABELS),
         "structured dtype"),
    Case("npz-no-images", _npz_of(images=np.zeros((0, 8, 8), np.uint8), labels=np.arange(0)), "no images"),
    Case("npz-flat-images", _npz_of(images=np.zeros(6, np.uint8), labels=GOOD_LABELS), "must be N×H×W"),
    Case("npz-absurd-shape", _npz_members(
        images=npy_bytes({"descr": "|u1", "fortran_order": False, "shape": (10**6, 10**5, 10**5)}, b"\0" * 64),
        labels=_labels_npy(6)), "would take 10000000000000000 bytes"),
    Case("npz-header-larger-than-data", _npz_members(
        images=npy_bytes({"descr": "|u1", "fortran_order": False, "shape": (100, 8, 8)}, b"\0" * 64),
        labels=_labels_npy(100)), "'images' is damaged"),
    Case("npz-truncated", _cut(_npz_of(images=np.zeros((60, 8, 8), np.uint8), labels=np.arange(60)), 0.5),
         "not a valid zip archive"),
    Case("single-npy", lambda f: (np.save(f / "a.npy", np.zeros((6, 8, 8), np.uint8)), f / "a.npy")[1],
         "single .npy array"),
    Case("random-bytes", _bytes("data.npz", np.random.default_rng(0).bytes(4096)), "neither an NPZ nor"),
    Case("empty-file", _bytes("data.npz", b""), "neither an NPZ nor"),
    # --- archive paths and member kinds refused ---
    Case("zip-slip-dotdot", _zip_of({**class_files(), "../evil.png": png(1)}), "points outside the archive"),
    Case("zip-slip-nested", _zip_of({**class_files(), "cat/../../evil.png": png(1)}), "points outside the archive"),
    Case("zip-slip-backslash", _zip_of({**class_files(), "..\\evil.png": png(1)}), "points outside the archive"),
    Case("zip-absolute-path", _zip_of({**class_files(), "/tmp/evil/cat/1.png": png(1)}), "absolute path"),
    Case("zip-windows-drive", _zip_of({**class_files(), "C:\\evil\\1.png": png(1)}), "absolute path"),
    Case("zip-symlink", _zip_symlink, "is a symbolic link"),
    Case("zip-encrypted-member", _encrypted_flag, "is encrypted"),
    Case("tar-slip-dotdot", _tar_of([*tar_files(class_files()), tar_member("../evil.png", png(1))]),
         "points outside the archive"),
    Case("tar-absolute-path", _tar_of([tar_member("/tmp/evil.png", png(1))]), "absolute path"),
    Case("tar-symlink", _tar_of([tar_member("cat/1.png", kind=tarfile.SYMTYPE, linkname="/etc/passwd")]),
         "is a symbolic link"),
    Case("tar-hard-link", _tar_of([tar_member("cat/1.png", kind=tarfile.LNKTYPE, linkname="/etc/passwd")]),
         "is a hard link"),
    Case("tar-fifo", _tar_of([tar_member("cat/pipe", kind=tarfile.FIFOTYPE)]), "special file"),
    Case("tar-char-device", _tar_of([tar_member("cat/null", kind=tarfile.CHRTYPE)]), "special file"),
    # --- bombs ---
    Case("zip-bomb-3-3-gib", lambda f: raw_zip(f / "bomb.zip", [("cat/1.png", deflated_zeros(3338), 3338 << 20)]),
         "the archive inflates to 3500146688 bytes"),
    Case("zip-100001-entries", lambda f: raw_zip(f / "many.zip", [("cat/1.png", deflated_zeros(0), 0)],
                                                 copies=100_001), "more than 100000 entries"),
    Case("targz-bomb-3-3-gib", _bytes("bomb.tar.gz", gzip_bomb(tar_header("cat/1.png", 3338 << 20), 3338)),
         "'cat/1.png' is 3500146688 bytes; one image may take at most"),
    Case("zip-png-pixel-bomb", _zip_of({**class_files(), "cat/huge.png": png_header_only(100_000, 100_000)}),
         "too large to decode"),
    Case("zip-png-over-4096", _zip_of({**class_files(), "cat/big.png": png_header_only(5000, 5000)}),
         "at most 4096 pixels"),
    # --- contents refused ---
    Case("zip-not-an-image", _zip_of({**class_files(), "cat/notes.txt": b"hello"}), "'cat/notes.txt' is not a PNG"),
    Case("zip-gif-image", _zip_of({**class_files(), "cat/anim.gif": encode(gray(1), "GIF")}), "is not a PNG"),
    Case("zip-mixed-sizes", _zip_of({**class_files(), "cat/wide.png": png(1, (6, 9))}),
         "all images must have one size"),
    Case("zip-images-at-top-level", _zip_of({"1.png": png(1), "2.png": png(2)}), "one sub-folder per class"),
    Case("zip-images-too-deep", _zip_of({"a/b/c/1.png": png(1), "d/e/f/2.png": png(2)}), "one sub-folder per class"),
    Case("zip-empty", _zip_of({}), "holds no PNG or JPEG images"),
    Case("zip-only-folders", _zip_of({"cat/": b"", "dog/": b""}), "holds no PNG or JPEG images"),
    Case("zip-truncated-png", _zip_of({**class_files(), "cat/cut.png": png(1)[:-28]}), "could not be decoded"),
    Case("zip-16-bit-png", _zip_of({"cat/1.png": encode(Image.fromarray(np.zeros((6, 5), np.uint16)))}),
         "more than 8 bits"),
    Case("zip-truncated-archive", _cut(_zip_of(class_files()), 0.6), "not a valid zip archive"),
    Case("targz-truncated", _cut(_tar_of(tar_files(class_files())), 0.5), "truncated or damaged"),
    Case("gzip-not-a-tar", _bytes("data.tar.gz", gzip.compress(b"just text, not a tar archive" * 30)),
         "truncated or damaged"),
]


def write_large_npz(path: Path, count: int, image_shape: tuple[int, ...], classes: int = 2, seed: int = 0) -> Path:
    """An uncompressed NPZ of `count` random uint8 images, written 256 images at a time (never held whole).

    Each image repeats one random row down its height: random enough to tell images apart, cheap to make.
    """
    rng = np.random.default_rng(seed)
    header = {"descr": "|u1", "fortran_order": False, "shape": (count, *image_shape)}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        with archive.open("images.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)
            for start in range(0, count, 256):
                block = min(256, count - start)
                row = rng.integers(0, 256, (block, 1, *image_shape[1:]), dtype=np.uint8)
                member.write(np.repeat(row, image_shape[0], axis=1).tobytes())
        with archive.open("labels.npy", "w") as member:
            np.save(member, rng.integers(0, classes, count))
    return path
