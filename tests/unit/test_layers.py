"""The layer profile on the built-in architectures, through hooks and through torch.export graphs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from core.grid import build_grid
from tests.reference import reference_shift
from worker import architectures
from worker.engine.layers import GraphTap, HookTap, LayerTally, default_layers, profile_rows, run_layer_profile
from worker.engine.plan import SweepError, SweepPlan


def build(name: str, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return architectures.build(name, options, 1).eval()


@pytest.fixture(scope="module")
def framed():
    """16×16 images whose content sits in the central 8×8: shifts up to 2 lose nothing."""
    rng = np.random.default_rng(0)
    images = np.zeros((16, 16, 16, 1), np.uint8)
    images[:, 4:12, 4:12] = rng.integers(0, 256, (16, 8, 8, 1))
    return images


def by_name(rows):
    return {row["name"]: row for row in rows}


def test_circular_convolution_stack_is_equivariant_at_every_layer(framed):
    grid = build_grid({"dx": [-3, 2], "dy": [-1, 1]})
    plan = SweepPlan(grid, "circular", 0.0, (0.5,), (0.25,), (16, 16))
    rows = profile_rows(run_layer_profile(build("circular_invariant", depth=3), framed, range(6), plan), grid.shifts)
    assert [r["name"] for r in rows] == ["conv1", "relu1", "conv2", "relu2", "conv3", "relu3", "pool", "output"]
    for row in rows[:6]:
        assert row["factor"] == 1 and row["shape"] == [16, 16, 16]
        assert all(s["equivariance_error"] < 1e-6 for s in row["shifts"]), row["name"]
    for row in rows:
        assert all(s["invariance_error"] < 1e-6 for s in row["shifts"]), row["name"]
    # the global pool (r = 16) is only comparable at (0, 0)
    assert [s["equivariance_error"] is not None for s in rows[6]["shifts"]] == [s == (0, 0) for s in grid.shifts]


def test_max_pooling_breaks_equivariance_for_odd_shifts(framed):
    grid = build_grid({"dx": [-2, 2], "dy": [-2, 2]})
    plan = SweepPlan(grid, "zeros", 0.0, (0.0,), (1.0,), (16, 16))
    rows = by_name(profile_rows(run_layer_profile(build("lenet", pool="max"), framed, range(16), plan), grid.shifts))
    for name in ("conv1", "relu1"):  # zero-padded convolution on a zero-filled shift: exact
        assert all(s["equivariance_error"] < 1e-6 for s in rows[name]["shifts"]), name
    pool = rows["pool1"]
    assert pool["factor"] == 2 and pool["kind"] == "MaxPool2d"
    for s, (dx, dy) in zip(pool["shifts"], grid.shifts):
        if dx % 2 == 0 and dy % 2 == 0:
            # even shifts move the pooled map by a whole cell, exactly
            assert s["equivariance_error"] < 1e-6 and s["invariance_error"] < 1e-6
        else:
            # odd shifts have no cell to move by; the pooled map changes, and so does its average
            assert s["equivariance_error"] is None and s["invariance_error"] > 1e-2


def test_blur_pooling_lowers_the_odd_shift_error():
    # A wider blank frame than `framed`: the blur widens the receptive field.
    rng = np.random.default_rng(1)
    images = np.zeros((16, 24, 24, 1), np.uint8)
    images[:, 8:16, 8:16] = rng.integers(0, 256, (16, 8, 8, 1))
    grid = build_grid({"dx": [-3, 3], "dy": [-3, 3]})
    plan = SweepPlan(grid, "zeros", 0.0, (0.0,), (1.0,), (24, 24))
    max_net = build("lenet", pool="max")
    blur_net = build("lenet", pool="blur")
    blur_net.load_state_dict(max_net.state_dict())  # the same weights: only the pooling differs
    odd = [j for j, (dx, dy) in enumerate(grid.shifts) if dx % 2 or dy % 2]
    mean_odd = {}
    for name, net in (("max", max_net), ("blur", blur_net)):
        rows = by_name(profile_rows(run_layer_profile(net, images, range(16), plan), grid.shifts))
        assert rows["pool1"]["factor"] == 2
        mean_odd[name] = np.mean([rows["pool1"]["shifts"][j]["invariance_error"] for j in odd])
    assert mean_odd["blur"] < 0.5 * mean_odd["max"], mean_odd


def test_profile_equals_a_per_image_reference():
    """Layer outputs of each image shifted alone (numpy), errors from SPEC §3's formulas."""
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    net = build("lenet", pool="max")
    grid = build_grid({"dx": [-2, 2], "dy": [-1, 1]})
    names = ["conv1", "pool1", "relu3"]
    for mode in ("zeros", "reflect"):
        plan = SweepPlan(grid, mode, 0.1, (0.5,), (0.5,), (8, 8))
        rows = profile_rows(run_layer_profile(net, images, range(5), plan, names), grid.shifts)
        assert [r["name"] for r in rows] == names + ["output"]
        floats = images.astype(np.float32).transpose(0, 3, 1, 2) / np.float32(255)
        tap = HookTap(net, torch.zeros(1, 1, 8, 8))

        def features(dx: int, dy: int) -> list[np.ndarray]:
            batch = np.stack([reference_shift(f, dx, dy, mode, np.float32(0.1)) for f in floats])
            with torch.no_grad():
                out, got = tap.run(torch.from_numpy((batch - 0.5) / 0.5), names)
            return [got[n].double().numpy() for n in names] + [out.double().numpy()]

        clean = features(0, 0)
        for j, (dx, dy) in enumerate(grid.shifts):
            moved = features(int(dx), int(dy))
            for i, (ref, got) in enumerate(zip(clean, moved)):
                pooled_ref = ref.mean(axis=(2, 3)) if ref.ndim == 4 else ref
                pooled_got = got.mean(axis=(2, 3)) if got.ndim == 4 else got
                inv = np.sqrt(((pooled_got - pooled_ref) ** 2).sum() / (pooled_ref**2).sum())
                assert rows[i]["shifts"][j]["invariance_error"] == pytest.approx(inv, rel=1e-4, abs=1e-7)
                r = rows[i]["factor"]
                if r is None or dx % r or dy % r:
                    assert rows[i]["shifts"][j]["equivariance_error"] is None
                    continue
                a, b = int(dx) // r, int(dy) // r
                h, w = ref.shape[2:]
                diff = norm = 0.0
                for y, x in itertools.product(range(h), range(w)):
                    if 0 <= y - b < h and 0 <= x - a < w:
                        diff += ((got[:, :, y, x] - ref[:, :, y - b, x - a]) ** 2).sum()
                        norm += (ref[:, :, y - b, x - a] ** 2).sum()
                eq = rows[i]["shifts"][j]["equivariance_error"]
                assert eq == pytest.approx(np.sqrt(diff / norm), rel=1e-4, abs=1e-6)


