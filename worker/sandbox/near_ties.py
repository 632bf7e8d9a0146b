"""Near ties go to the model's own runtime, so that another runtime's predictions are the model's own.

Two float32 runtimes sum in different orders, so their logits differ by rounding. The
agreement rule (worker/sandbox/backends.py) bounds that difference by a tolerance per
batch; where a view's two best logits on the chosen runtime are further apart than twice
that bound, the reference's argmax is provably the same. A view closer than that (a near
tie, or a NaN) is forwarded again on the reference and its logits replaced: every argmax
a sweep counts is then the reference's, as long as the bound holds, which validation and
each chunk's real-data check measure.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from worker.sandbox.backends import ABS_TOLERANCE, REL_TOLERANCE

Forward = Callable[[torch.Tensor], torch.Tensor]


def near_tie_rows(logits: torch.Tensor) -> torch.Tensor:
    """Indices of the rows (images) with a near tie in any position (any pixel, for segmentation)."""
    if logits.shape[1] < 2:
        return torch.zeros(0, dtype=torch.long)
    best = logits.detach().float().topk(2, dim=1).values
    margin = best[:, 0] - best[:, 1]
    bound = 2 * (ABS_TOLERANCE + REL_TOLERANCE * logits.detach().float().abs().amax(dim=1))
    # not (margin > bound): a NaN margin counts as a tie too
    near = ~(margin > bound)
    return near.reshape(len(logits), -1).any(dim=1).nonzero().flatten()


class NearTiesOnReference:
    """`chosen` for every view, except near ties, which `reference` forwards again."""

    def __init__(self, chosen: Forward, reference: Forward) -> None:
        self.chosen, self.reference = chosen, reference
        self.rerun = 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        logits = self.chosen(batch)
        rows = near_tie_rows(logits)
        if len(rows):
            logits = logits.clone()
            logits[rows.to(logits.device)] = self.reference(batch[rows.to(batch.device)]).to(logits.dtype)
            self.rerun += len(rows)
        return logits
