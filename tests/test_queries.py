"""similar_products / search_by_image: one result per product, filters, the HNSW index."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection

from visual_search import services
from visual_search.indexing import index_name
from visual_search.models_registry import get_product_model
from visual_search.queries import nearest_products

from .conftest import synthetic_catalogue

pytestmark = [pytest.mark.django_db, pytest.mark.products]


def test_search_by_image_finds_the_product_of_an_unseen_photo(catalogue, photos):
    for name in ("Banana", "Arla-Standard-Milk"):
        query = photos("val", name)[0]
        results = services.search_by_image(query, k=3)
        assert results[0].product.pk == catalogue[name].pk
        assert len(results) == 3
        assert results[0].score > results[1].score >= results[2].score
        assert -1.0 <= results[2].score <= 1.0


def test_search_accepts_bytes_paths_files_and_pil_images(catalogue, photos):
    from visual_search.images import load_image

    path = photos("val", "Kiwi")[0]
    with open(path, "rb") as handle:
        sources = [path, str(path), path.read_bytes(), handle, load_image(path)]
        pks = {services.search_by_image(source, k=1)[0].product.pk for source in sources}
    assert pks == {catalogue["Kiwi"].pk}


def test_similar_products_excludes_the_product_and_respects_the_queryset(catalogue):
    banana = catalogue["Banana"]
    results = services.similar_products(banana, k=10)
    pks = [r.product.pk for r in results]
    assert banana.pk not in pks and len(pks) == 3 and len(set(pks)) == 3
    only = get_product_model().objects.filter(pk=catalogue["Lemon"].pk)
    (result,) = services.similar_products(banana.pk, k=10, queryset=only)
    assert result.product.pk == catalogue["Lemon"].pk
    assert result.image_key


def test_errors(catalogue, make_product):
    with pytest.raises(ValueError, match="k must be"):
        services.similar_products(catalogue["Kiwi"], k=0)
    with pytest.raises(ValueError, match="k must be"):
        services.search_by_image(b"x", k=10_000)
    with pytest.raises(services.ProductNotFound):
        services.similar_products("not-a-key")
    fresh = make_product("No photo yet", None)
    with pytest.raises(services.ProductNotEmbedded, match="no ready embedding"):
        services.similar_products(fresh)


def test_sql_on_a_space_without_vectors_or_without_a_query_says_why():
    from visual_search.models import EmbeddingSpace

    space = EmbeddingSpace(name="not-yet-encoded")
    with pytest.raises(ValueError, match="has no vectors yet"):
        _ = space.known_dimension
    space.dimension = 8
    with pytest.raises(TypeError, match="needs query vectors or a product"):
        nearest_products(space, k=1, queryset=get_product_model().objects.all())


# -- several thousand products with synthetic, clustered vectors ---------------------------

N_PRODUCTS, N_CLUSTERS, DIM = 4000, 200, 1280


@pytest.fixture
def synthetic(db):
    return synthetic_catalogue(N_PRODUCTS, N_CLUSTERS, DIM)


def exact_top(vectors, pks, allowed, query, k):
    scores = vectors @ query
    order = [i for i in np.argsort(-scores) if pks[i] in allowed]
    return [pks[i] for i in order[:k]]


@pytest.mark.parametrize("force_index", [False, True], ids=["planner", "hnsw"])
def test_selective_filter_still_returns_k_exact_results(synthetic, force_index):
    space, pks, vectors, centres, rng = synthetic
    if force_index:  # make the planner take the HNSW index, so iterative scans are exercised
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
    allowed = set(rng.choice(pks, size=N_PRODUCTS // 50, replace=False).tolist())  # 2 %
    queryset = get_product_model().objects.filter(pk__in=allowed)
    for trial in range(5):
        query = centres[trial] + 0.6 * rng.normal(size=DIM)
        query = (query / np.linalg.norm(query)).astype(np.float32)
        found = [
            n.product.pk for n in nearest_products(space, k=10, vectors=query, queryset=queryset)
        ]
        expected = exact_top(vectors, pks, allowed, query, 10)
        assert len(found) == 10
        assert len(set(found) & set(expected)) >= 9, (found, expected)


def test_queries_can_use_the_partial_hnsw_index(synthetic):
    space, pks, vectors, centres, rng = synthetic
    from visual_search.indexing import TABLE, index_predicate, vector_expression
    from visual_search.queries import vector_literal

    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(
            f"EXPLAIN SELECT product_id FROM {TABLE} WHERE {index_predicate(space.name)} "
            f"ORDER BY {vector_expression(DIM)} <=> %s::halfvec({DIM}) LIMIT 10",
            [vector_literal(vectors[0])],
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert index_name(space.name) in plan, plan


def test_matching_regions_finds_each_ones_nearest_and_leaves_the_planner_as_it_was(synthetic):
    from visual_search.queries import nearest_per_query

    space, pks, vectors, centres, rng = synthetic
    everything = set(pks)
    regions = vectors[:3] + 0.3 * rng.normal(size=(3, DIM)).astype(np.float32)
    regions /= np.linalg.norm(regions, axis=1, keepdims=True)
    found = nearest_per_query(space, regions, k=5, queryset=get_product_model().objects.all())
    for region, neighbours in zip(regions, found, strict=True):
        expected = exact_top(vectors, pks, everything, region, 5)
        assert len(set(n.product.pk for n in neighbours) & set(expected)) >= 4
    # The statement walks the index with sequential scans off; the test's own transaction,
    # which encloses it, gets the setting back.
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('enable_seqscan')")
        assert cursor.fetchone() == ("on",)


def test_a_space_whose_products_crowd_the_first_rows_starts_its_next_query_wider(db, monkeypatch):
    from django.test.utils import CaptureQueriesContext

    from visual_search import queries
    from visual_search.models import EmbeddingStatus, ProductEmbedding

    monkeypatch.setattr(queries, "_rows_per_product", {})
    space, pks, vectors, centres, rng = synthetic_catalogue(60, 5, 64)
    query = vectors[0]
    # Five products with 30 images each next to the query, as a fine-tuned space packs them.
    ProductEmbedding.objects.bulk_create(
        ProductEmbedding(
            product_id=pk,
            space=space,
            image_key=f"photo-{j}",
            embedding=(query + 0.01 * rng.normal(size=64)).tolist(),
            status=EmbeddingStatus.READY,
            content_hash="x",
        )
        for pk in pks[1:6]
        for j in range(30)
    )
    products = get_product_model().objects.all()
    statements = []
    for _ in range(2):
        with CaptureQueriesContext(connection) as ctx:
            found = nearest_products(space, k=8, vectors=query, queryset=products)
        statements.append(sum("hits AS MATERIALIZED" in q["sql"] for q in ctx.captured_queries))
        assert len(found) == 8 and {n.product.pk for n in found[:6]} == set(pks[:6])
    assert statements[0] > 1 and statements[1] == 1  # the retries are not paid again
