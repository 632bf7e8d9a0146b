"""Hostile model files, built on the spot from real ones, each with the message it must be refused with.

Zip tricks and disguised file operations start from an archive torch.jit.save (or torch.save,
torch.export.save) wrote and edit its members; ONNX external data is built with onnx's helper API.
A case is `live` when torch itself, given the file without ShiftScore's checks, runs its payload:
those cases prove the refusal is what stands between the file and the worker.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from onnx import GraphProto, ModelProto, SparseTensorProto, TensorProto, external_data_helper, helper
from torch import nn


@dataclass(frozen=True)
class ModelCase:
    id: str
    format: str
    build: Callable[[Path, Path], Path]  # (folder, marker) -> the file; running the payload creates `marker`
    message: str  # a fragment of the refusal
    live: bool = False

    def __repr__(self) -> str:
        return self.id


class Tiny(nn.Module):
    """A scriptable classifier for any input of at least ten values: its logits are the first ten pixels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :10] * 2.0


def tiny_torchscript(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Tiny().eval()).save(str(path))
    return path


# ---------- editing real archives ----------

Members = Callable[[str, bytes], list[tuple[str, bytes]]]


def copy_zip(source: Path, target: Path, members: Members) -> Path:
    """Copy a zip, writing each member as the (name, bytes) pairs `members` makes of it, in order."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as new:
        for info in old.infolist():
            for name, data in members(info.filename, old.read(info.filename)):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicates we want
                    new.writestr(name, data)
    return target


def _code_member(source: Path) -> str:
    """The name of the top-level module's TorchScript source in an archive."""
    with zipfile.ZipFile(source) as archive:
        return next(n for n in archive.namelist() if n.endswith(".py") and "/torch/" not in n)


def with_file_op(code: bytes, marker: Path) -> bytes:
    """TorchScript source with torch.save(x, marker) before the return, a comment between op and bracket."""
    payload = (f"_pwn = (torch.save  # a comment between the op and its bracket\n"
               f"      (x, {str(marker)!r}))\n    return ")
    text = code.decode()
    assert "    return " in text
    return text.replace("    return ", "    " + payload, 1).encode()


def _trick(rename: Callable[[str], str] | None = None, duplicate: str | None = None) -> Callable[[Path, Path], Path]:
    """A TorchScript case: the hostile code member renamed, or written twice (`first` or `last` hostile)."""

    def build(folder: Path, marker: Path) -> Path:
        source = tiny_torchscript(folder / "tiny.pt")
        target = _code_member(source)

        def members(name: str, data: bytes) -> list[tuple[str, bytes]]:
            if name != target:
                return [(name, data)]
            hostile = with_file_op(data, marker)
            if duplicate == "first":
                return [(name, hostile), (name, data)]
            if duplicate == "last":
                return [(name, data), (name, hostile)]
            if duplicate == "case":
                return [(name[:-3] + ".Py", hostile), (name, data)]
            return [((rename or str)(name), hostile)]

        return copy_zip(source, folder / "hostile.pt", members)

    return build


def _patched(edit: Callable[[bytes, str], bytes]) -> Callable[[Path, Path], Path]:
    """A TorchScript archive with its raw bytes edited (given the code member's name)."""

    def build(folder: Path, marker: Path) -> Path:
        source = tiny_torchscript(folder / "tiny.pt")
        path = folder / "patched.pt"
        path.write_bytes(edit(source.read_bytes(), _code_member(source)))
        return path

    return build


def _rename_local_header(data: bytes, name: str) -> bytes:
    """Rename a member in its local header only (the first copy of its name), keeping the length."""
    encoded = name.encode()
    other = encoded[:-4] + b"_.py"
    return data.replace(encoded, other, 1)


def _with_comment(source: Path, target: Path) -> Path:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as new:
        for info in old.infolist():
            new.writestr(info.filename, old.read(info.filename))
        new.comment = b"a comment after the end record"
    return target


def _checkpoint_twice(folder: Path, marker: Path) -> Path:
    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(2)}, buffer)
    source = folder / "state.pt"
    source.write_bytes(buffer.getvalue())
    return copy_zip(source, folder / "twice.pt",
                    lambda name, data: [(name, data)] * (2 if name.endswith("data.pkl") else 1))


