"""The shop's gallery model: adding or removing an image changes that product's rows."""

from __future__ import annotations

import numpy as np
import pytest
from django.core.files.base import ContentFile

from visual_search import services
from visual_search.models import EmbeddingStatus, ProductEmbedding

pytestmark = pytest.mark.django_db


def test_gallery_images_are_embedded_and_removed_with_the_image(make_product, photos):
    banana = photos("train", "Banana")
    product = make_product("Banana", banana[0], gallery=banana[3:5])
    services.embed_product(product)
    assert ProductEmbedding.objects.filter(product_id=product.pk).count() == 3
    extra = product.gallery.first()
    key = extra.image.name
    extra.delete()
    services.embed_product(product)
    keys = set(
        ProductEmbedding.objects.filter(product_id=product.pk).values_list("image_key", flat=True)
    )
    assert key not in keys and len(keys) == 2


def test_saving_a_gallery_image_marks_it_pending_after_commit(
    make_product, photos, django_capture_on_commit_callbacks
):
    product = make_product("Kiwi", photos("train", "Kiwi")[0])
    from shop_demo.catalog.models import ProductImage

    with django_capture_on_commit_callbacks(execute=True):
        image = ProductImage(product=product)
        image.image.save("extra.jpg", ContentFile(photos("train", "Kiwi")[2].read_bytes()))
    row = ProductEmbedding.objects.get(product_id=product.pk, image_key=image.image.name)
    assert row.status == EmbeddingStatus.PENDING


def test_one_result_per_product_scored_by_its_best_image(db, make_product, photos):
    kiwi = photos("train", "Kiwi")
    query_product = make_product("Kiwi", kiwi[0])
    many = make_product("Kiwi gallery", photos("train", "Lemon")[0], gallery=kiwi[5:9])
    services.embed_many([query_product.pk, many.pk])
    (result,) = services.similar_products(query_product, k=5)
    assert result.product.pk == many.pk
    best = max(
        float(np.dot(np.asarray(v, dtype=np.float32), np.asarray(q, dtype=np.float32)))
        for v in ProductEmbedding.objects.filter(product_id=many.pk).values_list(
            "embedding", flat=True
        )
        for q in ProductEmbedding.objects.filter(product_id=query_product.pk).values_list(
            "embedding", flat=True
        )
    )
    assert result.score == pytest.approx(best, abs=2e-3)
    assert "gallery" in result.image_key  # a Kiwi gallery photo, not the Lemon main image
