"""Match confidence: the probability that a search's top product is the one photographed.

A cosine score alone says little (a close look-alike scores high too), so the confidence is
a logistic model of two figures of the ranking: the product's score and its margin over the
best other product. It is fitted on the catalogue's own held-out images, searched against the
catalogue (a match when the top product is right), and on photos of "strangers": products
left out of the catalogue and out of what the adapted space learned (adaptation.py), never a
match. Without strangers, each held-out image is searched a second time with its own product
left out; that is a fair stranger for fixed features, but a fine-tuned model has learned that
product, so it would flatter the confidence. Both sides weigh the same: the confidence is
calibrated for an even mix of photos of products in and out of the catalogue.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from visual_search import logistic


def product_scores(
    queries: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(products, scores[q, p]): each product scored by its best gallery image."""
    similarity = queries @ gallery.T
    products = np.unique(gallery_labels)
    best = np.stack([similarity[:, gallery_labels == p].max(1) for p in products], axis=1)
    return products, best


def product_ranks(
    queries: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray
) -> np.ndarray:
    """Rank (1 = first) of each query's own product among the products."""
    products, scores = product_scores(queries, gallery, gallery_labels)
    order = products[np.argsort(-scores, axis=1)]
    return np.array(
        [list(row).index(label) + 1 for row, label in zip(order, query_labels, strict=True)]
    )


def ranking_features(scores: np.ndarray) -> np.ndarray:
    """(score, margin over the best other) of the top product of each row."""
    top_two = -np.sort(-scores, axis=1)[:, :2]
    if top_two.shape[1] == 1:
        top_two = np.concatenate([top_two, np.zeros_like(top_two)], axis=1)
    return np.stack([top_two[:, 0], top_two[:, 0] - top_two[:, 1]], axis=1)


def matches_and_strangers(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    strangers: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Features and outcomes: each query in the catalogue, then each stranger (photos of
    products not in the gallery) or, without strangers, each query with its product left out."""
    products, scores = product_scores(queries, gallery, gallery_labels)
    inside = ranking_features(scores)
    correct = products[scores.argmax(1)] == query_labels
    if strangers is not None and len(strangers):
        outside = ranking_features(product_scores(strangers, gallery, gallery_labels)[1])
    else:
        without_own = np.where(products[None, :] == query_labels[:, None], -np.inf, scores)
        outside = ranking_features(without_own)
    return (
        np.concatenate([inside, outside]),
        np.concatenate([correct, np.zeros(len(outside), dtype=bool)]),
    )


def fit(features: np.ndarray, outcomes: np.ndarray, weights: Any = None) -> dict[str, Any]:
    """The confidence model: a logistic regression of the two ranking features."""
    return {"features": ["score", "margin"], **logistic.fit(features, outcomes, weights)}


probability = logistic.probability


def precision_coverage(
    confidence: np.ndarray,
    outcomes: np.ndarray,
    in_catalogue: np.ndarray,
    weights: np.ndarray | None = None,
) -> list[dict[str, float]]:
    """For thresholds over the confidences: precision of the answered queries (an answered
    stranger is wrong; each query counts ``weights``) and the share of in-catalogue queries
    answered."""
    weights = np.ones(len(outcomes)) if weights is None else weights
    rows = []
    for threshold in np.unique(np.round(confidence, 3)):
        answered = confidence >= threshold
        if not answered.any():
            continue
        rows.append(
            {
                "threshold": float(threshold),
                "precision": float((weights * outcomes)[answered].sum() / weights[answered].sum()),
                "coverage": float((answered & in_catalogue).sum() / max(1, in_catalogue.sum())),
            }
        )
    return rows


def coverage_at(rows: Sequence[dict[str, float]], precision: float) -> dict[str, float] | None:
    """The lowest threshold whose answers are at least ``precision`` right (max coverage)."""
    good = [row for row in rows if row["precision"] >= precision]
    return max(good, key=lambda row: row["coverage"]) if good else None


def calibrate(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    strangers: np.ndarray | None = None,
) -> dict[str, Any]:
    """Fit the confidence on held-out images (and strangers) and say what threshold gives
    90 % precision."""
    features, outcomes = matches_and_strangers(
        queries, query_labels, gallery, gallery_labels, strangers
    )
    in_catalogue = np.arange(len(outcomes)) < len(queries)
    outside = len(outcomes) - len(queries)
    weights = np.where(in_catalogue, 0.5 / len(queries), 0.5 / max(1, outside)) * len(outcomes)
    model = fit(features, outcomes, weights)
    curve = precision_coverage(probability(model, features), outcomes, in_catalogue, weights)
    at_90 = coverage_at(curve, 0.9)
    model["held_out_queries"] = int(len(queries))
    model["strangers"] = 0 if strangers is None else len(strangers)
    model["threshold_for_90_precision"] = at_90["threshold"] if at_90 else None
    model["coverage_at_90_precision"] = round(at_90["coverage"], 4) if at_90 else 0.0
    return model


def result_confidences(calibration: dict[str, Any] | None, scores: Sequence[float]) -> list:
    """Confidence of each result of a ranking (best first), from its score and its margin
    over the best other result; None without a calibration."""
    if not calibration or not scores:
        return [None] * len(scores)
    values = np.asarray(scores, dtype=np.float64)
    best_two = np.append(-np.sort(-values)[:2], 0.0)  # a lone result's rival scores 0
    others = np.where(np.arange(len(values)) == np.argmax(values), best_two[1], best_two[0])
    features = np.stack([values, values - others], axis=1)
    return [round(float(p), 4) for p in probability(calibration, features)]
