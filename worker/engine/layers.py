"""The layer profile (SPEC §3): equivariance and invariance error of named layers under each shift.

Intermediate outputs are reached through a *tap*: forward hooks on an nn.Module
(a registry model loaded from a state dict), or an fx interpreter over a
torch.export graph, whose nodes remember the module they came from. TorchScript
and ONNX models hide their intermediate outputs and get a SweepError.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from worker.engine.driver import ChunkViews, Shift, drive
from worker.engine.equivariance import (
    comparable_offset,
    compared_pair,
    downsampling_factor,
    global_average,
    relative_error,
    squared_sums,
)
from worker.engine.plan import SweepError, SweepPlan

OUTPUT = "output"
MAX_LAYERS = 100
# The request's field naming the layers to profile, and where a chunk's tally carries the profile.
LAYERS = "layers"
ACTIVATIONS = frozenset({
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish",
    "Sigmoid", "Tanh", "Hardtanh", "Hardswish", "Hardsigmoid", "Softplus", "Softsign", "Tanhshrink",
    "LogSigmoid", "Threshold", "GLU",
})


@dataclass(frozen=True)
class Layer:
    """A module a forward pass goes through: its dotted name and its class name."""

    name: str
    kind: str


class Tap(Protocol):
    """Runs the model and hands back the outputs of the layers asked for."""

    layers: list[Layer]

    def run(self, batch: torch.Tensor, names: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ...


def stage_kind(kind: str) -> str | None:
    """'convolution', 'pooling' or 'activation' for a module class name, else None."""
    if "Conv" in kind:
        return "convolution"
    if "Pool" in kind:
        return "pooling"
    if kind in ACTIVATIONS:
        return "activation"
    return None


class HookTap:
    """Forward hooks on the modules of an nn.Module; layers in the order their forward ends."""

    def __init__(self, model: nn.Module, probe: torch.Tensor) -> None:
        self.model = model
        modules = {name: module for name, module in model.named_modules() if name}
        order: list[str] = []
        handles = [
            module.register_forward_hook(lambda _m, _i, _o, name=name: order.append(name))
            for name, module in modules.items()
        ]
        try:
            model(probe)
        finally:
            for handle in handles:
                handle.remove()
        seen = list(dict.fromkeys(order))  # a module called twice keeps its first place
        self.layers = [Layer(name, type(modules[name]).__name__) for name in seen]
        self._modules = modules

    def run(self, batch: torch.Tensor, names: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        captured: dict[str, torch.Tensor] = {}

        def keep(name: str) -> Callable[..., None]:
            def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
                if name not in captured and isinstance(output, torch.Tensor):
                    captured[name] = output
            return hook

        handles = [self._modules[name].register_forward_hook(keep(name)) for name in names if name in self._modules]
        try:
            output = self.model(batch)
        finally:
            for handle in handles:
                handle.remove()
        return output, captured


class GraphTap:
    """An fx interpreter over a torch.export graph; a module's output is its last node's value."""

    def __init__(self, graph_module: torch.fx.GraphModule) -> None:
        self.module = graph_module
        self.scopes: dict[torch.fx.Node, list[str]] = {}
        last: dict[str, int] = {}
        kinds: dict[str, str] = {}
        for index, node in enumerate(graph_module.graph.nodes):
            stack = node.meta.get("nn_module_stack") or {}
            if node.op != "call_function" or not stack:
                continue  # placeholders, parameters and export's guard call belong to no layer's output
            paths = [path for path, _ in stack.values() if path]
            self.scopes[node] = paths
            for path, type_name in stack.values():
                if path:
                    last[path] = index
                    kinds[path] = str(type_name).rsplit(".", 1)[-1]
        self.layers = [Layer(path, kinds[path]) for path in sorted(last, key=lambda p: last[p])]

    def run(self, batch: torch.Tensor, names: Sequence[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        wanted = set(names)
        captured: dict[str, torch.Tensor] = {}
        scopes = self.scopes

        class Capture(torch.fx.Interpreter):
            def run_node(self, node: torch.fx.Node) -> Any:
                value = super().run_node(node)
                if isinstance(value, torch.Tensor):
                    for path in scopes.get(node, ()):
                        if path in wanted:
                            captured[path] = value  # later nodes of the same module overwrite
                return value

        output = Capture(self.module).run(batch)
        return output, captured


def make_tap(model: Any, probe: torch.Tensor) -> Tap:
    """A tap for the model, or a SweepError naming the formats that have one."""
    if isinstance(model, torch.fx.GraphModule) and any(
        node.meta.get("nn_module_stack") for node in model.graph.nodes
    ):
        return GraphTap(model)
    if isinstance(model, torch.jit.ScriptModule):
        raise SweepError(_UNREACHABLE.format(what="TorchScript models"))
    if isinstance(model, nn.Module):
        return HookTap(model, probe)
    raise SweepError(_UNREACHABLE.format(what=f"models of type {type(model).__name__}"))


_UNREACHABLE = (
    "{what} do not expose their intermediate outputs, so a layer profile cannot be measured; "
    "upload the model as 'state_dict' with a registry architecture, or as 'exported' (torch.export .pt2)"
)


def default_layers(layers: Sequence[Layer]) -> list[str]:
    """Every convolution, pooling and activation stage, in forward order.

    A container whose modules are all pooling (such as max-blur-pool) counts as
    one pooling stage; other containers are looked into.
    """
    names = [layer.name for layer in layers]
    kinds = {layer.name: layer.kind for layer in layers}

    def inside(name: str) -> list[str]:
        return [other for other in names if other.startswith(name + ".")]

    chosen: list[str] = []
    for name in sorted(names, key=lambda n: n.count(".")):
        if any(name.startswith(outer + ".") for outer in chosen):
            continue
        members = inside(name)
        leaves = [m for m in members if not inside(m)]
        if leaves and all(stage_kind(kinds[leaf]) == "pooling" for leaf in leaves):
            chosen.append(name)
        elif not members and stage_kind(kinds[name]) is not None:
            chosen.append(name)
    return [name for name in names if name in chosen]


def resolve_layers(tap: Tap, requested: Sequence[str] | None) -> list[str]:
    """The layers to profile: the ones asked for, checked against the model, or the default stages."""
    available = [layer.name for layer in tap.layers]
    if requested is None:
        return default_layers(tap.layers)
    unknown = [name for name in requested if name not in available and name != OUTPUT]
    if unknown:
        shown = ", ".join(available[:40]) + (" …" if len(available) > 40 else "")
        raise SweepError(
            f"the model has no layer named {', '.join(repr(u) for u in unknown[:5])}; "
            f"its layers, in forward order, are: {shown}"
        )
    order = {name: i for i, name in enumerate(available)}
    return sorted(dict.fromkeys(n for n in requested if n != OUTPUT), key=order.__getitem__)


@dataclass
class LayerTally:
    """Sums behind each layer's errors: arrays of layers × grid shifts, float64."""

    names: list[str]
    kinds: list[str]
    num_shifts: int
    shapes: list[list[int]] = field(default_factory=list)
    factors: list[int | None] = field(default_factory=list)
    n: int = 0
    eq_diff: np.ndarray = field(default=None)  # type: ignore[assignment]
    eq_ref: np.ndarray = field(default=None)  # type: ignore[assignment]
    eq_cells: np.ndarray = field(default=None)  # type: ignore[assignment]
    inv_diff: np.ndarray = field(default=None)  # type: ignore[assignment]
    inv_ref: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        shape = (len(self.names), self.num_shifts)
        for name in ("eq_diff", "eq_ref", "inv_diff", "inv_ref"):
            if getattr(self, name) is None:
                setattr(self, name, np.zeros(shape, dtype=np.float64))
        if self.eq_cells is None:
            self.eq_cells = np.zeros(shape, dtype=np.int64)

    def to_json(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in ("names", "kinds", "num_shifts", "shapes", "factors", "n")}
        out.update({k: getattr(self, k).tolist() for k in ("eq_diff", "eq_ref", "eq_cells", "inv_diff", "inv_ref")})
        return out

    def merge(self, other: LayerTally) -> None:
        """Add another tally over disjoint samples of the same profile."""
        if other.names != self.names:
            raise ValueError("cannot merge profiles of different layers")
        self.shapes, self.factors = self.shapes or other.shapes, self.factors or other.factors
        self.n += other.n
        for name in ("eq_diff", "eq_ref", "eq_cells", "inv_diff", "inv_ref"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LayerTally:
        arrays = {k: np.asarray(data[k], dtype=np.float64) for k in ("eq_diff", "eq_ref", "inv_diff", "inv_ref")}
        return cls(
            names=list(data["names"]), kinds=list(data["kinds"]), num_shifts=data["num_shifts"],
            shapes=[list(s) for s in data["shapes"]], factors=list(data["factors"]), n=data["n"],
            eq_cells=np.asarray(data["eq_cells"], dtype=np.int64), **arrays,
        )


def _features(output: torch.Tensor, captured: dict[str, torch.Tensor], names: Sequence[str]) -> list[torch.Tensor]:
    missing = [name for name in names if name != OUTPUT and name not in captured]
    if missing:
        raise SweepError(f"layer {missing[0]!r} returned no tensor in the forward pass, so it cannot be profiled")
    features = [output if name == OUTPUT else captured[name] for name in names]
    for name, value in zip(names, features):
        if not torch.isfinite(value).all():
            raise SweepError(f"the output of layer {name!r} is not finite (NaN or infinity) for some inputs")
    return features


class LayerSums:
    """A layer profile's accumulator: each shift's features against the reference's, layer by layer.

    The tap is made on the first batch, the first sample's unshifted view, as its probe.
    """

    def __init__(self, model: Any, plan: SweepPlan, requested: Sequence[str] | None, tally: LayerTally | None) -> None:
        self.model, self.plan, self.requested, self.tally = model, plan, requested, tally
        self.grid_index = {shift: j for j, shift in enumerate(plan.grid.shifts)}
        self.tap: Tap | None = None

    def forward(self, batch: torch.Tensor) -> list[torch.Tensor]:
        """The features of the profiled layers, the model output last."""
        if self.tap is None:
            self.tap = make_tap(self.model, batch[:1])
            self.tally = self.tally or self._new_tally(self.tap)
        names = self.tally.names
        return _features(*self.tap.run(batch, names), names)

    def _new_tally(self, tap: Tap) -> LayerTally:
        names = resolve_layers(tap, self.requested)
        if len(names) > MAX_LAYERS:
            raise SweepError(f"{len(names)} layers were asked for; a profile takes at most {MAX_LAYERS}")
        names.append(OUTPUT)
        kinds = {layer.name: layer.kind for layer in tap.layers}
        return LayerTally(names, [kinds.get(n, OUTPUT) for n in names], self.plan.grid.size)

    def begin(self, views: ChunkViews) -> None:
        self.reference: list[torch.Tensor] | None = None

    def add(self, views: ChunkViews, shifts: Sequence[Shift], features: list[torch.Tensor]) -> None:
        if self.reference is None:
            self._take_reference(features)
        circular = self.plan.padding == "circular"
        # The reference batch stands for the grid's own (0, 0), when the grid has one.
        for position, shift in enumerate(shifts):
            if shift in self.grid_index:
                part = [views.part(f, position) for f in features]
                _accumulate(self.tally, self.grid_index[shift], shift, self.reference, part, circular)

    def _take_reference(self, features: list[torch.Tensor]) -> None:
        self.reference = features
        if not self.tally.shapes:
            self.tally.shapes = [list(f.shape[1:]) for f in features]
            self.tally.factors = [
                downsampling_factor(self.plan.input_hw, tuple(f.shape[-2:])) if f.ndim == 4 else None
                for f in features
            ]

    def end(self, views: ChunkViews) -> None:
        self.tally.n += len(views.rows)


def run_layer_profile(
    model: Any,
    images: np.ndarray,
    indices: Sequence[int] | np.ndarray,
    plan: SweepPlan,
    layers: Sequence[str] | None = None,
    *,
    tally: LayerTally | None = None,
    **options: Any,
) -> LayerTally:
    """Profile `layers` (None: the default stages) and the model output over the plan's grid.

    Resumes `tally` at `start`; `options` as in worker.engine.driver.drive.
    """
    indices = np.asarray(indices, dtype=np.int64)
    sums = LayerSums(model, plan, layers, tally)
    return drive(sums.forward, sums, images, indices, plan, reference_alone=True, **options)


def _accumulate(
    tally: LayerTally,
    shift_index: int,
    shift: tuple[float, float],
    reference: Sequence[torch.Tensor],
    shifted: Sequence[torch.Tensor],
    circular: bool,
) -> None:
    dx, dy = shift
    for i, (ref, got) in enumerate(zip(reference, shifted)):
        diff, norm = squared_sums(global_average(ref), global_average(got))
        tally.inv_diff[i, shift_index] += diff
        tally.inv_ref[i, shift_index] += norm
        offset = comparable_offset(dx, dy, tally.factors[i]) if ref.ndim == 4 else None
        pair = compared_pair(ref, got, offset, circular) if offset is not None else None
        if pair is not None:
            diff, norm = squared_sums(*pair)
            tally.eq_diff[i, shift_index] += diff
            tally.eq_ref[i, shift_index] += norm
            tally.eq_cells[i, shift_index] += pair[1].numel()


def profile_rows(tally: LayerTally, shifts: Sequence[tuple[float, float]]) -> list[dict[str, Any]]:
    """One row per layer (forward order, the model output last) with its per-shift errors."""
    rows = []
    for i, name in enumerate(tally.names):
        per_shift = []
        for j, (dx, dy) in enumerate(shifts):
            equivariance = (
                relative_error(float(tally.eq_diff[i, j]), float(tally.eq_ref[i, j]))
                if tally.eq_cells[i, j] else None
            )
            per_shift.append({
                "dx": dx, "dy": dy,
                "equivariance_error": equivariance,
                "invariance_error": relative_error(float(tally.inv_diff[i, j]), float(tally.inv_ref[i, j])),
            })
        rows.append({
            "name": name,
            "kind": tally.kinds[i],
            "shape": tally.shapes[i],
            "factor": tally.factors[i],
            "shifts": per_shift,
        })
    return rows
