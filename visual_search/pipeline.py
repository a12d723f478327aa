"""Computing and storing embeddings for products: the work behind the Celery task.

Images whose content hash is unchanged are skipped; an image that cannot be used is recorded
as a failed row with its error (permanent, not retried); anything else (a storage or database
outage, an encoder that will not load) propagates so the task can retry it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from django.db import models, transaction
from PIL import Image

from visual_search.adaptation import to_space
from visual_search.cache import invalidate
from visual_search.encoders import Encoder, get_encoder
from visual_search.exceptions import UnusableImage
from visual_search.gallery import GalleryImage, product_images
from visual_search.images import load_image, read_bytes
from visual_search.indexing import ensure_index
from visual_search.models import EmbeddingSpace, EmbeddingStatus, ProductEmbedding
from visual_search.models_registry import get_product_model
from visual_search.segments import segment_of
from visual_search.spaces import ensure_current_space

logger = logging.getLogger(__name__)


@dataclass
class EmbedReport:
    """What one embedding run did; ``failed`` maps (product pk, image key) to the error."""

    embedded: int = 0
    skipped: int = 0
    removed: int = 0
    missing_products: list[Any] = field(default_factory=list)
    failed: dict[tuple[Any, str], str] = field(default_factory=dict)

    def merge(self, other: EmbedReport) -> None:
        self.embedded += other.embedded
        self.skipped += other.skipped
        self.removed += other.removed
        self.missing_products += other.missing_products
        self.failed.update(other.failed)


@dataclass
class _Work:
    product_pk: Any
    image: GalleryImage
    content_hash: str = ""
    segment: str = ""


def sync_gallery_rows(
    product: models.Model, space: EmbeddingSpace
) -> tuple[list[GalleryImage], int]:
    """Make the space's rows match the gallery's keys: new keys pending, gone keys deleted."""
    gallery = product_images(product)
    keys = [image.key for image in gallery]
    rows = ProductEmbedding.objects.filter(product_id=product.pk, space=space)
    # A removed image leaves every space, adapted ones included.
    removed, _ = (
        ProductEmbedding.objects.filter(product_id=product.pk).exclude(image_key__in=keys).delete()
    )
    if removed:
        invalidate([product.pk])
    existing = set(rows.values_list("image_key", flat=True))
    segment = segment_of(product)  # signals.py keeps existing rows in step
    ProductEmbedding.objects.bulk_create(
        [
            ProductEmbedding(product_id=product.pk, space=space, image_key=key, segment=segment)
            for key in keys
            if key not in existing
        ],
        ignore_conflicts=True,
    )
    return gallery, removed


def embed_products(
    products_or_pks: Iterable[Any], *, force: bool = False, encoder: Encoder | None = None
) -> EmbedReport:
    """Embed the galleries of these products in the encoder's space (default: the current
    one), in encoder batches."""
    encoder = encoder or get_encoder()
    space = ensure_current_space(encoder, with_dimension=True)
    ensure_index(space)
    derived = list(space.derived.values_list("name", flat=True))
    report = EmbedReport()
    work: list[tuple[_Work, Image.Image]] = []
    products = _load_products(products_or_pks, report)
    in_every_derived = _ready_in_every_space([product.pk for product in products], derived)
    for product in products:
        gallery, removed = sync_gallery_rows(product, space)
        report.removed += removed
        known = {
            row.image_key: row
            for row in ProductEmbedding.objects.filter(product_id=product.pk, space=space)
        }
        segment = segment_of(product)
        for image in gallery:
            item = _Work(product.pk, image, segment=segment)
            problem: UnusableImage | None = None
            try:
                data = read_bytes(image.source)
            except UnusableImage as exc:
                problem = exc
                # Unreadable (empty, too large, missing): the error stands in for the content,
                # so the same failure is not retried on every save.
                item.content_hash = hashlib.sha256(f"unreadable:{exc}".encode()).hexdigest()
            else:
                item.content_hash = hashlib.sha256(data).hexdigest()
            row = known.get(image.key)
            if (
                row is not None
                and row.content_hash == item.content_hash
                and not force
                and row.status != EmbeddingStatus.PENDING
                # An image missing from an adapted space (a failure there, or rows older than
                # the space) is embedded again; an unusable one is not retried.
                and (
                    not derived
                    or row.status == EmbeddingStatus.FAILED
                    or (product.pk, image.key) in in_every_derived
                )
            ):
                report.skipped += 1
                continue
            if problem is None:
                try:
                    picture = load_image(data)
                except UnusableImage as exc:
                    problem = exc
                else:
                    work.append((item, picture))
                    continue
            _record_failure(space, item, str(problem), report)
    batch_size = max(1, int(getattr(encoder, "batch_size", 32)))
    for start in range(0, len(work), batch_size):
        batch = work[start : start + batch_size]
        vectors = encoder.encode([picture for _, picture in batch])
        _store_vectors(space, batch, vectors)
        report.embedded += len(batch)
    return report


def _ready_in_every_space(product_pks: list[Any], spaces: list[str]) -> set[tuple[Any, str]]:
    """The (product pk, image key) pairs of these products that have a ready row in each of
    these (adapted) spaces, in one query for the whole call."""
    if not spaces or not product_pks:
        return set()
    counts = (
        ProductEmbedding.objects.filter(
            product_id__in=product_pks, space_id__in=spaces, status=EmbeddingStatus.READY
        )
        .values("product_id", "image_key")
        .annotate(n=models.Count("space_id"))
    )
    return {(row["product_id"], row["image_key"]) for row in counts if row["n"] == len(spaces)}


def _load_products(products_or_pks: Iterable[Any], report: EmbedReport) -> list[models.Model]:
    model = get_product_model()
    products: list[models.Model] = []
    pks: list[Any] = []
    for item in products_or_pks:
        (products if isinstance(item, model) else pks).append(item)
    if pks:
        found = model._default_manager.in_bulk(pks)
        normalised = {str(pk): product for pk, product in found.items()}
        for pk in pks:
            product = normalised.get(str(pk))
            if product is None:
                report.missing_products.append(pk)
            else:
                products.append(product)
    return products


def _store_vectors(
    space: EmbeddingSpace, batch: Sequence[tuple[_Work, Image.Image]], vectors: Any
) -> None:
    rows = [
        ProductEmbedding(
            product_id=item.product_pk,
            space=space,
            image_key=item.image.key,
            content_hash=item.content_hash,
            embedding=vector,
            status=EmbeddingStatus.READY,
            error="",
            segment=item.segment,
        )
        for (item, _), vector in zip(batch, vectors, strict=True)
    ]
    updated = ["content_hash", "embedding", "status", "error", "segment", "updated_at"]
    pictures = [picture for _, picture in batch]
    derived_rows = []
    for derived in space.derived.all():  # adapted spaces stay complete (see adaptation.py)
        try:
            encoded = to_space(derived, np.asarray(vectors), pictures)
        except Exception:
            if derived.is_active:
                raise
            # A space no search reads does not hold up the catalogue: its missing images are
            # embedded again on the next save, and count as missing once it is switched on.
            logger.exception("Cannot encode images in the inactive space %s", derived.name)
            continue
        # A product its model learned keeps that flag for a new image; another is not learned.
        learned = set(
            ProductEmbedding.objects.filter(
                space=derived, product_id__in={row.product_id for row in rows}, learned=True
            ).values_list("product_id", flat=True)
        )
        derived_rows += [
            ProductEmbedding(
                product_id=row.product_id,
                space=derived,
                image_key=row.image_key,
                content_hash="derived",
                embedding=vector,
                status=EmbeddingStatus.READY,
                error="",
                segment=row.segment,
                learned=row.product_id in learned,
            )
            for row, vector in zip(rows, encoded, strict=True)
        ]
    # All or nothing: an image the active adapted space could not encode stays pending in the
    # base space too, so the task's retry redoes it (and a task that gives up marks it failed).
    with transaction.atomic():
        _upsert(rows, updated)
        if derived_rows:
            _upsert(derived_rows, [*updated, "learned"])
    invalidate({item.product_pk for item, _ in batch})


def _record_failure(space: EmbeddingSpace, item: _Work, error: str, report: EmbedReport) -> None:
    logger.warning("Cannot embed %s of product %s: %s", item.image.key, item.product_pk, error)
    report.failed[(item.product_pk, item.image.key)] = error
    with transaction.atomic():
        row, _ = ProductEmbedding.objects.select_for_update().get_or_create(
            product_id=item.product_pk, space=space, image_key=item.image.key
        )
        row.content_hash = item.content_hash
        row.embedding = None
        row.status = EmbeddingStatus.FAILED
        row.error = error
        row.attempts += 1
        row.save()
    invalidate([item.product_pk])


def _upsert(rows: list[ProductEmbedding], update_fields: list[str]) -> None:
    ProductEmbedding.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["product", "space", "image_key"],
        update_fields=update_fields,
    )


def mark_products_failed(pks: Iterable[Any], error: str) -> int:
    """Give up on products whose task ran out of retries: their pending rows say why."""
    return ProductEmbedding.objects.filter(
        product_id__in=list(pks), status=EmbeddingStatus.PENDING
    ).update(status=EmbeddingStatus.FAILED, error=error[:2000], attempts=models.F("attempts") + 1)
