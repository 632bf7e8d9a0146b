"""Dataset parsers: NPZ and image folders, and every malformed or hostile file in the corpus."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from core.dataset_arrays import DatasetError, Limits
from core.ingest import digits, parse_dataset, parse_npz, size_problem
from core.preprocess import parse_preprocess
from tests.dataset_corpus import (
    CASES,
    Case,
    class_files,
    deflated_zeros,
    encode,
    gray,
    gzip_bomb,
    npz,
    png,
    raw_zip,
    tar_files,
    tar_header,
    tar_member,
    write_tar,
    write_zip,
)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_corpus_outcome(case: Case, tmp_path: Path) -> None:
    path = case.build(tmp_path)
    if case.outcome == "ok":
        parsed = parse_dataset(path)
        assert parsed.images.dtype == np.uint8 and parsed.images.ndim == 4
        assert parsed.targets.dtype == np.int64 and len(parsed.targets) == len(parsed.images)
    else:
        with pytest.raises(DatasetError) as caught:
            parse_dataset(path)
        assert case.outcome in str(caught.value)


def test_corpus_ids_are_unique() -> None:
    assert len({case.id for case in CASES}) == len(CASES)


def test_class_folders_map_to_sorted_labels_whatever_the_archive_order(tmp_path: Path) -> None:
    files = class_files(("dog", "cat", "bird"), per_class=3)
    shuffled = dict(reversed(list(files.items())))
    from_zip = parse_dataset(write_zip(tmp_path / "a.zip", files))
    from_tar = parse_dataset(write_tar(tmp_path / "b.tar.gz", tar_files(shuffled)))
    assert from_zip.classes == from_tar.classes == ("bird", "cat", "dog")
    assert from_zip.targets.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    np.testing.assert_array_equal(from_zip.images, from_tar.images)
    np.testing.assert_array_equal(from_zip.targets, from_tar.targets)
    # bird/0.png is the first sample: class 2 in class_files, image value 20.
    np.testing.assert_array_equal(from_zip.images[0, ..., 0], gray(20))
    assert from_zip.images.shape == (9, 6, 5, 1)


def test_a_single_root_folder_is_not_a_class(tmp_path: Path) -> None:
    parsed = parse_dataset(write_zip(tmp_path / "a.zip", class_files(("a", "b"), root="export/")))
    assert parsed.classes == ("a", "b") and parsed.num_classes == 2


def test_mixed_grayscale_and_colour_become_rgb_and_alpha_is_dropped(tmp_path: Path) -> None:
    rgb = np.stack([gray(1), gray(2), gray(3)], axis=2)
    rgba = np.concatenate([rgb, np.full((6, 5, 1), 7, np.uint8)], axis=2)
    files = {"a/gray.png": png(5), "a/rgb.png": encode(rgb), "b/rgba.png": encode(rgba)}
    parsed = parse_dataset(write_zip(tmp_path / "a.zip", files))
    assert parsed.images.shape == (3, 6, 5, 3)
    np.testing.assert_array_equal(parsed.images[0], np.repeat(gray(5)[..., None], 3, axis=2))
    np.testing.assert_array_equal(parsed.images[1], rgb)
    np.testing.assert_array_equal(parsed.images[2], rgb)


def test_grayscale_jpeg_stays_one_channel(tmp_path: Path) -> None:
    files = {f"c{i}/x.jpg": encode(gray(i), "JPEG") for i in range(2)}
    assert parse_dataset(write_zip(tmp_path / "a.zip", files)).images.shape == (2, 6, 5, 1)


def test_npz_arrays_round_trip_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 5, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 9, 7).astype(">u2")  # big-endian unsigned: still integers
    parsed = parse_npz(npz(tmp_path / "a.npz", images=np.asfortranarray(images), labels=labels, extra=labels))
    np.testing.assert_array_equal(parsed.images, images)
    assert parsed.targets.tolist() == labels.tolist() and parsed.task == "classification"


def test_npz_masks_make_a_segmentation_dataset(tmp_path: Path) -> None:
    parsed = parse_dataset(npz(tmp_path / "m.npz", images=np.zeros((2, 4, 4), np.uint8),
                               masks=np.ones((2, 4, 4), np.int32)))
    assert parsed.task == "segmentation" and parsed.targets.shape == (2, 4, 4)


def test_npz_masks_must_match_the_images(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="'masks' must be N×H×W"):
        parse_dataset(npz(tmp_path / "m.npz", images=np.zeros((2, 4, 4), np.uint8), masks=np.ones((2, 3, 4), int)))


def test_builtin_digits_follow_the_spec() -> None:
    parsed = digits()
    assert parsed.images.shape == (1797, 8, 8, 1) and parsed.num_classes == 10
    assert parsed.images.max() == 255 and set(np.unique(parsed.images)) <= {round(v * 255 / 16) for v in range(17)}


# ---------- bombs against small limits: real inflation, cut off by the bound ----------

SMALL = Limits(max_entries=50, max_inflated_bytes=8 << 20, max_member_bytes=4 << 20, max_decoded_bytes=1 << 20)


def test_real_zip_bomb_is_refused_from_its_directory(tmp_path: Path) -> None:
    path = raw_zip(tmp_path / "bomb.zip", [(f"c/{i}.png", deflated_zeros(4), 4 << 20) for i in range(3)])
    with pytest.raises(DatasetError, match="inflates to 12582912 bytes"):
        parse_dataset(path, SMALL)


def test_bomb_helpers_inflate_to_what_they_declare() -> None:
    import zlib

    assert zlib.decompress(deflated_zeros(3, b"head"), -15) == b"head" + bytes(3 << 20)
    assert zlib.decompressobj(-15).decompress(gzip_bomb(b"tar", 2)[10:-8]) == b"tar" + bytes(2 << 20)


def test_zip_member_over_the_per_image_bound(tmp_path: Path) -> None:
    path = raw_zip(tmp_path / "bomb.zip", [("c/1.png", deflated_zeros(5), 5 << 20)])
    with pytest.raises(DatasetError, match="one image may take at most 4194304"):
        parse_dataset(path, SMALL)


def test_gzip_bomb_inside_one_member_trips_the_bound(tmp_path: Path) -> None:
    header = tar_header("c/1.png", 16 << 20)
    path = tmp_path / "bomb.tar.gz"
    path.write_bytes(gzip.compress(header + bytes(16 << 20), compresslevel=1))
    with pytest.raises(DatasetError, match="inflates to more than 8388608 bytes"):
        parse_dataset(path, Limits(max_inflated_bytes=8 << 20, max_member_bytes=32 << 20))


def test_tar_entry_count_is_bounded(tmp_path: Path) -> None:
    path = write_tar(tmp_path / "many.tar.gz", [tar_member(f"c{i}", kind=tarfile.DIRTYPE) for i in range(60)])
    with pytest.raises(DatasetError, match="more than 50 entries"):
        parse_dataset(path, SMALL)


def test_decoded_size_is_bounded(tmp_path: Path) -> None:
    files = {f"c/{i}.png": png(i, (256, 256)) for i in range(8)}  # 8·256·256·3 > 1 MiB
    with pytest.raises(DatasetError, match="decode to more than 1048576 bytes"):
        parse_dataset(write_zip(tmp_path / "a.zip", files), SMALL)


def test_npz_entry_count_is_bounded(tmp_path: Path) -> None:
    arrays = {f"a{i}": np.zeros(1, np.uint8) for i in range(60)}
    with pytest.raises(DatasetError, match="more than 50 entries"):
        parse_dataset(npz(tmp_path / "a.npz", images=np.zeros((1, 2, 2), np.uint8), labels=np.zeros(1, int),
                          **arrays), SMALL)


def test_nothing_is_written_next_to_the_archive(tmp_path: Path) -> None:
    folder = tmp_path / "upload"
    folder.mkdir()
    members = [*tar_files(class_files()), tar_member("../escaped.png", png(1))]
    path = write_tar(folder / "a.tar.gz", members)
    with pytest.raises(DatasetError):
        parse_dataset(path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.tar.gz", "upload"]


def test_tar_names_are_read_from_pax_headers_too(tmp_path: Path) -> None:
    info, data = tar_member("c/" + "x" * 200 + ".png", png(1))
    path = tmp_path / "pax.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(data))
        evil = tarfile.TarInfo("../" + "y" * 200 + ".png")
        evil.size = len(data)
        archive.addfile(evil, io.BytesIO(data))
    with pytest.raises(DatasetError, match="points outside the archive"):
        parse_dataset(path)


def test_size_problems_are_read_from_the_headers_of_zips_and_tars(tmp_path: Path) -> None:
    """The API's 422s (SPEC: mixed sizes, a crop larger than an image) come from headers, as ingestion words them."""
    mixed = {**class_files(), "cat/wide.png": png(1, (6, 9))}
    for path in (write_zip(tmp_path / "m.zip", mixed), write_tar(tmp_path / "m.tar.gz", tar_files(mixed))):
        problem = size_problem(path)
        assert problem is not None and "declare a preprocess" in problem and "'cat/wide.png'" in problem
        with pytest.raises(DatasetError) as caught:
            parse_dataset(path)
        assert str(caught.value) == problem  # the worker would have said the same
        assert size_problem(path, preprocess=parse_preprocess({"resize": 4, "center_crop": 4})) is None
    small = write_zip(tmp_path / "s.zip", class_files())  # 6×5 images
    assert size_problem(small) is None
    too_big = size_problem(small, preprocess=parse_preprocess({"center_crop": 6}))
    assert too_big is not None and "smaller than the center_crop" in too_big


def test_size_problem_leaves_everything_else_to_the_ingestion(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", images=np.zeros((2, 8, 8), np.uint8), labels=np.arange(2))
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 not really a zip")
    not_images = write_zip(tmp_path / "t.zip", {"cat/a.png": b"text", "dog/b.png": png(1, (9, 9))})
    for path in (tmp_path / "a.npz", tmp_path / "junk.zip", not_images):
        assert size_problem(path) is None