def exported_program(path: Path) -> Path:
    """A .pt2 of Tiny with a dynamic batch dimension, as torch.export.save writes it."""
    example = torch.rand(2, 1, 16, 16)
    batch = torch.export.Dim("batch", min=1, max=4096)
    torch.export.save(torch.export.export(Tiny().eval(), (example,), dynamic_shapes=({0: batch},)), path)
    return path


def _pt2_program_twice(folder: Path, marker: Path) -> Path:
    """The issue's attack: models/model.json twice, torch reads the first (with code in a shape expression)."""
    source = exported_program(folder / "tiny.pt2")

    def members(name: str, data: bytes) -> list[tuple[str, bytes]]:
        if not name.endswith("models/model.json"):
            return [(name, data)]
        program = json.loads(data)
        values = program["graph_module"]["graph"]["tensor_values"].values()
        size = next(v for v in values if "as_expr" in v["sizes"][0])["sizes"][0]["as_expr"]
        size["expr_str"] = f"__import__('builtins').open({str(marker)!r}, 'w') and s0 or s0"
        return [(name, json.dumps(program).encode()), (name, data)]

    return copy_zip(source, folder / "twice.pt2", members)


def _upper_suffix(name: str) -> str:
    return name[:-3] + ".PY"


def _upper_folder(name: str) -> str:
    return name.replace("/code/", "/Code/", 1)


ZIP_CASES = [
    ModelCase("torchscript-file-op-after-a-comment", "torchscript", _trick(), "names save()", live=True),
    ModelCase("torchscript-code-member-in-upper-case", "torchscript", _trick(_upper_suffix), "names save()",
              live=True),
    ModelCase("torchscript-code-folder-in-upper-case", "torchscript", _trick(_upper_folder), "names save()",
              live=True),
    ModelCase("torchscript-duplicate-member-first-hostile", "torchscript", _trick(duplicate="first"),
              "more than once", live=True),
    ModelCase("torchscript-duplicate-member-last-hostile", "torchscript", _trick(duplicate="last"),
              "more than once"),
    ModelCase("torchscript-members-differ-by-case", "torchscript", _trick(duplicate="case"),
              "differ only by letter case"),
    ModelCase("torchscript-data-in-front", "torchscript",
              _patched(lambda data, _: b"\0" * 64 + data), "directory is not where"),
    ModelCase("torchscript-local-header-names-another-file", "torchscript", _patched(_rename_local_header),
              "does not match its local header"),
    ModelCase("torchscript-archive-comment", "torchscript",
              lambda folder, _: _with_comment(tiny_torchscript(folder / "tiny.pt"), folder / "comment.pt"),
              "does not end with its directory record"),
    ModelCase("checkpoint-duplicate-data-pkl", "state_dict", _checkpoint_twice, "more than once"),
    ModelCase("pt2-duplicate-program-first-hostile", "exported", _pt2_program_twice, "more than once", live=True),
]


