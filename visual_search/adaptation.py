"""Catalogue adaptation: a space learned from the shop's own products, beside the current one.

Learned whitening (closed form): whiten the covariance of images *within* a product (the
variation that does not tell products apart: light, angle, background), then keep the main
directions *between* products. It is fitted on the catalogue's products that have several
images, evaluated on held-out images of those products before anything is switched, stored
as a new embedding space derived from the current one (its vectors are a linear transform of
the stored ones, so no image is encoded again), and switched on in one transaction; reverting
switches back. New embeddings are written to both spaces (pipeline.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db import transaction

from visual_search.exceptions import VisualSearchError
from visual_search.models import EmbeddingSpace, EmbeddingStatus, ProductEmbedding
from visual_search.spaces import forget_spaces, get_current_space

_transforms: dict[str, tuple[np.ndarray, np.ndarray]] = {}


class AdaptationRefused(VisualSearchError):
    """Not enough labelled images, or the adapted space is not better than the current one."""


def learned_whitening(
    vectors: np.ndarray, labels: np.ndarray, dims: int, shrink: float
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, projection d x dims): whitened within-product scatter, then PCA of the means."""
    mean = vectors.mean(0)
    x = vectors - mean
    classes = np.unique(labels)
    centred = np.concatenate([x[labels == c] - x[labels == c].mean(0) for c in classes])
    within = centred.T @ centred / max(1, len(centred))
    within = (1 - shrink) * within + shrink * np.trace(within) / len(within) * np.eye(len(within))
    values, basis = np.linalg.eigh(within)
    whiten = basis / np.sqrt(np.maximum(values, 1e-9))
    means = np.stack([(x[labels == c] @ whiten).mean(0) for c in classes])
    _, _, vt = np.linalg.svd(means - means.mean(0), full_matrices=False)
    dims = min(dims, vt.shape[0])
    return mean.astype(np.float32), (whiten @ vt[:dims].T).astype(np.float32)


def apply(vectors: np.ndarray, mean: np.ndarray, projection: np.ndarray) -> np.ndarray:
    y = (np.atleast_2d(vectors).astype(np.float32) - mean) @ projection
    return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


def transform_of(space: EmbeddingSpace) -> tuple[np.ndarray, np.ndarray]:
    if space.name not in _transforms:
        stored = space.encoder.get("TRANSFORM")
        if not stored:
            raise VisualSearchError(f"Space {space.name!r} has no transform.")
        _transforms[space.name] = (
            np.asarray(stored["mean"], dtype=np.float32),
            np.asarray(stored["projection"], dtype=np.float32),
        )
    return _transforms[space.name]


def to_space(space: EmbeddingSpace, vectors: np.ndarray) -> np.ndarray:
    """Vectors of the base encoder expressed in ``space`` (unchanged for a base space)."""
    if space.base_id is None:
        return vectors
    return apply(vectors, *transform_of(space))


def recall(
    queries: np.ndarray, q_labels: np.ndarray, gallery: np.ndarray, g_labels: np.ndarray
) -> dict[str, float]:
    """Product-level R@1 / R@5 (a product scores by its best gallery image), exact search."""
    scores = queries @ gallery.T
    products = np.unique(g_labels)
    best = np.stack([scores[:, g_labels == p].max(1) for p in products], axis=1)
    order = products[np.argsort(-best, axis=1)]
    ranks = np.array(
        [list(row).index(label) + 1 for row, label in zip(order, q_labels, strict=True)]
    )
    return {
        "R@1": round(float((ranks <= 1).mean()), 4),
        "R@5": round(float((ranks <= 5).mean()), 4),
    }


@dataclass
class Adaptation:
    space: EmbeddingSpace
    report: dict[str, Any]
    activated: bool


