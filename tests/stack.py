"""Run the real ShiftScore processes for tests: API (gunicorn) and Celery workers as subprocesses."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
import requests

from shiftscore.multipart import MultipartBody

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("SHIFTSCORE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_HOST = os.environ.get("SHIFTSCORE_TEST_REDIS", "redis://127.0.0.1:6379")
METRICS_TOKEN = "test-metrics-token"  # every test stack's /metrics needs it (SHIFTSCORE_METRICS_TOKEN)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def create_pg_database() -> str:
    """A new, empty PostgreSQL database; returns its SQLAlchemy URL."""
    name = f"shiftscore_test_{os.getpid()}_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def claim_redis_db() -> str:
    """A Redis database number that is empty right now, marked as ours; returns its URL."""
    for number in range(15, 0, -1):
        client = redis.Redis.from_url(f"{REDIS_HOST}/{number}")
        # SET NX on a marker key: two test runs never take the same database.
        if client.dbsize() == 0 and client.set("shiftscore:test-owner", os.getpid(), nx=True):
            return f"{REDIS_HOST}/{number}"
    raise RuntimeError("no empty Redis database (1-15) is free for the tests")


def release_redis_db(url: str) -> None:
    redis.Redis.from_url(url).flushdb()


@dataclass
class Stack:
    """A running API and workers sharing one database and broker."""

    env: dict[str, str]
    port: int
    log_dir: Path
    api: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)
    scheduler: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "shiftscore.cli", *args], env=self.env, cwd=ROOT,
            capture_output=True, text=True, check=check, timeout=300,
        )

    def _spawn(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.log_dir / f"{name}-{time.monotonic_ns()}.log").open("w")
        return subprocess.Popen(
            [sys.executable, "-m", "shiftscore.cli", *args], env=self.env, cwd=ROOT,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )

    def migrate(self) -> None:
        self.cli("db", "upgrade")

    def start_api(self) -> None:
        self.api = self._spawn("api", "api", "--port", str(self.port), "--workers", "2")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.api.poll() is not None:
                raise RuntimeError(f"the API exited with {self.api.returncode}; logs in {self.log_dir}")
            try:
                if requests.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.2)
        raise RuntimeError("the API did not come up within 60 s")

    def start_worker(self, concurrency: int | None = 1) -> subprocess.Popen:
        """A worker of `concurrency` processes; None leaves it at the product's default."""
        flags = () if concurrency is None else ("--concurrency", str(concurrency))
        worker = self._spawn("worker", "worker", *flags)
        self.workers.append(worker)
        return worker

    def start_scheduler(self) -> subprocess.Popen:
        self.scheduler = self._spawn("scheduler", "scheduler")
        return self.scheduler

    def stop_api(self) -> None:
        if self.api is not None:
            _stop(self.api)
            self.api = None

    def kill_worker(self, worker: subprocess.Popen) -> None:
        """SIGKILL a worker and all its pool children, as a crash would."""
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        self.workers.remove(worker)

    def stop(self) -> None:
        for worker in list(self.workers):
            _stop(worker)
        self.workers.clear()
        if self.scheduler is not None:
            _stop(self.scheduler)
            self.scheduler = None
        self.stop_api()

    def token(self, tenant: str) -> str:
        return self.cli("token", "create", tenant).stdout.strip()

    def sql(self, query: str, *params: Any) -> list[tuple]:
        """Rows of a query on the stack's PostgreSQL database (to observe, never to steer)."""
        url = self.env["SHIFTSCORE_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(url, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()

    def worker_running(self, pid: int) -> subprocess.Popen:
        """The started worker whose pool child has process id `pid`."""
        parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        return next(w for w in self.workers if w.pid in (pid, parent))

    def session(self, tenant: str) -> "ApiSession":
        return ApiSession(self.url, self.token(tenant))


@dataclass
class RedisServer:
    """A throwaway redis-server on its own port, without persistence, that a test may kill and restart."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not come up on port {self.port}")

    def kill(self) -> None:
        """SIGKILL: everything it held (queued and unacknowledged messages) is gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class ApiSession(requests.Session):
    """requests against the stack's base URL with a tenant's bearer token."""

    def __init__(self, base: str, token: str) -> None:
        super().__init__()
        self.base = base
        self.headers["Authorization"] = f"Bearer {token}"

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 30)
        return super().request(method, self.base + url, *args, **kwargs)

    def upload_model(self, path: Path, input_spec: dict, fmt: str = "torchscript", **fields: str) -> dict:
        import json

        with path.open("rb") as handle:
            response = self.post("/v1/models", files={"file": handle}, data={
                "name": fields.pop("name", path.stem), "format": fmt, "input": json.dumps(input_spec), **fields,
            })
        # 200: the same name, bytes and input were uploaded before; that model comes back.
        assert response.status_code in (200, 201), response.text
        return response.json()

    def upload_dataset(self, path: Path, name: str = "data", timeout: float = 120, **fields: str) -> dict:
        """Upload a dataset and wait until a worker has ingested it; the dataset, ready or invalid."""
        with path.open("rb") as handle:
            # Streamed from disk, as the client does: a dataset of GBs is never held by the test.
            body = MultipartBody({"name": name, **fields}, "file", path.name, handle)
            response = self.post("/v1/datasets", data=body, headers={"Content-Type": body.content_type}, timeout=600)
        assert response.status_code in (200, 201, 202), response.text
        return self.wait_dataset(response.json()["id"], timeout)

    def wait_dataset(self, dataset_id: str, timeout: float = 120) -> dict:
        return self._wait(f"/v1/datasets/{dataset_id}", lambda d: d["status"] != "processing", timeout)

    def wait_model(self, model_id: str, timeout: float = 60) -> dict:
        return self._wait(f"/v1/models/{model_id}", lambda m: m["status"] != "validating", timeout)

    def wait_evaluation(self, evaluation_id: str, timeout: float = 120, seen: list | None = None) -> dict:
        terminal = {"succeeded", "failed", "cancelled"}
        return self._wait(f"/v1/evaluations/{evaluation_id}", lambda e: e["status"] in terminal, timeout, seen)

    def _wait(self, path: str, done, timeout: float, seen: list | None = None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            body = self.get(path).json()
            if seen is not None:
                seen.append(body)
            if done(body):
                return body
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} still {body.get('status')} after {timeout} s: {body}")
            time.sleep(0.1)


