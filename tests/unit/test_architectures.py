"""The built-in architecture registry: catalog validation and the torch modules it describes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from core import architecture_catalog as catalog
from worker import architectures

# Small widths keep the ResNet and VGG fast; every other option is the default or varied below.
SMALL = {"resnet18_cifar": {"width": 8}, "vgg_small": {"width": 8}}
VARIANTS = [
    ("lenet", {}),
    ("lenet", {"pool": "avg"}),
    ("lenet", {"pool": "blur", "blur_size": 5}),
    ("resnet18_cifar", {"width": 8}),
    ("resnet18_cifar", {"width": 8, "antialias": True, "blur_size": 4}),
    ("vgg_small", {"width": 8}),
    ("vgg_small", {"width": 8, "pool": "blur", "blur_size": 2}),
    ("circular_invariant", {}),
    ("circular_invariant", {"width": 4, "depth": 1}),
]
SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


def test_catalog_module_does_not_import_torch() -> None:
    """The API process imports the catalog; it must stay torch-free."""
    code = "import sys, core.architecture_catalog as c; c.describe(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_describe_is_json_ready_and_lists_every_architecture() -> None:
    described = json.loads(json.dumps(catalog.describe()))
    assert [a["name"] for a in described] == ["lenet", "resnet18_cifar", "vgg_small", "circular_invariant"]
    for arch in described:
        assert arch["description"] and arch["min_input_size"] >= 1
        names = [o["name"] for o in arch["options"]]
        assert "num_classes" in names
        for option in arch["options"]:
            assert {"name", "type", "default", "description"} <= set(option)
    lenet_pool = next(o for o in described[0]["options"] if o["name"] == "pool")
    assert lenet_pool["allowed"] == ["max", "avg", "blur"] and lenet_pool["default"] == "max"


def test_validate_options_fills_defaults() -> None:
    assert catalog.validate_options("lenet", {}) == {"num_classes": 10, "pool": "max", "blur_size": 3}
    assert catalog.validate_options("resnet18_cifar", {"antialias": True, "width": 8}) == {
        "num_classes": 10,
        "antialias": True,
        "blur_size": 3,
        "width": 8,
    }
    assert catalog.validate_options("circular_invariant", None)["depth"] == 3


@pytest.mark.parametrize(
    ("name", "options", "fragments"),
    [
        ("alexnet", {}, ["unknown architecture 'alexnet'", "lenet", "resnet18_cifar", "circular_invariant"]),
        ("lenet", {"widht": 8}, ["unknown option 'widht'", "num_classes, pool, blur_size"]),
        ("lenet", {"pool": "median"}, ["'pool'", "'max', 'avg', 'blur'", "'median'"]),
        ("lenet", {"num_classes": "10"}, ["'num_classes'", "must be an integer"]),
        ("lenet", {"num_classes": True}, ["must be an integer"]),
        ("lenet", {"num_classes": 1}, ["at least 2"]),
        ("lenet", {"blur_size": 6}, ["at most 5"]),
        ("resnet18_cifar", {"antialias": "yes"}, ["'antialias'", "true or false"]),
        ("resnet18_cifar", {"antialias": 1}, ["true or false"]),
        ("lenet", [1, 2], ["must be a JSON object"]),
    ],
)
def test_validate_options_errors_say_what_is_expected(name: str, options: object, fragments: list[str]) -> None:
    with pytest.raises(catalog.ArchitectureError) as caught:
        catalog.validate_options(name, options)  # type: ignore[arg-type]
    assert isinstance(caught.value, ValueError)
    for fragment in fragments:
        assert fragment in str(caught.value)


@pytest.mark.parametrize(("name", "options"), VARIANTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_every_architecture_builds_and_runs(name: str, options: dict, shape: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    model = architectures.build(name, catalog.validate_options(name, {**options, "num_classes": 7}), shape[0])
    model.eval()
    with torch.inference_mode():
        logits = model(torch.rand(2, *shape))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list(catalog.ARCHITECTURES))
def test_construction_is_deterministic_given_the_seed(name: str) -> None:
    options = SMALL.get(name, {})
    torch.manual_seed(3)
    first = architectures.build(name, options, 1).state_dict()
    torch.manual_seed(3)
    second = architectures.build(name, options, 1).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)


@pytest.mark.parametrize("name", list(catalog.ARCHITECTURES))
def test_children_are_named_in_forward_order(name: str) -> None:
    model = architectures.build(name, SMALL.get(name, {}), 1)
    assert isinstance(model, torch.nn.Sequential)
    names = [child for child, _ in model.named_children()]
    assert names[-1] in {"fc", "fc2"} and "flatten" in names
    assert not any(child.isdigit() for child in names)


def test_circular_invariant_is_exactly_invariant_to_circular_shifts() -> None:
    torch.manual_seed(0)
    model = architectures.build("circular_invariant", {"width": 8, "depth": 3}, 3).eval()
    images = torch.rand(4, 3, 16, 16)
    with torch.inference_mode():
        reference = model(images)
        for dy, dx in [(1, 0), (0, 1), (3, -5), (15, 15), (-8, 7)]:
            shifted = model(torch.roll(images, shifts=(dy, dx), dims=(2, 3)))
            torch.testing.assert_close(shifted, reference, rtol=1e-5, atol=1e-5)


def test_lenet_is_not_invariant_but_its_blur_pool_is_a_low_pass() -> None:
    """Sanity of the premise: max-pooled LeNet changes under a one-pixel shift; BlurPool averages."""
    torch.manual_seed(0)
    model = architectures.build("lenet", {}, 1).eval()
    images = torch.rand(4, 1, 16, 16)
    with torch.inference_mode():
        assert not torch.allclose(model(images), model(torch.roll(images, 1, dims=3)))
    blur = architectures.BlurPool2d(3, stride=2)
    constant = torch.full((1, 2, 6, 6), 0.5)
    torch.testing.assert_close(blur(constant), torch.full((1, 2, 3, 3), 0.5))
    assert blur.kernel.sum().item() == pytest.approx(1.0)
    assert "kernel" not in blur.state_dict()


def test_antialias_adds_blur_only_where_it_subsamples() -> None:
    plain = architectures.build("resnet18_cifar", {"width": 8}, 3)
    smooth = architectures.build("resnet18_cifar", {"width": 8, "antialias": True}, 3)
    blurs = [name for name, module in smooth.named_modules() if isinstance(module, architectures.BlurPool2d)]
    assert not any(isinstance(m, architectures.BlurPool2d) for m in plain.modules())
    # Three strided stages, each blurring its main path and its shortcut.
    assert len(blurs) == 6 and all(name.startswith(("layer2.0", "layer3.0", "layer4.0")) for name in blurs)
    # The blur has no weights: a plain checkpoint fits the anti-aliased net key for key.
    smooth.load_state_dict(plain.state_dict(), strict=True)


def test_build_rejects_bad_input_channels() -> None:
    with pytest.raises(catalog.ArchitectureError, match="in_channels"):
        architectures.build("lenet", {}, 0)
