"""Load uploaded models in every supported format, and check that they run on the declared input."""

# Weights are never unpickled as arbitrary objects: archives are inspected by
# worker.model_archives before torch reads them, checkpoints go through
# safetensors or torch's weights-only unpickler, and every failure surfaces as
# a ModelLoadError whose message is meant for the user.

from __future__ import annotations

import contextlib
import math
import os
import re
import types
import unicodedata
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from core import architecture_catalog
from core.sweep import per_channel
from worker import architectures, model_archives

FORMATS = ("torchscript", "exported", "state_dict", "onnx")
TASKS = ("classification", "segmentation")

Model = Callable[[torch.Tensor], torch.Tensor]


# Messages end up in API responses and the dashboard; model code chooses the
# text of its own exceptions, so what it can put there is kept short and plain.
MAX_MESSAGE_CHARS = 500


class ModelLoadError(Exception):
    """A model that cannot be loaded or does not fit its declared input; the message is for the user."""

    def __init__(self, message: str) -> None:
        super().__init__(bound_text(message))


def bound_text(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """Return `text` as one plain line for a user: no control or format characters, at most `limit` characters."""
    # Cut first so a gigabyte of text costs no more than a page.
    plain = "".join(" " if unicodedata.category(char)[0] == "C" else char for char in text[: limit * 8])
    plain = " ".join(plain.split())
    return plain if len(plain) <= limit else plain[: limit - 1].rstrip() + "…"


def load_model(
    fmt: str,
    path: Path,
    *,
    architecture: str | None,
    options: dict[str, Any],
    input_spec: dict[str, Any],
) -> Model:
    """Load the model file at `path` in format `fmt`, on the CPU and in eval mode."""
    loaders: dict[str, Callable[[Path, str | None, dict[str, Any], dict[str, Any]], Model]] = {
        "torchscript": _load_torchscript,
        "exported": _load_exported,
        "state_dict": _load_state_dict,
        "onnx": _load_onnx,
    }
    if fmt not in loaders:
        raise ModelLoadError(f"unknown model format {fmt!r}; supported formats are: {', '.join(FORMATS)}")
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError("the model file is missing")
    try:
        return loaders[fmt](path, architecture, options, input_spec)
    except ModelLoadError:
        raise
    except (model_archives.ArchiveError, architecture_catalog.ArchitectureError) as exc:
        raise ModelLoadError(str(exc)) from exc
    except Exception as exc:
        # Hostile or damaged files make torch raise anything from RuntimeError
        # to AssertionError; the user gets one kind of error with its first line.
        raise ModelLoadError(f"could not load the file as format '{fmt}': {excerpt(exc)}") from exc


# TorchScript's interpreter starts its errors with a generic line and ends them,
# after a traceback, with the cause: "RuntimeError: mat1 and mat2 shapes ...".
_CAUSE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception): (?P<cause>\S.*)$")


