"""Shared set-up for the benchmark scripts: Django on a fresh benchmark database, the machine."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser with the script's docstring as help and --data (a grocery-layout folder)."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=REPO.parent / "shared" / "data" / "grocery",
        help="folder in the Grocery Store Dataset layout (classes.csv, <split>.txt)",
    )
    return parser


def setup_django(name: str, fresh: bool = True) -> None:
    """Create (or empty) this benchmark's own database, migrate it and set Django up."""
    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    os.environ.setdefault("VISUAL_SEARCH_BENCH_DB", f"vs_bench_{name}")
    media = Path(
        os.environ.setdefault("VISUAL_SEARCH_BENCH_MEDIA", str(REPO / ".devdata" / "bench" / name))
    )
    if fresh and media.exists():
        shutil.rmtree(media)
    import psycopg
    from django.conf import settings

    db = settings.DATABASES["default"]
    admin = {
        k: v
        for k, v in {
            "host": db["HOST"],
            "port": db["PORT"],
            "user": db["USER"],
            "password": db["PASSWORD"],
        }.items()
        if v
    }
    with psycopg.connect(dbname="postgres", autocommit=True, **admin) as conn:
        if fresh:
            conn.execute(f'DROP DATABASE IF EXISTS "{db["NAME"]}" WITH (FORCE)')
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", [db["NAME"]]
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{db["NAME"]}"')
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return {
        "cpu": cpu or platform.processor(),
        "cores": os.cpu_count(),
        "memory": memory,
        "python": platform.python_version(),
        "commit": _commit(),
    }


def _commit() -> str:
    """HEAD, with "+uncommitted" when tracked files differ from it: the figures then come from
    code no commit holds, and the docs must say what the change was."""
    try:
        return subprocess.run(
            ["git", "describe", "--always", "--dirty=+uncommitted", "--exclude=*"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def save(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "command": " ".join(sys.argv),
        "machine": machine(),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        **payload,
    }
    path = RESULTS / f"{name}.json"  # an absolute --output puts it elsewhere
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nresults written to {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
    return path


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in columns]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for row in rows:
        lines.append(
            "| "
            + " | ".join(fmt(row.get(c, "")).ljust(w) for c, w in zip(columns, widths, strict=True))
            + " |"
        )
    return "\n".join(lines)
