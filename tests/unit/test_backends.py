"""The runtime choice made at validation: the agreement check, the timing, and exactness on ONNX Runtime."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tests.reference import reference_sweep
from core import architecture_catalog
from worker import architectures
from core.grid import build_grid
from worker.engine.metrics import shift_rows, summary
from worker.engine.plan import SweepPlan
from worker.engine.sweep import run_sweep
from core.runtimes import BadRuntime, check_runtime, evaluation_runtime
from worker.sandbox import backends

CPU = torch.device("cpu")
SPEC = {"channels": 1, "height": 8, "width": 8, "mean": [0.1], "std": [0.5]}


class _FloorQuarter(torch.autograd.Function):
    """Rounds to quarters with floor in torch, but exports ONNX Round (half to even): an exporter
    that rounds differently from the eager op, as some real exports do."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001
        return torch.floor(x * 4) / 4

    @staticmethod
    def symbolic(g, x):  # noqa: ANN001
        four = g.op("Constant", value_t=torch.tensor(4.0))
        return g.op("Div", g.op("Round", g.op("Mul", x, four)), four)


class RoundingNet(nn.Module):
    """A small CNN whose features pass through _FloorQuarter before the head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(_FloorQuarter.apply(torch.relu(self.conv(x)) * 3).flatten(1))


def test_validation_batch_is_fixed_and_normalized():
    first, second = backends.validation_batch(SPEC, CPU), backends.validation_batch(SPEC, CPU)
    assert first.shape == (backends.VALIDATION_ROWS, 1, 8, 8)
    assert torch.equal(first, second)
    raw = first * 0.5 + 0.1
    assert float(raw.min()) >= -1e-6 and float(raw.max()) <= 1 + 1e-6
    # the second half is 4×4 blocks of one value
    half = backends.VALIDATION_ROWS // 2
    assert torch.equal(first[half:, :, 0:4, 0:4], first[half:, :, 0:1, 0:1].expand(-1, -1, 4, 4))


def test_an_export_that_rounds_differently_stays_on_torch():
    record, kept = backends.choose("state_dict", RoundingNet().eval(), SPEC, CPU)
    onnx = record["candidates"]["onnxruntime"]
    # oneDNN Graph runs torch's own floor, so only ONNX Runtime is refused.
    assert record["backend"] in ("torch", "onednn")
    assert set(kept) == {"torch", "onednn"}
    assert onnx["kept"] is False
    assert onnx["max_abs_diff"] > onnx["tolerance"] or onnx["argmax_equal"] < onnx["rows"]
    assert onnx["reason"]
    assert check_runtime(record, "state_dict")["backend"] == record["backend"]


class SmallNet(nn.Module):
    """A float32 CNN of plain ops (ONNX Runtime has no float64 convolution)."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.head = nn.Linear(6 * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))


def test_an_exact_export_is_kept_with_its_figures():
    record, kept = backends.choose("state_dict", SmallNet().eval(), SPEC, CPU)
    onnx = record["candidates"]["onnxruntime"]
    assert onnx["kept"] is True and onnx["argmax_equal"] == onnx["rows"] == backends.VALIDATION_ROWS
    assert onnx["max_abs_diff"] <= onnx["tolerance"]
    assert set(kept) == {"torch", "onnxruntime"}  # oneDNN fails on it: see the test below
    # the choice is the fastest by the one measurement recorded
    timings = {name: record["candidates"][name]["seconds_per_image"] for name in kept}
    assert record["backend"] == min(timings, key=timings.get)
    assert str(record["batch_size"]) in record["candidates"][record["backend"]]["per_batch_size"]


LENET_SPEC = {"channels": 1, "height": 28, "width": 28, "mean": [0.13], "std": [0.31]}


def _lenet(form: str, pool: str) -> nn.Module:
    """The registry LeNet with `pool`, as uploaded: eager (a state dict), scripted or traced TorchScript."""
    torch.manual_seed(0)
    model = architectures.build("lenet", architecture_catalog.validate_options("lenet", {"pool": pool}), 1).eval()
    if form == "scripted":
        return torch.jit.script(model)
    if form == "traced":
        return torch.jit.trace(model, torch.zeros(2, 1, 28, 28))
    return model


@pytest.mark.parametrize("pool", ["max", "blur"])
@pytest.mark.parametrize("form", ["eager", "scripted", "traced"])
def test_lenet_exports_through_its_pools(form, pool):
    """LeNet's 7×7 → 4×4 adaptive pool has no ONNX op (the export uses fixed pooling matrices), and its
    blur pool exports only where a trace fixes its sizes: eager and traced models, not scripted ones."""
    model = _lenet(form, pool)
    spec = LENET_SPEC
    if form == "scripted" and pool == "blur":
        with pytest.raises(Exception):
            backends.onnx_export(model, backends.validation_batch(spec, CPU), 1)
        return
    batch = backends.validation_batch(spec, CPU)
    exported = backends.onnx_export(model, batch, 1)
    with torch.inference_mode():
        expected, got = model(batch), exported(batch)
    checked = backends.agreement(expected, got)
    assert checked["agrees"], checked


