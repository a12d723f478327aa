"""The ranking bonus of products an adapted space's model did not learn (unlearned.py)."""

from __future__ import annotations

import numpy as np
import pytest
from django.db import connection

from visual_search.indexing import ensure_index
from visual_search.models import EmbeddingSpace, EmbeddingStatus, ProductEmbedding
from visual_search.models_registry import get_product_model
from visual_search.queries import nearest_per_query, nearest_products
from visual_search.unlearned import BONUSES, TOLERANCE, fit_bonus

from .conftest import synthetic_catalogue


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def check_vectors(studio_shift: float, noise: float = 0.25, seed: int = 0) -> dict[str, np.ndarray]:
    """Products in look-alike pairs, 8 photos each (``noise`` apart); the strangers' first
    image a studio shot, moved off its photos by ``studio_shift`` along a direction shared by
    all studio shots."""
    rng = np.random.default_rng(seed)
    dim, pairs = 32, 20
    centres = np.repeat(rng.normal(size=(pairs, dim)), 2, axis=0)
    centres += 0.35 * rng.normal(size=centres.shape)
    studio = rng.normal(size=dim)
    labels = np.repeat([str(p) for p in range(2 * pairs)], 8)
    photos = unit(centres[labels.astype(int)] + noise * rng.normal(size=(len(labels), dim)))
    strangers = np.isin(labels.astype(int), range(0, 2 * pairs, 4))  # one of every other pair
    first = np.zeros(len(labels), dtype=bool)
    first[np.unique(labels, return_index=True)[1]] = True
    shifted = unit(photos + studio_shift * studio / np.linalg.norm(studio))
    photos = np.where((strangers & first)[:, None], shifted, photos)
    held = ~strangers & (np.arange(len(labels)) % 8 >= 6)
    fit = ~strangers & ~held
    return {
        "fit": photos[fit],
        "fit_labels": labels[fit],
        "held": photos[held],
        "held_labels": labels[held],
        "strangers": photos[strangers],
        "stranger_labels": labels[strangers],
    }


def test_the_bonus_finds_products_known_by_a_studio_shot():
    fitted = fit_bonus(**check_vectors(studio_shift=0.4))
    before, after = fitted["before"], fitted["after"]
    assert fitted["bonus"] == BONUSES[-1] and fitted["unlearned_products"] == 10
    assert after["unlearned_R@1"] > before["unlearned_R@1"] + 0.3
    assert after["learned_R@1"] == before["learned_R@1"]
    assert fitted["curve"][0] == {"bonus": 0.0, **before}


def test_the_bonus_stops_where_it_costs_the_learned_products_more_than_the_tolerance():
    fitted = fit_bonus(**check_vectors(studio_shift=0.3, noise=0.6))  # look-alikes closer
    before, after = fitted["before"], fitted["after"]
    assert 0 < fitted["bonus"] < BONUSES[-1]
    assert after["unlearned_R@1"] > before["unlearned_R@1"]
    assert after["learned_R@1"] >= before["learned_R@1"] - TOLERANCE
    assert fitted["curve"][-1]["learned_R@1"] < before["learned_R@1"] - TOLERANCE


def test_no_bonus_where_the_studio_shot_already_wins_or_nothing_can_be_fitted():
    vectors = check_vectors(studio_shift=0.0)
    fitted = fit_bonus(**vectors)
    assert fitted["before"]["unlearned_R@1"] == 1.0 and fitted["bonus"] == 0.0
    without = {**vectors, "strangers": vectors["strangers"][:0]}
    without["stranger_labels"] = vectors["stranger_labels"][:0]
    assert fit_bonus(**without) == {
        "bonus": 0.0,
        "reason": "no strangers with several images to fit it on",
    }


# -- in SQL --------------------------------------------------------------------------------

DIM = 8


@pytest.fixture
def adapted(db):
    """A base space and an adapted one (a stored bonus of 0.2) whose rows are set by hand: 12
    learned products at similarities 0.97 to 0.86 to the query, then two products the model
    did not learn at 0.8 and 0.75, beyond the rows the first scan fetches for k = 2."""
    base, pks, _, _, _ = synthetic_catalogue(14, 2, DIM)
    space = EmbeddingSpace.objects.create(
        name=f"{base.name}+test", base=base, dimension=DIM, report={"unlearned": {"bonus": 0.2}}
    )
    similarities = [0.97 - 0.01 * i for i in range(12)] + [0.8, 0.75]
    rows = []
    for pk, similarity in zip(pks, similarities, strict=True):
        vector = np.zeros(DIM)
        vector[0], vector[1] = similarity, np.sqrt(1 - similarity**2)
        rows.append(
            ProductEmbedding(
                product_id=pk,
                space=space,
                image_key="main",
                embedding=vector.tolist(),
                status=EmbeddingStatus.READY,
                content_hash="derived",
                learned=similarity > 0.8,
            )
        )
    ProductEmbedding.objects.bulk_create(rows)
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    ensure_index(space)
    query = np.zeros(DIM)
    query[0] = 1.0
    return space, pks, query


@pytest.mark.products
def test_a_product_the_model_did_not_learn_is_lifted_by_the_bonus(adapted, settings):
    space, pks, query = adapted
    products = get_product_model().objects.all()
    top = nearest_products(space, k=2, vectors=query, queryset=products)
    assert [n.product.pk for n in top] == [pks[12], pks[0]]
    assert top[0].score == pytest.approx(1.0, abs=0.005)
    assert top[0].similarity == pytest.approx(0.8, abs=0.005)
    assert top[1].score == top[1].similarity == pytest.approx(0.97, abs=0.005)
    # Only the nearest such product is lifted: the next keeps its place.
    everything = nearest_products(space, k=14, vectors=query, queryset=products)
    assert [n.product.pk for n in everything] == [pks[12], *pks[:12], pks[13]]
    assert everything[-1].score == everything[-1].similarity
    (regions,) = nearest_per_query(space, query, k=2, queryset=products)
    assert [n.product.pk for n in regions] == [pks[12], pks[0]]
    # Not among a product's similar items: its own images are not photos to make up for.
    similar = nearest_products(space, k=2, of_product=pks[1], queryset=products)
    assert [n.product.pk for n in similar] == [pks[2], pks[0]]  # 1.9 and 2.2 degrees away
    # The setting overrides the fitted bonus; 0 turns it off.
    settings.VISUAL_SEARCH = {**settings.VISUAL_SEARCH, "ADAPTATION": {"UNLEARNED_BONUS": 0.125}}
    top = nearest_products(space, k=6, vectors=query, queryset=products)
    assert [n.product.pk for n in top] == [*pks[:5], pks[12]]  # 0.925: after 0.97 to 0.93
    settings.VISUAL_SEARCH = {**settings.VISUAL_SEARCH, "ADAPTATION": {"UNLEARNED_BONUS": 0}}
    top = nearest_products(space, k=14, vectors=query, queryset=products)
    assert [n.product.pk for n in top] == pks
    assert all(n.score == n.similarity for n in top)


@pytest.mark.products
def test_the_base_space_has_no_bonus(adapted):
    space, pks, query = adapted
    ProductEmbedding.objects.filter(space=space.base).update(learned=False)
    base = EmbeddingSpace.objects.get(pk=space.base_id)
    found = nearest_products(
        base, k=3, vectors=np.ones(DIM), queryset=get_product_model().objects.all()
    )
    assert all(n.score == n.similarity for n in found)
