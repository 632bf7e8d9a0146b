"""Datasets ingested by a worker stay within SHIFTSCORE_MAX_DECODED_BYTES and are never held whole.

Each upload is stored as a `processing` dataset and goes through the worker's `ingest_dataset`
(parse, write the images to disk, store them in SQLite) in a fresh process, whose peak resident
memory is read from /proc; an address-space cap keeps a regression from taking the machine with it.
"""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
ADDRESS_SPACE_CAP = 3 * 1024 * MiB

SCRIPT = r"""
import json, sys, time
from pathlib import Path

from core.settings import get_settings
from db.migrate import upgrade

upgrade(get_settings().database_url)
from db.blobs import put_blob_file
from db.models import Dataset, Tenant
from db.session import session_scope
from db.tenants import create_token
from worker.ingestion import ingest_dataset


def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024


with session_scope() as session:
    create_token(session, "t")
    tenant = session.query(Tenant).one().id
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # the peak so far (imports, migrations) is not the upload's
base = status("VmRSS")
path = Path(sys.argv[1])
started = time.monotonic()
with session_scope() as session:
    dataset = Dataset(tenant_id=tenant, name="upload", sha256="x", status="processing", filename=path.name,
                      upload_blob=put_blob_file(session, path))
    session.add(dataset)
    session.flush()
    dataset_id = dataset.id
ingest_dataset(dataset_id, "test-worker")
with session_scope() as session:
    dataset = session.get(Dataset, dataset_id)
    if dataset.status == "ready":
        outcome = {"accepted": [dataset.num_samples, dataset.height, dataset.width, dataset.channels]}
    else:
        outcome = {"refused": dataset.error}
outcome.update(seconds=time.monotonic() - started, peak_delta=status("VmHWM") - base)
print(json.dumps(outcome))
"""


def ingest(path: Path, home: Path, script: str = SCRIPT) -> dict:
    """`script` (by default the worker's ingestion) on `path` in a new process, decoding at most 512 MiB."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIFTSCORE_")}
    env.update(SHIFTSCORE_HOME=str(home), PYTHONPATH=str(ROOT), SHIFTSCORE_MAX_DECODED_BYTES=str(512 * MiB))
    home.mkdir()
    run = subprocess.run(
        [sys.executable, "-c", script, str(path)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_CAP, ADDRESS_SPACE_CAP)),
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def solid_png(side: int, colour=(200, 30, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buffer, "PNG")
    return buffer.getvalue()


def zip_of(path: Path, data: bytes, count: int) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for i in range(count):
            archive.writestr(f"class{i % 2}/{i:03d}.png", data)
    return path


def test_an_archive_of_solid_4096_pngs_is_refused_before_decoding(tmp_path: Path) -> None:
    # 40 × 4096² × 3 = 1.9 GB decoded from a 2.3 MB upload: under main's 2 GB bound, so main decoded
    # it all and then copied it twice more (6–8 GB); the default bound is now 512 MiB.
    path = zip_of(tmp_path / "solid.zip", solid_png(4096), 40)
    assert path.stat().st_size < 3 * MiB
    result = ingest(path, tmp_path / "home")
    assert "refused" in result, result
    assert "decode to more than 536870912 bytes" in result["refused"]
    assert result["seconds"] < 1.0, result
    assert result["peak_delta"] < 64 * MiB, result  # the headers are read, no image is decoded


PARSE_SCRIPT = r"""
import json, sys
from pathlib import Path

from core.dataset_arrays import upload_limits
from core.ingest import parse_dataset
from core.settings import get_settings


def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024


base = status("VmRSS")
parsed = parse_dataset(Path(sys.argv[1]), upload_limits(get_settings().max_decoded_bytes))
stored = parsed.images_path.stat().st_size  # what put_blob_file streams
print(json.dumps({"accepted": list(parsed.images.shape), "stored": stored, "peak_delta": status("VmHWM") - base}))
"""


@pytest.mark.parametrize("kind", ["zip", "npz"])
def test_an_accepted_upload_is_never_held_whole(tmp_path: Path, kind: str) -> None:
    count, side = 40, 1024
    decoded = count * side * side * 3  # 120 MiB
    if kind == "zip":
        path = zip_of(tmp_path / "ok.zip", solid_png(side), count)
    else:
        path = tmp_path / "ok.npz"
        np.savez_compressed(path, images=np.full((count, side, side, 3), 7, np.uint8), labels=np.arange(count) % 2)
    result = ingest(path, tmp_path / "home", PARSE_SCRIPT)
    assert result["accepted"] == [count, side, side, 3] and result["stored"] > decoded, result
    # Each image is decoded and written to its row of the .npy on disk, an NPZ copied into it a
    # block at a time: memory holds an image or a block, never the pixels (before: 1.1–1.35× them).
    bound = 0.5 * decoded
    assert result["peak_delta"] < bound, f"{result['peak_delta'] / MiB:.0f} MiB for {decoded / MiB:.0f} MiB of pixels"
