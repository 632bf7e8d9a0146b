"""Datasets of real size through the real stack: uploads streamed to chunked storage, ingested by a worker.

Runs on the shared `pg_stack` (API under gunicorn, a Celery worker, PostgreSQL, Redis). The stored
arrays are read back from PostgreSQL's chunk rows, as a worker would, and compared with what
Pillow and numpy make of the same files.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from pathlib import Path

import numpy as np
import psycopg
import pytest
import torch
from PIL import Image
from torch import nn

from tests.dataset_corpus import encode, tar_files, write_large_npz, write_tar, write_zip
from tests.models import DIGITS_INPUT, MeanClassifier, digits_arrays, save_torchscript

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ivy(pg_stack):
    return pg_stack.session("ingestion-ivy")


def pg(pg_stack) -> psycopg.Connection:
    return psycopg.connect(pg_stack.env["SHIFTSCORE_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://"))


def stored_blob(pg_stack, digest: str) -> bytes:
    """A blob's bytes, joined from its chunk rows in order."""
    with pg(pg_stack) as conn:
        rows = conn.execute("SELECT seq, data FROM blob_chunks WHERE sha256 = %s ORDER BY seq", (digest,)).fetchall()
    assert [seq for seq, _ in rows] == list(range(len(rows)))
    data = b"".join(bytes(chunk) for _, chunk in rows)
    assert hashlib.sha256(data).hexdigest() == digest
    return data


def stored_images(pg_stack, dataset_id: str) -> np.ndarray:
    with pg(pg_stack) as conn:
        (digest,) = conn.execute("SELECT images_blob FROM datasets WHERE id = %s", (dataset_id,)).fetchone()
    return np.load(io.BytesIO(stored_blob(pg_stack, digest)), allow_pickle=False)


