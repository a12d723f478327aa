"""embed_product: rows per gallery image, hash-based skipping, failures recorded, deletes cascade."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from django.core.files.base import ContentFile

from tests.conftest import jpeg_bytes
from visual_search import services
from visual_search.models import EmbeddingStatus, ProductEmbedding
from visual_search.models_registry import get_product_model

pytestmark = [pytest.mark.django_db, pytest.mark.products]


def rows(product):
    return list(ProductEmbedding.objects.filter(product_id=product.pk).order_by("image_key"))


def test_embed_product_stores_one_ready_unit_vector_per_image(make_product, photos):
    banana = photos("train", "Banana")
    product = make_product("Banana", banana[0], gallery=banana[3:5])
    report = services.embed_product(product.pk)
    stored = rows(product)
    expected = 1 if get_product_model()._meta.label == "thirdparty.Product" else 3
    assert report.embedded == expected and len(stored) == expected
    for row in stored:
        assert row.status == EmbeddingStatus.READY and row.error == ""
        assert len(row.content_hash) == 64
        vector = np.asarray(row.embedding, dtype=np.float32)
        assert vector.shape == (1280,) and abs(float(vector @ vector) - 1) < 0.01


def test_unchanged_images_are_skipped_and_changed_ones_redone(make_product, photos):
    kiwi, lemon = photos("train", "Kiwi"), photos("train", "Lemon")
    product = make_product("Kiwi", kiwi[0])
    services.embed_product(product)
    first = rows(product)[0]
    again = services.embed_product(product)
    assert again.embedded == 0 and again.skipped == 1
    assert rows(product)[0].updated_at == first.updated_at

    field = "photo" if hasattr(product, "photo") else "image"
    getattr(product, field).save("kiwi.jpg", ContentFile(lemon[0].read_bytes()))
    report = services.embed_product(product)
    assert report.embedded == 1
    (row,) = rows(product)
    assert row.content_hash != first.content_hash and row.status == EmbeddingStatus.READY


def test_unknown_product_is_a_clear_error(db):
    with pytest.raises(services.ProductNotFound):
        services.embed_product("12345678-1234-1234-1234-123456789012")
    with pytest.raises(services.ProductNotFound):
        services.embed_product(987654321)
    assert services.embed_many([987654321]).missing_products == [987654321]


@pytest.mark.parametrize(
    "content,error",
    [
        (jpeg_bytes((400, 300))[:900], "corrupt or truncated"),
        (b"just some text, not a JPEG", "not an image"),
        (b"", "empty"),
    ],
    ids=["truncated", "text", "empty"],
)
def test_bad_image_is_recorded_as_failed_and_not_retried(make_product, content, error):
    product = make_product("Broken", content)
    report = services.embed_product(product)
    assert report.embedded == 0 and len(report.failed) == 1
    (row,) = rows(product)
    assert row.status == EmbeddingStatus.FAILED and error in row.error and row.attempts == 1
    assert row.embedding is None
    # Same bytes again: skipped, not retried forever.
    assert services.embed_product(product).skipped == 1
    assert rows(product)[0].attempts == 1
    # A forced retry (reindex --failed) tries again and records it again.
    services.embed_product(product, force=True)
    assert rows(product)[0].attempts == 2


def test_an_image_file_gone_from_storage_fails_that_image_only(make_product, photos):
    """A field whose file was deleted from storage is a failed image, recorded with its reason;
    the other products embedded with it are not held up (the task does not retry the batch)."""
    gone = make_product("Gone", photos("train", "Kiwi")[0])
    kept = make_product("Kept", photos("train", "Lemon")[0])
    field = gone.photo if hasattr(gone, "photo") else gone.image
    Path(field.path).unlink()
    report = services.embed_many([gone.pk, kept.pk])
    assert report.embedded == 1 and len(report.failed) == 1
    (row,) = rows(gone)
    assert row.status == EmbeddingStatus.FAILED and "Image file not found" in row.error
    assert field.name in row.error
    assert [r.status for r in rows(kept)] == [EmbeddingStatus.READY]


def test_deleting_the_product_removes_its_embeddings(make_product, photos):
    product = make_product("Lemon", photos("train", "Lemon")[0])
    services.embed_product(product)
    assert rows(product)
    pk = product.pk
    product.delete()
    assert not ProductEmbedding.objects.filter(product_id=pk).exists()


def test_status_counts(make_product, photos):
    make_product("Broken", b"nope")
    good = make_product("Kiwi", photos("train", "Kiwi")[0])
    services.embed_many([p.pk for p in get_product_model().objects.all()])
    counts = services.status_counts()[services.get_encoder().space]
    assert counts == {"pending": 0, "ready": 1, "failed": 1}
    assert good.pk in list(services.products_to_reindex("all"))
    assert list(services.products_to_reindex("missing")) == []
    assert len(list(services.products_to_reindex("failed"))) == 1


def test_an_image_is_stored_in_the_searched_adapted_space_or_stays_pending(
    make_product, photos, caplog
):
    """The base space and the adapted space that searches run in are written together: an
    image that space cannot encode is not ready anywhere, so the task's retry redoes it instead
    of skipping it as unchanged. An image it lacks counts as missing, and embedding the product
    again restores it. A space no search reads does not hold up the others."""
    from visual_search.exceptions import VisualSearchError
    from visual_search.models import EmbeddingSpace

    def transform(dim: int = 16) -> dict:
        projection = np.linalg.qr(np.random.default_rng(0).normal(size=(1280, dim)))[0]
        return {"TRANSFORM": {"mean": [0.0] * 1280, "projection": projection.tolist()}}

    kiwi = make_product("Kiwi", photos("train", "Kiwi")[0])
    services.embed_product(kiwi)
    base = EmbeddingSpace.objects.get(name=services.get_encoder().space)
    # The adapted space searches run in, whose transform cannot be read yet.
    adapted = EmbeddingSpace.objects.create(
        name=f"{base.name}+lw16", base=base, dimension=16, is_active=True
    )
    lemon = make_product("Lemon", photos("train", "Lemon")[0])
    with pytest.raises(VisualSearchError, match="has no transform"):
        services.embed_product(lemon)
    assert [(row.space_id, row.status) for row in rows(lemon)] == [
        (base.name, EmbeddingStatus.PENDING)
    ]
    adapted.encoder = transform()
    adapted.save()
    assert services.embed_product(lemon).embedded == 1  # the retry
    assert {(row.space_id, row.status) for row in rows(lemon)} == {
        (base.name, EmbeddingStatus.READY),
        (adapted.name, EmbeddingStatus.READY),
    }
    # Kiwi was stored before the adapted space existed: searches there cannot find it.
    assert list(services.products_to_reindex("missing")) == [kiwi.pk]
    assert services.reindex("missing", inline=True) == 1
    stored = ProductEmbedding.objects.get(product_id=kiwi.pk, space=adapted)
    assert stored.status == EmbeddingStatus.READY and np.asarray(stored.embedding).shape == (16,)
    assert list(services.products_to_reindex("missing")) == []
    assert services.embed_product(kiwi).skipped == 1  # complete everywhere: skipped again
    # A broken space that no search reads is logged and left behind; it catches up once fixed.
    idle = EmbeddingSpace.objects.create(name=f"{base.name}+lw8", base=base, dimension=8)
    banana = make_product("Banana", photos("train", "Banana")[0])
    assert services.embed_product(banana).embedded == 1
    assert {row.space_id for row in rows(banana)} == {base.name, adapted.name}
    assert f"Cannot encode images in the inactive space {idle.name}" in caplog.text
    assert list(services.products_to_reindex("missing")) == []
    idle.encoder = transform(8)
    idle.save()
    assert services.embed_product(banana).embedded == 1
    assert {row.space_id for row in rows(banana)} == {base.name, adapted.name, idle.name}
