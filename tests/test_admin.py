"""Admin: embedding list, status page, reindex actions for permitted staff only."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from tests.conftest import wait_for
from visual_search.admin_actions import reindex_selected_products
from visual_search.models import ProductEmbedding

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/catalog/product/"


@pytest.fixture
def staff(django_user_model):
    def make(name: str, *, reindex: bool, superuser: bool = False):
        user = django_user_model.objects.create_user(
            name, password="pw", is_staff=True, is_superuser=superuser
        )
        perms = ["view_product", "change_product", "view_productembedding"]
        user.user_permissions.add(*Permission.objects.filter(codename__in=perms))
        if reindex:
            user.user_permissions.add(Permission.objects.get(codename="reindex"))
        return user

    return make


def test_embedding_admin_lists_filters_and_searches(client, catalogue, staff, make_product):
    make_product("Broken jar", b"not an image")
    from visual_search import services

    services.reindex("missing", inline=True)
    client.force_login(staff("viewer", reindex=False))
    url = reverse("admin:visual_search_productembedding_changelist")
    page = client.get(url).content.decode()
    assert "Broken jar" in page and "Banana" in page
    failed = client.get(url, {"status__exact": "failed"}).content.decode()
    assert "Broken jar" in failed and "Banana" not in failed
    found = client.get(url, {"q": "Kiwi"}).content.decode()
    assert "Kiwi" in found and "Banana" not in found


def test_status_page(client, catalogue, staff, make_product):
    make_product("Not yet", None)
    client.force_login(staff("viewer", reindex=False))
    page = client.get(reverse("admin:visual_search_productembedding_status")).content.decode()
    assert "tf_efficientnet_lite0/package (current encoder)" in page
    assert 'id="vs-missing">1<' in page
    assert "valid (" in page  # the HNSW index exists and is valid
    assert "Reindex missing and failed" not in page  # no permission: no button
    assert 'id="vs-stuck"' not in page
    # Embeddings that wait for longer than a worker would take: say where to look.
    ProductEmbedding.objects.filter(product_id=catalogue["Kiwi"].pk).update(
        status="pending", updated_at=timezone.now() - timedelta(minutes=11)
    )
    page = client.get(reverse("admin:visual_search_productembedding_status")).content.decode()
    assert "1 embedding has been pending since" in page
    assert "check that a Celery worker is running" in page


@pytest.mark.django_db(transaction=True)
def test_status_page_reindex_button(client, celery_worker, staff, make_product, photos, settings):
    settings.VISUAL_SEARCH = {**settings.VISUAL_SEARCH, "AUTO_EMBED": False}
    product = make_product("Kiwi", photos("train", "Kiwi")[3])  # saved, never embedded
    settings.VISUAL_SEARCH = {**settings.VISUAL_SEARCH, "AUTO_EMBED": True}
    url = reverse("admin:visual_search_productembedding_status")
    client.force_login(staff("viewer", reindex=False))
    assert client.post(url).status_code == 403
    client.force_login(staff("manager", reindex=True))
    assert "Reindex missing and failed" in client.get(url).content.decode()
    response = client.post(url, follow=True)
    assert "Queued 1 product for embedding in 1 task(s)." in response.content.decode()
    wait_for(
        lambda: ProductEmbedding.objects.filter(product_id=product.pk, status="ready").exists(),
        what="the queued product to be embedded by the worker",
        log=celery_worker,
    )


@pytest.mark.django_db(transaction=True)
def test_reindex_action_on_the_shops_product_admin(
    client, celery_worker, staff, make_product, photos, settings
):
    settings.VISUAL_SEARCH = {**settings.VISUAL_SEARCH, "ADMIN": {"CHUNK_SIZE": 2}}
    products = [
        make_product(name, photos("train", name)[1]) for name in ("Kiwi", "Lemon", "Banana")
    ]
    pks = [p.pk for p in products]
    wait_for(
        lambda: ProductEmbedding.objects.filter(product_id__in=pks, status="ready").count() == 3,
        what="first embeddings",
        log=celery_worker,
    )
    before = dict(
        ProductEmbedding.objects.filter(product_id__in=pks).values_list("product_id", "updated_at")
    )
    data = {"action": "reindex_selected_products", "_selected_action": pks}
    client.force_login(staff("clerk", reindex=False))
    response = client.post(CHANGELIST, data, follow=True)
    assert "You do not have permission to reindex" in response.content.decode()
    client.force_login(staff("manager", reindex=True))
    response = client.post(CHANGELIST, data, follow=True)
    assert "Queued 3 products for embedding in 2 task(s)." in response.content.decode()

    def all_redone():
        rows = ProductEmbedding.objects.filter(product_id__in=pks, status="ready")
        return all(row.updated_at > before[row.product_id] for row in rows) and rows.count() == 3

    wait_for(all_redone, what="forced re-embedding of the selected products", log=celery_worker)


def test_changelist_status_column_filter_and_similar_preview(
    client, catalogue, staff, make_product
):
    make_product("Not yet", None)
    client.force_login(staff("viewer", reindex=False))
    ready = client.get(CHANGELIST, {"visual_search": "ready"}).content.decode()
    assert "Banana" in ready and "Not yet" not in ready
    missing = client.get(CHANGELIST, {"visual_search": "missing"}).content.decode()
    assert "Not yet" in missing and "Banana" not in missing
    change = client.get(reverse("admin:catalog_product_change", args=[catalogue["Kiwi"].pk]))
    html = change.content.decode()
    assert "Similar products (visual search)" in html and html.count("vs-carousel__item") == 3


def test_action_is_registered_onto_an_unmodified_admin():
    from django.contrib import admin

    from visual_search.admin_actions import register_reindex_action

    class PlainProductAdmin(admin.ModelAdmin):
        pass

    site = admin.AdminSite(name="plain")
    from shop_demo.catalog.models import Product

    site.register(Product, PlainProductAdmin)
    assert register_reindex_action(site)
    assert reindex_selected_products in site._registry[Product].actions


def test_non_staff_cannot_reach_the_admin_pages(client, django_user_model):
    user = django_user_model.objects.create_user("shopper", password="pw")
    client.force_login(user)
    response = client.get(reverse("admin:visual_search_productembedding_status"))
    assert response.status_code == 302 and "/login/" in response["Location"]
    assert ProductEmbedding.objects.count() == 0


@pytest.fixture
def spaces(db):
    """The current encoder's space (6 products), an active space adapted from it, an inactive
    one, and a space of another encoder, each with the same 6 rows."""
    from tests.conftest import synthetic_catalogue
    from visual_search.models import EmbeddingSpace

    base, _, _, _, _ = synthetic_catalogue(6, 2, 8)
    report = {
        "method": "finetune",
        "held_out_images": 65,
        "before": {"R@1": 0.785, "R@5": 0.985},
        "after": {"R@1": 0.877, "R@5": 0.99},
    }
    made = {
        "base": base,
        "active": EmbeddingSpace.objects.create(
            name=f"{base.name}+ft-a", base=base, dimension=8, is_active=True, report=report
        ),
        "old": EmbeddingSpace.objects.create(name=f"{base.name}+ft-b", base=base, dimension=8),
        "other": EmbeddingSpace.objects.create(name="another/encoder", dimension=8),
    }
    rows = list(ProductEmbedding.objects.filter(space=base))
    for space in list(made.values())[1:]:
        for row in rows:
            row.pk, row.space = None, space
        ProductEmbedding.objects.bulk_create(rows)
    return made


def space_url(view: str, space=None) -> str:
    return reverse(f"admin:visual_search_embeddingspace_{view}", args=[space.pk] if space else [])


def test_space_admin_shows_what_each_space_is_for_and_edits_nothing(client, spaces, staff):
    client.force_login(staff("boss", reindex=True, superuser=True))
    listed = client.get(space_url("changelist")).content.decode()
    for role in (
        "current encoder",
        "adapted; searches run here",
        "adapted; not in use (switch on the index status page)",
        "another encoder; not in use",
    ):
        assert role in listed
    active = spaces["active"]
    page = client.get(space_url("change", active)).content.decode()
    assert "0.785 / 0.985 → 0.877 / 0.990 (finetune, 65 held-out images)" in page
    assert 'name="is_active"' not in page and 'name="report"' not in page
    # Switching goes through the status page (one transaction, every process follows).
    response = client.post(space_url("change", active), {"is_active": "", "report": "{}"})
    assert response.status_code == 403
    active.refresh_from_db()
    assert active.is_active and active.report["after"]["R@1"] == 0.877


def test_space_admin_deletes_only_the_spaces_no_search_reads(client, spaces, staff):
    from visual_search.models import EmbeddingSpace

    client.force_login(staff("boss", reindex=True, superuser=True))
    for in_use in (spaces["base"], spaces["active"]):
        assert client.get(space_url("delete", in_use)).status_code == 403
    chosen = {
        "action": "delete_selected",
        "_selected_action": [spaces["active"].pk, spaces["old"].pk],
    }
    refused = client.post(space_url("changelist"), chosen).content.decode()
    assert "permission to delete the following" in refused
    assert client.post(space_url("changelist"), {**chosen, "post": "yes"}).status_code == 403
    assert EmbeddingSpace.objects.count() == 4
    # The confirmation counts the rows rather than listing each of them.
    confirm = client.get(space_url("delete", spaces["old"])).content.decode()
    assert "Product embeddings: 6" in confirm and "main [ready]" not in confirm
    client.post(space_url("delete", spaces["old"]), {"post": "yes"})
    assert not EmbeddingSpace.objects.filter(pk=spaces["old"].pk).exists()
    assert not ProductEmbedding.objects.filter(space_id=spaces["old"].pk).exists()
    assert ProductEmbedding.objects.filter(space=spaces["active"]).count() == 6


def test_a_live_adaptation_run_cannot_be_deleted(client, staff):
    from visual_search.models import AdaptationRun, AdaptationState

    client.force_login(staff("boss", reindex=True, superuser=True))
    running = AdaptationRun.objects.create(method="finetune", state=AdaptationState.RUNNING)
    done = AdaptationRun.objects.create(method="finetune", state=AdaptationState.SWITCHED)
    stalled = AdaptationRun.objects.create(method="finetune", state=AdaptationState.RUNNING)
    AdaptationRun.objects.filter(pk=stalled.pk).update(
        updated_at=timezone.now() - timedelta(hours=2)
    )

    def delete(run):
        url = reverse("admin:visual_search_adaptationrun_delete", args=[run.pk])
        return client.post(url, {"post": "yes"}).status_code

    assert delete(running) == 403
    assert delete(done) == 302 and delete(stalled) == 302
    assert list(AdaptationRun.objects.values_list("pk", flat=True)) == [running.pk]