def run_with_torch(case: ModelCase, path: Path) -> None:
    """Load and run a case's file with torch alone, as the worker would without ShiftScore's checks."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if case.format == "torchscript":
            torch.jit.load(str(path))(torch.rand(2, 1, 16, 16))
        else:
            torch.export.load(path).module()(torch.rand(2, 1, 16, 16))


# ---------- ONNX external data ----------

def _external(tensor: TensorProto, location: str) -> TensorProto:
    """Point a tensor's bytes at a file, as onnx's external-data helper does."""
    external_data_helper.set_external_data(tensor, location=location, offset=0, length=4 * 10)
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    return tensor


def _onnx(nodes: list, *, initializers: list = (), functions: list = (),
          opsets: dict[str, int] | None = None) -> ModelProto:
    """A model from images [N,1,16,16] to logits [N,10]: the first ten pixels plus `c`, which `nodes` make."""
    flatten = helper.make_node("Flatten", ["images"], ["flat"], axis=1)
    first = helper.make_node("Slice", ["flat", "start", "stop", "axis"], ["first"])
    add = helper.make_node("Add", ["first", "c"], ["logits"])
    constants = [helper.make_tensor(name, TensorProto.INT64, [1], [value])
                 for name, value in (("start", 0), ("stop", 10), ("axis", 1))]
    graph = helper.make_graph(
        [flatten, first, *nodes, add], "hostile",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 1, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=[*constants, *initializers],
    )
    imports = [helper.make_opsetid(domain, version) for domain, version in {"": 17, **(opsets or {})}.items()]
    return helper.make_model(graph, opset_imports=imports, functions=list(functions), ir_version=9)


def _ten(name: str) -> TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, [10], bytes(40), raw=True)


def _sparse(secret: str) -> SparseTensorProto:
    values = _external(_ten("values"), secret)
    indices = helper.make_tensor("indices", TensorProto.INT64, [10], list(range(10)))
    return helper.make_sparse_tensor(values, indices, [10])


def onnx_in_function(secret: str) -> ModelProto:
    constant = helper.make_node("Constant", [], ["out"], value=_external(_ten("stolen"), secret))
    function = helper.make_function("hostile", "Stolen", [], ["out"], [constant], [helper.make_opsetid("", 17)])
    return _onnx([helper.make_node("Stolen", [], ["c"], domain="hostile")], functions=[function],
                 opsets={"hostile": 1})


def onnx_in_sparse_attribute(secret: str) -> ModelProto:
    return _onnx([helper.make_node("Constant", [], ["c"], sparse_value=_sparse(secret))])


def onnx_in_sparse_tensors_attribute(secret: str) -> ModelProto:
    node = helper.make_node("Constant", [], ["c"], value=_ten("c"))
    node.attribute.append(helper.make_attribute("hidden", [_sparse(secret), _sparse(secret)]))
    return _onnx([node])


def onnx_in_nested_subgraph(secret: str) -> ModelProto:
    def branch(name: str, nodes: list, initializers: list = ()) -> GraphProto:
        output = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [10])
        return helper.make_graph(nodes, name, [], [output], initializer=list(initializers))

    inner = branch("inner", [helper.make_node("Identity", ["stolen"], ["inner_out"])],
                   [_external(_ten("stolen"), secret)])
    plain = branch("plain", [helper.make_node("Constant", [], ["plain_out"], value=_ten("zeros"))])
    middle = branch("middle", [helper.make_node("If", ["yes"], ["middle_out"], then_branch=inner,
                                                else_branch=plain)])
    outer_else = branch("outer_else", [helper.make_node("Constant", [], ["outer_else_out"], value=_ten("zeros"))])
    yes = helper.make_tensor("yes", TensorProto.BOOL, [], [True])
    return _onnx([helper.make_node("If", ["yes"], ["c"], then_branch=middle, else_branch=outer_else)],
                 initializers=[yes])


def onnx_external_entries_only(secret: str) -> ModelProto:
    model = _onnx([], initializers=[_ten("c")])
    tensor = model.graph.initializer[-1]
    # external_data entries without the EXTERNAL flag: refused too, whatever a runtime makes of them.
    external_data_helper.set_external_data(tensor, location=secret, offset=0, length=40)
    return model


def onnx_plain() -> ModelProto:
    return _onnx([helper.make_node("Constant", [], ["c"], value=_ten("c"))])


# (case, builder, where the tensor sits, as the refusal names it)
ONNX_CASES = [
    ("onnx-external-data-in-a-function", onnx_in_function, "model.functions[0].node[0].attribute[0].t"),
    ("onnx-external-data-in-a-sparse-attribute", onnx_in_sparse_attribute,
     "attribute[0].sparse_tensor.values"),
    ("onnx-external-data-in-sparse-tensors", onnx_in_sparse_tensors_attribute,
     "attribute[1].sparse_tensors[0].values"),
    ("onnx-external-data-in-a-nested-subgraph", onnx_in_nested_subgraph,
     "g.node[0].attribute[1].g.initializer[0]"),
    ("onnx-external-data-entries-only", onnx_external_entries_only, "model.graph.initializer[3]"),
]


def write_onnx(model: ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


# The embedded default's database, relative to the worker's working directory, where ONNX
# resolves external data: what an attacker would read into the model's weights.
SECRET = "var/shiftscore.sqlite3"

ONNX_MODEL_CASES = [
    ModelCase(case, "onnx", lambda folder, _, build=build: write_onnx(build(SECRET), folder / "m.onnx"), where)
    for case, build, where in ONNX_CASES
]
