"""The only door to visual search: the API, admin, template tags, commands and tasks call these.

Queries take the shop's own QuerySet as a filter and return at most k results, one per
product (scored by its best image), best first, as ``SearchResult`` objects.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db import models
from django.db.models import Count, Exists, Min, OuterRef, Q
from django.utils import timezone
from django.utils.translation import gettext

from visual_search.adaptation import encode_in, is_fine_tuned, space_encoder
from visual_search.adaptation_runs import is_stalled
from visual_search.calibration import result_confidences
from visual_search.conf import vs_settings
from visual_search.encoders import Encoder, build_encoder, get_encoder
from visual_search.exceptions import ProductNotFound, VisualSearchError
from visual_search.images import Box, ImageSource, load_image
from visual_search.indexing import index_state, segment_indexes
from visual_search.look import (
    LookGroup,
    Proposal,
    Region,
    get_detector,
    group_regions,
    rounded_box,
    with_contrast,
)
from visual_search.models import AdaptationRun, EmbeddingSpace, EmbeddingStatus, ProductEmbedding
from visual_search.models_registry import get_product_model
from visual_search.pipeline import EmbedReport, embed_products, sync_gallery_rows
from visual_search.queries import (
    Neighbour,
    has_pending_image,
    has_ready_embedding,
    nearest_per_query,
    nearest_products,
)
from visual_search.spaces import current_space_name, ensure_current_space, query_space
from visual_search.weak_products import headline

logger = logging.getLogger(__name__)


class ProductNotEmbedded(VisualSearchError):
    """The product has no ready embedding in the current space (yet, or any more)."""


@dataclass(frozen=True)
class SearchResult:
    product: models.Model
    # What ranks the results: the cosine similarity of the best image pair, plus the bonus
    # of a product the adapted space's model did not learn (unlearned.py).
    score: float
    image_key: str
    # Calibrated probability that this is the photographed product (photo searches in a
    # space whose confidence was calibrated by adaptation; see calibration.py), else None.
    confidence: float | None = None


def _check_k(k: int) -> int:
    max_k = int(vs_settings.QUERY["MAX_K"])
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= max_k:
        raise ValueError(f"k must be an integer from 1 to {max_k}, not {k!r}.")
    return k


def _resolve_product(product_or_pk: Any) -> models.Model:
    model = get_product_model()
    if isinstance(product_or_pk, model):
        return product_or_pk
    try:
        return model._default_manager.get(pk=product_or_pk)
    except (ObjectDoesNotExist, ValidationError, ValueError, TypeError) as exc:
        raise ProductNotFound(
            gettext("No %(model)s with key %(key)r.")
            % {"model": model._meta.verbose_name, "key": product_or_pk}
        ) from exc


def _results(neighbours: Sequence[Neighbour]) -> list[SearchResult]:
    return [SearchResult(n.product, n.score, n.image_key) for n in neighbours]


def _products(queryset: models.QuerySet | None) -> models.QuerySet:
    return queryset if queryset is not None else get_product_model()._default_manager.all()


def similar_products(
    product: Any, *, k: int = 8, queryset: models.QuerySet | None = None
) -> list[SearchResult]:
    """Products that look like ``product`` (an instance or a primary key), itself excluded.

    One SQL statement once the space is known. Raises ProductNotFound for an unknown key and
    ProductNotEmbedded when the product has no ready embedding yet.
    """
    _check_k(k)
    pk = product.pk if isinstance(product, models.Model) else _resolve_product(product).pk
    space = query_space()
    found: list[Neighbour] = []
    if space is not None and space.dimension is not None:
        found = nearest_products(space, k=k, of_product=pk, queryset=_products(queryset))
    if not found and not has_ready_embedding(space, pk):
        raise ProductNotEmbedded(
            gettext("Product %(key)s has no ready embedding in space %(space)r yet.")
            % {"key": pk, "space": current_space_name()}
        )
    return _results(found)


def search_by_image(
    image: ImageSource,
    *,
    k: int = 10,
    queryset: models.QuerySet | None = None,
    box: Box | None = None,
) -> list[SearchResult]:
    """Products that look like a picture (uploaded file, bytes, path or PIL image).

    Raises UnusableImage for a picture that cannot be used.
    """
    _check_k(k)
    picture = load_image(image, box=box)
    vector, space = _encode_for_query([picture])
    # One more than asked: with k=1 the top result's margin still needs its rival.
    found = nearest_products(space, k=k + 1, vectors=vector, queryset=_products(queryset))
    # From the similarities, without the bonus: it lifts a product the model did not learn
    # in the ranking, but the confidence was calibrated on products it learned; answered on
    # its own similarity and margin, such a product is more often "no match" than wrong.
    confidences = result_confidences(_calibration(space), [n.similarity for n in found])
    return [
        SearchResult(n.product, n.score, n.image_key, confidence)
        for n, confidence in zip(found[:k], confidences, strict=False)
    ]


def is_match(results: Sequence[SearchResult], min_confidence: float | None) -> bool | None:
    """Whether a photo search found the product: its top result reaches the threshold.

    None when no threshold applies, or when the space's confidence is not calibrated yet
    (``visual_search_adapt`` calibrates it): the search then answers as without one.
    """
    if min_confidence is None:
        return None
    if not results:
        return False
    if results[0].confidence is None:
        return None
    return results[0].confidence >= min_confidence


def min_confidence() -> float | None:
    """The shop's threshold (``QUERY["MIN_CONFIDENCE"]``), else the one the last calibration
    found for 90 % precision on the catalogue's held-out images, else None."""
    configured = vs_settings.QUERY["MIN_CONFIDENCE"]
    if configured is not None:
        return float(configured)
    fitted = _calibration(query_space())
    return fitted.get("threshold_for_90_precision") if fitted else None


