"""Cached similar-product results for pages (template tags), invalidated per product.

Each product has a version number in the cache; results are stored under a key that
includes it, and writing the product's embeddings bumps it, so stale entries are never read.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.cache import caches

from visual_search.conf import vs_settings

logger = logging.getLogger(__name__)


def _cache() -> Any:
    return caches[vs_settings.CACHE["ALIAS"]]


def _version_key(product_pk: Any) -> str:
    return f"visual_search:v:{product_pk}"


def cached_similar(product: Any, k: int) -> list[Any]:
    """services.similar_products through the cache; [] when the product has no embedding."""
    from visual_search import services

    timeout = int(vs_settings.CACHE["TIMEOUT"])
    if timeout <= 0:
        return _similar_or_empty(services, product, k)
    cache = _cache()
    version = cache.get(_version_key(product.pk)) or 0
    space = services.query_space()
    key = f"visual_search:similar:{space.name if space else ''}:{product.pk}:{k}:{version}"
    found = cache.get(key)
    if found is None:
        found = _similar_or_empty(services, product, k)
        cache.set(key, found, timeout)
    return found


def _similar_or_empty(services: Any, product: Any, k: int) -> list[Any]:
    try:
        return services.similar_products(product, k=k)
    except services.ProductNotEmbedded:
        return []


def invalidate(product_pks: Any) -> None:
    """The products' embeddings changed: their cached results are dead from now on."""
    try:
        _cache().set_many({_version_key(pk): time.time_ns() for pk in product_pks}, None)
    except Exception:  # a cache outage must never fail the embedding work itself
        logger.exception("Could not invalidate cached similar products")
