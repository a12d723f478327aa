"""Run the whole demo: migrate, load the catalogue, start a Celery worker and the web server.

The embedded PostgreSQL and Redis were started by the settings (no DATABASE_URL /
CELERY_BROKER_URL); Ctrl-C stops the worker, the web server and both servers. A second demo
on the same data directory is refused before it starts anything: it would share those
servers, and stopping it would stop them under the first.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from shop_demo.catalog.models import Product
from visual_search import embedded


class Command(BaseCommand):
    help = "Run the demo shop with an embedding worker (Ctrl-C stops everything)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--addr", default="127.0.0.1:8000", help="address:port to serve on")

    def handle(self, *args: Any, addr: str, **options: Any) -> None:
        lock = Path(settings.DATA_DIR) / "rundemo.pid"
        check_not_running(lock, addr)
        lock.write_text(str(os.getpid()))
        try:
            self.run(addr)
        finally:
            lock.unlink(missing_ok=True)

    def run(self, addr: str) -> None:
        call_command("migrate", verbosity=0)
        before = Product.objects.count()
        call_command("load_demo_catalog", stdout=self.stdout)
        User = get_user_model()
        if not User.objects.filter(username="admin").exists():
            User.objects.create_superuser("admin", "admin@example.com", "admin")
        # New products were queued by their saves; on later runs, catch up on any the last
        # run did not finish (Ctrl-C while the worker was busy).
        queued = Product.objects.count() - before or queue_missing()
        env = {
            **os.environ,
            "DATABASE_URL": embedded.url_from_config(settings.DATABASES["default"]),
            "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        }
        python = sys.executable
        children = [
            subprocess.Popen(
                embedded.worker_command("shop_demo"),
                env=env,
                start_new_session=True,
            ),
            subprocess.Popen(
                [python, "manage.py", "runserver", addr, "--noreload"],
                env=env,
                start_new_session=True,
            ),
        ]
        self.stdout.write(
            self.style.SUCCESS(
                f"\nFresh Market demo: http://{addr}/\n"
                f"Admin: http://{addr}/admin/  (user admin, password admin; local demo only)\n"
                f"API docs: http://{addr}/api/visual-search/docs/\n"
                + (f"Embedding {queued} products in the background.\n" if queued else "")
                + "Press Ctrl-C to stop everything.\n"
            )
        )
        stopping = False

        def stop(*_: Any) -> None:
            nonlocal stopping
            stopping = True

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, stop)
        try:
            while not stopping and all(child.poll() is None for child in children):
                time.sleep(0.5)
        finally:
            self.stdout.write("Stopping the worker, the web server and the databases...")
            for child in children:
                if child.poll() is None:
                    os.killpg(child.pid, signal.SIGTERM)
            for child in children:
                try:
                    child.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(child.pid, signal.SIGKILL)
            from django.db import connections

            connections.close_all()
            if not os.environ.get("DATABASE_URL") and not os.environ.get("CELERY_BROKER_URL"):
                embedded.stop_all(settings.DATA_DIR)
            self.stdout.write("Stopped.")


def check_not_running(lock: Path, addr: str) -> None:
    """Refuse a second demo, and an address another program serves, with what to do instead."""
    try:
        pid = int(lock.read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        pass  # no lock, or its process is gone (a crash): a stale lock
    else:
        raise CommandError(
            f"The demo is already running (process {pid}, data in {lock.parent}). "
            "Use that one, or stop it with Ctrl-C in its terminal first."
        )
    host, _, port = addr.rpartition(":")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as runserver binds
        try:
            probe.bind((host.strip("[]") or "127.0.0.1", int(port)))
        except OSError as exc:
            raise CommandError(
                f"Cannot serve on {addr}: {exc.strerror}. Another program uses it; "
                "pass another address, e.g. ./scripts/demo 127.0.0.1:8001"
            ) from None


def queue_missing() -> int:
    """Queue whatever is not embedded yet (a first run, or an interrupted one)."""
    from visual_search import services

    try:
        return services.reindex("missing")
    except services.VisualSearchError:
        return 0
