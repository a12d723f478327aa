"""Catalogue adaptation: learned, checked on held-out images, switched atomically, reversible."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from visual_search import services
from visual_search.models import EmbeddingSpace, ProductEmbedding
from visual_search.spaces import query_space

pytestmark = pytest.mark.django_db

NAMES = ["Banana", "Kiwi", "Lemon", "Arla-Standard-Milk", "Granny-Smith", "Carrots",
         "Pink-Lady", "Red-Delicious", "Yellow-Onion", "Golden-Delicious", "Royal-Gala",
         "Arla-Medium-Fat-Milk", "Garant-Ecological-Standard-Milk", "Lime", "Orange", "Mango",
         "Cucumber", "Zucchini", "Floury-Potato", "Nectarine"]  # fmt: skip


@pytest.fixture
def labelled_catalogue(make_product, photos):
    """Products with several in-store photos each, spread over their photo sequences."""
    made = {}
    for name in NAMES:
        shots = photos("train", name)
        spread = shots[len(shots) // 6 :: max(1, len(shots) // 6)][:5]
        made[name] = make_product(name, shots[0], gallery=spread)
    services.embed_many([p.pk for p in made.values()])
    return made


def run(*args):
    out = io.StringIO()
    call_command("visual_search_adapt", *args, stdout=out)
    return out.getvalue()


def test_adapt_checks_on_held_out_images_then_switches_and_reverts(
    labelled_catalogue, make_product, photos
):
    base = query_space()
    out = run("--dims", "19")
    assert "held-out R@1" in out and '"before"' in out and "active" in out
    adapted = query_space()
    assert adapted.base_id == base.name and adapted.dimension == 19 and adapted.is_active
    assert adapted.report["after"]["R@1"] > adapted.report["before"]["R@1"]
    assert (
        ProductEmbedding.objects.filter(space=adapted).count()
        == ProductEmbedding.objects.filter(space=base, status="ready").count()
    )
    # Queries now run in the adapted space.
    results = services.search_by_image(photos("val", "Kiwi")[0], k=3)
    assert results[0].product == labelled_catalogue["Kiwi"]
    assert services.similar_products(labelled_catalogue["Kiwi"], k=3)
    # A product saved after adaptation is embedded in both spaces.
    fresh = make_product("Kiwi too", photos("train", "Kiwi")[-1])
    services.embed_product(fresh)
    assert set(
        ProductEmbedding.objects.filter(product_id=fresh.pk).values_list("space_id", flat=True)
    ) == {base.name, adapted.name}
    vector = np.asarray(ProductEmbedding.objects.get(product_id=fresh.pk, space=adapted).embedding)
    assert vector.shape == (19,) and abs(float(vector @ vector) - 1) < 0.01
    # Reverting is one switch; the adapted space stays for later.
    run("--revert")
    assert query_space().name == base.name
    run("--activate", adapted.name)
    assert query_space().name == adapted.name


def test_adaptation_that_is_not_better_is_refused(labelled_catalogue):
    with pytest.raises(CommandError, match="not better"):
        run("--dims", "1")
    assert not EmbeddingSpace.objects.filter(base__isnull=False).exists()
    assert query_space().base_id is None


def test_too_few_labelled_images_is_a_clear_error(make_product, photos):
    product = make_product("Kiwi", photos("train", "Kiwi")[0])
    services.embed_product(product)
    with pytest.raises(CommandError, match="Too few products"):
        run()


@pytest.mark.django_db(transaction=True)
def test_admin_button_adapts_in_a_worker(
    client, celery_worker, labelled_catalogue, django_user_model
):
    from django.contrib.auth.models import Permission

    from tests.conftest import wait_for

    user = django_user_model.objects.create_user("manager", password="pw", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(codename__in=["reindex", "view_productembedding"])
    )
    client.force_login(user)
    url = "/admin/visual_search/productembedding/status/"
    response = client.post(url, {"action": "adapt"}, follow=True)
    assert "Adaptation queued" in response.content.decode()
    adapted = wait_for(
        lambda: EmbeddingSpace.objects.filter(base__isnull=False, is_active=True).first(),
        what="the worker to adapt and switch",
        log=celery_worker,
    )
    page = client.get(url).content.decode()
    assert (
        adapted.name in page and "(active: queries run here)" in page and "held-out images" in page
    )
    client.post(url, {"action": "revert"})
    assert not EmbeddingSpace.objects.filter(is_active=True).exists()
