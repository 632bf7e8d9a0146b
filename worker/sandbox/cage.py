"""The worker's side of the sandbox: start a caged process for one model, talk to it, end it.

The cage is bubblewrap: new user, PID, network, IPC and UTS namespaces; a
filesystem of nothing but the read-only Python runtime, the `worker` and
`core` packages (the engine's grid and the architecture catalogue live in core),
the job's own input files and a small private /tmp; no environment from the
worker. Inside, worker.sandbox.child lowers its rlimits and loads a seccomp
filter before any model code runs. Everything the cage says is parsed as
bounded JSON and checked; a cage that goes quiet past its deadline, dies, or
says something malformed is killed and its job fails with a message for the
user.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import core
import worker
from worker.sandbox import protocol

APP = "/app"
STARTUP_SECONDS = 120.0
INPUTS = "/in"
NOBODY = 65534


@dataclass(frozen=True)
class CageConfig:
    """How caged processes are started and bounded."""

    enabled: bool
    memory_bytes: int
    cpu_seconds: int
    wall_seconds: float
    batch_seconds: float
    tmp_bytes: int
    threads: int
    device: str


class CageFailure(Exception):
    """The caged job ended badly; `kind` says how and the message is for the user."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _runtime_binds() -> list[str]:
    """Read-only binds of the Python runtime: the interpreter, its environment and system libraries."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/lib", "/lib64", "/sbin"):
        path = Path(top)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), top]
        elif path.is_dir():
            args += ["--ro-bind", top, top]
    if Path("/etc/ld.so.cache").is_file():
        args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    prefixes = {sys.prefix, sys.base_prefix, str(Path(sys.executable).resolve().parents[1])}
    for prefix in sorted(prefixes):
        if not prefix.startswith("/usr/"):
            args += ["--ro-bind", prefix, prefix]
    return args


CHILD = ("-m", "worker.sandbox.child")


def _package_binds() -> list[str]:
    """Read-only binds of the code the caged child imports: the worker and the torch-free core."""
    args = []
    for package in (core, worker):
        args += ["--ro-bind", str(Path(package.__file__).resolve().parent), f"{APP}/{package.__name__}"]
    return args


def cage_command(inputs: dict[str, Path], config: CageConfig, entry: tuple[str, ...] = CHILD) -> list[str]:
    """The command that runs Python with arguments `entry` caged, with `inputs` readable at /in/<name>."""
    python = [sys.executable, *entry]
    if not config.enabled:
        return python
    args = [
        "bwrap", "--unshare-all", "--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY),
        "--disable-userns", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        # The private /tmp first: binds made after it stay visible even when the checkout,
        # its virtual environment or the cache live under /tmp themselves.
        "--clearenv", "--size", str(config.tmp_bytes), "--tmpfs", "/tmp", *_runtime_binds(),
        *_package_binds(),
    ]
    for name, path in inputs.items():
        args += ["--ro-bind", str(path), f"{INPUTS}/{name}"]
    args += ["--proc", "/proc", "--dev", "/dev"]
    if config.device != "cpu":
        for device in ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia0"):
            args += ["--dev-bind-try", f"/dev/{device}", f"/dev/{device}"]
    args += ["--remount-ro", "/", "--chdir", APP]
    for key, value in _environment(config).items():
        args += ["--setenv", key, value]
    return args + python


def _environment(config: CageConfig) -> dict[str, str]:
    threads = str(config.threads)
    return {
        "PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
    }


def input_paths(inputs: dict[str, Path], config: CageConfig) -> dict[str, str]:
    """Where the caged process finds each input."""
    if not config.enabled:
        return {name: str(path) for name, path in inputs.items()}
    return {name: f"{INPUTS}/{name}" for name in inputs}


OnEvent = Callable[[dict[str, Any]], None]


class Cage:
    """One caged process holding one loaded model; jobs are sent to it one at a time."""

    def __init__(self, inputs: dict[str, Path], model: dict[str, Any], config: CageConfig) -> None:
        self.config = config
        self.cpu_seconds = 0.0
        try:
            self.process = subprocess.Popen(
                cage_command(inputs, config), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                env=None if config.enabled else _unsandboxed_environment(config),
            )
        except OSError as exc:
            raise CageFailure("confine", f"the sandbox could not be started ({exc.strerror})") from exc
        self._lines = _LineReader(self.process.stdout.fileno())
        self._stderr = _Tail(self.process.stderr)
        self._send({
            "limits": {
                # CUDA maps address space the size of the GPU; an address-space limit would break it.
                "memory_bytes": config.memory_bytes if config.device == "cpu" else None,
                "cpu_seconds": config.cpu_seconds, "file_bytes": config.tmp_bytes,
            },
            "seccomp": config.enabled, "threads": config.threads, "device": config.device,
            "model": model, "paths": input_paths(inputs, config),
        })
        # Starting is the service's own work (Python and torch imported afresh), so it is not
        # charged to the model's wall-time limit; its deadline only catches a cage that is stuck.
        self._expect("ready", max(config.wall_seconds, STARTUP_SECONDS), "starting the model's sandbox")

    def run(self, job: dict[str, Any], deadline: float, what: str, on_event: OnEvent | None = None,
            until: float | None = None) -> dict[str, Any]:
        """Send a job and return its result; each silence longer than `deadline` seconds ends the cage.

        `until` (a time.monotonic() value) ends the whole job: kind `part_time`.
        """
        self._send(job)
        while True:
            message = self._next(deadline, what, until)
            event = message.get("event")
            if event == "done":
                self.cpu_seconds = _number(message.get("cpu_seconds"), "cpu_seconds")
                result = message.get("result")
                if not isinstance(result, dict):
                    raise self._breach("protocol", "the model's sandbox answered without a result")
                return result
            if event == "error":
                self.close()
                raise CageFailure(str(message.get("kind")), str(message.get("message", "")))
            if on_event is not None:
                on_event(message)

    def close(self) -> None:
        """End the caged process and everything in it."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stderr_tail(self) -> str:
        """The last lines the caged process wrote to standard error (for the worker's log only)."""
        return self._stderr.text()

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self.process.stdin.write(protocol.encode(message))
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise self._ended("sending it a job") from None

    def _expect(self, event: str, deadline: float, what: str) -> None:
        message = self._next(deadline, what)
        if message.get("event") == "error":
            self.close()
            raise CageFailure(str(message.get("kind")), str(message.get("message", "")))
        if message.get("event") != event:
            raise self._breach("protocol", f"the model's sandbox did not start properly ({what})")

    def _next(self, deadline: float, what: str, until: float | None = None) -> dict[str, Any]:
        left = None if until is None else until - time.monotonic()
        try:
            line = self._lines.next_line(deadline if left is None else max(0.0, min(deadline, left)))
        except TimeoutError:
            self.close()
            if left is not None and left <= deadline:
                raise CageFailure("part_time", f"{what} was still running when its time was up") from None
            raise CageFailure("timeout", f"{what} took longer than {deadline:.0f} s") from None
        except protocol.ProtocolError as exc:
            raise self._breach("protocol", str(exc)) from None
        if line is None:
            raise self._ended(what)
        try:
            return protocol.decode(line)
        except protocol.ProtocolError as exc:
            raise self._breach("protocol", str(exc)) from None

    def _breach(self, kind: str, message: str) -> CageFailure:
        self.close()
        return CageFailure(kind, message)

    def _ended(self, what: str) -> CageFailure:
        """The caged process is gone: say why, from its exit status."""
        self.close()
        code = self.process.returncode
        # bwrap reports a child killed by signal N as exit status 128 + N.
        number = -code if code < 0 else code - 128 if code > 128 else None
        if number == signal.SIGXCPU:
            return CageFailure("cpu", f"the model used more than its {self.config.cpu_seconds} s of CPU time")
        if number is not None:
            name = signal.Signals(number).name if number in signal.Signals._value2member_map_ else str(number)
            return CageFailure("died", f"the model's process died while {what} (signal {name})")
        return CageFailure("died", f"the model's process exited while {what} (status {code})")


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise CageFailure("protocol", f"the model's sandbox sent a bad {name}")
    return float(value)