def test_exported_program_gives_the_same_profile(framed, tmp_path):
    net = build("lenet", pool="blur")
    program = torch.export.export(net, (torch.zeros(2, 1, 16, 16),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "lenet.pt2"
    torch.export.save(program, str(path))
    loaded = torch.export.load(str(path)).module()
    graph_tap = GraphTap(loaded)
    hook_tap = HookTap(net, torch.zeros(1, 1, 16, 16))
    assert default_layers(graph_tap.layers) == default_layers(hook_tap.layers) == [
        "conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "resize", "relu3"
    ]
    grid = build_grid({"dx": [-2, 1], "dy": [0, 1]})
    plan = SweepPlan(grid, "edge", 0.0, (0.0,), (1.0,), (16, 16))
    from_graph = run_layer_profile(loaded, framed, range(16), plan)
    from_hooks = run_layer_profile(net, framed, range(16), plan)
    assert from_graph.names == from_hooks.names and from_graph.factors == from_hooks.factors
    np.testing.assert_allclose(from_graph.inv_diff, from_hooks.inv_diff, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(from_graph.eq_diff, from_hooks.eq_diff, rtol=1e-5, atol=1e-12)


def test_named_layers_and_unreachable_formats(framed, tmp_path):
    net = build("lenet", pool="blur")
    grid = build_grid({"list": [[1, 0]]})
    plan = SweepPlan(grid, "zeros", 0.0, (0.0,), (1.0,), (16, 16))
    tally = run_layer_profile(net, framed, range(4), plan, ["pool1.blur", "conv1"])
    assert tally.names == ["conv1", "pool1.blur", "output"]  # forward order, whatever the request's
    with pytest.raises(SweepError, match=r"no layer named 'conv9'.*conv1, relu1, pool1.max"):
        run_layer_profile(net, framed, range(4), plan, ["conv9"])
    scripted = torch.jit.script(net)
    with pytest.raises(SweepError, match="TorchScript models do not expose"):
        run_layer_profile(scripted, framed, range(4), plan)
    with pytest.raises(SweepError, match="'exported'"):
        run_layer_profile(lambda x: x.flatten(1), framed, range(4), plan)


def test_a_profile_reports_progress_and_resumes_from_a_checkpoint(framed):
    net = build("lenet", pool="max")
    grid = build_grid({"dx": [-1, 1], "dy": [0, 1]})
    plan = SweepPlan(grid, "zeros", 0.0, (0.0,), (1.0,), (16, 16))
    whole = run_layer_profile(net, framed, range(12), plan, batch_size=8)
    progress, checkpoints = [], []
    run_layer_profile(net, framed, range(12), plan, batch_size=8, on_progress=progress.append,
                      on_chunk=lambda t, nxt: checkpoints.append((t.to_json(), nxt)))
    # (0, 0) in the grid: the reference forward stands for it, so each sample takes 6 images
    assert progress == [*range(8, 49, 8), *range(52, 73, 4)]
    assert [nxt for _, nxt in checkpoints] == [8, 12]
    saved, start = checkpoints[0]
    resumed = run_layer_profile(net, framed, range(12), plan, batch_size=8,
                                tally=LayerTally.from_json(saved), start=start)
    assert resumed.to_json() == whole.to_json()


def test_a_profile_stops_when_progress_raises(framed):
    plan = SweepPlan(build_grid({"dx": [-1, 1], "dy": [0, 0]}), "zeros", 0.0, (0.0,), (1.0,), (16, 16))
    seen = []

    def cancel(done: int) -> None:
        seen.append(done)
        raise InterruptedError

    with pytest.raises(InterruptedError):
        run_layer_profile(build("lenet", pool="max"), framed, range(12), plan, batch_size=4, on_progress=cancel)
    assert seen == [4]
