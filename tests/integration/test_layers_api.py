"""SPEC §1 (crop, half steps) and §3 (layer profiles, segmentation) through the real API and worker."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from core.grid import build_grid
from tests.models import DIGITS_INPUT, digits_arrays
from tests.reference import reference_crop, reference_metrics
from worker import architectures
from worker.engine.layers import profile_rows, run_layer_profile
from worker.engine.plan import SweepPlan, sample_indices
from worker.engine.segmentation import run_segmentation_sweep, segmentation_rows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def alice(pg_stack):
    return pg_stack.session("alice-layers")


def lenet(pool: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return architectures.build("lenet", {"pool": pool}, 1).eval()


def test_layer_profile_of_a_registry_model_equals_the_engine(alice, tmp_path):
    net = lenet("blur")
    path = tmp_path / "lenet.safetensors"
    save_file(net.state_dict(), str(path))
    model = alice.wait_model(alice.upload_model(
        path, DIGITS_INPUT, fmt="state_dict", architecture="lenet",
        architecture_options=json.dumps({"pool": "blur"}))["id"])
    assert model["status"] == "ready", model
    request = {"model_id": model["id"], "dataset_id": "digits", "shifts": {"dx": [-2, 2], "dy": [-1, 1]},
               "max_samples": 40, "seed": 2, "layers": True}
    done = alice.wait_evaluation(alice.post("/v1/evaluations", json=request).json()["id"])
    assert done["status"] == "succeeded", done
    assert done["request"]["layers"] is True
    items = alice.get(f"/v1/evaluations/{done['id']}/layers").json()["items"]
    # The profile pages like every list: four layers a page reassemble the whole.
    paged, params = [], {"limit": 4}
    while True:
        page = alice.get(f"/v1/evaluations/{done['id']}/layers", params=params).json()
        paged.append(page["items"])
        if page["next_cursor"] is None:
            break
        params = {"limit": 4, "cursor": page["next_cursor"]}
    assert [len(p) for p in paged] == [4, 4, 1] and [i for p in paged for i in p] == items
    images, _ = digits_arrays()
    grid = build_grid(request["shifts"])
    plan = SweepPlan(grid, "zeros", 0.0, (0.5,), (0.5,), (8, 8))
    want = profile_rows(run_layer_profile(net, images, sample_indices(1797, 40, 2), plan), grid.shifts)
    assert [i["name"] for i in items] == [w["name"] for w in want] == [
        "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "resize", "relu3", "output"]
    for got, ref in zip(items, want):
        assert (got["kind"], got["factor"], got["shape"]) == (ref["kind"], ref["factor"], ref["shape"])
        for g, r in zip(got["shifts"], ref["shifts"]):
            assert (g["dx"], g["dy"]) == (r["dx"], r["dy"])
            for key in ("equivariance_error", "invariance_error"):
                assert (g[key] is None) == (r[key] is None), (got["name"], key)
                if r[key] is not None:
                    assert g[key] == pytest.approx(r[key], rel=1e-5, abs=1e-9)
    conv1 = items[0]
    assert conv1["mean_invariance_error"] is not None


def test_layers_are_refused_where_they_cannot_be_reached(alice, tmp_path, digits_model_file):
    model = alice.wait_model(alice.upload_model(digits_model_file, DIGITS_INPUT, name="ts")["id"])
    response = alice.post("/v1/evaluations", json={
        "model_id": model["id"], "dataset_id": "digits", "shifts": {"list": [[1, 0]]}, "layers": True})
    assert response.status_code == 422
    assert "'torchscript' model does not expose" in response.json()["detail"]
    done = alice.wait_evaluation(alice.post("/v1/evaluations", json={
        "model_id": model["id"], "dataset_id": "digits", "shifts": {"list": [[1, 0]]}, "max_samples": 5}).json()["id"])
    missing = alice.get(f"/v1/evaluations/{done['id']}/layers")
    assert missing.status_code == 404 and "\"layers\": true" in missing.json()["detail"]
    assert alice.post("/v1/evaluations", json={
        "model_id": model["id"], "dataset_id": "digits", "shifts": {"list": [[1, 0]]}, "layers": []}).status_code == 400


def test_unknown_layer_fails_the_evaluation_with_the_layer_names(alice, tmp_path):
    path = tmp_path / "lenet-max.safetensors"
    save_file(lenet("max").state_dict(), str(path))
    model = alice.wait_model(alice.upload_model(path, DIGITS_INPUT, fmt="state_dict", architecture="lenet")["id"])
    done = alice.wait_evaluation(alice.post("/v1/evaluations", json={
        "model_id": model["id"], "dataset_id": "digits", "shifts": {"list": [[1, 0]]}, "max_samples": 5,
        "layers": ["conv1", "conv7"]}).json()["id"])
    assert done["status"] == "failed"
    assert "no layer named 'conv7'" in done["error"]["detail"] and "pool1" in done["error"]["detail"]


def test_crop_and_half_steps_through_the_api_equal_the_reference(alice, tmp_path, digits_model_file):
    images, labels = digits_arrays()
    rng = np.random.default_rng(0)
    big = rng.integers(0, 40, size=(120, 12, 12), dtype=np.uint8)  # faint real content around the digit
    big[:, 2:10, 2:10] = images[:120]
    path = tmp_path / "framed.npz"
    np.savez(path, images=big, labels=labels[:120])
    dataset = alice.upload_dataset(path, "framed-digits")
    model = alice.wait_model(alice.upload_model(digits_model_file, DIGITS_INPUT, name="crop")["id"])
    request = {"model_id": model["id"], "dataset_id": dataset["id"], "padding": "crop",
               "shifts": {"dx": [-2, 2], "dy": [-1.5, 1.5], "step": 0.5}}
    done = alice.wait_evaluation(alice.post("/v1/evaluations", json=request).json()["id"])
    assert done["status"] == "succeeded", done
    net = torch.jit.load(str(digits_model_file)).eval()
    grid = build_grid(request["shifts"])
    floats = big.astype(np.float32)[:, None] / np.float32(255)

    def predict(views: list[np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy((np.stack(views) - np.float32(0.5)) / np.float32(0.5))).argmax(1).numpy()

    P = np.stack([predict([reference_crop(f, dx, dy, 8, 8) for f in floats]) for dx, dy in grid.shifts], axis=1)
    clean = predict([reference_crop(f, 0, 0, 8, 8) for f in floats])
    ref = reference_metrics(P, clean, labels[:120], list(grid.shifts), grid.step)
    for key in ("clean_accuracy", "mean_accuracy", "worst_case_accuracy", "consistency", "flip_rate"):
        assert done["summary"][key] == pytest.approx(ref[key], abs=1e-12), key
    rows = alice.get(f"/v1/evaluations/{done['id']}/shifts").json()["items"]
    assert [r["accuracy"] for r in rows] == pytest.approx(ref["accuracy"], abs=1e-12)
    assert done["summary"]["num_shifts"] == 9 * 7
    too_far = alice.post("/v1/evaluations", json={**request, "shifts": {"dx": [-3, 0], "dy": [0, 0]}})
    assert too_far.status_code == 422 and "outside" in too_far.json()["detail"]


class TinySegNet(torch.nn.Module):
    """conv → max pool → conv → ×2 upsampling: per-pixel logits for 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.relu1 = torch.nn.ReLU()
        self.pool = torch.nn.MaxPool2d(2)
        self.conv2 = torch.nn.Conv2d(8, 3, 3, padding=1)
        self.up = torch.nn.Upsample(scale_factor=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.conv2(self.pool(self.relu1(self.conv1(x)))))


