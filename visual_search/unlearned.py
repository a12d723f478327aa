"""A ranking bonus for the products an adapted model did not learn.

A fine-tuned model pulls photos towards the products it learned from their photos. A product
it never learned (one studio image, or added since the adaptation) then loses to them: a
shopper's photo of it came first 14-18 % of the time (docs/benchmarks.md, "Products known by
their studio image alone"). Photo searches add a bonus to the nearest such product, fitted by
the adaptation's check: its strangers stand for these products, each known by its first image
beside the learned products' images. The bonus kept, up to ``BONUSES[-1]``, finds them first
most often while the learned products' held-out images lose at most ``TOLERANCE`` of R@1.

Why no more than 0.04: the held-out images are consecutive shots of what the model learned
(found first 97-99 % of the time, shoppers' photos about 90 %), so the check does not see what
a larger bonus costs. On two draws of 16 new products (``benchmarks/retrieval.py --new-products
0.2 --bonuses ...``), 0.04 lifted them from 0.150 / 0.141 to 0.200 / 0.328 for 0 / 0.005 of the
learned products' R@1; 0.08 cost those 0.008 / 0.039 and 0.12 0.025 / 0.061, where the check
saw no cost up to 0.08.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from visual_search.calibration import product_scores
from visual_search.conf import vs_settings
from visual_search.models import EmbeddingSpace

BONUSES = (0.0, 0.01, 0.02, 0.03, 0.04)
# The learned products' R@1 the bonus may cost in the check (which understates the cost).
TOLERANCE = 0.005


def fit_bonus(
    fit: np.ndarray,
    fit_labels: np.ndarray,
    held: np.ndarray,
    held_labels: np.ndarray,
    strangers: np.ndarray,
    stranger_labels: np.ndarray,
) -> dict[str, Any]:
    """The bonus, and R@1 along the bonuses tried: the learned products' held-out images and
    the strangers' other images searched among the fit images and the strangers' first."""
    first = np.zeros(len(stranger_labels), dtype=bool)
    products = np.unique(stranger_labels, return_index=True)[1]
    first[products] = True
    if not first.any() or first.all():
        return {"bonus": 0.0, "reason": "no strangers with several images to fit it on"}
    gallery = np.concatenate([fit, strangers[first]])
    gallery_labels = np.concatenate([fit_labels, stranger_labels[first]])
    queries = np.concatenate([held, strangers[~first]])
    query_labels = np.concatenate([held_labels, stranger_labels[~first]])
    unlearned_query = np.arange(len(queries)) >= len(held)
    names, scores = product_scores(queries, gallery, gallery_labels)
    unlearned_product = np.isin(names, stranger_labels)
    curve = []
    for bonus in BONUSES:
        top = names[(scores + bonus * unlearned_product).argmax(1)]
        right = top == query_labels
        curve.append(
            {
                "bonus": bonus,
                "learned_R@1": round(float(right[~unlearned_query].mean()), 4),
                "unlearned_R@1": round(float(right[unlearned_query].mean()), 4),
            }
        )
    floor = curve[0]["learned_R@1"] - TOLERANCE
    allowed = [row for row in curve if row["learned_R@1"] >= floor]
    best = max(allowed, key=lambda row: (row["unlearned_R@1"], -row["bonus"]))
    return {
        "bonus": best["bonus"],
        "unlearned_products": int(first.sum()),
        "before": {k: v for k, v in curve[0].items() if k != "bonus"},
        "after": {k: v for k, v in best.items() if k != "bonus"},
        "curve": curve,
    }


def bonus_of(space: EmbeddingSpace) -> float:
    """The bonus searches in ``space`` give to products it did not learn: the setting's, or
    (None) the one the adaptation fitted; 0 in the base space."""
    if space.base_id is None:
        return 0.0
    setting = vs_settings.ADAPTATION["UNLEARNED_BONUS"]
    if setting is not None:
        return float(setting)
    return float((space.report or {}).get("unlearned", {}).get("bonus", 0.0))
