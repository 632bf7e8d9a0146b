"""A sweep chunk's runtime checked on real images: an export that agrees on noise and not on digits falls back."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import numpy as np
import pytest
import torch
from torch import nn

from core.grid import build_sweep_grid
from core.runtimes import REAL_DATA_CHECK, REAL_DATA_ROWS, real_data_record
from db import jobs
from db.migrate import upgrade
from db.models import Blob, Dataset, Evaluation, Model, Tenant
from db.session import dispose_engine, session_scope, use_database
from tests.models import DIGITS_INPUT, digits_arrays
from worker import completion
from worker.engine.early_exit import run_worst_case
from worker.engine.segmentation import run_segmentation_sweep
from worker.engine.sweep import run_sweep
from worker.engine.tally import Tally
from worker.sandbox import backends
from worker.sandbox.near_ties import NearTiesOnReference
from worker.sandbox.runner import Runner, plan_for

CPU = torch.device("cpu")
REQUEST = {"shifts": {"dx": [-1, 1], "dy": [-1, 1], "step": 1}, "padding": "zeros", "fill": 0.0}
# A black pixel as the engine feeds it: (0 − mean) / std in float32, DIGITS_INPUT's mean and std.
BLACK = float((torch.zeros((), dtype=torch.float32) - DIGITS_INPUT["mean"][0]) / DIGITS_INPUT["std"][0])


class _AtMostBlack(torch.autograd.Function):
    """x ≤ black as 0/1 in torch, exported as ONNX Less (x < black): an exporter that gets a tie wrong.

    The two differ only on pixels exactly at black. Seeded noise never lands on it; real
    images do everywhere in their background, once normalized exactly as the engine does.
    """

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001
        return (x <= BLACK).to(x.dtype)

    @staticmethod
    def symbolic(g, x):  # noqa: ANN001
        black = g.op("Constant", value_t=torch.tensor(BLACK))
        return g.op("Cast", g.op("Less", x, black), to_i=1)  # 1: ONNX's FLOAT


class DarkNet(nn.Module):
    """A small CNN plus a linear term on where the image is black."""

    def __init__(self, ties: bool = True) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.ties = ties
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.head = nn.Linear(6 * 4 * 4, 10)
        self.dark = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1))
        dark = _AtMostBlack.apply(x) if self.ties else (x < BLACK + 0.5).to(x.dtype)
        return logits + self.dark(dark.flatten(1))


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[np.ndarray, np.ndarray, dict[str, str]]:
    images, labels = digits_arrays()
    folder = tmp_path_factory.mktemp("digits")
    np.save(folder / "images.npy", images)
    np.save(folder / "targets.npy", labels)
    return images, labels, {"images": str(folder / "images.npy"), "targets": str(folder / "targets.npy")}


def _runner(model: nn.Module, paths: dict[str, str], events: list[str]) -> Runner:
    """A cage's runner as `load` leaves it for a torch model whose chosen runtime is ONNX Runtime."""
    setup = {"threads": 1, "device": "cpu", "paths": paths,
             "model": {"format": "state_dict", "input": DIGITS_INPUT, "task": "classification",
                       "backend": backends.ONNXRUNTIME}}
    runner = Runner(setup, lambda event, **_: events.append(event))
    runner.model = model
    runner.forward = backends.onnx_export(model, backends.validation_batch(DIGITS_INPUT, CPU), 1)
    return runner


def _sweep(runner: Runner, start: int, stop: int, request: dict | None = None, position: int | None = None,
           tally: dict | None = None) -> dict:
    job = {"op": "sweep", "request": request or REQUEST, "start": start, "stop": stop,
           "position": start if position is None else position, "tally": tally, "batch_size": 64,
           "checkpoint_every": 1e9}
    return runner.run(job)["tally"]


def _plain(result: dict) -> dict:
    return {key: value for key, value in result.items() if key != REAL_DATA_CHECK}


def _eager(model: nn.Module, images: np.ndarray, labels: np.ndarray, rows: np.ndarray, **options) -> dict:
    plan = plan_for(REQUEST, DIGITS_INPUT)
    return run_sweep(model, images, labels, rows, plan, batch_size=64, **options).to_json()


def test_an_export_that_agrees_on_noise_but_not_on_digits_falls_back_to_torch(digits):
    images, labels, paths = digits
    model = DarkNet().eval()
    # Validation, on its seeded noise, keeps the export: no noise pixel is exactly black.
    record, _ = backends.choose("state_dict", model, DIGITS_INPUT, CPU)
    assert record["candidates"][backends.ONNXRUNTIME]["kept"] is True
    events: list[str] = []
    runner = _runner(model, paths, events)
    result = _sweep(runner, 0, 600)
    check = result[REAL_DATA_CHECK]
    assert check["rows"] == REAL_DATA_ROWS and check["agrees"] is False
    assert check["argmax_equal"] < check["rows"] or check["max_abs_diff"] > check["tolerance"]
    rows = np.arange(600)
    eager = _eager(model, images, labels, rows)
    assert _plain(result) == eager  # the model's own results, exactly
    # ... which the export would not have given: the fall-back changed the outcome.
    assert _eager(runner.forward, images, labels, rows) != eager
    assert "alive" in events  # the check's forwards keep the cage's heartbeat


