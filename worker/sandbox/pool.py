"""The worker process's cages: one warm cage, kept for the next chunk of the same model and data.

Starting a cage costs about a second (Python and torch imported afresh), so a
worker keeps the last one while its jobs use the same model on the same
dataset. A cage only ever sees one model file and one dataset, both of one
tenant, so keeping it leaks nothing between tenants. Any failure ends it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.settings import Settings
from worker.sandbox.cage import Cage, CageConfig

# A kept cage is retired once it has used this share of its CPU limit, so the
# limit bounds one job, not the sum of every job the cage ever ran.
_RETIRE_AT_CPU_SHARE = 0.5


def cage_device(setting: str) -> str:
    """The device the cage runs on: `auto` means CUDA only where this host has an NVIDIA driver."""
    if setting == "auto":
        return "cuda" if Path("/dev/nvidiactl").exists() else "cpu"
    return setting


def cage_config(settings: Settings) -> CageConfig:
    """The cage's bounds, from the settings."""
    return CageConfig(
        enabled=settings.sandbox,
        memory_bytes=settings.sandbox_memory_bytes,
        cpu_seconds=settings.sandbox_cpu_seconds,
        wall_seconds=settings.sandbox_wall_seconds,
        batch_seconds=settings.sandbox_batch_seconds,
        tmp_bytes=settings.sandbox_tmp_bytes,
        threads=settings.torch_threads,
        device=cage_device(settings.device),
    )


def batch_deadline(config: CageConfig, seconds_per_image: float | None, batch_size: int) -> float:
    """How long one forward batch may take: ten times its measured time, and never under the floor."""
    if seconds_per_image is None:
        return max(config.batch_seconds, config.wall_seconds)
    return max(config.batch_seconds, 10.0 * seconds_per_image * batch_size)


class CagePool:
    """At most one live cage, keyed by what it was started with."""

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.cage: Cage | None = None

    def take(self, key: tuple[Any, ...], inputs: dict[str, Path], model: dict[str, Any],
             config: CageConfig) -> tuple[Cage, bool]:
        """A cage for `key`, and whether it was just started (and so has no model loaded yet)."""
        if self.cage is not None and self.key == key and self.cage.alive:
            return self.cage, False
        self.discard()
        self.cage = Cage(inputs, model, config)
        self.key = key
        return self.cage, True

    def release(self, cage: Cage) -> None:
        """Keep the cage for the next job, unless it is spent."""
        if cage is self.cage and cage.cpu_seconds >= _RETIRE_AT_CPU_SHARE * cage.config.cpu_seconds:
            self.discard()

    def discard(self) -> None:
        if self.cage is not None:
            self.cage.close()
        self.cage, self.key = None, None


POOL = CagePool()
