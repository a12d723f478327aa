"""Segments: a filter on SEGMENTS["FIELD"] is served by that value's own HNSW index."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from shop_demo.catalog.models import Category, Product
from visual_search import services
from visual_search.indexing import index_name, index_state, segment_indexes
from visual_search.models import EmbeddingSpace, ProductEmbedding
from visual_search.queries import nearest_products
from visual_search.segments import ensure_segment_indexes, sync_segments

from .conftest import synthetic_catalogue

pytestmark = pytest.mark.django_db

N_PRODUCTS, CATEGORIES, DIM = 3000, 6, 256


@pytest.fixture
def segmented(settings):
    settings.VISUAL_SEARCH = {
        **settings.VISUAL_SEARCH,
        "SEGMENTS": {"FIELD": "category", "MIN_ROWS": 400},
    }
    space, pks, vectors, centres, rng = synthetic_catalogue(
        N_PRODUCTS, 100, DIM, categories=CATEGORIES
    )
    assert sync_segments(space) == N_PRODUCTS
    return space, pks, vectors, centres, rng


def _segments(space) -> dict[int, str]:
    return dict(space.embeddings.values_list("product_id", "segment"))


def _plan(sql: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_a_segment_filter_scans_that_values_index_and_finds_the_exact_neighbours(segmented):
    space, pks, vectors, centres, rng = segmented
    built = ensure_segment_indexes(space)
    categories = list(Category.objects.order_by("pk"))
    assert set(built) == {str(c.pk) for c in categories}  # 500 rows each, all above 400
    category = categories[2]
    members = set(Product.objects.filter(category=category).values_list("pk", flat=True))
    for trial in range(3):
        query = centres[trial] + 0.6 * rng.normal(size=DIM)
        query = (query / np.linalg.norm(query)).astype(np.float32)
        with CaptureQueriesContext(connection) as captured:
            found = nearest_products(
                space, k=10, vectors=query, queryset=Product.objects.filter(category=category)
            )
        found_pks = [n.product.pk for n in found]
        assert set(found_pks) <= members and len(found_pks) == 10
        order = [pks[i] for i in np.argsort(-(vectors @ query)) if pks[i] in members]
        assert len(set(found_pks) & set(order[:10])) >= 9
    search = next(q["sql"] for q in captured.captured_queries if "LATERAL" in q["sql"])
    assert index_name(space.name, str(category.pk)) in _plan(search)
    assert "product_id IN (" not in search  # no subquery: the segment column is the filter


def test_other_filters_still_apply_on_top_of_the_segment(segmented):
    space, pks, vectors, centres, rng = segmented
    ensure_segment_indexes(space)
    category = Category.objects.order_by("pk")[1]
    Product.objects.filter(category=category, pk__in=pks[:1500]).update(in_stock=False)
    queryset = Product.objects.filter(category=category, in_stock=True)
    found = nearest_products(space, k=10, vectors=vectors[1], queryset=queryset)
    assert len(found) == 10
    assert all(n.product.category_id == category.pk and n.product.in_stock for n in found)


def test_saving_a_product_moves_its_embeddings_to_the_new_value(segmented):
    space, pks, *_ = segmented
    product = Product.objects.get(pk=pks[0])
    target = Category.objects.exclude(pk=product.category_id).first()
    product.category = target
    product.save()
    assert _segments(space)[product.pk] == str(target.pk)
    found = services.similar_products(pks[1], k=3, queryset=Product.objects.filter(category=target))
    assert all(r.product.category_id == target.pk for r in found)


def test_the_index_command_follows_bulk_updates_and_builds_or_drops_indexes(segmented, settings):
    space, pks, *_ = segmented
    first, second = Category.objects.order_by("pk")[:2]
    # QuerySet.update sends no signal: the rows keep the old value until the command runs.
    Product.objects.filter(category=first).update(category=second)
    assert set(_segments(space)[pk] for pk in pks[::CATEGORIES]) == {str(first.pk)}
    out = io.StringIO()
    call_command("visual_search_index", stdout=out)
    text = out.getvalue()
    assert f"Moved {N_PRODUCTS // CATEGORIES} embeddings" in text
    assert f"segment '{second.pk}' (1000 images): built in" in text
    assert "5 values of 'category' have an index of their own" in text
    assert not index_state(space.name, str(first.pk)).exists
    assert index_state(space.name, str(second.pk)).valid
    status = io.StringIO()
    call_command("visual_search_status", stdout=status)
    assert "; 5 segment indexes, " in status.getvalue()

    assert "dropping" not in text  # a sixth of the rows moved: they entered the graph again

    # Turned off: every row moves, so the space's index is built anew rather than updated.
    settings.VISUAL_SEARCH = {**settings.VISUAL_SEARCH, "SEGMENTS": {"FIELD": None}}
    out = io.StringIO()
    call_command("visual_search_index", stdout=out)
    assert f"{N_PRODUCTS} embeddings change segment: dropping {index_name(space.name)}" in (
        out.getvalue()
    )
    assert set(_segments(space).values()) == {""}
    assert not index_state(space.name, str(second.pk)).exists
    assert index_state(space.name).valid


def test_small_values_are_searched_exactly_without_an_index(segmented, settings):
    space, pks, vectors, *_ = segmented
    settings.VISUAL_SEARCH = {
        **settings.VISUAL_SEARCH,
        "SEGMENTS": {"FIELD": "category", "MIN_ROWS": 501},
    }
    assert ensure_segment_indexes(space) == {}
    category = Category.objects.order_by("pk")[3]
    members = Product.objects.filter(category=category)
    found = nearest_products(space, k=5, vectors=vectors[7], queryset=members)
    ids = [pks.index(n.product.pk) for n in found]
    allowed = [i for i in range(N_PRODUCTS) if pks[i] in set(members.values_list("pk", flat=True))]
    assert ids == sorted(allowed, key=lambda i: -float(vectors[i] @ vectors[7]))[:5]


def test_embedding_a_product_stores_its_segment(make_product, photos, settings):
    settings.VISUAL_SEARCH = {**settings.VISUAL_SEARCH, "SEGMENTS": {"FIELD": "category"}}
    product = make_product("Kiwi", photos("train", "Kiwi")[0], category="fruit")
    services.embed_many([product.pk])
    rows = ProductEmbedding.objects.filter(product_id=product.pk)
    assert rows.exists()
    assert set(rows.values_list("segment", flat=True)) == {str(product.category_id)}


def test_an_api_filter_on_the_segment_field_after_the_index_command(catalogue, settings):
    settings.VISUAL_SEARCH = {
        **settings.VISUAL_SEARCH,
        "SEGMENTS": {"FIELD": "category"},
        "API": {"FILTERS": {"category_id": "category"}, "THROTTLE_RATES": {"similar": None}},
    }
    with connection.cursor() as cursor:  # the test's transaction: CREATE INDEX needs this
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    call_command("visual_search_index", stdout=io.StringIO())  # rows embedded before the setting
    fruit = catalogue["Kiwi"].category_id
    with CaptureQueriesContext(connection) as captured:
        response = APIClient().get(
            f"/api/visual-search/products/{catalogue['Banana'].pk}/similar/",
            {"k": 5, "category_id": fruit},
        )
    assert response.status_code == 200
    names = sorted(r["product"]["name"] for r in response.json()["results"])
    assert names == ["Kiwi", "Lemon"]  # the other fruit; not the milk, not the banana itself
    search = next(q["sql"] for q in captured.captured_queries if "LATERAL" in q["sql"])
    assert f"segment = E'{fruit}'" in search


def test_a_deleted_space_takes_its_indexes_along(segmented, django_capture_on_commit_callbacks):
    space, *_ = segmented
    ensure_segment_indexes(space)
    names = [index_name(space.name)] + [index.name for index in segment_indexes(space.name)]
    assert len(names) > 1 and all(_exists(name) for name in names)
    # Deleted and made again in the same transaction (same weights, same name): kept.
    with django_capture_on_commit_callbacks(execute=True):
        EmbeddingSpace.objects.filter(pk=space.pk).delete()
        EmbeddingSpace.objects.create(name=space.name, dimension=space.dimension)
    assert all(_exists(name) for name in names)
    with django_capture_on_commit_callbacks(execute=True):
        EmbeddingSpace.objects.filter(pk=space.pk).delete()
    assert not any(_exists(name) for name in names)


def _exists(name):
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_class WHERE relname = %s", [name])
        return cursor.fetchone() is not None
