"""End to end with a real Celery worker process and a real Redis: save -> task -> query."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from tests.conftest import jpeg_bytes, wait_for
from visual_search import services
from visual_search.models import EmbeddingStatus, ProductEmbedding

pytestmark = [pytest.mark.worker, pytest.mark.products, pytest.mark.django_db(transaction=True)]


def statuses(product) -> set[str]:
    return set(
        ProductEmbedding.objects.filter(product_id=product.pk).values_list("status", flat=True)
    )


def settled(*products) -> bool:
    return all(statuses(p) and EmbeddingStatus.PENDING not in statuses(p) for p in products)


def test_saved_product_is_embedded_by_the_worker_and_found(celery_worker, make_product, photos):
    banana = photos("train", "Banana")
    products = [
        make_product("Banana", banana[0]),
        make_product("Kiwi", photos("train", "Kiwi")[0]),
        make_product("Milk", photos("train", "Arla-Standard-Milk")[0]),
        make_product("Banana bunch", banana[20]),
    ]
    wait_for(lambda: settled(*products), what="embeddings to be ready", log=celery_worker)
    assert all(statuses(p) == {EmbeddingStatus.READY} for p in products)
    results = services.similar_products(products[3], k=3)
    assert results[0].product.pk == products[0].pk


def test_bad_images_fail_visibly_and_lose_nothing(celery_worker, make_product, photos):
    buffer = io.BytesIO()
    Image.new("1", (20000, 20000)).save(buffer, "PNG")
    bad = {
        "truncated": jpeg_bytes((400, 300))[:700],
        "text": b"<html>not a photo</html>",
        "bomb": buffer.getvalue(),
        "empty": b"",
    }
    started = time.monotonic()
    broken = {name: make_product(f"Broken {name}", content) for name, content in bad.items()}
    good = make_product("Lemon", photos("train", "Lemon")[0])
    assert time.monotonic() - started < 10  # saves never wait for embedding
    wait_for(lambda: settled(good, *broken.values()), what="tasks to finish", log=celery_worker)
    assert statuses(good) == {EmbeddingStatus.READY}
    expected = {
        "truncated": "corrupt or truncated",
        "text": "not an image",
        "bomb": "decompression bomb",
        "empty": "empty",
    }
    for name, product in broken.items():
        (row,) = ProductEmbedding.objects.filter(product_id=product.pk)
        assert row.status == EmbeddingStatus.FAILED, name
        assert expected[name] in row.error, (name, row.error)
        assert type(product).objects.filter(pk=product.pk).exists()


def test_save_succeeds_while_the_broker_is_down(make_product, photos, broker_down):
    started = time.monotonic()
    product = make_product("Kiwi offline", photos("train", "Kiwi")[1])
    assert time.monotonic() - started < 10
    assert statuses(product) == {EmbeddingStatus.PENDING}
    assert product.pk in list(services.products_to_reindex("missing"))
    assert services.reindex("missing", inline=True) >= 1
    assert statuses(product) == {EmbeddingStatus.READY}


def test_transient_failure_is_retried_with_backoff(celery_worker, make_product, photos, settings):
    """Storage that fails for a while (here: the file briefly replaced by a directory, an
    OSError that is not "file not found") is retried by the task until it works."""
    import shutil
    from pathlib import Path

    from visual_search import services

    settings.VISUAL_SEARCH = {**settings.VISUAL_SEARCH, "AUTO_EMBED": False}
    product = make_product("Lemon later", photos("train", "Lemon")[2])
    settings.VISUAL_SEARCH = {**settings.VISUAL_SEARCH, "AUTO_EMBED": True}
    field = product.photo if hasattr(product, "photo") else product.image
    path = Path(field.path)
    saved = path.read_bytes()
    path.unlink()
    path.mkdir()  # reading it now raises IsADirectoryError
    log_start = len(celery_worker.read_bytes())
    assert services.schedule_embedding([product.pk])
    wait_for(
        lambda: b"Retry in" in celery_worker.read_bytes()[log_start:],
        timeout=60,
        what="the task to schedule a retry",
        log=celery_worker,
    )
    shutil.rmtree(path)
    path.write_bytes(saved)  # the storage is back
    wait_for(
        lambda: statuses(product) == {EmbeddingStatus.READY},
        timeout=60,
        what="the retried task to succeed",
        log=celery_worker,
    )
