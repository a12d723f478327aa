"""Re-embed products after their saves commit, never letting that fail or slow down a save;
drop a deleted space's indexes."""

from __future__ import annotations

import logging
import threading
from typing import Any

from django.apps import apps
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from visual_search.conf import vs_settings
from visual_search.exceptions import ProductNotFound
from visual_search.models_registry import get_product_model

logger = logging.getLogger(__name__)

_pending = threading.local()


def request_embedding(product_pk: Any) -> None:
    """Queue the product once per transaction, after it commits."""
    if product_pk is None or not vs_settings.AUTO_EMBED:
        return
    pks = getattr(_pending, "pks", None)
    if pks is None:
        pks = _pending.pks = {}
    pks[product_pk] = None
    transaction.on_commit(_flush, robust=True)


def _flush() -> None:
    from visual_search import services

    pks = list(getattr(_pending, "pks", {}) or {})
    _pending.pks = {}
    queued = []
    for pk in pks:
        try:
            services.mark_pending(pk)
        except ProductNotFound:
            continue  # deleted (or rolled back) before the commit: its rows are gone with it
        except Exception:
            logger.exception("Could not record pending embeddings of product %s", pk)
        queued.append(pk)
    services.schedule_embedding(queued)


def _product_saved(sender: Any, instance: Any, raw: bool = False, **kwargs: Any) -> None:
    if raw:  # fixtures (loaddata) are reindexed explicitly
        return
    _move_segment(instance)
    request_embedding(instance.pk)


def _move_segment(product: Any) -> None:
    """In the save's own transaction, so that a segment search never shows a product under
    its old value; in a savepoint, so that a failure here cannot break the save."""
    from visual_search.segments import update_product_segment

    if not vs_settings.SEGMENTS["FIELD"]:
        return  # no savepoint round trip on every save when segments are off
    try:
        with transaction.atomic():
            update_product_segment(product)
    except Exception:
        logger.exception("Could not move the embeddings of product %s to its segment", product.pk)


def _image_changed(sender: Any, instance: Any, raw: bool = False, **kwargs: Any) -> None:
    if raw:
        return
    path = vs_settings.IMAGE_MODELS.get(sender._meta.label) or vs_settings.IMAGE_MODELS.get(
        sender._meta.label_lower
    )
    if path:
        request_embedding(_follow(instance, path))


def _follow(instance: Any, path: str) -> Any:
    """The product key at the end of an attribute path like "product" or "variant__product"."""
    *hops, last = path.split("__")
    for hop in hops:
        instance = getattr(instance, hop, None)
        if instance is None:
            return None
    return getattr(instance, f"{last}_id", None) or getattr(
        getattr(instance, last, None), "pk", None
    )


def space_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    """A deleted embedding space's indexes go once the deletion commits (concurrently,
    outside the transaction), unless a space of the same name was created again meanwhile
    (an adaptation that learns the same weights gets the same name)."""
    name = instance.name

    def drop() -> None:
        from visual_search.indexing import drop_space_indexes
        from visual_search.models import EmbeddingSpace

        if not EmbeddingSpace.objects.filter(name=name).exists():
            drop_space_indexes(name)

    transaction.on_commit(drop, robust=True)


def connect() -> None:
    product_model = get_product_model()
    post_save.connect(_product_saved, sender=product_model, dispatch_uid="visual_search_product")
    for label in vs_settings.IMAGE_MODELS:
        model = apps.get_model(label)
        uid = f"visual_search_images_{model._meta.label_lower}"
        post_save.connect(_image_changed, sender=model, dispatch_uid=uid + "_save")
        post_delete.connect(_image_changed, sender=model, dispatch_uid=uid + "_delete")
