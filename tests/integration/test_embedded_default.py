"""The README's run command (`scripts/up`) on the embedded default, driven over HTTP, then stopped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.models import DIGITS_INPUT, circular_invariant_cnn, save_torchscript
from tests.stack import ROOT, ApiSession, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """`scripts/up --port N` in a fresh SHIFTSCORE_HOME: SQLite and the embedded Redis."""
    home = tmp_path_factory.mktemp("embedded")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIFTSCORE_")}
    env.update({"SHIFTSCORE_HOME": str(home), "SHIFTSCORE_PROGRESS_INTERVAL": "0.1"})
    log = (home / "up.log").open("w+")
    process = subprocess.Popen(
        [str(ROOT / "scripts" / "up"), "--port", str(port)], cwd=ROOT, env=env,
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    token = None
    deadline = time.monotonic() + 240  # a fresh checkout installs first
    while time.monotonic() < deadline and token is None:
        assert process.poll() is None, Path(log.name).read_text()[-3000:]
        match = re.search(r"^token: (\S+)$", Path(log.name).read_text(), re.M)
        token = match.group(1) if match else None
        time.sleep(0.3)
    assert token, "scripts/up printed no token: " + Path(log.name).read_text()[-3000:]
    output = Path(log.name).read_text()
    assert f"http://127.0.0.1:{port}" in output
    try:
        yield ApiSession(f"http://127.0.0.1:{port}", token), home, process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)


def test_embedded_default_runs_a_sweep(embedded, tmp_path):
    api, home, _ = embedded
    assert (home / "shiftscore.sqlite3").exists()
    ready = requests.get(api.base + "/readyz", timeout=5).json()
    assert ready["checks"] == {"database": "ok", "broker": "ok"}
    model = api.wait_model(api.upload_model(save_torchscript(circular_invariant_cnn(), tmp_path / "m.pt"),
                                            DIGITS_INPUT)["id"])
    assert model["status"] == "ready", model
    done = api.wait_evaluation(api.post("/v1/evaluations", json={
        "model_id": model["id"], "dataset_id": "digits", "padding": "circular",
        "shifts": {"dx": [-2, 2], "dy": [-2, 2]}, "max_samples": 100, "seed": 1,
    }).json()["id"])
    assert done["status"] == "succeeded", done
    assert done["summary"]["consistency"] == 1.0 and done["summary"]["num_samples"] == 100
    assert len(api.get(f"/v1/evaluations/{done['id']}/shifts").json()["items"]) == 25


def test_embedded_default_takes_an_npz_upload(embedded, tmp_path):
    api, _, _ = embedded
    path = tmp_path / "tiny.npz"
    np.savez(path, images=np.zeros((3, 8, 8), np.uint8), labels=np.array([0, 1, 2]))
    assert api.upload_dataset(path, "tiny")["num_samples"] == 3


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line or environment mentions `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            blob = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in blob:
            found.append(int(proc.name))
    return found


def test_stopping_up_stops_every_process(embedded):
    api, home, process = embedded
    assert _processes_mentioning(str(home)), "the check below would see nothing"
    os.killpg(process.pid, signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    deadline = time.monotonic() + 10
    while _processes_mentioning(str(home)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_mentioning(str(home)) == []
    with pytest.raises(requests.ConnectionError):
        requests.get(api.base + "/healthz", timeout=2)