def _calibration(space: EmbeddingSpace | None) -> dict[str, Any] | None:
    return (space.report or {}).get("calibration") if space is not None else None


def _encode_for_query(pictures: list, *, adapted: bool = True) -> tuple[Any, EmbeddingSpace]:
    """Encode with the current encoder, in the space queries run in (the adapted one if
    active and ``adapted``, else the base space)."""
    space = query_space() if adapted else None
    if space is None or space.dimension is None:
        space = ensure_current_space(get_encoder(), with_dimension=True)
    return encode_in(space, pictures), space


def shop_the_look(
    image: ImageSource, *, k: int = 4, queryset: models.QuerySet | None = None
) -> list[LookGroup]:
    """The items in a look photo: groups of (box in pixels of the image, its top-k products).

    Regions come from the configured detector, are embedded in one batch and matched in one
    SQL statement, then grouped (see look.py). Raises UnusableImage for a bad picture.
    With a catalogue-adapted space active (and ``LOOK["ADAPTED_SPACE"]``), each item's
    products come from it: the items are found in the base space, whose scores the
    objectness model was fitted on, and the fine-tuned model names their products better.
    """
    _check_k(k)
    look = vs_settings.LOOK
    picture = load_image(image)
    scale = 1.0
    max_side = int(look["MAX_SIDE"])
    if max(picture.size) > max_side:
        scale = max(picture.size) / max_side
        picture = picture.resize((round(picture.width / scale), round(picture.height / scale)))
    groups = group_regions(
        look_regions(picture, k=k, queryset=queryset),
        size=picture.size,
        k=k,
        min_score=float(look["MIN_SCORE"]),
        min_objectness=float(look["MIN_OBJECTNESS"]),
        overlap_iou=float(look["OVERLAP_IOU"]),
        model=look["OBJECTNESS"],
    )
    if look["ADAPTED_SPACE"]:
        _name_items_in_adapted_space(picture, groups, k=k, queryset=queryset)
    for group in groups:  # back to the caller's pixels
        group.box = rounded_box(group.box, scale)
    return groups


def _name_items_in_adapted_space(
    picture: Any, groups: list[LookGroup], *, k: int, queryset: models.QuerySet | None
) -> None:
    """Replace each group's products (and its best match's score) by its box's top k in the
    adapted space, if one is active."""
    space = query_space()
    if not groups or space is None or space.base_id is None or space.dimension is None:
        return
    crops = _crops(picture, [group.box for group in groups])
    matches = nearest_per_query(space, encode_in(space, crops), k=k, queryset=_products(queryset))
    for group, found in zip(groups, matches, strict=True):
        if found:
            group.results, group.score = _results(found), found[0].score


def _crops(picture: Any, boxes: Iterable[Box]) -> list[Any]:
    return [picture.crop(tuple(round(v) for v in box)) for box in boxes]


