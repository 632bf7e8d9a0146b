"""Loading every model format, refusing hostile files, and validating models against their input."""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tests.model_corpus import (
    ONNX_MODEL_CASES, ZIP_CASES, ModelCase, copy_zip, exported_program, onnx_plain, run_with_torch, tiny_torchscript,
    write_onnx,
)
from worker import architectures, model_archives
from worker.model_loading import (
    FORMATS, MAX_MESSAGE_CHARS, ModelLoadError, OnnxModel, bound_text, count_parameters, load_model, validate_model,
)

# 16x16: LeNet's second pooling leaves 4x4, which the legacy ONNX exporter needs (a factor of its 4x4 grid).
SPEC = {"channels": 1, "height": 16, "width": 16, "mean": [0.5], "std": [0.25]}
ARCH_OPTIONS = {"num_classes": 10}


# ---------- model files, written once per module ----------

def make_lenet() -> torch.nn.Module:
    """The reference model every format is written from."""
    torch.manual_seed(0)
    return architectures.build("lenet", ARCH_OPTIONS, 1).eval()


def write_models(model: torch.nn.Module, folder: Path) -> dict[str, Path]:
    """Write `model` in every format (and both state-dict encodings); return name -> path."""
    example = torch.rand(2, 1, 16, 16)
    paths = {name: folder / name for name in ("script", "trace", "pt2", "safetensors", "torch_save", "onnx")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(model).save(str(paths["script"]))
        torch.jit.trace(model, example).save(str(paths["trace"]))
        # The legacy exporter: the default (dynamo) one needs onnxscript, which is not a dependency.
        torch.onnx.export(
            model, (example,), str(paths["onnx"]), dynamo=False, input_names=["images"],
            output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        )
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, paths["pt2"])
    save_file(model.state_dict(), str(paths["safetensors"]))
    torch.save(model.state_dict(), paths["torch_save"])
    return paths


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    return make_lenet()


