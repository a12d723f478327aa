"""The targets' benchmarks run end to end on photos they have never seen, in the grocery layout.

Issue 6 is checked by rerunning `benchmarks/targets.py --run` on a clean checkout on other photos
in the same folder layout. This runs it on a small catalogue built from the grocery data: a third
of the products (class ids no longer 0..n-1), a few train photos each, and the val photos under a
split named ``test``, so that nothing in the pipeline leans on the grocery folder's own names and
counts. It checks that every target gets a figure, not the figures themselves.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from tests.conftest import GROCERY, REPO
from visual_search import embedded

BENCHMARK_DATABASES = ("vs_bench_retrieval",)  # adaptation.py searches in numpy


def small_catalogue(folder: Path, every: int = 7, photos: int = 6) -> int:
    """Every ``every``-th grocery product with ``photos`` train photos, and its val photos as
    the split ``test``; returns the number of queries."""
    with open(GROCERY / "classes.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    kept = rows[1:][::every]
    with open(folder / "classes.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([rows[0], *kept])
    ids = {row[1].strip() for row in kept}
    for name in ("iconic-images-and-descriptions", "train"):
        (folder / name).symlink_to(GROCERY / name)
    (folder / "test").symlink_to(GROCERY / "val")

    def lines(split: str) -> list[str]:
        listing = (GROCERY / f"{split}.txt").read_text().splitlines()
        return [line for line in listing if line.strip() and line.split(",")[1].strip() in ids]

    train: dict[str, list[str]] = {}
    for line in lines("train"):
        train.setdefault(line.split(",")[1].strip(), []).append(line)
    (folder / "train.txt").write_text(
        "".join(f"{line}\n" for shots in train.values() for line in shots[::5][:photos])
    )
    queries = [line.replace("val/", "test/", 1) for line in lines("val")]
    (folder / "test.txt").write_text("".join(f"{line}\n" for line in queries))
    return len(queries)


@pytest.fixture
def benchmark_server(django_db_setup: None, django_db_blocker: Any) -> Iterator[dict[str, str]]:
    """The tests' own PostgreSQL and Redis for the benchmarks' processes; the databases they
    create there are dropped afterwards."""
    with django_db_blocker.unblock():
        url = embedded.url_from_config(connection.settings_dict)
    yield {"DATABASE_URL": url, "CELERY_BROKER_URL": settings.CELERY_BROKER_URL}
    with psycopg.connect(url, autocommit=True) as conn:
        for name in BENCHMARK_DATABASES:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_the_targets_run_end_to_end_on_another_catalogue_in_the_same_layout(
    tmp_path: Path, benchmark_server: dict[str, str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    queries = small_catalogue(data)
    prefix = tmp_path / "results" / "smoke"
    prefix.parent.mkdir()
    env = {
        **os.environ,
        **benchmark_server,
        "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
        "VISUAL_SEARCH_BENCH_MEDIA": str(tmp_path / "media"),
    }
    run = subprocess.run(
        [sys.executable, "benchmarks/targets.py", "--data", str(data), "--queries", "test"]
        + ["--run", "--prefix", str(prefix)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    verdict = json.loads(prefix.with_name("smoke.json").read_text())
    targets = {target["name"]: target for target in verdict["targets"]}
    assert len(targets) == 8
    unmeasured = [name for name, target in targets.items() if target["met"] is None]
    assert unmeasured == []
    for name, target in targets.items():
        if name.startswith(("photo search", "studio image", "in-catalogue", "precision")):
            assert 0.0 <= target["measured"] <= 1.0, name
    assert 0 < targets["adaptation time"]["measured"] < 600
    photo = json.loads(prefix.with_name("smoke-photo.json").read_text())
    assert photo["n_queries"] == queries
    assert {row["space"] for row in photo["results"]} == {"base", "finetune"}
    # The verdict prints the photo run's own figure, counted in its queries.
    found = round(targets["photo search R@1 (studio + photos)"]["measured"] * queries)
    assert f"({found} of {queries})" in run.stdout
