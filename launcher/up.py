"""`shiftscore up`: the whole service on one machine, on the embedded default."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

from core.settings import Settings, reset_settings


def _wait_healthy(url: str, processes: list[subprocess.Popen], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise SystemExit(f"a ShiftScore process exited early (code {process.returncode})")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the API did not answer on {url} within {timeout:.0f} s")


def _child_environment(settings: Settings) -> dict[str, str]:
    """This process's environment, pinned to `settings`, for the API, worker and scheduler it starts."""
    from core.broker import celery_broker_url

    env = dict(os.environ)
    env["SHIFTSCORE_HOME"] = str(settings.home)
    env["SHIFTSCORE_DATABASE_URL"] = settings.database_url
    env["SHIFTSCORE_STORAGE_DIR"] = str(settings.storage_dir)
    env["SHIFTSCORE_PORT"] = str(settings.port)
    if settings.host in ("127.0.0.1", "localhost", "::1"):
        # One machine, reached from itself only: /metrics needs no token unless one is set.
        env.setdefault("SHIFTSCORE_METRICS_PUBLIC", "true")
    # The embedded Redis lives as long as this process; the children reach it by its socket.
    env["SHIFTSCORE_BROKER_URL"] = celery_broker_url(settings.broker_url)
    return env


def run_up(settings: Settings) -> int:
    """Migrate, start the broker, the API and a worker; print the URL and a token; wait."""
    from db.session import session_scope
    from db.tenants import create_token
    from launcher.processes import check_sandbox, migrate

    env = _child_environment(settings)
    os.environ.update(env)
    reset_settings()
    reason = check_sandbox(settings)
    if reason is not None:
        raise SystemExit(
            f"shiftscore up: uploaded models cannot be sandboxed here: {reason}.\n"
            "Fix that (scripts/up installs bubblewrap when run as root), or, only on a machine where "
            "you trust every model you upload, start with SHIFTSCORE_SANDBOX=off."
        )
    migrate(settings)
    with session_scope() as session:
        token = create_token(session, "local")

    command = [sys.executable, "-m", "shiftscore.cli"]
    processes = [
        subprocess.Popen(command + ["api"], env=env),
        subprocess.Popen(command + ["worker"], env=env),
        subprocess.Popen(command + ["scheduler"], env=env),
    ]

    def stop(*_: object) -> None:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    url = f"http://{settings.host}:{settings.port}"
    _wait_healthy(url, processes)
    print(f"ShiftScore is running at {url}\n"
          f"token: {token}\n"
          f"dashboard: {url}/dashboard/ (it asks for the token once per browser tab)\n"
          "in another shell, paste:\n"
          f"export SHIFTSCORE_URL={url}\n"
          f"export SHIFTSCORE_TOKEN={token}\n"
          "stop with Ctrl-C", flush=True)
    while all(process.poll() is None for process in processes):
        time.sleep(0.5)
    stop()
    return 1
