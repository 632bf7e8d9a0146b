"""The cage's chunk runner: a layer profile follows the sweep, reports progress and resumes from its checkpoints."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from core.grid import build_sweep_grid
from tests.models import DIGITS_INPUT, digits_arrays
from worker.engine.layers import LAYERS
from worker.sandbox import results
from worker.sandbox.runner import Runner

REQUEST = {"shifts": {"dx": [-1, 1], "dy": [0, 1], "step": 1}, "padding": "zeros", "fill": 0.0, LAYERS: True}
SPAN = 40


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    images, labels = digits_arrays()
    folder = tmp_path_factory.mktemp("digits")
    np.save(folder / "images.npy", images[:SPAN])
    np.save(folder / "targets.npy", labels[:SPAN])
    return {"images": str(folder / "images.npy"), "targets": str(folder / "targets.npy")}


def _runner(paths: dict[str, str], events: list[tuple[str, dict]]) -> Runner:
    """A runner as `load` leaves it for a torch model on its own runtime."""
    setup = {"threads": 1, "device": "cpu", "paths": paths,
             "model": {"format": "state_dict", "input": DIGITS_INPUT, "task": "classification", "backend": "torch"}}
    runner = Runner(setup, lambda event, **fields: events.append((event, fields)))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.LazyLinear(10)).eval()
    model(torch.zeros(1, 1, DIGITS_INPUT["height"], DIGITS_INPUT["width"]))
    runner.model = runner.forward = model
    return runner


def _sweep(runner: Runner, position: int = 0, tally: dict | None = None) -> dict:
    job = {"op": "sweep", "request": REQUEST, "start": 0, "stop": SPAN, "position": position, "tally": tally,
           "batch_size": 16, "checkpoint_every": 0.0}
    return runner.run(job)["tally"]


def test_a_layer_profile_checkpoints_after_the_sweep_and_a_retry_resumes_it(paths):
    events: list[tuple[str, dict]] = []
    whole = _sweep(_runner(paths, events))
    checkpoints = [fields for event, fields in events if event == "checkpoint"]
    profiled = [c for c in checkpoints if LAYERS in c["tally"]]
    swept = [c for c in checkpoints if LAYERS not in c["tally"]]
    assert [c["next_start"] for c in swept] == [16, 32, 40]
    # The profile's checkpoints come once the sweep is done, and hold its finished tally.
    assert [(c["next_start"], c["tally"][LAYERS]["n"]) for c in profiled] == [(SPAN, 16), (SPAN, 32), (SPAN, 40)]
    assert all({k: v for k, v in c["tally"].items() if k != LAYERS} == swept[-1]["tally"] for c in profiled)
    # While the profile runs, progress stays at the sweep's images: the worker keeps writing, nothing counts twice.
    images = SPAN * build_sweep_grid(REQUEST).images_per_sample
    progress = [fields["done"] for event, fields in events if event == "progress"]
    assert progress[-1] == images and progress.count(images) > 1
    num_shifts = build_sweep_grid(REQUEST).size
    for checkpoint in checkpoints:
        results.check_checkpoint(checkpoint["tally"], "classification", num_shifts, checkpoint["next_start"], SPAN,
                                 layers=True)
    for resume_at in (swept[0], profiled[0]):
        resumed_events: list[tuple[str, dict]] = []
        resumed = _sweep(_runner(paths, resumed_events), resume_at["next_start"], resume_at["tally"])
        assert resumed == whole
    # Resumed inside the profile: the sweep is not run again, the profile goes on from its checkpoint.
    assert [f["next_start"] for e, f in resumed_events if e == "checkpoint"] == [SPAN, SPAN]


def test_a_checkpoint_with_a_profile_nobody_asked_for_or_before_the_sweep_is_done_is_refused(paths):
    events: list[tuple[str, dict]] = []
    _sweep(_runner(paths, events))
    checkpoints = [fields for event, fields in events if event == "checkpoint"]
    first, profiled = checkpoints[0], next(c for c in checkpoints if LAYERS in c["tally"])
    num_shifts = build_sweep_grid(REQUEST).size
    with pytest.raises(results.BadResult, match="nobody asked"):
        results.check_checkpoint(profiled["tally"], "classification", num_shifts, SPAN, SPAN, layers=False)
    early = {**first["tally"], LAYERS: profiled["tally"][LAYERS]}
    with pytest.raises(results.BadResult, match="not over samples the sweep has done"):
        results.check_checkpoint(early, "classification", num_shifts, first["next_start"], SPAN, layers=True)
    beyond = {**profiled["tally"], LAYERS: {**profiled["tally"][LAYERS], "n": SPAN + 1}}
    with pytest.raises(results.BadResult, match="not over samples the sweep has done"):
        results.check_checkpoint(beyond, "classification", num_shifts, SPAN, SPAN, layers=True)


class _Reporter:
    """What worker.evaluations writes, kept in lists (the real one writes the chunk row)."""

    def __init__(self, total: int) -> None:
        self.claimed = SimpleNamespace(start=0, stop=SPAN, total=total)
        self.progressed: list[int] = []
        self.checkpoints: list[tuple[dict, int]] = []

    def progress(self, done: int) -> None:
        self.progressed.append(done)

    def checkpoint(self, tally: dict, next_start: int) -> None:
        self.checkpoints.append((tally, next_start))


def test_the_worker_takes_the_profile_s_progress_and_checkpoints(paths):
    from worker.evaluations import _on_sweep_event
    from worker.sandbox.cage import CageFailure

    events: list[tuple[str, dict]] = []
    _sweep(_runner(paths, events))
    grid = build_sweep_grid(REQUEST)
    asked, unasked = _Reporter(SPAN * grid.images_per_sample), _Reporter(SPAN * grid.images_per_sample)
    for event, fields in events:
        _on_sweep_event(asked, "classification", grid.size, True, {"event": event, **fields})
    assert [n for _, n in asked.checkpoints] == [16, 32, 40, 40, 40, 40]
    assert asked.progressed[-1] == SPAN * grid.images_per_sample
    with pytest.raises(CageFailure, match="checkpoint from the sandbox is malformed"):
        for event, fields in events:
            _on_sweep_event(unasked, "classification", grid.size, False, {"event": event, **fields})
    assert len(unasked.checkpoints) == 3
