"""The cage itself, attacked from inside: the same bubblewrap command and the same inner locks as a model gets.

tests/sandbox/payload.py plays the attacker: it confines itself exactly as the
model's child process does before loading a model, then tries to reach the
worker's secrets, files, processes, network and host. These tests say what
must have been refused.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import redis

from worker.sandbox.cage import CageConfig, cage_command

ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = ROOT / "tests" / "sandbox" / "payload.py"
LIMITS = {"memory_bytes": 2 << 30, "cpu_seconds": 30, "file_bytes": 8 << 20}
CONFIG = CageConfig(enabled=True, memory_bytes=2 << 30, cpu_seconds=30, wall_seconds=60, batch_seconds=30,
                    tmp_bytes=8 << 20, threads=1, device="cpu")


def attack(tmp_path: Path, probes: list[str], seccomp: bool = True, then: str | None = None,
           limits: dict | None = None, timeout: float = 60) -> tuple[dict, subprocess.CompletedProcess]:
    secret = tmp_path / "secret.txt"
    secret.write_text("the database password")
    storage = tmp_path / "storage"
    storage.mkdir(exist_ok=True)
    (storage / "other-tenant.npy").write_bytes(b"private")
    secrets = {
        "file": str(secret), "storage": str(storage), "project": str(ROOT), "parent_pid": os.getpid(),
        "redis_port": 6379, "tmp_limit": CONFIG.tmp_bytes, "allocate_gib": 3,
    }
    argument = json.dumps({"limits": limits or LIMITS, "seccomp": seccomp, "probes": probes,
                           "secrets": secrets, "then": then})
    command = cage_command({"payload.py": PAYLOAD}, CONFIG, entry=("/in/payload.py", argument))
    env = {**os.environ, "SHIFTSCORE_DATABASE_URL": "postgresql://user:hunter2@db/shiftscore",
           "SHIFTSCORE_TEST_SECRET": "hunter2"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return (json.loads(lines[0]) if lines else {}), done


def refused(report: dict, name: str) -> str:
    assert report[name]["ok"] is False, f"{name} was allowed: {report[name]}"
    return report[name]["error"]


def test_the_model_sees_no_credentials_files_or_processes_of_the_worker(tmp_path):
    report, done = attack(tmp_path, [
        "environment", "secret_file", "storage", "project", "passwd", "host_processes", "parent_environ", "uid",
    ])
    assert done.returncode == 0, done.stderr
    environment = report["environment"]["value"]
    assert not any("hunter2" in value for value in environment.values())
    assert not [name for name in environment if name.startswith("SHIFTSCORE")]
    assert "FileNotFoundError" in refused(report, "secret_file")
    assert "FileNotFoundError" in refused(report, "storage")
    # The checkout shows at most the virtual environment the cage runs Python from; never var/ or the code.
    project = report["project"]
    assert (not project["ok"]) or set(project["value"]) <= {".venv"}, project
    assert "FileNotFoundError" in refused(report, "passwd")
    # A PID namespace of its own: bubblewrap's init and the payload, nothing of the host.
    assert report["host_processes"]["value"] == [1, 2]
    assert os.getpid() not in (1, 2)
    refused(report, "parent_environ")
    assert report["uid"]["value"] == 65534


def test_the_model_cannot_reach_the_network_even_without_seccomp(tmp_path):
    client = redis.Redis(host="127.0.0.1", port=6379)
    client.delete("shiftscore:sandboxed")
    report, _ = attack(tmp_path, ["redis"], seccomp=True)
    assert "PermissionError" in refused(report, "redis")
    # The namespace alone already cuts the host off: its loopback is not the host's.
    report, _ = attack(tmp_path, ["redis"], seccomp=False)
    assert "Connection refused" in refused(report, "redis") or "unreachable" in report["redis"]["error"]
    assert client.get("shiftscore:sandboxed") is None


def test_the_model_cannot_start_processes_or_leave_its_namespaces(tmp_path):
    report, _ = attack(tmp_path, ["fork", "spawn", "unshare"])
    assert "PermissionError" in refused(report, "fork")
    refused(report, "spawn")
    refused(report, "unshare")


def test_writes_go_only_to_a_small_private_tmp(tmp_path):
    report, _ = attack(tmp_path, ["write_root", "write_app", "write_tmp", "write_big_tmp"])
    assert "Read-only file system" in refused(report, "write_root")
    refused(report, "write_app")
    assert report["write_tmp"]["ok"] is True
    refused(report, "write_big_tmp")  # the tmpfs and the file-size limit bound it
    assert not (ROOT / "worker" / "owned.py").exists()


def test_memory_beyond_the_limit_is_refused(tmp_path):
    report, _ = attack(tmp_path, ["allocate"])
    assert "MemoryError" in refused(report, "allocate")


def test_cpu_beyond_the_limit_ends_the_process(tmp_path):
    limits = {**LIMITS, "cpu_seconds": 1}
    _, done = attack(tmp_path, [], then="burn", limits=limits, timeout=30)
    # bubblewrap reports a child killed by signal N as 128 + N.
    assert done.returncode == 128 + signal.SIGXCPU


@pytest.mark.parametrize("seccomp", [True])
def test_a_crash_inside_stays_inside(tmp_path, seccomp):
    _, done = attack(tmp_path, [], seccomp=seccomp, then="segfault")
    assert done.returncode == 128 + signal.SIGSEGV


def test_a_checkout_under_tmp_stays_visible_to_the_cage(tmp_path):
    """The private /tmp is mounted first: binds under /tmp (a checkout, a cache) are not hidden by it."""
    inside = tmp_path / "model.bin"
    inside.write_bytes(b"weights")
    command = cage_command({"model": inside}, CONFIG, entry=("-c", "print(open('/in/model', 'rb').read())"))
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "b'weights'" in done.stdout
    binds = [i for i, arg in enumerate(command) if arg == "--ro-bind"]
    assert command.index("--tmpfs") < min(binds)