def look_regions(
    picture: Any, *, k: int = 4, queryset: models.QuerySet | None = None
) -> list[Region]:
    """The detector's regions of a (loaded, scaled) look photo, each with its top-k products
    in the base space: embedded in one batch and matched in one SQL statement, before any
    grouping."""
    proposals = with_contrast(
        [
            Proposal(*p) if not isinstance(p, Proposal) else p
            for p in get_detector().propose(picture)
        ],
        picture,
    )
    vectors, space = _encode_for_query(_crops(picture, [p.box for p in proposals]), adapted=False)
    matches = nearest_per_query(space, vectors, k=k, queryset=_products(queryset))
    return [
        Region(p.box, found, p.precise, p.contrast or (0.0, 0.0))  # with_contrast set it
        for p, found in zip(proposals, matches, strict=True)
    ]


def suggest_look_items(look: Any, *, k: int = 4) -> list[Any]:
    """Replace a look's suggested (not yet accepted) hotspots with what shop_the_look finds;
    accepted items stay. Returns the new suggestions."""
    from visual_search.models import LookItem

    with look.image.open("rb") as handle:
        picture = load_image(handle.read())
    groups = shop_the_look(picture, k=k)
    look.items.filter(suggested=True).delete()
    width, height = picture.size
    start = look.items.count()
    created = []
    for position, group in enumerate(groups, start):
        left, top, right, bottom = group.box
        best = group.results[0]
        created.append(
            LookItem.objects.create(
                look=look,
                product=best.product,
                suggested=True,
                score=best.score,
                position=position,
                left=max(0.0, left / width),
                top=max(0.0, top / height),
                right=min(1.0, right / width),
                bottom=min(1.0, bottom / height),
                alternatives=[
                    {"pk": str(r.product.pk), "name": str(r.product), "score": round(r.score, 3)}
                    for r in group.results
                ],
            )
        )
    return created


def embed_product(product_or_pk: Any, *, force: bool = False) -> EmbedReport:
    """Embed one product's gallery now, in this process (the Celery task calls this)."""
    product = _resolve_product(product_or_pk)
    return embed_products([product], force=force)


def embed_many(pks: Iterable[Any], *, force: bool = False, space: str | None = None) -> EmbedReport:
    """Embed several products in shared encoder batches; unknown keys are reported, not raised."""
    return embed_products(list(pks), force=force, encoder=encoder_for_space(space))


def encoder_for_space(space: str | None) -> Encoder:
    """The current encoder, or the one that wrote another space (rebuilt from its row)."""
    current = get_encoder()
    if space is None or space == current.space:
        return current
    row = EmbeddingSpace.objects.filter(name=space).first()
    if row is None or not row.encoder:
        raise VisualSearchError(f"Unknown embedding space {space!r}.")
    if row.base_id is not None:
        if is_fine_tuned(row):
            return space_encoder(row)
        raise VisualSearchError(
            f"{space!r} is a transform of {row.base_id!r}: reindex that space, it follows."
        )
    return build_encoder({**vs_settings.ENCODER, **row.encoder})


def mark_pending(product_or_pk: Any) -> None:
    """Record the product's new gallery images as pending rows and drop rows of removed ones.

    Cheap (names only, no file reads): it runs on every save, before the task is queued, so a
    product whose task never runs is still visible as pending.
    """
    product = _resolve_product(product_or_pk)
    space = ensure_current_space(with_dimension=False)
    sync_gallery_rows(product, space)


def schedule_embedding(
    pks: Sequence[Any], *, force: bool = False, space: str | None = None
) -> bool:
    """Queue the embedding task for these products; False (logged) when the broker is down."""
    if not pks:
        return True
    from visual_search.tasks import enqueue_embedding  # Celery is imported only when used

    try:
        enqueue_embedding([str(pk) for pk in pks], force=force, space=space)
    except Exception:
        logger.exception(
            "Could not queue embedding of products %s; they stay pending until a reindex.",
            list(pks)[:20],
        )
        return False
    return True