def excerpt(exc: BaseException, limit: int = 300) -> str:
    """Return the line of an exception message that says what went wrong, bounded for a user message."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    causes = [match.group("cause") for match in map(_CAUSE.match, lines) if match]
    line = causes[-1] if causes else lines[0] if lines else type(exc).__name__
    # C++ errors go on with advice and stack traces after the first sentence.
    return bound_text(line.split(". ", 1)[0], limit)


def _load_torchscript(path: Path, architecture: str | None, options: dict[str, Any], spec: dict[str, Any]) -> Model:
    """Load a TorchScript archive written by torch.jit.save."""
    model_archives.check_torchscript(path)
    with warnings.catch_warnings():
        # Deprecated in torch 2.13 but still supported; users still upload these.
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        model = torch.jit.load(str(path), map_location="cpu")
    return model.eval()


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Force every torch.load inside the block to the weights-only unpickler."""
    # torch.export.load falls back to weights_only=False on its own; this
    # environment switch (read by torch.load on every call) overrides it.
    saved = {key: os.environ.get(key) for key in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _load_exported(path: Path, architecture: str | None, options: dict[str, Any], spec: dict[str, Any]) -> Model:
    """Load a torch.export program (.pt2) written by torch.export.save."""
    model_archives.check_exported(path)
    with _weights_only_loads(), path.open("rb") as file:
        program = torch.export.load(file)
    module = program.module()
    _refuse_training_mode(module)
    # torch makes eval() raise on exported modules; the graph was just shown to
    # be in eval mode already, so callers may call eval() on any loaded model.
    module.eval = types.MethodType(lambda self: self, module)  # type: ignore[method-assign]
    for submodule in module.modules():
        submodule.training = False
    return module


def _refuse_training_mode(module: torch.fx.GraphModule) -> None:
    """Refuse an exported graph with dropout or batch norm in training mode (exported graphs cannot eval())."""
    for node in module.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None:
            continue
        for index, argument in enumerate(schema.arguments):
            if argument.name not in {"train", "training"}:
                continue
            value = node.args[index] if index < len(node.args) else node.kwargs.get(argument.name)
            if value is True:
                raise ModelLoadError(
                    f"the program was exported in training mode ({schema.name} with {argument.name}=True); "
                    "call model.eval() before torch.export.export"
                )


def _load_state_dict(path: Path, architecture: str | None, options: dict[str, Any], spec: dict[str, Any]) -> Model:
    """Build a registry architecture and load a safetensors or torch.save state dict into it."""
    if not architecture:
        known = ", ".join(architecture_catalog.ARCHITECTURES)
        raise ModelLoadError(f"format 'state_dict' needs an architecture from the built-in registry ({known})")
    options = architecture_catalog.validate_options(architecture, options)
    channels, height, width = _input_shape(spec)
    smallest = architecture_catalog.min_input_size(architecture)
    if min(height, width) < smallest:
        raise ModelLoadError(
            f"architecture '{architecture}' needs inputs of at least {smallest}x{smallest}; "
            f"input declares {height}x{width}"
        )
    tensors = _read_state_dict(path)
    # A private RNG stream: building initialises weights we then overwrite, and
    # must not move the caller's global seed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = architectures.build(architecture, options, channels)
    _check_state_dict(model, tensors, architecture, channels)
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def _is_safetensors(path: Path) -> bool:
    """Whether the file starts like safetensors: an 8-byte header length, then a JSON object."""
    with path.open("rb") as file:
        head = file.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") >= 2


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a flat name -> tensor mapping from a safetensors file or a torch.save checkpoint."""
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            loaded: Any = load_file(str(path), device="cpu")
        except Exception as exc:
            raise ModelLoadError(f"the safetensors file is damaged: {excerpt(exc)}") from exc
    else:
        with path.open("rb") as file:
            head = file.read(4)
        # A torch.save file is a zip (current) or a bare pickle (legacy).
        if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
            raise ModelLoadError("the file is neither a safetensors file nor a torch.save checkpoint")
        if head.startswith(b"PK\x03\x04"):
            model_archives.check_checkpoint(path)
        try:
            # A file object, not the path: torch.load picks a loader by extension otherwise.
            with path.open("rb") as file, warnings.catch_warnings():
                # The weights-only unpickler warns about pickle protocols before it refuses a file.
                warnings.simplefilter("ignore", UserWarning)
                loaded = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:
            if "Weights only load failed" in str(exc) or "Unsupported global" in str(exc):
                raise ModelLoadError(
                    "the checkpoint contains Python objects other than tensors, which ShiftScore never "
                    "unpickles; save model.state_dict() (safetensors preferred)"
                ) from exc
            raise ModelLoadError(f"the checkpoint cannot be read: {excerpt(exc)}") from exc
    if not isinstance(loaded, Mapping):
        raise ModelLoadError(
            f"the checkpoint holds a {type(loaded).__name__}, not a mapping of parameter names to tensors; "
            "save model.state_dict()"
        )
    bad = [key for key, value in loaded.items() if not isinstance(key, str) or not isinstance(value, torch.Tensor)]
    if bad:
        nested = [key for key in bad if isinstance(loaded[key], Mapping)]
        hint = f" (the weights seem to be nested under {nested[0]!r}; save that mapping itself)" if nested else ""
        raise ModelLoadError(
            f"the checkpoint must be a flat mapping of names to tensors; {bad[0]!r} is not a tensor{hint}"
        )
    return dict(loaded)


def _check_state_dict(model: nn.Module, tensors: dict[str, torch.Tensor], architecture: str, channels: int) -> None:
    """Explain, in terms of the model, why a state dict does not fit the built architecture."""
    expected = model.state_dict()
    weights = [name for name, value in expected.items() if name.endswith("weight") and value.dim() >= 2]
    first, last = (weights[0], weights[-1]) if weights else (None, None)
    if first in tensors and tensors[first].dim() == 4 and tensors[first].shape[1] != expected[first].shape[1]:
        raise ModelLoadError(
            f"the model's first layer takes {tensors[first].shape[1]} channels; input declares {channels}"
        )
    if last in tensors and tensors[last].dim() == 2 and tensors[last].shape[0] != expected[last].shape[0]:
        raise ModelLoadError(
            f"the checkpoint's last layer has {tensors[last].shape[0]} outputs but num_classes is "
            f"{expected[last].shape[0]}; set architecture_options.num_classes to {tensors[last].shape[0]}"
        )
    missing = [name for name in expected if name not in tensors]
    unexpected = [name for name in tensors if name not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_some(missing)}")
        if unexpected:
            parts.append(f"unexpected {_some(unexpected)}")
        raise ModelLoadError(
            f"the checkpoint does not match architecture '{architecture}': {'; '.join(parts)} "
            "(is it the right architecture? a wrapped model's keys start with 'module.' or 'model.')"
        )
    mismatched = [
        f"{name} is {list(tensors[name].shape)}, expected {list(value.shape)}"
        for name, value in expected.items()
        if tensors[name].shape != value.shape
    ]
    if mismatched:
        raise ModelLoadError(
            f"the checkpoint's tensor shapes do not match architecture '{architecture}' with these options "
            f"(check 'width' and the other options): {'; '.join(mismatched[:3])}"
        )


def _some(names: list[str]) -> str:
    """Return a short list of names for a message."""
    shown = ", ".join(repr(name) for name in names[:4])
    return shown + (f" and {len(names) - 4} more" if len(names) > 4 else "")


class OnnxModel:
    """An onnxruntime session called like a torch model: float32 NCHW tensor in, tensor out."""

    def __init__(self, session: Any, num_parameters: int | None) -> None:
        self.session = session
        self.num_parameters = num_parameters
        self.input_name: str = session.get_inputs()[0].name
        self.output_name: str = session.get_outputs()[0].name
        self.input_dtype = _ONNX_INPUT_TYPES[session.get_inputs()[0].type]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Run the session on a batch and return its first output."""
        array = images.detach().to("cpu", torch.float32).contiguous().numpy().astype(self.input_dtype, copy=False)
        (output,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(np.ascontiguousarray(output))

    def eval(self) -> OnnxModel:
        """Return self: an inference session has no training mode."""
        return self


_ONNX_INPUT_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}


def _onnx_tensors(model: Any) -> Iterator[tuple[str, Any]]:
    """Yield (where, tensor) for every TensorProto anywhere in an ONNX model."""
    # Every message, not a list of known places: tensors also hide in functions,
    # sparse-tensor attributes, subgraphs at any depth and training graphs, and
    # a walk over all fields cannot miss one that a later ONNX version adds.
    from google.protobuf.message import Message
    from onnx import TensorProto

    # Breadth first, with a queue rather than recursion: nesting depth is the uploader's choice.
    queue: deque[tuple[str, Any]] = deque([("model", model)])
    while queue:
        where, message = queue.popleft()
        if isinstance(message, TensorProto):
            yield where, message
            continue
        for field, value in message.ListFields():
            if isinstance(value, Message):
                queue.append((f"{where}.{field.name}", value))
            elif field.message_type is not None:
                queue.extend((f"{where}.{field.name}[{index}]", item) for index, item in enumerate(value))


def _load_onnx(path: Path, architecture: str | None, options: dict[str, Any], spec: dict[str, Any]) -> Model:
    """Load an ONNX model into a CPU onnxruntime session."""
    import onnx

    data = path.read_bytes()
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:
        raise ModelLoadError(f"the file is not an ONNX model: {excerpt(exc)}") from exc
    # External data names files by path; reading them would let a model pull
    # arbitrary files from the worker into its weights.
    for where, tensor in _onnx_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            raise ModelLoadError(
                f"the ONNX model keeps the tensor {tensor.name[:100]!r} ({where}) in an external data file; "
                "ShiftScore loads single-file models only: save it with "
                "onnx.save(model, path, save_as_external_data=False)"
            )
    session = onnx_session(data, torch.get_num_threads())
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelLoadError(f"the ONNX model takes {len(inputs)} inputs; ShiftScore feeds it one image batch")
    if inputs[0].type not in _ONNX_INPUT_TYPES:
        raise ModelLoadError(f"the ONNX model's input is {inputs[0].type}; ShiftScore feeds float images")
    initializers = proto.graph.initializer
    num_parameters = sum(math.prod(t.dims) for t in initializers) if initializers else None
    return OnnxModel(session, num_parameters)


def onnx_session(data: bytes, threads: int) -> Any:
    """A CPU ONNX Runtime session over a model's bytes, on `threads` threads (as torch is told)."""
    import onnxruntime

    session_options = onnxruntime.SessionOptions()
    session_options.intra_op_num_threads = threads
    session_options.inter_op_num_threads = 1
    # Idle pool threads would spin, taking the cores the engine prepares the next batch on:
    # a sweep ran in 0.59 of the time with spinning off (python -m benchmarks.run runtimes).
    session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session_options.log_severity_level = 3
    return onnxruntime.InferenceSession(data, sess_options=session_options, providers=["CPUExecutionProvider"])


def count_parameters(model: Model) -> int | None:
    """Return the number of parameters (an ONNX model's initializer elements), or None if unknown."""
    if isinstance(model, OnnxModel):
        return model.num_parameters
    if isinstance(model, nn.Module):
        return sum(parameter.numel() for parameter in model.parameters())
    return None


def _input_shape(spec: dict[str, Any]) -> tuple[int, int, int]:
    """Return (channels, height, width) from an input spec, or raise ModelLoadError."""
    values = []
    for key in ("channels", "height", "width"):
        value = spec.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ModelLoadError(f"input {key} must be a positive integer, got {value!r}")
        values.append(value)
    return values[0], values[1], values[2]


def _per_channel(value: Any, channels: int, default: float, name: str) -> torch.Tensor:
    """Return a mean or std as a 1×C×1×1 tensor from None, a number, or one value per channel."""
    if value is None:
        value = [default]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    expanded = per_channel(value, channels) if isinstance(value, (list, tuple)) else None
    if expanded is None:
        raise ModelLoadError(f"input {name} must be one number or {channels} numbers, got {value!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise ModelLoadError(f"input {name} must be finite numbers, got {value!r}")
    if name == "std" and any(v == 0 for v in value):
        raise ModelLoadError("input std must not be zero")
    return torch.tensor([float(v) for v in expanded], dtype=torch.float32).reshape(1, channels, 1, 1)


def _explain_failure(exc: Exception, channels: int, height: int, width: int) -> str:
    """Turn the error of a model run on the declared input into a message for the user."""
    text = str(exc)
    conv = re.search(r"to have (\d+) channels, but got (\d+) channels", text)
    if conv:
        return f"the model's first layer takes {conv.group(1)} channels; input declares {conv.group(2)}"
    # torch.export guards and onnxruntime both name the offending dimension and the size they expect.
    dim = (
        re.search(r"size\(\)\[(\d)\] == (\d+)", text)
        or re.search(r"shape\[(\d)\] to be equal to (\d+)", text)
        or re.search(r"index: (\d) Got: \d+ Expected: (\d+)", text)
    )
    if dim and int(dim.group(1)) < 4:
        index, expected = int(dim.group(1)), dim.group(2)
        got = (2, channels, height, width)[index]
        if index == 0:
            return (
                f"the model only takes batches of {expected}; export it with a dynamic batch dimension "
                "(torch.export Dim or ONNX dynamic_axes on dimension 0)"
            )
        if index == 1:
            return f"the model's first layer takes {expected} channels; input declares {got}"
        side = "height" if index == 2 else "width"
        return f"the model takes images of {side} {expected}; input declares {side} {got}"
    detail = excerpt(exc)
    hint = ""
    if re.search(r"shape|size|dimension", detail, re.IGNORECASE):
        hint = f"; check the declared input height and width ({height}x{width}): the model may take another size"
    return f"the model fails on a batch of {channels}x{height}x{width} inputs (the declared input): {detail}{hint}"


def _run(model: Model, images: torch.Tensor, shape: tuple[int, int, int], what: str) -> torch.Tensor:
    """Run the model on a batch; translate failures and non-tensor outputs into ModelLoadError."""
    try:
        output = model(images)
    except Exception as exc:
        raise ModelLoadError(_explain_failure(exc, *shape)) from exc
    if not isinstance(output, torch.Tensor):
        raise ModelLoadError(
            f"the model returns a {type(output).__name__}; ShiftScore needs a single tensor of logits"
        )
    if not output.is_floating_point():
        raise ModelLoadError(f"the model's output has dtype {output.dtype}; expected floating-point logits")
    if not bool(torch.isfinite(output).all()):
        raise ModelLoadError(f"the model's output is not finite (NaN or infinity) on {what}")
    return output


def _check_output_shape(output: torch.Tensor, task: str, height: int, width: int) -> None:
    """Raise ModelLoadError unless the output has the layout the task needs."""
    shape = list(output.shape)
    if task == "classification" and len(shape) != 2:
        raise ModelLoadError(f"a classification model must return N×K logits; this one returns shape {shape}")
    if task == "segmentation" and len(shape) != 4:
        raise ModelLoadError(f"a segmentation model must return N×K×H×W logits; this one returns shape {shape}")
    if shape[0] != 2:
        raise ModelLoadError(f"the model returns {shape[0]} rows for a batch of 2 images")
    if shape[1] < 2:
        raise ModelLoadError(f"the model returns {shape[1]} output(s) per image; at least 2 classes are needed")
    if task == "segmentation":
        out_height, out_width = shape[2], shape[3]
        if height % out_height or width % out_width or height // out_height != width // out_width:
            raise ModelLoadError(
                f"the output's {out_height}x{out_width} grid must divide the {height}x{width} input by the "
                "same whole factor on both axes"
            )


def validate_model(model: Model, input_spec: dict[str, Any], task: str = "classification") -> dict[str, Any]:
    """Run a dummy batch through the model and check its output; return num_outputs and per-image output_shape."""
    if task not in TASKS:
        raise ModelLoadError(f"unknown task {task!r}; supported tasks are: {', '.join(TASKS)}")
    shape = _input_shape(input_spec)
    channels, height, width = shape
    mean = _per_channel(input_spec.get("mean"), channels, 0.0, "mean")
    std = _per_channel(input_spec.get("std"), channels, 1.0, "std")
    blank = (torch.zeros(2, channels, height, width) - mean) / std
    # A seeded private generator: the probe must not move the global RNG.
    probe = (torch.rand(2, channels, height, width, generator=torch.Generator().manual_seed(0)) - mean) / std
    with torch.inference_mode():
        output = _run(model, blank, shape, "a blank input batch")
        _check_output_shape(output, task, height, width)
        first = _run(model, probe, shape, "a random input batch")
        second = _run(model, probe, shape, "a random input batch")
    if first.shape != second.shape or not torch.allclose(first, second, rtol=1e-4, atol=1e-5):
        raise ModelLoadError(
            "the model gives different outputs for the same input (dropout or other randomness at "
            "inference); save it in eval mode"
        )
    return {"num_outputs": int(output.shape[1]), "output_shape": list(output.shape[1:])}
