"""How sweeps are split into chunks."""

from __future__ import annotations

import pytest

from core.chunking import MAX_CHUNKS, chunk_bounds


@pytest.mark.parametrize("samples,per_sample,chunk_images", [
    (1797, 49, 20_000), (5000, 121, 20_000), (20, 5, 20_000), (3, 1000, 1), (100_000, 81, 1000), (1, 1, 1),
])
def test_chunks_cover_every_sample_once_in_a_power_of_two_of_near_equal_parts(samples, per_sample, chunk_images):
    bounds = chunk_bounds(samples, per_sample, chunk_images)
    assert bounds[0][0] == 0 and bounds[-1][1] == samples
    assert all(stop == start for (_, stop), (start, _) in zip(bounds, bounds[1:]))
    count = len(bounds)
    assert count & (count - 1) == 0 and count <= min(MAX_CHUNKS, samples)
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1
    if count > 1:
        assert samples * per_sample // count >= chunk_images


def test_a_small_sweep_is_one_chunk_and_a_large_one_splits():
    assert chunk_bounds(20, 5, 20_000) == [(0, 20)]
    assert len(chunk_bounds(5000, 121, 20_000)) == 16