def products_to_reindex(which: str = "missing", *, space: str | None = None) -> models.QuerySet:
    """Product keys needing work: "missing" (no row, pending, or an image that the active
    adapted space lacks), "failed", "stale" or "all".

    "stale" means products embedded in some other space but not in this one (the encoder
    configuration changed); changed images are caught by their content hash on every save.
    """
    model = get_product_model()
    space_name = space or current_space_name()
    products = model._default_manager.all()
    rows = ProductEmbedding.objects.filter(space_id=space_name)
    in_space = Q(pk__in=rows.values("product_id"))

    def status_in(*statuses: str) -> Q:
        return Q(pk__in=rows.filter(status__in=statuses).values("product_id"))

    # Where searches run, if not here: an image ready here but not there cannot be found.
    active = EmbeddingSpace.objects.filter(base_id=space_name, is_active=True).values("name")
    lacking = rows.filter(status=EmbeddingStatus.READY).exclude(
        Exists(
            ProductEmbedding.objects.filter(
                space_id__in=active,
                product_id=OuterRef("product_id"),
                image_key=OuterRef("image_key"),
                status=EmbeddingStatus.READY,
            )
        )
    )
    selections = {
        "all": Q(),
        "failed": status_in(EmbeddingStatus.FAILED),
        "missing": ~in_space
        | status_in(EmbeddingStatus.PENDING)
        | Q(pk__in=lacking.filter(Exists(active)).values("product_id")),
        "stale": Q(
            pk__in=ProductEmbedding.objects.exclude(space_id=space_name).values("product_id")
        )
        & ~in_space,
    }
    if which not in selections:
        raise ValueError(f"Unknown reindex selection {which!r}: missing, failed, stale or all.")
    return products.filter(selections[which]).order_by("pk").values_list("pk", flat=True)


def queue_products(
    pks: Sequence[Any],
    *,
    force: bool = False,
    space: str | None = None,
    chunk_size: int | None = None,
) -> tuple[int, int]:
    """Queue embedding in chunks of ADMIN.CHUNK_SIZE; returns (products, tasks) queued.

    Raises VisualSearchError when the broker is unreachable.
    """
    chunk_size = chunk_size or int(vs_settings.ADMIN["CHUNK_SIZE"])
    tasks = 0
    for start in range(0, len(pks), chunk_size):
        if not schedule_embedding(pks[start : start + chunk_size], force=force, space=space):
            raise VisualSearchError(
                gettext("The task broker is unreachable; queued %(queued)d of %(total)d products.")
                % {"queued": start, "total": len(pks)}
            )
        tasks += 1
    return len(pks), tasks


def reindex(which: str = "missing", *, inline: bool = False, space: str | None = None) -> int:
    """Embed here (inline) or queue (Celery) the selected products; returns how many."""
    pks = list(products_to_reindex(which, space=space))
    force = which in ("failed", "all")
    if inline:
        chunk_size = int(vs_settings.ADMIN["CHUNK_SIZE"])
        for start in range(0, len(pks), chunk_size):
            embed_many(pks[start : start + chunk_size], force=force, space=space)
    else:
        queue_products(pks, force=force, space=space)
    return len(pks)


def status_counts() -> dict[str, dict[str, int]]:
    """Rows per space and status, e.g. {"space": {"ready": 80, "failed": 1, "pending": 0}}."""
    counts: dict[str, dict[str, int]] = {}
    rows = ProductEmbedding.objects.values("space_id", "status").annotate(n=Count("id"))
    for space in EmbeddingSpace.objects.values_list("name", flat=True):
        counts[space] = {status: 0 for status in EmbeddingStatus.values}
    for row in rows:
        counts.setdefault(row["space_id"], {s: 0 for s in EmbeddingStatus.values})
        counts[row["space_id"]][row["status"]] = row["n"]
    return counts


def describe_evaluation(report: dict[str, Any]) -> str:
    """A space's report in a line: the adaptation's check, and what its calibrated confidence
    can answer (the status page and the space's admin page show it)."""
    parts = []
    if report.get("before"):
        before, after = report["before"], report["after"]
        parts.append(
            f"{before['R@1']:.3f} / {before['R@5']:.3f} → {after['R@1']:.3f} / "
            f"{after['R@5']:.3f} ({report.get('method', 'whitening')}, "
            f"{report.get('held_out_images')} held-out images)"
        )
    fitted = report.get("calibration")
    if fitted:
        threshold = fitted.get("threshold_for_90_precision")
        strangers = fitted.get("strangers")
        against = (
            f"{strangers} photos of products left out"
            if strangers
            else "held-out images with their own product left out"
        )
        parts.append(
            f"confidence calibrated against {against}: "
            f"{fitted['coverage_at_90_precision']:.0%} of in-catalogue photos answered at 90 % "
            "precision" + (f" (MIN_CONFIDENCE {threshold:.2f})" if threshold is not None else "")
        )
    unlearned = report.get("unlearned") or {}
    if "after" in unlearned:
        before, after = unlearned["before"], unlearned["after"]
        parts.append(
            f"products it did not learn found first {before['unlearned_R@1']:.0%} → "
            f"{after['unlearned_R@1']:.0%} with a bonus of {unlearned['bonus']:.2f} "
            f"(learned products {before['learned_R@1']:.0%} → {after['learned_R@1']:.0%})"
        )
    if report.get("weakest_products"):
        parts.append(headline(report["weakest_products"]))
    return "; ".join(parts)


