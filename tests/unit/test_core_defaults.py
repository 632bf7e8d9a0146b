"""How a worker shares its cores by default: one process, every core as its threads."""

from __future__ import annotations

import os

import pytest

from core import settings as settings_module
from core.settings import Settings


@pytest.fixture
def cores(monkeypatch):
    def use(count: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(count)), raising=False)
    return use


@pytest.mark.parametrize("count, processes, threads", [(1, 1, 1), (2, 1, 2), (16, 1, 16)])
def test_defaults_run_one_process_on_every_core(cores, count, processes, threads):
    cores(count)
    defaults = Settings.from_env({})
    assert (defaults.worker_concurrency, defaults.torch_threads) == (processes, threads)


def test_a_chosen_concurrency_gets_the_remaining_cores_as_threads(cores):
    cores(8)
    chosen = Settings.from_env({"SHIFTSCORE_WORKER_CONCURRENCY": "1"})
    assert (chosen.worker_concurrency, chosen.torch_threads) == (1, 8)
    assert Settings.from_env({"SHIFTSCORE_WORKER_CONCURRENCY": "3"}).torch_threads == 2
    assert Settings.from_env({"SHIFTSCORE_WORKER_CONCURRENCY": "16"}).torch_threads == 1


def test_explicit_threads_win(cores):
    cores(8)
    assert Settings.from_env({"SHIFTSCORE_TORCH_THREADS": "5"}).torch_threads == 5


def test_usable_cores_follow_the_affinity_mask(cores):
    cores(3)
    assert settings_module.usable_cores() == 3
