"""Fixtures: the real stack on PostgreSQL + Redis, models and data made on the spot."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import Stack, running_stack

warnings.filterwarnings("ignore", category=DeprecationWarning, module="torch.jit")


@pytest.fixture(scope="session")
def pg_stack(tmp_path_factory) -> Iterator[Stack]:
    """API + one worker + the scheduler on this machine's PostgreSQL and Redis, in fresh namespaces."""
    with running_stack(tmp_path_factory.mktemp("pg-stack")) as stack:
        yield stack


@pytest.fixture(scope="session")
def digits_model_file(tmp_path_factory) -> Path:
    """A trained digits CNN saved as TorchScript."""
    from tests.models import save_torchscript, trained_digits_cnn

    return save_torchscript(trained_digits_cnn(), tmp_path_factory.mktemp("models") / "digits_cnn.pt")