def test_an_export_that_agrees_on_digits_runs_the_chunk_on_onnxruntime(digits):
    images, labels, paths = digits
    model = DarkNet(ties=False).eval()
    runner = _runner(model, paths, [])
    result = _sweep(runner, 100, 400)
    check = result[REAL_DATA_CHECK]
    assert check["agrees"] is True and check["argmax_equal"] == check["rows"] == REAL_DATA_ROWS
    assert check["max_abs_diff"] <= check["tolerance"]
    # ONNX Runtime's logits, except the near ties, which torch eager forwarded again.
    assert _plain(result) == _eager(NearTiesOnReference(runner.forward, model), images, labels, np.arange(100, 400))
    eager = _eager(model, images, labels, np.arange(100, 400))
    for key in ("shift_correct", "shift_agree", "clean_correct"):
        assert _plain(result)[key] == eager[key], key


def test_a_runtime_that_raises_on_the_real_images_is_a_disagreement(digits):
    """A fused graph can fail at a batch shape validation did not try: the chunk runs on torch eager."""
    images, labels, paths = digits
    model = DarkNet(ties=False).eval()
    runner = _runner(model, paths, [])

    def failing(batch: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("could not set attribute to the op")

    runner.forward = failing
    result = _sweep(runner, 0, 300)
    check = result[REAL_DATA_CHECK]
    assert check["agrees"] is False and check["max_abs_diff"] is None
    assert _plain(result) == _eager(model, images, labels, np.arange(300))


def test_a_retried_chunk_checks_the_same_samples_and_decides_alike(digits):
    """Resumed from a checkpoint, the chunk still checks its first samples: the same figures, the same runtime."""
    images, labels, paths = digits
    model = DarkNet().eval()
    runner = _runner(model, paths, [])
    first = _sweep(runner, 0, 300)
    checkpoint = _eager(model, images, labels, np.arange(0, 120))
    resumed = _sweep(runner, 0, 300, position=120, tally=checkpoint)
    assert resumed[REAL_DATA_CHECK] == first[REAL_DATA_CHECK]
    assert _plain(resumed) == _plain(first) == _eager(model, images, labels, np.arange(300))


def test_a_short_chunk_checks_all_its_samples_and_early_exit_falls_back_too(digits):
    images, labels, paths = digits
    model = DarkNet().eval()
    runner = _runner(model, paths, [])
    request = {**REQUEST, "early_exit": True}
    result = _sweep(runner, 40, 90, request=request)
    assert result[REAL_DATA_CHECK]["rows"] == 50 and result[REAL_DATA_CHECK]["agrees"] is False
    plan = plan_for(request, DIGITS_INPUT)
    expected = run_worst_case(model, images, labels, np.arange(40, 90), plan, batch_size=64).to_json()
    assert _plain(result) == expected


class DarkSegmenter(nn.Module):
    """Three classes per pixel from a convolution, plus a push towards class 0 where the pixel is black."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(1, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        push = torch.tensor([4.0, 0.0, 0.0]).view(1, 3, 1, 1)
        return self.conv(x) + _AtMostBlack.apply(x) * push


def test_a_segmenter_is_checked_pixel_by_pixel_and_falls_back(digits, tmp_path):
    images, _, paths = digits
    masks = np.minimum(images // 86, 2).astype(np.int64)  # background, stroke edge, stroke
    np.save(tmp_path / "masks.npy", masks)
    model = DarkSegmenter().eval()
    assert backends.choose("state_dict", model, DIGITS_INPUT, CPU)[0]["candidates"][backends.ONNXRUNTIME]["kept"]
    runner = _runner(model, {**paths, "targets": str(tmp_path / "masks.npy")}, [])
    runner.fields = {**runner.fields, "task": "segmentation"}
    result = _sweep(runner, 0, 300)
    check = result[REAL_DATA_CHECK]
    assert check["agrees"] is False and check["argmax_equal"] < check["rows"] == REAL_DATA_ROWS
    plan = plan_for(REQUEST, DIGITS_INPUT)
    expected = run_segmentation_sweep(model, images, masks, np.arange(300), plan, batch_size=64).to_json()
    assert _plain(result) == expected
    exported = run_segmentation_sweep(runner.forward, images, masks, np.arange(300), plan, batch_size=64)
    assert exported.to_json() != expected


def test_the_model_own_runtime_is_not_checked(digits):
    _, _, paths = digits
    runner = _runner(DarkNet().eval(), paths, [])
    runner.forward = runner.model
    assert REAL_DATA_CHECK not in _sweep(runner, 0, 50)


def test_chunk_checks_add_up_once_per_chunk():
    agreed = {"rows": 256, "argmax_equal": 256, "max_abs_diff": 1e-6, "tolerance": 1e-3, "agrees": True}
    closer = {**agreed, "rows": 100, "argmax_equal": 100, "max_abs_diff": 9e-4}
    failed = {"rows": 256, "argmax_equal": 250, "max_abs_diff": 2.0, "tolerance": 5e-3, "agrees": False}
    record = real_data_record([agreed, closer])
    assert record == {REAL_DATA_CHECK: {"chunks": 2, "rows": 356, "argmax_equal": 356, "max_abs_diff": 9e-4,
                                        "tolerance": 1e-3, "fell_back_chunks": 0, "near_tie_rows": 0}}
    record = real_data_record([{**agreed, "near_tie_rows": 3}, {**closer, "near_tie_rows": 4}])
    assert record[REAL_DATA_CHECK]["near_tie_rows"] == 7
    record = real_data_record([agreed, failed, closer])
    assert record[REAL_DATA_CHECK]["fell_back_chunks"] == 1 and record[REAL_DATA_CHECK]["rows"] == 612
    assert (record[REAL_DATA_CHECK]["max_abs_diff"], record[REAL_DATA_CHECK]["tolerance"]) == (2.0, 5e-3)
    assert "1 of 3 chunks" in record["note"] and "torch eager" in record["note"]


def test_the_merge_reads_a_tally_past_its_check():
    """completion.merge_all hands whole stored tallies, the check riding along, to from_json."""
    assert Tally.from_json({**Tally(num_shifts=build_sweep_grid(REQUEST).size).to_json(),
                            REAL_DATA_CHECK: {"rows": 0}}).n == 0



@pytest.fixture
def database(tmp_path) -> Iterator[str]:
    """A migrated SQLite database with one queued evaluation of a model whose chosen runtime is ONNX Runtime."""
    url = f"sqlite:///{tmp_path / 'chunks.sqlite3'}"
    upgrade(url)
    use_database(url)
    with session_scope() as session:
        tenant = Tenant(name="alice", webhook_secret="s")
        session.add_all([tenant, Blob(sha256="a" * 64, size=1, data=b"x")])
        session.flush()
        session.add(Model(id="m1", tenant_id=tenant.id, name="m", format="state_dict", sha256="a" * 64,
                          input_spec=DIGITS_INPUT))
        session.add(Dataset(id="d1", tenant_id=tenant.id, name="digits", sha256="a" * 64, num_samples=600))
        session.flush()
        grid = build_sweep_grid(REQUEST)
        session.add(Evaluation(id="e1", tenant_id=tenant.id, model_id="m1", dataset_id="d1", request=REQUEST,
                               sweep_key="k", request_sha256="r", num_samples=600,
                               images_per_sample=grid.images_per_sample,
                               progress_total=600 * grid.images_per_sample, runtime=RUNTIME))
        session.flush()
        jobs.plan_chunks(session, "e1", lambda n, _: [(0, 300), (300, n)])
    yield url
    dispose_engine()


RUNTIME = {"backend": "onnxruntime", "batch_size": 64, "forced": False,
           "agreement": {"rows": 32, "argmax_equal": 32, "max_abs_diff": 0.0, "tolerance": 1e-4}}


def _claim(index: int) -> jobs.ClaimedChunk:
    with session_scope() as session:
        claimed = jobs.claim_chunk(session, "e1", index, "w", timedelta(seconds=60), max_attempts=5)
    assert claimed is not None
    return claimed


def test_retried_chunks_are_counted_once_in_the_evaluations_record(database, digits):
    """A chunk taken over by a second attempt, and a result delivered twice: two chunks, counted once each."""
    _, _, paths = digits
    runner = _runner(DarkNet().eval(), paths, [])
    grid = build_sweep_grid(REQUEST)
    results = [_sweep(runner, 0, 300), _sweep(runner, 300, 600)]
    first = _claim(0)
    with session_scope() as session:  # its worker went silent: the reconciler queues the chunk again
        assert jobs.requeue_stale_chunks(session, jobs.utcnow() + timedelta(seconds=1), 5) == [("e1", 0)]
    second = _claim(0)
    with pytest.raises(jobs.LostClaim):
        completion.complete_chunk("classification", first, results[0], 0, grid)
    completion.complete_chunk("classification", second, results[0], 0, grid)
    with pytest.raises(jobs.LostClaim):  # the same result again, after a lost answer
        completion.complete_chunk("classification", second, results[0], 0, grid)
    last = _claim(1)
    completion.complete_chunk("classification", last, results[1], 0, grid)
    with session_scope() as session:
        evaluation = session.get(Evaluation, "e1")
        assert evaluation.status == "succeeded"
        runtime = evaluation.runtime
    checks = [result[REAL_DATA_CHECK] for result in results]
    assert {key: runtime[key] for key in RUNTIME} == RUNTIME  # what was fixed at submission stays
    assert runtime[REAL_DATA_CHECK]["chunks"] == 2 and runtime[REAL_DATA_CHECK]["fell_back_chunks"] == 2
    assert runtime[REAL_DATA_CHECK]["rows"] == sum(check["rows"] for check in checks) == 2 * REAL_DATA_ROWS
    assert runtime[REAL_DATA_CHECK]["argmax_equal"] == sum(check["argmax_equal"] for check in checks)
    assert "2 of 2 chunks" in runtime["note"]
