"""Template tags: one query for a whole carousel, cached, invalidated, never breaking a page."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.db import connection
from django.template import Context, Template
from django.test.utils import CaptureQueriesContext

from visual_search import services
from visual_search.spaces import query_space

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _empty_cache():
    cache.clear()


def render(source: str, **context) -> str:
    return Template("{% load visual_search %}" + source).render(Context(context))


def test_simple_tag_gives_results_for_custom_markup(catalogue):
    html = render(
        "{% similar_products product 2 as items %}{% for i in items %}[{{ i.product.name }}]{% endfor %}",
        product=catalogue["Kiwi"],
    )
    assert html.count("[") == 2 and "[Kiwi]" not in html


def test_carousel_is_one_query_then_cached(catalogue, django_assert_num_queries):
    query_space()  # the space row (per process) and the active space (cached 30 s) are known
    with django_assert_num_queries(1):
        html = render("{% similar_products_carousel product 3 %}", product=catalogue["Banana"])
    assert html.count('class="vs-carousel__item"') == 3
    assert 'loading="lazy"' in html and 'tabindex="0"' in html and "aria-labelledby" in html
    assert "/media/products/" in html  # the matched product image
    with django_assert_num_queries(0):
        again = render("{% similar_products_carousel product 3 %}", product=catalogue["Banana"])
    assert again == html


def test_cache_is_invalidated_when_the_products_embeddings_change(catalogue):
    banana = catalogue["Banana"]
    render("{% similar_products_carousel product 3 %}", product=banana)
    services.embed_product(banana, force=True)
    with CaptureQueriesContext(connection) as queries:
        render("{% similar_products_carousel product 3 %}", product=banana)
    assert len(queries) == 1  # recomputed, not served from the stale entry


def test_product_without_embedding_renders_an_empty_state(make_product):
    product = make_product("Nothing yet", None)
    html = render("{% similar_products_carousel product %}", product=product)
    assert "No similar items yet." in html and "vs-carousel__item" not in html


def test_errors_are_logged_not_raised(catalogue, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("database on fire")

    monkeypatch.setattr(services, "similar_products", broken)
    html = render("{% similar_products_carousel product %}", product=catalogue["Kiwi"])
    assert "No similar items yet." in html
    assert "database on fire" in caplog.text


def test_template_can_be_overridden(catalogue, settings, tmp_path):
    (tmp_path / "visual_search").mkdir()
    (tmp_path / "visual_search" / "carousel.html").write_text("custom:{{ items|length }}")
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [tmp_path]}]
    assert (
        render("{% similar_products_carousel product 2 %}", product=catalogue["Kiwi"]) == "custom:2"
    )