@pytest.mark.parametrize("size, out", [((7, 9), (4, 5)), ((5, 5), (3, 3)), ((8, 6), (1, 4))])
def test_pool_matrices_equal_adaptive_pool(size, out):
    x = torch.randn(3, 2, *size, dtype=torch.float64)
    rows, columns = backends._pool_matrix(size[0], out[0]).double(), backends._pool_matrix(size[1], out[1]).double()
    torch.testing.assert_close(rows @ x @ columns.t(), nn.functional.adaptive_avg_pool2d(x, out))


@pytest.mark.parametrize("mode", ["zeros", "circular", "reflect", "edge"])
def test_sweep_on_onnxruntime_equals_reference(mode):
    """The engine through the exported model gives the reference's metrics exactly (both on ONNX Runtime)."""
    rng = np.random.default_rng(8)
    images = rng.integers(0, 256, size=(12, 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, 4, size=12)
    grid = build_grid({"dx": [-2, 2], "dy": [-1, 1.5], "step": 0.5})
    model = SmallNet().eval()
    exported = backends.onnx_export(model, backends.validation_batch(SPEC, CPU), 1)
    plan = SweepPlan(grid, mode, 0.2, (0.1,), (0.5,), (8, 8))
    tally = run_sweep(exported, images, labels, np.arange(12), plan, batch_size=32)
    _, _, ref = reference_sweep(exported, images, labels, grid, mode, 0.2, 0.1, 0.5)
    _, _, eager = reference_sweep(model, images, labels, grid, mode, 0.2, 0.1, 0.5)
    assert eager == ref  # and the same predictions as the model's own runtime, here
    got = summary(tally, grid)
    for key in ("clean_accuracy", "mean_accuracy", "worst_case_accuracy", "consistency", "flip_rate"):
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key
    assert [row["accuracy"] for row in shift_rows(tally, grid)] == pytest.approx(ref["accuracy"], abs=1e-12)


def test_runtime_record_is_checked():
    record, _ = backends.choose("state_dict", SmallNet().eval(), SPEC, CPU)
    with pytest.raises(BadRuntime):
        check_runtime({**record, "backend": "tensorrt"}, "state_dict")
    with pytest.raises(BadRuntime):
        check_runtime({**record, "candidates": {"onnxruntime": record["candidates"]["onnxruntime"]}}, "state_dict")
    bad = {**record["candidates"]["torch"], "batch_size": 10**9}
    with pytest.raises(BadRuntime):
        check_runtime({**record, "candidates": {**record["candidates"], "torch": bad}}, "state_dict")


def test_evaluation_runtime_follows_the_model_and_the_request():
    record = check_runtime(backends.choose("state_dict", SmallNet().eval(), SPEC, CPU)[0], "state_dict")
    chosen = evaluation_runtime("state_dict", record, "auto", 256)
    assert chosen["backend"] == record["backend"] and chosen["batch_size"] == record["batch_size"]
    assert chosen["forced"] is False and chosen["agreement"]["rows"] == backends.VALIDATION_ROWS
    forced = evaluation_runtime("state_dict", record, "torch", 256)
    assert forced["backend"] == "torch" and forced["forced"] is True
    assert forced["batch_size"] == record["candidates"]["torch"]["batch_size"]
    legacy = evaluation_runtime("onnx", None, "auto", 256)
    assert legacy == {"backend": "onnxruntime", "batch_size": 256, "forced": False, "agreement": None}


def test_a_torch_export_program_exports_too():
    """torch.export programs refuse train(); the export must not need it."""
    program = torch.export.export(SmallNet().eval(), (torch.zeros(2, 1, 8, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("n", min=1, max=4096)},))
    record, kept = backends.choose("exported", program.module(), SPEC, CPU)
    assert record["candidates"]["onnxruntime"]["kept"], record["candidates"]["onnxruntime"]
    assert {"torch", "onnxruntime"} <= set(kept)


def test_out_of_time_only_the_reference_is_timed():
    record, kept = backends.choose("state_dict", SmallNet().eval(), SPEC, CPU, budget_s=0.0)
    assert set(kept) == {"torch"} and record["backend"] == "torch"
    assert "no time left" in record["candidates"]["onnxruntime"]["reason"]
    assert "no time left" in record["candidates"]["onednn"]["reason"]
    assert list(record["candidates"]["torch"]["per_batch_size"]) == [str(backends.BATCH_SIZES[0])]


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
@pytest.mark.parametrize("pad", [(1, 1), (0, 1), (1, 2), (2, 2)])
def test_blur_pool_padding_by_gather_equals_f_pad(mode, pad):
    """The traced blur pool pads by gathering indices; it must be F.pad's padding exactly."""
    from worker.architectures import _pad_indices

    x = torch.randn(2, 3, 5, 6)
    gathered = x.index_select(2, _pad_indices(5, *pad, mode)).index_select(3, _pad_indices(6, *pad, mode))
    assert torch.equal(gathered, nn.functional.pad(x, (*pad, *pad), mode=mode))


def test_onnx_runtime_threads_sleep_when_idle():
    """Spinning pool threads take the cores the engine builds the next batch on (benchmarks.run runtimes)."""
    exported = backends.onnx_export(SmallNet().eval(), backends.validation_batch(SPEC, CPU), 2)
    options = exported.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.intra_op_num_threads == 2


def test_agreement_over_batches_is_agreement_over_their_concatenation():
    """The real-data check compares batch by batch; the rule must not change by the split."""
    generator = torch.Generator().manual_seed(4)
    reference = torch.randn(40, 5, generator=generator)
    candidate = reference + 1e-3 * torch.randn(40, 5, generator=generator)
    candidate[17] = -candidate[17]
    pieces = [backends.compared(reference[a:b], candidate[a:b]) for a, b in ((0, 16), (16, 32), (32, 40))]
    assert backends.judged(pieces) == backends.agreement(reference, candidate)
    candidate[20, 0] = float("nan")
    pieces = [backends.compared(reference[a:b], candidate[a:b]) for a, b in ((0, 16), (16, 32), (32, 40))]
    assert backends.judged(pieces)["agrees"] is False


def _fused_nodes() -> set[str]:
    return {node.kind() for node in torch.jit.last_executed_optimized_graph().nodes()}


@pytest.mark.parametrize("pool", ["max", "blur"])
@pytest.mark.parametrize("form", ["eager", "scripted", "traced"])
def test_onednn_candidate_is_compared_fused(form, pool):
    """What the agreement check compares is the fused graph (the executor fuses only after its first
    calls), and the process-wide fusion switch is off again after each call: the reference stays eager."""
    model = _lenet(form, pool)
    spec = LENET_SPEC
    batch = backends.validation_batch(spec, CPU)
    fused = backends.build("onednn", model, batch)
    fusion = {"prim::oneDNNFusionGroup", "prim::oneDNNFusionGuard"}
    with torch.inference_mode():
        expected = model(batch)
        if form == "scripted" and pool == "blur":  # oneDNN's bridge fails on the scripted blur pool's ops
            with pytest.raises(RuntimeError):
                backends._warmed(fused, batch)
            return
        got = backends._warmed(fused, batch)
        assert _fused_nodes() & fusion
        assert not torch.jit.onednn_fusion_enabled()
        if form != "eager":  # the reference is TorchScript too: its own graph has no fusion
            for _ in range(backends.WARMUP_CALLS):
                model(batch)
            assert not _fused_nodes() & fusion
    checked = backends.agreement(expected, got)
    assert checked["agrees"], checked


def test_a_runtime_that_fails_at_validation_is_refused_with_its_reason():
    """oneDNN's bridge fails at run time on a traced max_pool2d without a stride: refused, not a failed model."""
    record, kept = backends.choose("state_dict", SmallNet().eval(), SPEC, CPU)
    onednn = record["candidates"]["onednn"]
    assert onednn["kept"] is False and "onednn" not in kept
    assert onednn["reason"].startswith("it failed on the validation batch: RuntimeError")
    assert check_runtime(record, "state_dict")["candidates"]["onednn"]["kept"] is False


class FusableNet(SmallNet):
    """SmallNet with a module pool, whose stride oneDNN's bridge reads (F.max_pool2d's empty one it cannot)."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.relu(self.conv(x))).flatten(1))


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_sweep_on_onednn_has_the_references_predictions(mode):
    """The engine through the fused model: every per-shift count equals the eager model's."""
    rng = np.random.default_rng(9)
    images = rng.integers(0, 256, size=(12, 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, 4, size=12)
    grid = build_grid({"dx": [-2, 2], "dy": [-1, 1.5], "step": 0.5})
    model = torch.jit.script(FusableNet().eval())
    fused = backends.build("onednn", model, backends.validation_batch(SPEC, CPU))
    plan = SweepPlan(grid, mode, 0.2, (0.1,), (0.5,), (8, 8))
    on_fused = run_sweep(fused, images, labels, np.arange(12), plan, batch_size=32)
    assert _fused_nodes() & {"prim::oneDNNFusionGroup", "prim::oneDNNFusionGuard"}
    on_eager = run_sweep(model, images, labels, np.arange(12), plan, batch_size=32)
    assert on_fused.shift_correct.tolist() == on_eager.shift_correct.tolist()
    assert summary(on_fused, grid) == summary(on_eager, grid)