def added_since_adaptation(space: EmbeddingSpace) -> dict[str, int] | None:
    """Images (and their products) embedded in the base space after ``space`` was learned:
    its model encodes them but never learned them, and an unlearned product is found far less
    often among learned ones (docs/benchmarks.md), so many of them call for adapting again.
    None for a base space, and for a space whose report has no ``catalogue_as_of`` (adapted
    by an earlier version)."""
    as_of = space.report.get("catalogue_as_of") if space.base_id else None
    if not as_of:
        return None
    return ProductEmbedding.objects.filter(
        space_id=space.base_id,
        status=EmbeddingStatus.READY,
        created_at__gt=datetime.fromisoformat(as_of),
    ).aggregate(images=Count("id"), products=Count("product", distinct=True))


def images_pending() -> bool:
    """Whether catalogue images still wait to be embedded (a worker is catching up, or none
    runs): searches cannot find them yet, so answers say so."""
    return has_pending_image(current_space_name())


# Pending this long, an embedding is probably waiting for a worker that is not running (a
# large backlog also takes long: the page says to look whether the number falls).
STUCK_PENDING_AFTER = timedelta(minutes=10)


def stuck_pending() -> dict[str, Any] | None:
    """How many embeddings have been pending longer than STUCK_PENDING_AFTER, and since when."""
    stuck = ProductEmbedding.objects.filter(
        status=EmbeddingStatus.PENDING, updated_at__lt=timezone.now() - STUCK_PENDING_AFTER
    ).aggregate(count=Count("id"), since=Min("updated_at"))
    return stuck if stuck["count"] else None


def status_report() -> dict[str, Any]:
    """What the status page and the status command show."""
    adaptations = [(run, is_stalled(run)) for run in AdaptationRun.objects.all()[:5]]
    current = current_space_name()
    counts = status_counts()
    counts.setdefault(current, {s: 0 for s in EmbeddingStatus.values})
    spaces = []
    for name, by_status in sorted(counts.items()):
        space = EmbeddingSpace.objects.filter(name=name).first()
        state = index_state(name)
        spaces.append(
            {
                "name": name,
                "current": name == current,
                "active": bool(space and space.is_active),
                "derived_from": space.base_id if space else None,
                "evaluation": describe_evaluation(space.report if space else {}),
                "added_since_adaptation": added_since_adaptation(space) if space else None,
                "dimension": space.dimension if space else None,
                "counts": by_status,
                "index": state,
                "segment_indexes": [i for i in segment_indexes(name) if i.valid],
            }
        )
    return {
        "current_space": current,
        "products": get_product_model()._default_manager.count(),
        "missing": products_to_reindex("missing").count(),
        "spaces": spaces,
        "last_errors": list(
            ProductEmbedding.objects.filter(status=EmbeddingStatus.FAILED)
            .select_related("product")
            .order_by("-updated_at")[:10]
        ),
        "runtime": vs_settings.ENCODER.get("RUNTIME"),
        "stuck_pending": stuck_pending(),
        # The last catalogue adaptations, each with whether it stalled (its worker stopped).
        "adaptations": adaptations,
        # A run in progress blocks new ones, so it is always among the last few.
        "adapting": any(run.unfinished and not stalled for run, stalled in adaptations),
    }


__all__ = [
    "ProductNotEmbedded",
    "SearchResult",
    "added_since_adaptation",
    "describe_evaluation",
    "embed_many",
    "images_pending",
    "embed_product",
    "mark_pending",
    "encoder_for_space",
    "products_to_reindex",
    "query_space",
    "queue_products",
    "reindex",
    "schedule_embedding",
    "search_by_image",
    "shop_the_look",
    "suggest_look_items",
    "similar_products",
    "status_counts",
    "status_report",
]