def test_segmentation_sweep_with_a_layer_profile(alice, tmp_path):
    images, _ = digits_arrays()
    images = images[:60]
    masks = (images // 86).astype(np.int64)  # three classes that follow the strokes
    data = tmp_path / "seg.npz"
    np.savez(data, images=images, masks=masks)
    dataset = alice.upload_dataset(data, "digit-strokes")
    net = TinySegNet().eval()
    program = torch.export.export(net, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "seg.pt2"
    torch.export.save(program, str(path))
    model = alice.wait_model(alice.upload_model(path, DIGITS_INPUT, fmt="exported", task="segmentation")["id"])
    assert model["status"] == "ready", model
    wrong = alice.post("/v1/evaluations", json={"model_id": model["id"], "dataset_id": "digits",
                                                "shifts": {"list": [[1, 0]]}})
    assert wrong.status_code == 422 and "segmentation model" in wrong.json()["detail"]
    request = {"model_id": model["id"], "dataset_id": dataset["id"], "padding": "circular",
               "shifts": {"dx": [-2, 2], "dy": [0, 1]}, "layers": ["conv1", "pool"]}
    done = alice.wait_evaluation(alice.post("/v1/evaluations", json=request).json()["id"])
    assert done["status"] == "succeeded", done
    grid = build_grid(request["shifts"])
    plan = SweepPlan(grid, "circular", 0.0, (0.5,), (0.5,), (8, 8))
    want = segmentation_rows(run_segmentation_sweep(net, images, masks, np.arange(60), plan), grid.shifts)
    rows = alice.get(f"/v1/evaluations/{done['id']}/shifts").json()["items"]
    assert len(rows) == len(want) == 10
    for got, ref in zip(rows, want):
        assert got["miou"] == pytest.approx(ref["miou"], abs=1e-12)
        assert got["accuracy"] == pytest.approx(ref["accuracy"], abs=1e-12)
        assert got["pixel_agreement"] == pytest.approx(ref["pixel_agreement"], abs=1e-12)
        assert got["equivariance_error"] == pytest.approx(ref["equivariance_error"], rel=1e-5)
    unshifted = next(r for r in rows if (r["dx"], r["dy"]) == (0, 0))
    assert unshifted["equivariance_error"] == 0.0 and unshifted["pixel_agreement"] == 1.0
    assert min(r["equivariance_error"] for r in rows if r is not unshifted) > 0.01
    summary = done["summary"]
    assert summary["task"] == "segmentation" and summary["num_samples"] == 60 and summary["num_shifts"] == 10
    assert 0 <= summary["clean_miou"] <= 1
    csv_text = alice.get(f"/v1/evaluations/{done['id']}/shifts?format=csv").text
    assert csv_text.splitlines()[0].startswith("dx,dy,accuracy,agreement,correct,n,pixel_agreement")
    report = alice.get(f"/v1/evaluations/{done['id']}/report.html")  # a segmentation report: heatmap, no classes
    assert report.status_code == 200 and report.text.count("data:image/png;base64,") == 1 and model["id"] in report.text
    layers = alice.get(f"/v1/evaluations/{done['id']}/layers").json()["items"]
    assert [layer["name"] for layer in layers] == ["conv1", "pool", "output"]
    assert [layer["factor"] for layer in layers] == [1, 2, 1]
