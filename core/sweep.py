"""The facts of a sweep request that every layer shares: padding modes, a mean or std per channel, samples swept."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeVar, get_args

Padding = Literal["zeros", "circular", "reflect", "edge", "crop"]
PADDING_MODES: tuple[str, ...] = get_args(Padding)
T = TypeVar("T")


def per_channel(values: Sequence[T], channels: int) -> list[T] | None:
    """A model's mean or std for each of `channels` channels: one value serves all; None when the count fits neither."""
    values = list(values)
    if len(values) == 1:
        return values * channels
    return values if len(values) == channels else None


def samples_swept(dataset_size: int, max_samples: int | None) -> int:
    """How many samples a sweep runs over: the whole dataset, or its seeded subset of `max_samples`."""
    return min(max_samples or dataset_size, dataset_size)
