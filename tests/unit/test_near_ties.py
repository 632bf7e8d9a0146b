"""Near ties are forwarded again on the model's own runtime: argmaxes equal the reference's."""

from __future__ import annotations

import torch

from worker.sandbox.backends import ABS_TOLERANCE, REL_TOLERANCE
from worker.sandbox.near_ties import NearTiesOnReference, near_tie_rows


def _reference(batch: torch.Tensor) -> torch.Tensor:
    """Logits whose two best are exactly tied on every third row, apart by 1.0 elsewhere."""
    logits = batch[:, :4].clone()
    logits[::3, 1] = logits[::3, 0]
    return logits


def _perturbed(batch: torch.Tensor) -> torch.Tensor:
    """The reference plus a difference within the agreement tolerance: another runtime's rounding."""
    logits = _reference(batch)
    bound = ABS_TOLERANCE + REL_TOLERANCE * logits.abs().amax(dim=1, keepdim=True)
    signs = torch.where(torch.arange(4) % 2 == 0, -1.0, 1.0)  # pushes column 1 above column 0
    return logits + 0.9 * bound * signs


def _batch(rows: int = 30) -> torch.Tensor:
    generator = torch.Generator().manual_seed(5)
    batch = torch.randn(rows, 4, generator=generator)
    batch[:, 0] = batch.amax(dim=1) + 1.0  # column 0 leads by at least 1.0
    return batch


def test_ties_within_the_tolerance_flip_the_argmax_without_the_guard():
    batch = _batch()
    assert not torch.equal(_perturbed(batch).argmax(1), _reference(batch).argmax(1))


def test_near_ties_are_re_run_on_the_reference_and_only_they():
    batch = _batch()
    guarded = NearTiesOnReference(_perturbed, _reference)
    logits = guarded(batch)
    assert torch.equal(logits.argmax(1), _reference(batch).argmax(1))
    assert guarded.rerun == len(range(0, 30, 3))
    far = torch.ones(30, dtype=torch.bool)
    far[::3] = False
    assert torch.equal(logits[far], _perturbed(batch)[far])  # the chosen runtime's own logits elsewhere


def test_a_nan_row_counts_as_a_tie():
    logits = torch.tensor([[3.0, 1.0], [float("nan"), 1.0], [2.0, 2.0 + 1e-9]])
    assert near_tie_rows(logits).tolist() == [1, 2]


def test_a_segmentation_image_with_one_tied_pixel_is_re_run():
    logits = torch.zeros(3, 2, 4, 4)
    logits[:, 0] = 5.0
    logits[1, 1, 2, 3] = 5.0  # image 1 has one tied pixel
    assert near_tie_rows(logits).tolist() == [1]


def test_one_output_column_has_no_ties():
    assert near_tie_rows(torch.randn(5, 1)).numel() == 0