@pytest.fixture(scope="module")
def files(reference: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_models(reference, tmp_path_factory.mktemp("models"))


FILE_FORMAT = {
    "script": "torchscript",
    "trace": "torchscript",
    "pt2": "exported",
    "safetensors": "state_dict",
    "torch_save": "state_dict",
    "onnx": "onnx",
}


def load(fmt: str, path: Path, spec: dict | None = None, architecture: str | None = "lenet") -> Callable:
    """load_model with the test defaults."""
    return load_model(fmt, path, architecture=architecture, options=ARCH_OPTIONS, input_spec=spec or SPEC)


# ---------- round trips ----------

@pytest.mark.parametrize("name", list(FILE_FORMAT))
def test_every_format_round_trips_to_the_same_logits(
    name: str, files: dict[str, Path], reference: torch.nn.Module
) -> None:
    model = load(FILE_FORMAT[name], files[name])
    info = validate_model(model, SPEC)
    assert info == {"num_outputs": 10, "output_shape": [10]}
    images = torch.rand(5, 1, 16, 16)
    with torch.inference_mode():
        expected = reference(images)
        torch.testing.assert_close(model(images), expected, rtol=1e-4, atol=1e-5)
    assert count_parameters(model) == sum(p.numel() for p in reference.parameters())
    assert model.eval() is model
    assert not getattr(model, "training", False)


def test_state_dict_format_is_detected_by_content_not_extension(files: dict[str, Path], tmp_path: Path) -> None:
    # Swapped extensions on purpose: the loader must sniff the bytes.
    misnamed = tmp_path / "weights.pt"
    misnamed.write_bytes(files["safetensors"].read_bytes())
    other = tmp_path / "weights.safetensors"
    other.write_bytes(files["torch_save"].read_bytes())
    for path in (misnamed, other):
        validate_model(load("state_dict", path), SPEC)


def test_state_dict_loads_a_legacy_torch_save(reference: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(reference.state_dict(), path, _use_new_zipfile_serialization=False)
    validate_model(load("state_dict", path), SPEC)


def test_loading_does_not_move_the_global_seed(files: dict[str, Path]) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    validate_model(load("state_dict", files["safetensors"]), SPEC)
    torch.testing.assert_close(torch.rand(3), expected)


def test_onnx_session_uses_torch_thread_count(files: dict[str, Path]) -> None:
    model = load("onnx", files["onnx"])
    assert isinstance(model, OnnxModel)
    assert model.session.get_session_options().intra_op_num_threads == torch.get_num_threads()
    assert model.session.get_providers() == ["CPUExecutionProvider"]


def test_torchscript_loads_without_deprecation_warnings(files: dict[str, Path]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load("torchscript", files["script"])


# ---------- hostile files ----------

class Payload:
    """Unpickling this creates the file `marker`: stands in for arbitrary code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


class Saver(torch.nn.Module):
    """A TorchScript-able model that writes a file when run."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.target = str(marker)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch.ops.aten.save(x, self.target)
        return x.flatten(1)


def rewrite_zip(
    source: Path, target: Path, replace: dict[str, bytes | None], add: dict[str, bytes] | None = None
) -> None:
    """Copy a zip, replacing (or, with None, dropping) members by their path below the root folder."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as new:
        root = old.namelist()[0].split("/", 1)[0]
        for info in old.infolist():
            relative = info.filename.split("/", 1)[1]
            data = replace.get(relative, old.read(info.filename))
            if data is not None:
                new.writestr(info.filename, data)
        for relative, data in (add or {}).items():
            new.writestr(f"{root}/{relative}", data)


def torch_saved(obj: object) -> bytes:
    """Return the bytes of torch.save(obj)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def edit_program(source: Path, target: Path, edit: Callable[[dict], None], **extra: bytes) -> None:
    """Copy a .pt2 archive with its models/model.json edited in place."""
    with zipfile.ZipFile(source) as archive:
        name = next(n for n in archive.namelist() if n.endswith("models/model.json"))
        program = json.loads(archive.read(name))
    edit(program)
    rewrite_zip(source, target, {"models/model.json": json.dumps(program).encode(), **extra})


def first_node(program: dict) -> dict:
    return program["graph_module"]["graph"]["nodes"][0]


def hostile_files(files: dict[str, Path], folder: Path, marker: Path) -> list[tuple[str, str, Path]]:
    """Write hostile model files; return (case, format, path) triples."""
    payload = Payload(marker)
    cases: list[tuple[str, str, Path]] = []

    def add(case: str, fmt: str) -> Path:
        path = folder / case
        cases.append((case, fmt, path))
        return path

    bare = pickle.dumps({"conv1.weight": payload})
    for fmt in FORMATS:
        add(f"bare-pickle-as-{fmt}", fmt).write_bytes(bare)
    add("torch-zip-state-dict", "state_dict").write_bytes(torch_saved({"conv1.weight": payload}))
    add("torch-zip-as-torchscript", "torchscript").write_bytes(torch_saved({"conv1.weight": payload}))
    rewrite_zip(files["script"], add("torchscript-data-pkl", "torchscript"), {"data.pkl": pickle.dumps(payload, 2)})
    rewrite_zip(files["script"], add("torchscript-constants-pkl", "torchscript"),
                {"constants.pkl": pickle.dumps(payload, 4)})

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Saver(marker)).save(str(add("torchscript-code-writes-file", "torchscript")))

    # .pt2: every place torch.export.load would run or unpickle something.
    weight_config = json.dumps({"config": {"conv1.weight": {"path_name": "weight_0", "is_param": True,
                                                            "use_pickle": True, "tensor_meta": None}}})
    rewrite_zip(files["pt2"], add("pt2-pickled-weight", "exported"),
                {"data/weights/weight_0": torch_saved(payload),
                 "data/weights/model_weights_config.json": weight_config.encode()})
    rewrite_zip(files["pt2"], add("pt2-sample-inputs", "exported"),
                {"data/sample_inputs/model.pt": torch_saved(payload)})
    constant_config = json.dumps({"config": {"c": {"path_name": "opaque_obj_0", "is_param": False,
                                                   "use_pickle": True, "tensor_meta": None}}})
    rewrite_zip(files["pt2"], add("pt2-opaque-constant", "exported"),
                {"data/constants/model_constants_config.json": constant_config.encode()},
                {"data/constants/opaque_obj_0": pickle.dumps(payload)})
    code = f"__import__('builtins').open({str(marker)!r}, 'w')"

    def inject_expression(program: dict) -> None:
        values = program["graph_module"]["graph"]["tensor_values"].values()
        next(v for v in values if "as_expr" in v["sizes"][0])["sizes"][0]["as_expr"]["expr_str"] = code

    def inject_guard(program: dict) -> None:
        program["guards_code"] = [code]

    def inject_target(program: dict) -> None:
        node = first_node(program)
        node["target"] = "torch.ops.aten.save.default"
        node["inputs"] = [{"name": "item", "arg": node["inputs"][0]["arg"], "kind": 1},
                          {"name": "filename", "arg": {"as_string": str(marker)}, "kind": 1}]

    edit_program(files["pt2"], add("pt2-sympy-expression", "exported"), inject_expression)
    edit_program(files["pt2"], add("pt2-guard-code", "exported"), inject_guard)
    edit_program(files["pt2"], add("pt2-node-target", "exported"), inject_target)
    rewrite_zip(files["pt2"], add("pt2-aotinductor-library", "exported"), {},
                {"data/aotinductor/model/model.so": b"\x7fELF"})
    rewrite_zip(files["pt2"], add("pt2-legacy-layout", "exported"), {},
                {"serialized_state_dict.pt": torch_saved(payload)})
    return cases


@pytest.fixture(scope="module")
def hostile(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[list, Path]:
    folder = tmp_path_factory.mktemp("hostile")
    marker = folder / "PWNED"
    return hostile_files(files, folder, marker), marker


HOSTILE_CASES = [
    *(f"bare-pickle-as-{fmt}" for fmt in FORMATS),
    "torch-zip-state-dict", "torch-zip-as-torchscript", "torchscript-data-pkl", "torchscript-constants-pkl",
    "torchscript-code-writes-file", "pt2-pickled-weight", "pt2-sample-inputs", "pt2-opaque-constant",
    "pt2-sympy-expression", "pt2-guard-code", "pt2-node-target", "pt2-aotinductor-library", "pt2-legacy-layout",
]


@pytest.mark.parametrize("case", HOSTILE_CASES)
def test_hostile_files_are_refused_and_run_nothing(case: str, hostile: tuple[list, Path]) -> None:
    cases, marker = hostile
    _, fmt, path = next(c for c in cases if c[0] == case)
    with pytest.raises(ModelLoadError) as caught:
        model = load(fmt, path)
        validate_model(model, SPEC)  # the code-writes-file cases would only fire when run
    assert not marker.exists(), f"{case} created the marker file"
    assert str(caught.value)


def test_hostile_case_list_is_complete(hostile: tuple[list, Path]) -> None:
    assert sorted(c[0] for c in hostile[0]) == sorted(HOSTILE_CASES)


def test_hostile_messages_are_useful(hostile: tuple[list, Path]) -> None:
    cases = {case: (fmt, path) for case, fmt, path in hostile[0]}

    def message(case: str) -> str:
        with pytest.raises(ModelLoadError) as caught:
            load(*cases[case])
        return str(caught.value)

    assert "never unpickles" in message("torch-zip-state-dict")
    assert "io.open" in message("torchscript-data-pkl")
    assert "save()" in message("torchscript-code-writes-file")
    assert "pickled" in message("pt2-pickled-weight")
    assert "'torch.ops.aten.save.default'" in message("pt2-node-target")
    assert "AOTInductor" in message("pt2-aotinductor-library")


def test_onnx_external_data_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    import onnx
    from onnx import external_data_helper

    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 4096)
    model = onnx.load(str(files["onnx"]))
    tensor = model.graph.initializer[0]
    external_data_helper.set_external_data(tensor, location=str(secret), offset=0, length=tensor.ByteSize())
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    path = tmp_path / "external.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match="external data"):
        load("onnx", path)


# ---------- archive tricks, disguised file ops, ONNX external data (issue 10) ----------

@pytest.mark.parametrize("case", ZIP_CASES + ONNX_MODEL_CASES, ids=repr)
def test_tricked_files_are_refused_with_a_clear_message(case: ModelCase, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    path = case.build(tmp_path, marker)
    with pytest.raises(ModelLoadError) as caught:
        validate_model(load(case.format, path), SPEC)  # a payload in forward() would only fire when run
    assert case.message in str(caught.value)
    assert not marker.exists(), f"{case} created the marker file"


@pytest.mark.parametrize("case", [c for c in ZIP_CASES if c.live], ids=repr)
def test_tricked_files_would_run_their_payload_in_torch(case: ModelCase, tmp_path: Path) -> None:
    # The refusal above is all that stands between these files and the worker: torch alone runs them.
    marker = tmp_path / "PWNED"
    path = case.build(tmp_path, marker)
    with contextlib.suppress(Exception):  # the .pt2 payload runs while torch parses the program, then it fails
        run_with_torch(case, path)
    assert marker.exists()


def test_the_corpus_base_models_load(tmp_path: Path) -> None:
    assert validate_model(load("torchscript", tiny_torchscript(tmp_path / "tiny.pt")), SPEC)["num_outputs"] == 10
    assert validate_model(load("exported", exported_program(tmp_path / "tiny.pt2")), SPEC)["num_outputs"] == 10
    assert validate_model(load("onnx", write_onnx(onnx_plain(), tmp_path / "m.onnx")), SPEC)["num_outputs"] == 10


def test_archives_written_by_zipfile_without_tricks_load(tmp_path: Path) -> None:
    plain = copy_zip(tiny_torchscript(tmp_path / "tiny.pt"), tmp_path / "copy.pt", lambda name, data: [(name, data)])
    assert validate_model(load("torchscript", plain), SPEC)["num_outputs"] == 10


@pytest.mark.parametrize("code", [
    "_0 = torch.save(x, 'f')",
    "_0 = (torch.save  # why not\n  (x, 'f'))",
    "_0 = (torch.save\\\n(x, 'f'))",
    "_0 = torch.SAVE(x, 'f')",
    "_0 = torch.\uff53ave(x, 'f')",  # a fullwidth s, which NFKC folds to s
    "_0 = torch.from_file('f')",
    "_0 = ops.debugprims.load_tensor('f', [1], [1], dtype=6, device='cpu')",
])
def test_file_ops_are_found_however_written(code: str) -> None:
    with pytest.raises(model_archives.ArchiveError, match="reads or writes files"):
        model_archives._check_torchscript_code(code.encode(), "archive/code/__torch__.py")


def test_code_without_file_ops_passes() -> None:
    model_archives._check_torchscript_code(b"_0 = torch.flatten(x, 1)  # saved_by, save_path, unsave", "code.py")


def test_every_torchscript_op_that_takes_a_file_name_is_refused() -> None:
    # A new op with a file argument in a later torch must land on the list, not slip past it.
    names = {schema.name.split("::")[1] for schema in torch._C._jit_get_all_schemas()
             if any(argument.name in {"filename", "file", "path"} and str(argument.type) == "str"
                    for argument in schema.arguments)}
    assert names and all(model_archives._TORCHSCRIPT_FILE_OPS.fullmatch(name) for name in names), names


# ---------- error text from model code ----------

class Shouts(torch.nn.Module):
    """Raises a long message full of control characters, as a model exfiltrating data through errors would."""

    def __init__(self) -> None:
        super().__init__()
        self.text = "\u202esecret\x1b[31m\x07\x7f" + "A" * 100_000

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError(self.text)


def test_model_error_text_is_bounded_and_plain(tmp_path: Path) -> None:
    path = tmp_path / "shouts.pt"
    torch.jit.script(Shouts()).save(str(path))
    with pytest.raises(ModelLoadError) as caught:
        validate_model(load("torchscript", path), SPEC)
    message = str(caught.value)
    assert "secret" in message and message.endswith("A…") and len(message) <= MAX_MESSAGE_CHARS
    assert all(char.isprintable() for char in message) and "\u202e" not in message


def test_bound_text_keeps_short_text_and_cuts_long_text() -> None:
    assert bound_text("a\tb\n\n c\x07") == "a b c"
    assert bound_text("x" * 1000, 10) == "x" * 9 + "…"


def test_wrong_declared_size_names_the_shape_mismatch(tmp_path: Path) -> None:
    from examples.train_digits_cnn import DigitsCNN

    path = tmp_path / "digits.pt"
    torch.jit.script(DigitsCNN().eval()).save(str(path))
    spec = {"channels": 1, "height": 28, "width": 28, "mean": [0.5], "std": [0.5]}
    with pytest.raises(ModelLoadError) as caught:
        validate_model(load("torchscript", path, spec), spec)
    message = str(caught.value)
    assert "TorchScript interpreter" not in message
    assert "shapes cannot be multiplied" in message and "check the declared input height and width" in message


# ---------- damaged files ----------

@pytest.mark.parametrize("name", list(FILE_FORMAT))
@pytest.mark.parametrize("damage", ["truncated", "random", "empty"])
def test_damaged_files_raise_model_load_error(name: str, damage: str, files: dict[str, Path], tmp_path: Path) -> None:
    data = files[name].read_bytes()
    damaged = {
        "truncated": data[: len(data) // 2],
        "random": np.random.default_rng(len(data)).bytes(len(data)),
        "empty": b"",
    }[damage]
    path = tmp_path / "damaged"
    path.write_bytes(damaged)
    with pytest.raises(ModelLoadError):
        validate_model(load(FILE_FORMAT[name], path), SPEC)


@pytest.mark.parametrize("name", list(FILE_FORMAT))
def test_corrupted_middles_load_or_raise_model_load_error(name: str, files: dict[str, Path], tmp_path: Path) -> None:
    """Overwritten bytes inside an intact container may still load; they must never raise anything else."""
    data = bytearray(files[name].read_bytes())
    rng = np.random.default_rng(7)
    for attempt in range(8):
        corrupted = bytearray(data)
        start = int(rng.integers(0, len(data) - 64))
        corrupted[start : start + 64] = rng.bytes(64)
        path = tmp_path / f"corrupted-{attempt}"
        path.write_bytes(bytes(corrupted))
        try:
            validate_model(load(FILE_FORMAT[name], path), SPEC)
        except ModelLoadError:
            pass


def test_truncated_prefixes_of_every_format_never_escape_as_other_errors(
    files: dict[str, Path], tmp_path: Path
) -> None:
    for name, fmt in FILE_FORMAT.items():
        data = files[name].read_bytes()
        for fraction in (0.01, 0.3, 0.9, 0.999):
            path = tmp_path / f"{name}-{fraction}"
            path.write_bytes(data[: int(len(data) * fraction)])
            with pytest.raises(ModelLoadError):
                validate_model(load(fmt, path), SPEC)


# ---------- mismatches and bad outputs ----------

def test_wrong_channel_count_says_what_the_model_takes(files: dict[str, Path]) -> None:
    rgb = {**SPEC, "channels": 3, "mean": 0.5, "std": 0.25}
    for name in ("script", "trace", "pt2", "onnx"):
        with pytest.raises(ModelLoadError) as caught:
            validate_model(load(FILE_FORMAT[name], files[name], rgb), rgb)
        assert "the model's first layer takes 1 channels; input declares 3" in str(caught.value), name
    with pytest.raises(ModelLoadError, match="the model's first layer takes 1 channels; input declares 3"):
        load("state_dict", files["safetensors"], rgb)


def test_state_dict_mismatches_are_explained(reference: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    save_file(reference.state_dict(), str(path))
    with pytest.raises(ModelLoadError, match="num_classes to 10"):
        load_model("state_dict", path, architecture="lenet", options={"num_classes": 4}, input_spec=SPEC)
    with pytest.raises(ModelLoadError, match="does not match architecture 'vgg_small'.*missing"):
        load_model("state_dict", path, architecture="vgg_small", options={}, input_spec=SPEC)
    with pytest.raises(ModelLoadError, match="unknown architecture 'lenet5'"):
        load_model("state_dict", path, architecture="lenet5", options={}, input_spec=SPEC)
    with pytest.raises(ModelLoadError, match="unknown option 'depth'"):
        load_model("state_dict", path, architecture="lenet", options={"depth": 2}, input_spec=SPEC)
    with pytest.raises(ModelLoadError, match="needs an architecture"):
        load_model("state_dict", path, architecture=None, options={}, input_spec=SPEC)
    with pytest.raises(ModelLoadError, match="at least 8x8"):
        load_model("state_dict", path, architecture="lenet", options={}, input_spec={**SPEC, "height": 4})


def test_state_dict_width_mismatch_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "vgg.safetensors"
    save_file(architectures.build("vgg_small", {"width": 4}, 1).state_dict(), str(path))
    with pytest.raises(ModelLoadError, match="check 'width'"):
        load_model("state_dict", path, architecture="vgg_small", options={"width": 8}, input_spec=SPEC)
    model = load_model("state_dict", path, architecture="vgg_small", options={"width": 4}, input_spec=SPEC)
    assert validate_model(model, SPEC)["num_outputs"] == 10


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"state_dict": {"w": torch.zeros(1)}}, "nested under 'state_dict'"),
        ([torch.zeros(1)], "not a mapping"),
        ({"w": 1.5}, "'w' is not a tensor"),
    ],
)
def test_state_dict_must_be_a_flat_mapping(content: object, message: str, tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(content, path)
    with pytest.raises(ModelLoadError, match=message):
        load("state_dict", path)


class Broken(torch.nn.Module):
    """Returns whatever `make` builds from the batch."""

    def __init__(self, make: Callable[[torch.Tensor], object]) -> None:
        super().__init__()
        self.make = make

    def forward(self, x: torch.Tensor) -> object:
        return self.make(x)


@pytest.mark.parametrize(
    ("make", "task", "message"),
    [
        (lambda x: torch.full((x.shape[0], 10), float("nan")), "classification", "not finite"),
        (lambda x: torch.full((x.shape[0], 3), float("inf")), "classification", "not finite"),
        (lambda x: x.flatten(1)[:, :1], "classification", "at least 2 classes"),
        (lambda x: x, "classification", "N×K logits"),
        (lambda x: (x.flatten(1), x), "classification", "returns a tuple"),
        (lambda x: x.flatten(1).long(), "classification", "floating-point"),
        (lambda x: x.flatten(1)[:1], "classification", "1 rows for a batch of 2"),
        (lambda x: torch.nn.functional.dropout(x.flatten(1), 0.5), "classification", "different outputs"),
        (lambda x: x.flatten(1), "segmentation", "N×K×H×W"),
        (lambda x: torch.zeros(x.shape[0], 3, 3, 3), "segmentation", "same whole factor"),
        (lambda x: torch.zeros(x.shape[0], 3, 8, 4), "segmentation", "same whole factor"),
        (lambda x: x.flatten(1) @ torch.zeros(5, 3), "classification", "fails on a batch of 1x16x16"),
    ],
)
def test_bad_outputs_are_explained(make: Callable, task: str, message: str) -> None:
    with pytest.raises(ModelLoadError, match=message):
        validate_model(Broken(make), SPEC, task)


def test_segmentation_outputs_are_accepted() -> None:
    model = Broken(lambda x: torch.zeros(x.shape[0], 5, 4, 4))
    assert validate_model(model, SPEC, "segmentation") == {"num_outputs": 5, "output_shape": [5, 4, 4]}


def test_fixed_batch_exports_are_explained(reference: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(reference, (torch.zeros(1, 1, 16, 16),)), path)
    with pytest.raises(ModelLoadError, match="only takes batches of 1; export it with a dynamic batch"):
        validate_model(load("exported", path), SPEC)


def test_training_mode_exports_are_refused(tmp_path: Path) -> None:
    model = architectures.build("vgg_small", {"width": 2}, 1).train()
    path = tmp_path / "train.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(2, 1, 16, 16),)), path)
    with pytest.raises(ModelLoadError, match="exported in training mode"):
        load("exported", path)


def test_exported_models_with_batch_norm_in_eval_mode_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = architectures.build("resnet18_cifar", {"width": 2, "antialias": True}, 1).eval()
    path = tmp_path / "resnet.pt2"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.export.save(torch.export.export(model, (torch.zeros(2, 1, 16, 16),), dynamic_shapes=({0: batch},)), path)
    loaded = load("exported", path)
    assert validate_model(loaded, SPEC)["num_outputs"] == 10
    images = torch.rand(3, 1, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(loaded(images), model(images), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({**SPEC, "channels": 0}, "channels must be a positive integer"),
        ({**SPEC, "std": [0.0]}, "std must not be zero"),
        ({**SPEC, "mean": [0.1, 0.2]}, "one number or 1 numbers"),
    ],
)
def test_bad_input_specs_are_explained(spec: dict, message: str, files: dict[str, Path]) -> None:
    model = load("torchscript", files["script"])
    with pytest.raises(ModelLoadError, match=message):
        validate_model(model, spec)


def test_unknown_format_and_missing_file(tmp_path: Path, files: dict[str, Path]) -> None:
    with pytest.raises(ModelLoadError, match="unknown model format 'keras'"):
        load("keras", files["script"])
    with pytest.raises(ModelLoadError, match="missing"):
        load("torchscript", tmp_path / "nope")


def test_count_parameters_of_unknown_callables_is_none() -> None:
    assert count_parameters(lambda x: x) is None


def test_exported_programs_with_dynamic_sizes_and_guards_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = architectures.build("lenet", {"pool": "blur"}, 1).eval()
    side = {"min": 8, "max": 64}
    shapes = ({0: torch.export.Dim("b", min=1, max=64), 2: torch.export.Dim("h", **side),
               3: torch.export.Dim("w", **side)},)
    program = torch.export.export(model, (torch.zeros(2, 1, 16, 16),), dynamic_shapes=shapes)
    assert program._guards_code, "the export should carry guard code for this test to mean something"
    path = tmp_path / "dynamic.pt2"
    torch.export.save(program, path)
    loaded = load("exported", path)
    for size in (8, 16, 28):
        spec = {**SPEC, "height": size, "width": size}
        assert validate_model(loaded, spec)["num_outputs"] == 10


@pytest.mark.parametrize(
    "text",
    [
        "Symbol('s77', positive=True, integer=True)",
        "Mul(Integer(4), Add(FloorDiv(Add(Symbol('s16', positive=True, integer=True), Integer(-1)), Integer(2)), "
        "Integer(3)))",
        "min((-1) + L['input'].size()[2], (-1) + L['input'].size()[3]) > 1",
        "16*L['x'].size()[0]*((-1) + (L['x'].size()[2] // 2)) >= 2",
        "math.floor(torch.sym_float(L['x'].size()[1]) / 2) == 3",
    ],
)
def test_plain_shape_expressions_pass(text: str) -> None:
    model_archives.check_expression(text, "guard")


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "().__class__.__base__",
        "L['x'].__class__",
        "math.floor.__globals__",
        "open('x', 'w')",
        "Symbol(\"s1\")",
        "lambda: 1",
        "10**10**10",
        "1)\n  open('x', 'w'",
        "S('x')",
        "Integer(1) if x else 2",
        "eval('1')",
    ],
)
def test_code_in_shape_expressions_is_refused(text: str) -> None:
    with pytest.raises(model_archives.ArchiveError):
        model_archives.check_expression(text, "guard")
