"""How a sweep's samples are split into chunks that separate workers run. Pure arithmetic."""

from __future__ import annotations

MAX_CHUNKS = 64


def chunk_bounds(
    num_samples: int, images_per_sample: int, chunk_images: int, max_chunks: int = MAX_CHUNKS
) -> list[tuple[int, int]]:
    """`[start, stop)` sample ranges of near-equal size, each at least `chunk_images` images.

    The count is a power of two, so 1, 2, 4 … workers divide the sweep evenly and
    none idles at the end while another runs a last odd chunk.
    """
    total = num_samples * max(1, images_per_sample)
    count = 1
    while count * 2 <= min(max_chunks, num_samples) and total // (count * 2) >= chunk_images:
        count *= 2
    return [(i * num_samples // count, (i + 1) * num_samples // count) for i in range(count)]