def adapt(
    *,
    dims: int = 80,
    shrink: float = 0.1,
    activate: bool = True,
    force: bool = False,
    progress: Callable[[str], None] = lambda message: None,
) -> Adaptation:
    """Learn, evaluate, store and (if better) switch on an adapted space for the catalogue."""
    base = get_current_space()
    if base is None or base.dimension is None:
        raise AdaptationRefused("Nothing is embedded yet: run visual_search_reindex first.")
    rows = list(
        ProductEmbedding.objects.filter(space=base, status=EmbeddingStatus.READY)
        .order_by("product_id", "id")
        .values_list("id", "product_id", "image_key", "embedding")
    )
    progress(f"{len(rows)} ready images in {base.name}")
    vectors = np.array([row[3] for row in rows], dtype=np.float32)
    labels = np.array([str(row[1]) for row in rows])
    # Held out: the last image of each product that has three or more (two stay to fit on).
    held = np.zeros(len(rows), dtype=bool)
    products, counts = np.unique(labels, return_counts=True)
    for product in products[counts >= 3]:
        held[np.flatnonzero(labels == product)[-1]] = True
    fit = ~held
    fit_labels, fit_counts = np.unique(labels[fit], return_counts=True)
    if held.sum() < 5 or (fit_counts >= 2).sum() < 5:
        raise AdaptationRefused(
            "Too few products with three or more images to learn and check an adaptation "
            f"(found {int(held.sum())}); add in-store photos to the products' galleries."
        )
    progress(
        f"fitting on {int(fit.sum())} images of {len(fit_labels)} products, "
        f"checking on {int(held.sum())} held-out images"
    )
    mean, projection = learned_whitening(vectors[fit], labels[fit], dims, shrink)
    before = recall(vectors[held], labels[held], vectors[fit], labels[fit])
    after = recall(
        apply(vectors[held], mean, projection),
        labels[held],
        apply(vectors[fit], mean, projection),
        labels[fit],
    )
    report = {
        "method": "learned whitening",
        "dims": int(projection.shape[1]),
        "shrink": shrink,
        "fit_images": int(fit.sum()),
        "held_out_images": int(held.sum()),
        "before": before,
        "after": after,
    }
    progress(
        f"held-out R@1 {before['R@1']:.3f} -> {after['R@1']:.3f}, "
        f"R@5 {before['R@5']:.3f} -> {after['R@5']:.3f}"
    )
    better = after["R@1"] > before["R@1"] and after["R@5"] >= before["R@5"]
    if not better and not force:
        raise AdaptationRefused(
            f"The adapted space is not better on held-out images (R@1 {before['R@1']:.3f} -> "
            f"{after['R@1']:.3f}, R@5 {before['R@5']:.3f} -> {after['R@5']:.3f}); nothing switched."
        )
    # The stored transform is refitted on every labelled image, held-out ones included.
    mean, projection = learned_whitening(vectors, labels, dims, shrink)
    digest = hashlib.sha256(projection.tobytes()).hexdigest()[:8]
    name = f"{base.name}+lw{projection.shape[1]}-{digest}"[:100]
    with transaction.atomic():
        space, _ = EmbeddingSpace.objects.update_or_create(
            name=name,
            defaults={
                "base": base,
                "dimension": int(projection.shape[1]),
                "report": report,
                "encoder": {
                    "BASE_SPACE": base.name,
                    "TRANSFORM": {"mean": mean.tolist(), "projection": projection.tolist()},
                },
            },
        )
        space.embeddings.all().delete()
        adapted = apply(vectors, mean, projection)
        ProductEmbedding.objects.bulk_create(
            [
                ProductEmbedding(
                    product_id=row[1],
                    space=space,
                    image_key=row[2],
                    embedding=vector,
                    content_hash="derived",
                    status=EmbeddingStatus.READY,
                )
                for row, vector in zip(rows, adapted, strict=True)
            ],
            batch_size=1000,
        )
    _transforms.pop(name, None)
    progress(f"stored {len(rows)} adapted vectors in {name}")
    from visual_search.indexing import ensure_index

    ensure_index(space)
    if activate:
        switch(space)
        progress(f"switched queries to {name}")
    return Adaptation(space, report, activate)


def switch(space: EmbeddingSpace | None) -> None:
    """Make ``space`` the active one for its base, or (None) go back to the base space."""
    base = get_current_space()
    with transaction.atomic():
        EmbeddingSpace.objects.filter(base=base, is_active=True).update(is_active=False)
        if space is not None:
            EmbeddingSpace.objects.filter(pk=space.pk).update(is_active=True)
    forget_spaces()


def derived_spaces(base: EmbeddingSpace) -> list[EmbeddingSpace]:
    return list(base.derived.all())