def stack_env(home: Path, **overrides: str) -> dict[str, str]:
    """This process's environment without SHIFTSCORE_*, plus the test defaults and `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIFTSCORE_")}
    env.update({
        "SHIFTSCORE_HOME": str(home),
        "SHIFTSCORE_PROGRESS_INTERVAL": "0.1",
        "SHIFTSCORE_BATCH_SIZE": "128",
        "SHIFTSCORE_METRICS_TOKEN": METRICS_TOKEN,
        # Below the production default (16 GiB), so that a decompression bomb is refused from its headers
        # (40 solid 4096² PNGs: 1.9 GB); above the 1.08 GB dataset that test_dataset_ingestion stores.
        "SHIFTSCORE_MAX_DECODED_BYTES": str(1536 << 20),
    })
    env.update(overrides)
    return env


@contextmanager
def running_stack(
    home: Path, *, workers: int = 1, concurrency: int | None = 1, scheduler: bool = True,
    broker_url: str | None = None, **overrides: str
) -> Iterator[Stack]:
    """A fresh PostgreSQL database and Redis db (or `broker_url`), migrated, with the API,
    `workers` workers of `concurrency` processes (None: the default) and the scheduler running;
    all torn down afterwards."""
    if workers > 1:
        # Several workers stand for several hosts: they share this machine's cores, one part each. At the
        # default each would take every core, and their thread pools, stalling each other at every
        # barrier, made chunk times swing 3-7x between runs of the same code (test_fairness, test_faults).
        overrides.setdefault("SHIFTSCORE_TORCH_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    database_url = create_pg_database()
    own_broker = broker_url is None
    broker_url = broker_url or claim_redis_db()
    stack = Stack(
        env=stack_env(home, SHIFTSCORE_DATABASE_URL=database_url, SHIFTSCORE_BROKER_URL=broker_url, **overrides),
        port=free_port(),
        log_dir=home,
    )
    try:
        stack.migrate()
        stack.start_api()
        for _ in range(workers):
            stack.start_worker(concurrency)
        if scheduler:
            stack.start_scheduler()
        yield stack
    finally:
        stack.stop()
        drop_pg_database(database_url)
        if own_broker:
            release_redis_db(broker_url)
