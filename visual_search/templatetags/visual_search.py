"""{% load visual_search %}: similar products for product pages, never breaking the page."""

from __future__ import annotations

import logging
from typing import Any

from django import template
from django.core.files.storage import default_storage
from django.utils.translation import gettext

from visual_search.cache import cached_similar
from visual_search.conf import vs_settings

register = template.Library()
logger = logging.getLogger(__name__)


def _safe_similar(product: Any, k: int) -> list[Any]:
    if product is None or getattr(product, "pk", None) is None:
        return []
    try:
        return cached_similar(product, int(k))
    except Exception:  # a page must render even when search is down
        logger.exception("visual_search: similar products of %r failed", product)
        return []


@register.simple_tag
def similar_products(product: Any, k: int = 8) -> list[Any]:
    """``{% similar_products product 8 as items %}``: SearchResult objects (product, score,
    image_key), best first; empty when the product has no embedding yet or on any error."""
    return _safe_similar(product, k)


@register.inclusion_tag("visual_search/carousel.html")
def similar_products_carousel(product: Any, k: int = 8, title: str | None = None) -> dict:
    """A scroll-snap carousel of similar products (override visual_search/carousel.html);
    the title defaults to "Similar items" in the page's language."""
    items = [
        {"result": result, "product": result.product, "image_url": _image_url(result)}
        for result in _safe_similar(product, k)
    ]
    title = gettext("Similar items") if title is None else title
    return {"items": items, "title": title, "product": product}


def _image_url(result: Any) -> str:
    """The DISPLAY_IMAGE field's URL, else the matched image's (a storage name)."""
    try:
        field = vs_settings.DISPLAY_IMAGE
        if field:
            image = getattr(result.product, field, None)
            return image.url if image else ""
        return default_storage.url(result.image_key)
    except Exception:
        return ""


@register.inclusion_tag("visual_search/look.html")
def shop_the_look(
    look: Any, similar: int = 3, show_suggested: bool = False, show_boxes: bool = False
) -> dict:
    """A look image with a hotspot per item (no JavaScript: <details> popovers), each showing
    its product and ``similar`` similar items. Suggested, unaccepted items and the items'
    box outlines (for the merchant who reviews them) only when asked."""
    try:
        items = list(look.items.select_related("product"))
    except Exception:
        logger.exception("visual_search: items of look %r failed", look)
        items = []
    hotspots = [
        {
            "item": item,
            "product": item.product,
            "x": round(item.centre[0], 2),
            "y": round(item.centre[1], 2),
            "box": [
                round(item.left * 100, 2),
                round(item.top * 100, 2),
                round((item.right - item.left) * 100, 2),
                round((item.bottom - item.top) * 100, 2),
            ],
            "image_url": _product_image_url(item.product),
            "similar": [
                {"product": r.product, "image_url": _image_url(r)}
                for r in _safe_similar(item.product, similar)
            ]
            if similar
            else [],
        }
        for item in items
        if show_suggested or not item.suggested
    ]
    return {"look": look, "hotspots": hotspots, "show_boxes": show_boxes}


def _product_image_url(product: Any) -> str:
    field = vs_settings.DISPLAY_IMAGE
    image = getattr(product, field, None) if field else None
    try:
        return image.url if image else ""
    except ValueError:
        return ""
