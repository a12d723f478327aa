"""Management commands: output, progress and exit codes."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from visual_search import services
from visual_search.indexing import index_state
from visual_search.models import ProductEmbedding

pytestmark = pytest.mark.django_db


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_reindex_missing_inline_with_progress(make_product, photos):
    products = [make_product(n, photos("train", n)[0]) for n in ("Kiwi", "Lemon", "Banana")]
    out, _ = run("visual_search_reindex", "--missing", "--batch-size", "2")
    assert "[####" in out and "2/3 products" in out and "3/3 products" in out
    assert "Done: 3 embedded" in out
    assert ProductEmbedding.objects.filter(status="ready").count() == len(products)
    out, _ = run("visual_search_reindex")
    assert "Nothing to do: no missing products." in out


def test_reindex_fails_with_nonzero_exit_when_an_image_fails(make_product, photos):
    make_product("Kiwi", photos("train", "Kiwi")[0])
    make_product("Broken", b"definitely not a JPEG")
    with pytest.raises(CommandError, match="1 image\\(s\\) could not be embedded"):
        run("visual_search_reindex", "--all")
    with pytest.raises(CommandError):
        run("visual_search_reindex", "--failed")  # retried, fails again


def test_reindex_rejects_bad_arguments(db):
    with pytest.raises(CommandError, match="batch-size"):
        run("visual_search_reindex", "--batch-size", "0")
    with pytest.raises(CommandError, match="Unknown embedding space"):
        run("visual_search_reindex", "--all", "--space", "nope/none")
    with pytest.raises(CommandError):
        run("visual_search_reindex", "--all", "--failed")  # mutually exclusive


def test_status_and_check(catalogue, make_product):
    out, _ = run("visual_search_status")
    assert "tf_efficientnet_lite0/package (current): 4 ready, 0 pending, 0 failed" in out
    assert "HNSW index valid" in out
    run("visual_search_status", "--check")  # healthy: exit 0
    make_product("Broken", b"nope")
    services.reindex("missing", inline=True)
    out, _ = run("visual_search_status")
    assert "failed: product" in out and "not an image" in out
    with pytest.raises(CommandError, match="1 failed embeddings"):
        run("visual_search_status", "--check")
    # Pending for longer than a worker would take: no worker running?
    ProductEmbedding.objects.filter(status="ready").update(
        status="pending", updated_at=timezone.now() - timedelta(hours=1)
    )
    with pytest.raises(CommandError, match="4 embeddings pending since"):
        run("visual_search_status", "--check")


@pytest.mark.django_db(transaction=True)
def test_index_command_builds_concurrently_and_rebuilds(catalogue):
    out, _ = run("visual_search_index")
    assert "already exists and is valid" in out
    out, _ = run("visual_search_index", "--rebuild")
    assert "Building" in out and "concurrently" in out and "Built vs_hnsw_" in out
    state = index_state(services.current_space_name())
    assert state.exists and state.valid
    with pytest.raises(CommandError, match="no embeddings yet"):
        run("visual_search_index", "--space", "other/space")


@pytest.mark.django_db(transaction=True)
def test_one_session_at_a_time_builds_an_index(catalogue):
    """A worker that finds the index missing while a rebuild swaps it in must not drop the
    rebuild's new index: a build waits for (rebuild) or leaves to (ensure) the lock's holder."""
    import threading
    import time

    from django.db import connections, transaction

    from visual_search.indexing import build_lock, build_lock_key, drop_index, ensure_index
    from visual_search.models import EmbeddingSpace

    space = EmbeddingSpace.objects.get(name=services.current_space_name())
    name = index_state(space.name).name
    other = connections.create_connection("default")
    try:
        # Take the lock first, polling: the worker may be building this index now, and a
        # session blocked in pg_advisory_lock would deadlock with its CREATE INDEX
        # CONCURRENTLY (which waits for that session's snapshot).
        with other.cursor() as cursor:
            while True:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [build_lock_key(name)])
                if cursor.fetchone()[0]:
                    break
                time.sleep(0.1)
        drop_index(name)
        assert ensure_index(space) == 0.0
        with transaction.atomic():
            assert ensure_index(space) == 0.0
        assert not index_state(space.name).exists

        output: list[str] = []

        def rebuild() -> None:
            try:
                output.extend(run("visual_search_index", "--rebuild"))
            finally:
                connections.close_all()

        builder = threading.Thread(target=rebuild)
        builder.start()
        builder.join(timeout=2)
        assert builder.is_alive() and not index_state(space.name).exists
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [build_lock_key(name)])
        builder.join(timeout=60)
        assert not builder.is_alive()
    finally:
        other.close()
    out = output[0]
    assert "Another session is building this index; waiting" in out and "Built vs_hnsw_" in out
    assert index_state(space.name).valid
    with build_lock(name, wait=False) as held:
        assert held  # the builder gave the lock back


@pytest.mark.django_db(transaction=True)
def test_commands_warn_about_unapplied_migrations_before_they_fail():
    """An upgraded app whose new migration was not applied: the command says why it fails."""
    from django.db.migrations.loader import MigrationLoader
    from django.db.utils import ProgrammingError

    graph = MigrationLoader(connection).graph
    (latest,) = graph.leaf_nodes("visual_search")
    (before,) = [node.key for node in graph.node_map[latest].parents if node.key[0] == latest[0]]
    call_command("migrate", *before, verbosity=0)
    try:
        out = io.StringIO()
        with pytest.raises(ProgrammingError):
            call_command("visual_search_status", stdout=out, stderr=io.StringIO())
        assert "unapplied migration" in out.getvalue() and "visual_search" in out.getvalue()
    finally:
        call_command("migrate", "visual_search", verbosity=0)
    out, _ = run("visual_search_status")
    assert "unapplied migration" not in out


def test_a_second_demo_is_refused_before_it_starts_anything(settings, tmp_path):
    import os
    import socket

    from shop_demo.catalog.management.commands.rundemo import check_not_running

    settings.DATA_DIR = tmp_path
    lock = tmp_path / "rundemo.pid"
    lock.write_text(str(os.getpid()))  # a live process holds the demo
    with pytest.raises(CommandError, match="already running"):
        call_command("rundemo", "--addr", "127.0.0.1:0")
    assert lock.read_text() == str(os.getpid())  # the first demo's lock is left alone

    lock.write_text("999999999")  # a crashed demo's lock does not block the next one
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        busy = f"127.0.0.1:{server.getsockname()[1]}"
        check_not_running(lock, "127.0.0.1:0")
        with pytest.raises(CommandError, match=f"Cannot serve on {busy}.*another address"):
            check_not_running(lock, busy)
