"""Hostile and malformed uploads against the real service: clear 4xx or `invalid`, never 5xx, no trace.

Runs on the shared `pg_stack` (API under gunicorn, a Celery worker process, PostgreSQL, Redis);
the upload-limit checks run a second API process with a small SHIFTSCORE_MAX_UPLOAD_BYTES on the
same database.
"""

from __future__ import annotations

import io
import json
import pickle
import socket
import threading
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import psycopg
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from examples.train_digits_cnn import DigitsCNN
from core.grid import build_grid
from tests.dataset_corpus import CASES, Case, encode, tar_files, write_tar, write_zip
from tests.model_corpus import ONNX_MODEL_CASES, ZIP_CASES
from tests.models import DIGITS_INPUT, digits_arrays, save_torchscript
from tests.reference import reference_metrics, reference_shift
from tests.stack import Stack, free_port
from worker import architectures

pytestmark = pytest.mark.integration

UPLOAD_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def alice(pg_stack):
    return pg_stack.session("hostile-alice")


@pytest.fixture(scope="module")
def digits_model(alice, digits_model_file) -> dict:
    ready = alice.wait_model(alice.upload_model(digits_model_file, DIGITS_INPUT, name="digits")["id"])
    assert ready["status"] == "ready", ready
    return ready


def post_file(session, route: str, path: Path, **fields: str):
    with path.open("rb") as handle:
        return session.post(route, files={"file": (path.name, handle)}, data=fields)


# The corpus's outcomes that the API finds while the client waits (api/services/datasets.py).
SIZE_PROBLEMS = ("all images must have one size",)


def post_dataset(session, path: Path, name: str) -> dict:
    """Upload a dataset (202, or 201/200 for bytes stored before) and wait until a worker has ingested it."""
    response = post_file(session, "/v1/datasets", path, name=name)
    assert response.status_code in (200, 201, 202), response.text
    return session.wait_dataset(response.json()["id"])