def _unsandboxed_environment(config: CageConfig) -> dict[str, str]:
    # Even uncaged, the model's process gets none of the worker's variables (credentials).
    return {**_environment(config), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


class _LineReader:
    """Lines from a pipe, each wait bounded by a deadline and each line by MAX_LINE_BYTES."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()

    def next_line(self, deadline: float) -> bytes | None:
        until = time.monotonic() + deadline
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[: end + 1])
                del self.buffer[: end + 1]
                return line
            if len(self.buffer) > protocol.MAX_LINE_BYTES:
                raise protocol.ProtocolError("a message from the model's sandbox was too large")
            left = until - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([self.fd], [], [], left)
            if not ready:
                continue
            data = os.read(self.fd, 1 << 20)
            if not data:
                return None
            self.buffer += data


class _Tail:
    """Drains a stream on a thread, keeping its last few kilobytes."""

    LIMIT = 8192

    def __init__(self, stream: Any) -> None:
        self.data = bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._drain, args=(stream,), daemon=True, name="cage-stderr").start()

    def _drain(self, stream: Any) -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):
            with self.lock:
                self.data += chunk
                del self.data[: max(0, len(self.data) - self.LIMIT)]

    def text(self) -> str:
        with self.lock:
            return self.data.decode(errors="replace")