def npz_images_sha256(path: Path) -> str:
    """The sha256 of the .npy the worker should store for an NPZ's N×H×W uint8 `images`: N×H×W×1, same bytes."""
    with zipfile.ZipFile(path) as archive, archive.open("images.npy") as member:
        np.lib.format.read_magic(member)
        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                      "fortran_order": False, "shape": (*shape, 1)})
        digest = hashlib.sha256(header.getvalue())
        for block in iter(lambda: member.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def mixed_folder(count: int, seed: int = 0) -> dict[str, bytes]:
    """`count` colour images of many sizes (some JPEG, some PNG, some grayscale) in 3 class folders."""
    rng = np.random.default_rng(seed)
    files = {}
    for i in range(count):
        height, width = (int(v) for v in rng.integers(30, 90, 2))
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(pixels) if i % 7 else Image.fromarray(pixels[..., 0])
        fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
        files[f"class{i % 3}/img{i:04d}.{ext}"] = encode(image, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return files


def pillow_reference(data: bytes, resize: int, crop: int) -> np.ndarray:
    """What the declared preprocess means, written with Pillow directly."""
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        width, height = image.size
        short, long = min(width, height), max(width, height)
        size = (resize, resize * long // short) if width <= height else (resize * long // short, resize)
        image = image.resize(size, Image.BILINEAR)
        left, top = round((size[0] - crop) / 2), round((size[1] - crop) / 2)
        return np.asarray(image.crop((left, top, left + crop, top + crop)))


def upload(session, path: Path, name: str, **fields: str):
    with path.open("rb") as handle:
        return session.post("/v1/datasets", files={"file": (path.name, handle)}, data={"name": name, **fields},
                            timeout=600)


def _problem(response, fragment: str) -> str:
    """The detail of a 422 problem+json that says `fragment`."""
    assert response.status_code == 422, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    detail = response.json()["detail"]
    assert fragment in detail, detail
    return detail


def test_mixed_sizes_without_preprocess_say_how_to_declare_one(ivy, tmp_path: Path) -> None:
    """A 422 while the client waits, read from the images' headers, for a zip and a .tar.gz alike."""
    files = mixed_folder(6)
    for path in (write_zip(tmp_path / "mixed.zip", files), write_tar(tmp_path / "mixed.tar.gz", tar_files(files))):
        detail = _problem(upload(ivy, path, "mixed"), "declare a preprocess")
        assert '"center_crop"' in detail and "'class" in detail, detail
    assert not ivy.get("/v1/datasets", params={"name": "mixed"}).json()["items"]  # nothing was stored


def test_preprocess_stores_exactly_pillows_resize_and_crop(pg_stack, ivy, tmp_path: Path) -> None:
    files = mixed_folder(300)
    preprocess = {"resize": 40, "center_crop": 33}
    dataset = ivy.upload_dataset(write_tar(tmp_path / "mixed.tar.gz", tar_files(files)), "mixed-pre",
                                 preprocess=json.dumps(preprocess))
    assert dataset["status"] == "ready", dataset
    assert (dataset["num_samples"], dataset["height"], dataset["width"], dataset["channels"]) == (300, 33, 33, 3)
    assert dataset["preprocess"] == {"resize": 40, "center_crop": [33, 33]}
    assert dataset["classes"] == ["class0", "class1", "class2"]
    images = stored_images(pg_stack, dataset["id"])
    order = sorted(files, key=lambda name: (name.split("/")[0], name))
    expected = np.stack([pillow_reference(files[name], 40, 33) for name in order])
    assert images.shape == expected.shape and images.tobytes() == expected.tobytes()
    # The same bytes with another preprocess are another dataset (a resize alone leaves sizes mixed: a 422).
    _problem(upload(ivy, tmp_path / "mixed.tar.gz", "mixed-pre", preprocess=json.dumps({"resize": 34})),
             "after preprocess all images must have one size")
    other = ivy.upload_dataset(tmp_path / "mixed.tar.gz", "mixed-pre", preprocess=json.dumps({"resize": 34,
                                                                                              "center_crop": 30}))
    assert other["id"] != dataset["id"] and other["status"] == "ready", other
    assert other["preprocess"] == {"resize": 34, "center_crop": [30, 30]}


def test_malformed_preprocess_and_preprocess_on_an_npz_are_422(ivy, tmp_path: Path) -> None:
    folder = write_zip(tmp_path / "f.zip", mixed_folder(3))
    for bad in ('{"resize": 0}', '{"resize": 32, "pad": 2}', '{"center_crop": [3]}', '[1]'):
        response = upload(ivy, folder, "bad", preprocess=bad)
        assert response.status_code == 422 and "preprocess" in response.json()["detail"], (bad, response.text)
    np.savez(tmp_path / "a.npz", images=np.zeros((2, 8, 8), np.uint8), labels=np.arange(2))
    response = upload(ivy, tmp_path / "a.npz", "npz", preprocess='{"resize": 4}')
    assert response.status_code == 422 and "image folders only" in response.json()["detail"], response.text
    small = tmp_path / "small.zip"
    write_zip(small, {"a/x.png": encode(np.zeros((20, 10), np.uint8)), "b/y.png": encode(np.zeros((40, 30), np.uint8))})
    _problem(upload(ivy, small, "crop", preprocess=json.dumps({"center_crop": 24})), "'a/x.png'")


def _swept(session, model_id: str, dataset_id: str) -> dict:
    """A ±2 px sweep of the model over the dataset, succeeded."""
    response = session.post("/v1/evaluations", json={"model_id": model_id, "dataset_id": dataset_id,
                                                     "shifts": {"dx": [-2, 2], "dy": [-2, 2]}})
    assert response.status_code == 202, response.text
    done = session.wait_evaluation(response.json()["id"])
    assert done["status"] == "succeeded", done
    return done


def test_names_and_paths_reach_classes_and_examples(ivy, digits_model_file, tmp_path: Path) -> None:
    images, labels = digits_arrays()
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    files = {f"export/{names[label]}/d{i:04d}.png": encode(image)
             for i, (image, label) in enumerate(zip(images[:200], labels[:200]))}
    dataset = ivy.upload_dataset(write_zip(tmp_path / "named.zip", files), "named")
    assert dataset["status"] == "ready" and dataset["classes"] == sorted(names), dataset
    model = ivy.wait_model(ivy.upload_model(digits_model_file, DIGITS_INPUT, name="named-digits")["id"])
    done = _swept(ivy, model["id"], dataset["id"])
    classes = ivy.get(f"/v1/evaluations/{done['id']}/classes").json()["items"]
    assert [row["name"] for row in classes] == [sorted(names)[row["label"]] for row in classes]
    examples = ivy.get(f"/v1/evaluations/{done['id']}/examples").json()["items"]
    assert examples
    for row in examples:
        assert row["class_name"] == sorted(names)[row["label"]]
        folder, file = row["file"].split("/")
        assert folder == row["class_name"] and files[f"export/{row['file']}"]
    # An NPZ may carry its own names.
    np.savez(tmp_path / "n.npz", images=images[:30], labels=labels[:30], class_names=np.array(names),
             files=np.array([f"img{i}.png" for i in range(30)]))
    npz = ivy.upload_dataset(tmp_path / "n.npz", "named-npz")
    assert npz["status"] == "ready" and npz["classes"] == names, npz
    done = _swept(ivy, model["id"], npz["id"])
    classes = ivy.get(f"/v1/evaluations/{done['id']}/classes").json()["items"]
    assert classes and all(row["name"] == names[row["label"]] for row in classes), classes
    examples = ivy.get(f"/v1/evaluations/{done['id']}/examples").json()["items"]
    assert examples and all(row["file"] == f"img{row['index']}.png" and row["class_name"] == names[row["label"]]
                            for row in examples), examples


def test_a_dataset_deleted_while_processing_stores_nothing(pg_stack, ivy, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "d.npz", images=rng.integers(0, 256, (3000, 64, 64, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, 3000))
    response = upload(ivy, tmp_path / "d.npz", "doomed")
    assert response.status_code == 202, response.text
    dataset_id = response.json()["id"]
    assert ivy.delete(f"/v1/datasets/{dataset_id}").status_code == 204
    assert ivy.get(f"/v1/datasets/{dataset_id}").status_code == 404
    deadline = time.monotonic() + 60
    with pg(pg_stack) as conn:
        while True:
            row = conn.execute("SELECT status, error, images_blob, upload_blob FROM datasets WHERE id = %s",
                               (dataset_id,)).fetchone()
            conn.commit()
            if row[0] != "processing" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    assert row == ("invalid", "deleted before it was ingested", None, None), row


def test_evaluating_a_processing_dataset_is_409(pg_stack, ivy, digits_model_file, tmp_path: Path) -> None:
    model = ivy.wait_model(ivy.upload_model(digits_model_file, DIGITS_INPUT, name="wait-digits")["id"])
    images, labels = digits_arrays()
    # 20,000 PNGs: seconds of decoding on any machine, so the sweep below is sent while it is processed.
    count = 20_000
    files = {f"{labels[i % len(labels)]}/{i:05d}.png": encode(images[i % len(images)]) for i in range(count)}
    response = upload(ivy, write_zip(tmp_path / "pending.zip", files), "pending")
    assert response.status_code == 202 and response.json()["status"] == "processing", response.text
    body = {"model_id": model["id"], "dataset_id": response.json()["id"], "shifts": {"list": [[0, 0]]},
            "max_samples": 50}
    early = ivy.post("/v1/evaluations", json=body)
    assert early.status_code == 409, early.text
    assert "still being processed" in early.json()["detail"] and "GET /v1/datasets/" in early.json()["detail"]
    ready = ivy.wait_dataset(response.json()["id"])
    assert ready["status"] == "ready" and ready["num_samples"] == count, ready
    # The same request once it is ready is taken: the 409 was the processing, nothing else.
    assert ivy.post("/v1/evaluations", json=body).status_code == 202


class _Padded(nn.Module):
    """A digits-sized model carrying `extra` bytes of unused weights: a big file, a small forward."""

    def __init__(self, extra: int) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 10)
        self.register_buffer("ballast", torch.zeros(extra // 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def test_a_large_model_upload_streams_to_chunks(pg_stack, ivy, tmp_path: Path) -> None:
    path = save_torchscript(_Padded(48 << 20), tmp_path / "padded.pt")
    model = ivy.wait_model(ivy.upload_model(path, DIGITS_INPUT, name="padded")["id"], timeout=120)
    assert model["status"] == "ready", model
    with pg(pg_stack) as conn:
        (digest,) = conn.execute("SELECT sha256 FROM models WHERE id = %s", (model["id"],)).fetchone()
        chunks = conn.execute("SELECT count(*) FROM blob_chunks WHERE sha256 = %s", (digest,)).fetchone()[0]
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert chunks == -(-path.stat().st_size // (4 << 20)) and chunks > 10


def test_a_dataset_over_1_gb_is_stored_and_swept(pg_stack, ivy, tmp_path: Path) -> None:
    count, side = 16_500, 256  # 16,500 × 256 × 256 = 1.08 GB of pixels, past PostgreSQL's 1 GB value limit
    path = write_large_npz(tmp_path / "big.npz", count, (side, side))
    assert path.stat().st_size > 1 << 30
    dataset = None
    try:
        dataset = ivy.upload_dataset(path, "big", timeout=600)
        assert dataset["status"] == "ready" and dataset["num_samples"] == count, dataset
        with pg(pg_stack) as conn:
            size, chunks = conn.execute(
                "SELECT size, (SELECT count(*) FROM blob_chunks c WHERE c.sha256 = b.sha256) FROM blobs b "
                "WHERE sha256 = (SELECT images_blob FROM datasets WHERE id = %s)", (dataset["id"],)).fetchone()
        assert size > 1 << 30 and chunks == -(-size // (4 << 20)), (size, chunks)
        # Byte for byte: the stored .npy is the uploaded pixels under an N×H×W×1 header, past the 1 GB mark too.
        with pg(pg_stack) as conn:
            (digest,) = conn.execute("SELECT images_blob FROM datasets WHERE id = %s", (dataset["id"],)).fetchone()
        assert digest == npz_images_sha256(path), "the stored images differ from the uploaded ones"
        model_path = save_torchscript(MeanClassifier(), tmp_path / "mean.pt")
        spec = {"channels": 1, "height": side, "width": side, "mean": [0.0], "std": [1.0]}
        model = ivy.wait_model(ivy.upload_model(model_path, spec, name="mean")["id"])
        response = ivy.post("/v1/evaluations", json={"model_id": model["id"], "dataset_id": dataset["id"],
                                                     "shifts": {"dx": [-1, 1], "dy": [-1, 1]},
                                                     "max_samples": 300, "seed": 1})
        assert response.status_code == 202, response.text
        done = ivy.wait_evaluation(response.json()["id"], timeout=300)
        assert done["status"] == "succeeded", done
        # The mean model always answers class 0 (its logits are mean and −mean of non-negative pixels):
        # every shift's accuracy is the share of label 0 among the samples SPEC §1 picks.
        with np.load(path) as arrays:
            labels = arrays["labels"]
        picked = np.sort(np.random.default_rng(1).permutation(count)[:300])
        expected = float(np.mean(labels[picked] == 0))
        assert done["summary"]["clean_accuracy"] == pytest.approx(expected), (done["summary"], expected)
        rows = ivy.get(f"/v1/evaluations/{done['id']}/shifts").json()["items"]
        assert len(rows) == 9 and all(row["accuracy"] == pytest.approx(expected) for row in rows), rows
    finally:
        path.unlink()
        if dataset is not None:
            ivy.delete(f"/v1/datasets/{dataset['id']}")