def assert_problem(response, status: int, fragment: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and {"type", "title", "detail"} <= set(problem)
    assert fragment in problem["detail"], problem
    return problem


def evaluate(session, model_id: str, dataset_id: str, **request) -> dict:
    body = {"model_id": model_id, "dataset_id": dataset_id, "shifts": {"dx": [-1, 1], "dy": [-1, 1]}, **request}
    response = session.post("/v1/evaluations", json=body)
    assert response.status_code == 202, response.text
    return session.wait_evaluation(response.json()["id"])


# ---------- datasets ----------

@pytest.mark.parametrize("case", CASES, ids=repr)
def test_dataset_corpus(alice, case: Case, tmp_path: Path) -> None:
    path = case.build(tmp_path)
    if case.outcome in SIZE_PROBLEMS:  # told at once, from the images' headers
        assert_problem(post_file(alice, "/v1/datasets", path, name=case.id), 422, case.outcome)
        return
    body = post_dataset(alice, path, case.id)
    if case.outcome == "ok":
        assert body["status"] == "ready", body
        assert body["num_samples"] > 0 and body["channels"] in (1, 3) and len(body["sha256"]) == 64
        assert alice.get(f"/v1/datasets/{body['id']}").json()["name"] == case.id
    else:
        # Ingested on a worker: the upload is accepted, then the dataset is invalid with the reason.
        assert body["status"] == "invalid" and body["num_samples"] is None, body
        assert case.outcome in body["error"] and f"'{path.name}'" in body["error"], body


def digits_folder(tmp_path: Path, count: int) -> tuple[dict[str, bytes], np.ndarray, np.ndarray]:
    """The first `count` digits as class folders 0–9, and the arrays in the folder's sample order."""
    images, labels = digits_arrays()
    images, labels = images[:count], labels[:count]
    files = {f"{label}/{i:04d}.png": encode(image) for i, (image, label) in enumerate(zip(images, labels))}
    order = sorted(range(count), key=lambda i: (str(labels[i]), f"{i:04d}"))
    return files, images[order], labels[order]


def test_image_folders_evaluate_exactly_like_the_same_npz(alice, digits_model, tmp_path: Path) -> None:
    files, images, labels = digits_folder(tmp_path, 120)
    np.savez(tmp_path / "same.npz", images=images, labels=labels)
    uploads = {
        "npz": tmp_path / "same.npz",
        "zip": write_zip(tmp_path / "digits.zip", files),
        "tar.gz": write_tar(tmp_path / "digits.tar.gz", tar_files(dict(reversed(list(files.items()))))),
    }
    results = {}
    for kind, path in uploads.items():
        dataset = post_dataset(alice, path, f"digits-{kind}")
        assert (dataset["num_samples"], dataset["channels"], dataset["height"], dataset["width"],
                dataset["num_classes"]) == (120, 1, 8, 8, 10)
        done = evaluate(alice, digits_model["id"], dataset["id"])
        assert done["status"] == "succeeded", done
        rows = alice.get(f"/v1/evaluations/{done['id']}/shifts").json()["items"]
        classes = alice.get(f"/v1/evaluations/{done['id']}/classes").json()["items"]
        # Folders name their classes (the folder names), an NPZ without class_names does not.
        names = [row.pop("name") for row in classes]
        assert names == ([None] * 10 if kind == "npz" else [str(row["label"]) for row in classes]), names
        results[kind] = (done["summary"], [(r["dx"], r["dy"], r["correct"], r["agreement"]) for r in rows], classes)
    assert results["zip"] == results["npz"] == results["tar.gz"]
    assert results["npz"][0]["clean_accuracy"] > 0.9  # folder names became the right labels


def test_the_same_file_twice_reuses_the_stored_arrays(pg_stack, alice, tmp_path: Path) -> None:
    files, _, _ = digits_folder(tmp_path, 40)
    path = write_zip(tmp_path / "again.zip", files)
    first = post_dataset(alice, path, "first")
    second = post_dataset(alice, path, "second")
    other = post_dataset(pg_stack.session("hostile-bob"), path, "bob's")
    assert len({first["id"], second["id"], other["id"]}) == 3
    assert first["sha256"] == second["sha256"] == other["sha256"]
    assert second["name"] == "second" and second["num_samples"] == first["num_samples"] == 40
    url = pg_stack.env["SHIFTSCORE_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url) as conn:
        blobs = conn.execute("SELECT DISTINCT images_blob, targets_blob FROM datasets WHERE id = ANY(%s)",
                             ([first["id"], second["id"], other["id"]],)).fetchall()
    assert len(blobs) == 1


def test_model_and_dataset_that_do_not_fit_are_422_at_submission(alice, digits_model, tmp_path: Path) -> None:
    rgb = {f"{c}/{i}.png": encode(np.full((8, 8, 3), 30 * i, np.uint8)) for c in "ab" for i in range(2)}
    dataset = post_dataset(alice, write_zip(tmp_path / "rgb.zip", rgb), "rgb")
    body = {"model_id": digits_model["id"], "dataset_id": dataset["id"], "shifts": {"list": [[1, 0]]}}
    assert_problem(alice.post("/v1/evaluations", json=body), 422, "3 channel(s) but the model declares 1")
    big = {f"{c}/{i}.png": encode(np.full((16, 16), 30 * i, np.uint8)) for c in "ab" for i in range(2)}
    dataset = post_dataset(alice, write_tar(tmp_path / "big.tar.gz", tar_files(big)), "big")
    assert_problem(alice.post("/v1/evaluations", json={**body, "dataset_id": dataset["id"]}), 422, "16")
    many = {f"c{k:02d}/0.png": encode(np.full((8, 8), k, np.uint8)) for k in range(12)}
    dataset = post_dataset(alice, write_zip(tmp_path / "many.zip", many), "12 classes")
    assert dataset["num_classes"] == 12
    assert_problem(alice.post("/v1/evaluations", json={**body, "dataset_id": dataset["id"]}), 422,
                   "labels up to 11 but the model returns only 10 logits")


def test_tokens_and_tenants(pg_stack, alice, tmp_path: Path) -> None:
    files, _, _ = digits_folder(tmp_path, 20)
    path = write_zip(tmp_path / "mine.zip", files)
    dataset = post_dataset(alice, path, "mine")
    anonymous = pg_stack.session("hostile-nobody")
    anonymous.headers.pop("Authorization")
    assert_problem(post_file(anonymous, "/v1/datasets", path, name="x"), 401, "Authorization: Bearer")
    anonymous.headers["Authorization"] = "Bearer not-a-token"
    assert_problem(post_file(anonymous, "/v1/datasets", path, name="x"), 401, "not valid")
    assert_problem(anonymous.get(f"/v1/datasets/{dataset['id']}"), 401, "not valid")
    mallory = pg_stack.session("hostile-mallory")
    assert_problem(mallory.get(f"/v1/datasets/{dataset['id']}"), 404, "no dataset")
    assert_problem(mallory.delete(f"/v1/datasets/{dataset['id']}"), 404, "no dataset")
    assert dataset["id"] not in {d["id"] for d in mallory.get("/v1/datasets").json()["items"]}
    own = mallory.wait_model(mallory.upload_model(save_torchscript(DigitsCNN().eval(), tmp_path / "m.pt"),
                                                  DIGITS_INPUT)["id"])
    response = mallory.post("/v1/evaluations", json={"model_id": own["id"], "dataset_id": dataset["id"],
                                                     "shifts": {"list": [[1, 0]]}})
    assert_problem(response, 404, "no dataset")
    assert alice.get(f"/v1/datasets/{dataset['id']}").status_code == 200


# ---------- upload size limit ----------

@pytest.fixture(scope="module")
def small_api(pg_stack, tmp_path_factory):
    """A second API process on the same database, with a 64 KiB upload limit."""
    stack = Stack(env={**pg_stack.env, "SHIFTSCORE_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT)}, port=free_port(),
                  log_dir=tmp_path_factory.mktemp("small-api"))
    stack.start_api()
    try:
        yield stack, pg_stack.token("hostile-alice")
    finally:
        stack.stop()


def raw_request(port: int, head: str, body_parts, *, read_timeout: float = 20) -> tuple[str, int]:
    """Send a request head and then body parts from a thread; return the response and bytes sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=read_timeout)
    sock.sendall(head.encode())
    sent = [0]

    def send() -> None:
        try:
            for part in body_parts:
                sock.sendall(part)
                sent[0] += len(part)
        except OSError:
            pass  # the server answered and closed: what an over-limit upload should get

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received = b""
    try:
        while not _complete(received):
            data = sock.recv(65536)
            if not data:
                break
            received += data
    except OSError:
        pass
    finally:
        sock.close()
        sender.join(timeout=10)
    return received.decode("latin-1"), sent[0]


def _complete(response: bytes) -> bool:
    """Whether `response` holds the whole head and the Content-Length bytes of body."""
    head, found, body = response.partition(b"\r\n\r\n")
    if not found:
        return False
    lengths = [line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    return bool(lengths) and len(body) >= int(lengths[0])


def multipart_head(boundary: str) -> str:
    """The form fields and the file part's head of a dataset upload, its bytes still to come."""
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nbig\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"big.npz\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n")


def test_upload_over_the_limit_with_content_length_is_413(small_api, tmp_path: Path) -> None:
    from tests.stack import ApiSession

    stack, token = small_api
    session = ApiSession(stack.url, token)
    path = tmp_path / "big.npz"
    np.savez(path, images=np.random.default_rng(0).integers(0, 255, (4, 128, 128), dtype=np.uint8),
             labels=np.arange(4))
    assert path.stat().st_size > UPLOAD_LIMIT
    assert_problem(post_file(session, "/v1/datasets", path, name="big"), 413, "SHIFTSCORE_MAX_UPLOAD_BYTES")
    model = tmp_path / "big.pt"
    model.write_bytes(bytes(UPLOAD_LIMIT + 1))
    with model.open("rb") as handle:
        response = session.post("/v1/models", files={"file": handle},
                                data={"name": "m", "format": "torchscript", "input": json.dumps(DIGITS_INPUT)})
    assert_problem(response, 413, f"limit of {UPLOAD_LIMIT} bytes")
    small = tmp_path / "small.npz"
    np.savez(small, images=np.zeros((4, 8, 8), np.uint8), labels=np.arange(4))
    assert post_file(session, "/v1/datasets", small, name="small").status_code in (201, 202)


def test_a_declared_10_gb_upload_is_refused_before_its_body_arrives(small_api) -> None:
    stack, token = small_api
    boundary = "b0undary"
    head = (f"POST /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {10 * 1024**3}\r\n\r\n")
    started = time.monotonic()
    response, _ = raw_request(stack.port, head, [multipart_head(boundary).encode()])
    assert response.startswith("HTTP/1.1 413"), response[:300]
    assert "application/problem+json" in response and "SHIFTSCORE_MAX_UPLOAD_BYTES" in response
    assert time.monotonic() - started < 3


def test_a_chunked_upload_is_cut_off_at_the_limit(small_api) -> None:
    stack, token = small_api
    boundary = "b0undary"
    head = (f"POST /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nTransfer-Encoding: chunked\r\n\r\n")
    first = multipart_head(boundary).encode()
    chunk = bytes(16 * 1024)
    endless_bytes = 256 * 1024**2  # far more than the server may read: it must stop at the limit

    def parts():
        yield f"{len(first):x}\r\n".encode() + first + b"\r\n"
        for _ in range(endless_bytes // len(chunk)):
            yield f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"

    response, sent = raw_request(stack.port, head, parts())
    assert response.startswith("HTTP/1.1 413"), response[:300]
    assert "SHIFTSCORE_MAX_UPLOAD_BYTES" in response
    assert sent < endless_bytes / 4, f"the server read {sent} bytes before answering"
    assert stack.api.poll() is None


def test_a_small_chunked_upload_is_accepted(small_api, tmp_path: Path) -> None:
    stack, token = small_api
    buffer = io.BytesIO()
    np.savez(buffer, images=np.zeros((4, 8, 8), np.uint8), labels=np.arange(4))
    boundary = "b0undary"
    body = (multipart_head(boundary).encode() + buffer.getvalue() + f"\r\n--{boundary}--\r\n".encode())
    head = (f"POST /v1/datasets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nTransfer-Encoding: chunked\r\n"
            "Connection: close\r\n\r\n")
    chunks = [f"{len(body[i:i + 1000]):x}\r\n".encode() + body[i:i + 1000] + b"\r\n" for i in range(0, len(body), 1000)]
    response, _ = raw_request(stack.port, head, [*chunks, b"0\r\n\r\n"])
    # 202 processing; 201 when an earlier test's same bytes are ready already (then they are reused)
    assert response.startswith(("HTTP/1.1 201", "HTTP/1.1 202")), response[:500]


# ---------- models: hostile files and bad outputs ----------

class Payload:
    """Unpickling this creates the file `marker`: it stands for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


LENET_SPEC = {"channels": 1, "height": 16, "width": 16, "mean": [0.5], "std": [0.5]}


def lenet() -> nn.Module:
    torch.manual_seed(0)
    return architectures.build("lenet", {"num_classes": 10, "pool": "max", "blur_size": 3}, 1).eval()


def write_formats(model: nn.Module, folder: Path) -> dict[str, Path]:
    """One model in every upload format."""
    example = torch.rand(2, 1, 16, 16)
    paths = {"torchscript": folder / "m.pt", "exported": folder / "m.pt2", "state_dict": folder / "m.safetensors",
             "onnx": folder / "m.onnx"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.script(model).save(str(paths["torchscript"]))
        torch.onnx.export(model, (example,), str(paths["onnx"]), dynamo=False, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), paths["exported"])
    save_file(model.state_dict(), str(paths["state_dict"]))
    return paths


def rewrite_zip(source: Path, target: Path, replace: dict[str, bytes], add: dict[str, bytes] | None = None) -> Path:
    """Copy a torch archive with members (named below its root folder) replaced or added."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as new:
        root = old.namelist()[0].split("/", 1)[0]
        for info in old.infolist():
            new.writestr(info.filename, replace.get(info.filename.split("/", 1)[1], old.read(info.filename)))
        for relative, data in (add or {}).items():
            new.writestr(f"{root}/{relative}", data)
    return target


def torch_saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def hostile_models(formats: dict[str, Path], folder: Path, marker: Path) -> list[tuple[str, str, Path]]:
    """(case, format, file) for every hostile or broken model file."""
    payload = Payload(marker)
    cases: list[tuple[str, str, Path]] = []

    def add(case: str, fmt: str, data: bytes | None = None) -> Path:
        path = folder / case
        if data is not None:
            path.write_bytes(data)
        cases.append((case, fmt, path))
        return path

    for fmt in formats:
        add(f"bare-pickle-as-{fmt}", fmt, pickle.dumps({"conv1.weight": payload}))
        add(f"random-bytes-as-{fmt}", fmt, np.random.default_rng(1).bytes(20_000))
        add(f"truncated-{fmt}", fmt, formats[fmt].read_bytes()[: formats[fmt].stat().st_size // 2])
        add(f"empty-{fmt}", fmt, b"")
    add("torch-zip-with-pickle-as-state-dict", "state_dict", torch_saved({"conv1.weight": payload}))
    add("torch-zip-with-pickle-as-torchscript", "torchscript", torch_saved({"conv1.weight": payload}))
    rewrite_zip(formats["torchscript"], add("torchscript-data-pkl-pickle", "torchscript"),
                {"data.pkl": pickle.dumps(payload, 2)})
    config = json.dumps({"config": {"conv1.weight": {"path_name": "weight_0", "is_param": True, "use_pickle": True,
                                                     "tensor_meta": None}}})
    rewrite_zip(formats["exported"], add("pt2-pickled-weight", "exported"),
                {"data/weights/weight_0": torch_saved(payload),
                 "data/weights/model_weights_config.json": config.encode()})
    rewrite_zip(formats["exported"], add("pt2-pickled-sample-inputs", "exported"),
                {"data/sample_inputs/model.pt": torch_saved(payload)})
    rewrite_zip(formats["exported"], add("pt2-legacy-state-dict-pickle", "exported"), {},
                {"serialized_state_dict.pt": torch_saved(payload)})
    return cases


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    return write_formats(lenet(), tmp_path_factory.mktemp("formats"))


def upload(session, path: Path, fmt: str, spec: dict) -> dict:
    fields = {"architecture": "lenet", "architecture_options": json.dumps({"num_classes": 10})} \
        if fmt == "state_dict" else {}
    return session.upload_model(path, spec, fmt=fmt, name=path.name, **fields)


def test_hostile_model_files_are_invalid_and_run_nothing(alice, model_files, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    cases = hostile_models(model_files, tmp_path, marker)
    uploaded = [(case, fmt, upload(alice, path, fmt, LENET_SPEC)) for case, fmt, path in cases]
    table = []
    for case, fmt, model in uploaded:
        done = alice.wait_model(model["id"])
        table.append((case, fmt, done["status"], done["error"]))
        assert done["status"] == "invalid", (case, done)
        assert done["error"] and len(done["error"]) > 20, (case, done)
    assert not marker.exists(), "a hostile model file ran code in the worker"
    messages = {case: error for case, _, _, error in table}
    for case in ("bare-pickle-as-state_dict", "torch-zip-with-pickle-as-state-dict"):
        assert "never unpickles" in messages[case], messages[case]
    for case in ("torchscript-data-pkl-pickle", "pt2-pickled-sample-inputs"):
        assert "io.open" in messages[case], messages[case]
    assert "pickled" in messages["pt2-pickled-weight"]


@pytest.mark.parametrize("spec, fragment", [
    ({"channels": 64, "height": 4096, "width": 4096},
     "1,073,741,824 values per image; ShiftScore takes at most 3,145,728"),
    ({"channels": 65, "height": 8, "width": 8}, "channels is 65; ShiftScore takes at most 64"),
    ({"channels": 1, "height": 4097, "width": 8}, "height is 4097; ShiftScore takes at most 4096"),
    ({"channels": 1, "height": 8, "width": 5000}, "width is 5000; ShiftScore takes at most 4096"),
], ids=["values", "channels", "height", "width"])
def test_declared_inputs_beyond_the_limits_are_422(alice, digits_model_file, spec: dict, fragment: str) -> None:
    with digits_model_file.open("rb") as handle:
        response = alice.post("/v1/models", files={"file": handle},
                              data={"name": "huge", "format": "torchscript", "input": json.dumps(spec)})
    assert_problem(response, 422, fragment)


def test_a_declared_input_at_the_limit_is_accepted(alice, digits_model_file) -> None:
    model = alice.upload_model(digits_model_file, {"channels": 3, "height": 1024, "width": 1024})
    assert model["input"]["channels"] * model["input"]["height"] * model["input"]["width"] == 3 * 1024 * 1024
    done = alice.wait_model(model["id"])  # the file is an 8×8 grayscale model: invalid, but at a 4xx-free edge
    assert done["status"] == "invalid" and "1 channels; input declares 3" in done["error"], done


def test_tricked_model_files_are_invalid_and_run_nothing(alice, digits_model, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    uploaded = []
    for case in ZIP_CASES + ONNX_MODEL_CASES:
        folder = tmp_path / case.id
        folder.mkdir()
        uploaded.append((case, upload(alice, case.build(folder, marker), case.format, LENET_SPEC)))
    for case, model in uploaded:
        done = alice.wait_model(model["id"])
        assert done["status"] == "invalid" and case.message in done["error"], (case, done)
    assert not marker.exists(), "a tricked model file ran code in the worker"
    after = evaluate(alice, digits_model["id"], "digits", max_samples=50)
    assert after["status"] == "succeeded", after


def test_model_error_text_reaches_the_user_bounded_with_its_cause(alice, tmp_path: Path) -> None:
    wrong_size = alice.wait_model(alice.upload_model(save_torchscript(DigitsCNN().eval(), tmp_path / "d.pt"),
                                                     {**DIGITS_INPUT, "height": 28, "width": 28})["id"])
    assert wrong_size["status"] == "invalid", wrong_size
    assert "shapes cannot be multiplied" in wrong_size["error"], wrong_size
    assert "check the declared input height and width (28x28)" in wrong_size["error"], wrong_size
    shouts = alice.wait_model(alice.upload_model(save_torchscript(Shouts(), tmp_path / "s.pt"), DIGITS_INPUT)["id"])
    assert shouts["status"] == "invalid" and "secret" in shouts["error"], shouts
    assert len(shouts["error"]) <= 500 and shouts["error"].isprintable(), shouts


class Shouts(nn.Module):
    """Raises a long message with control characters, as a model leaking data through its errors would."""

    def __init__(self) -> None:
        super().__init__()
        self.text = "\x1b[31msecret\x07" + "A" * 100_000

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(self.text)


def test_every_format_gives_identical_results(alice, model_files, tmp_path: Path) -> None:
    model = lenet()
    images, labels = digits_arrays()
    images = np.kron(images[:400], np.ones((1, 2, 2), np.uint8))  # 16×16, as the ONNX export needs
    labels = labels[:400]
    request = {"shifts": {"dx": [-1, 1], "dy": [-1, 1], "step": 1}, "padding": "zeros", "fill": 0.0}
    grid = list(build_grid(request["shifts"]).shifts)
    floats = images.astype(np.float32)[:, None] / np.float32(255)

    def logits(batch: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return model(torch.from_numpy((batch - np.float32(0.5)) / np.float32(0.5)))

    views = [floats] + [np.stack([reference_shift(im, int(dx), int(dy), "zeros", 0.0) for im in floats]) for dx, dy in grid]
    margins = torch.stack([logits(v).topk(2, dim=1).values.diff(dim=1).abs()[:, 0] for v in views]).amin(0)
    # Formats round floats differently: keep images whose top two logits are far apart in every view.
    keep = (margins > 1e-4).numpy()
    assert keep.sum() > 200
    images, labels, views = images[keep], labels[keep], [v[keep] for v in views]
    np.savez(tmp_path / "digits16.npz", images=images, labels=labels)
    dataset = post_dataset(alice, tmp_path / "digits16.npz", "digits16")
    clean = logits(views[0]).argmax(1).numpy()
    predictions = np.stack([logits(v).argmax(1).numpy() for v in views[1:]], axis=1)
    expected = reference_metrics(predictions, clean, labels, grid, 1.0)
    results = {}
    for fmt, path in model_files.items():
        ready = alice.wait_model(upload(alice, path, fmt, LENET_SPEC)["id"])
        assert ready["status"] == "ready", (fmt, ready)
        done = evaluate(alice, ready["id"], dataset["id"], **request)
        assert done["status"] == "succeeded", (fmt, done)
        rows = alice.get(f"/v1/evaluations/{done['id']}/shifts").json()["items"]
        results[fmt] = (done["summary"], rows)
        for key in ("clean_accuracy", "mean_accuracy", "worst_case_accuracy", "consistency", "flip_rate"):
            assert done["summary"][key] == pytest.approx(expected[key], abs=1e-12), (fmt, key)
    first = results["torchscript"]
    assert all(result == first for result in results.values()), results


class NanOnBrightPixels(nn.Module):
    """Finite on the validation batches (blank, random in [0, 1)), NaN where a pixel is pure white."""

    def __init__(self) -> None:
        super().__init__()
        self.net = DigitsCNN()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        white = (x >= 1.0).flatten(1).any(dim=1, keepdim=True)
        return torch.where(white, torch.full_like(out, float("nan")), out)


class NanEverywhere(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10] * float("nan")


class TwoRowsOnly(nn.Module):
    """Right for a batch of two (what validation sends), wrong for a real batch."""

    def __init__(self) -> None:
        super().__init__()
        self.net = DigitsCNN()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:2]


def test_bad_outputs_fail_with_a_message(alice, tmp_path: Path) -> None:
    always = alice.wait_model(alice.upload_model(save_torchscript(NanEverywhere(), tmp_path / "nan.pt"),
                                                 DIGITS_INPUT)["id"])
    assert always["status"] == "invalid" and "not finite" in always["error"], always

    sometimes = alice.wait_model(alice.upload_model(save_torchscript(NanOnBrightPixels().eval(),
                                                                     tmp_path / "bright.pt"), DIGITS_INPUT)["id"])
    assert sometimes["status"] == "ready", sometimes
    done = evaluate(alice, sometimes["id"], "digits", max_samples=50)
    assert done["status"] == "failed", done
    assert done["error"]["type"] == "sweep_error" and "not finite" in done["error"]["detail"], done

    rows = alice.wait_model(alice.upload_model(save_torchscript(TwoRowsOnly().eval(), tmp_path / "two.pt"),
                                               DIGITS_INPUT)["id"])
    # Validation now runs a batch of 32 rows (the runtime check), so a model that always answers
    # with 2 rows is refused there, before any sweep, and says what it returned.
    assert rows["status"] == "invalid", rows
    assert "returned 2 rows of logits for a batch of 32 images" in rows["error"], rows["error"]
