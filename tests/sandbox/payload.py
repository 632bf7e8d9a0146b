"""An attacker's code, run inside the cage exactly as the model child runs: locks first, then mischief.

Each probe records what happened; the test outside decides what must have been refused.
Arguments: a JSON object {"limits": {...}, "seccomp": bool, "probes": [names], "secrets": {...}}.
"""

import json
import os
import socket
import sys

sys.path.insert(0, "/app")

from worker.sandbox.confine import Limits, confine  # noqa: E402


def attempt(action):
    try:
        return {"ok": True, "value": action()}
    except BaseException as exc:  # noqa: BLE001 — the point is to see what fails
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}


def read(path):
    with open(path, "rb") as file:
        return file.read(200).decode(errors="replace")


def connect(host, port):
    with socket.create_connection((host, port), timeout=2) as sock:
        sock.sendall(b"*3\r\n$3\r\nSET\r\n$20\r\nshiftscore:sandboxed\r\n$5\r\nowned\r\n")
        return sock.recv(100).decode(errors="replace")


def spawn():
    import subprocess

    return subprocess.run(["/bin/sh", "-c", "echo spawned"], capture_output=True, text=True).stdout


def write(path):
    with open(path, "w") as file:
        file.write("owned")
    return path


def allocate(gib):
    return len(bytearray(int(gib * (1 << 30))))


def burn():
    while True:
        pass


def main():
    config = json.loads(sys.argv[1])
    confine(Limits(**config["limits"]), seccomp=config["seccomp"])
    secrets = config["secrets"]
    probes = {
        "environment": lambda: {k: v for k, v in os.environ.items()},
        "secret_file": lambda: read(secrets["file"]),
        "storage": lambda: os.listdir(secrets["storage"]),
        "project": lambda: os.listdir(secrets["project"]),
        "passwd": lambda: read("/etc/passwd"),
        "host_processes": lambda: sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
        "parent_environ": lambda: read(f"/proc/{secrets['parent_pid']}/environ"),
        "redis": lambda: connect("127.0.0.1", secrets["redis_port"]),
        "fork": lambda: os.fork(),
        "spawn": spawn,
        "write_root": lambda: write("/owned"),
        "write_app": lambda: write("/app/worker/owned.py"),
        "write_tmp": lambda: write("/tmp/scratch"),
        "write_big_tmp": lambda: write_many("/tmp/big", secrets["tmp_limit"] * 2),
        "unshare": lambda: os.unshare(os.CLONE_NEWNET) if hasattr(os, "unshare") else _libc_unshare(),
        "allocate": lambda: allocate(secrets["allocate_gib"]),
        "uid": lambda: os.getuid(),
    }
    report = {name: attempt(probes[name]) for name in config["probes"]}
    print(json.dumps(report), flush=True)
    if config.get("then") == "burn":
        burn()
    if config.get("then") == "segfault":
        import ctypes

        ctypes.string_at(0)


def write_many(path, size):
    with open(path, "wb") as file:
        for _ in range(size // 65536 + 1):
            file.write(b"\0" * 65536)
    return size


def _libc_unshare():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x40000000) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return "unshared"


if __name__ == "__main__":
    main()
