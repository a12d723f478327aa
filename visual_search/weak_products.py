"""The products an adapted space finds least often on their own held-out images, and what it
takes them for: where the shop's photos need attention (look-alikes that want more shots, or a
new packaging or variety: the held-out images are each product's last embedded, so a new look
that its older photos do not show is found as something else)."""

from __future__ import annotations

from typing import Any

import numpy as np

from visual_search.calibration import product_scores
from visual_search.models_registry import get_product_model


def weakest_products(
    queries: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    most: int = 5,
) -> list[dict[str, Any]]:
    """Up to ``most`` products with held-out images found first least often (none found
    first every time), each with the product most often found first instead, and how often."""
    products, scores = product_scores(queries, gallery, gallery_labels)
    top = products[scores.argmax(1)]
    weak: list[dict[str, Any]] = []
    for product in np.unique(query_labels):
        mine = query_labels == product
        instead = top[mine & (top != product)]
        if len(instead) == 0:
            continue
        taken, counts = np.unique(instead, return_counts=True)
        most_often = int(np.argmax(counts))
        held_out = int(mine.sum())
        weak.append(
            {
                "product": str(product),
                "held_out": held_out,
                "found_first": held_out - len(instead),
                "taken_for": str(taken[most_often]),
                "taken_times": int(counts[most_often]),
            }
        )
    weak.sort(key=lambda row: (row["found_first"] / row["held_out"], -row["held_out"]))
    return _named(weak[:most])


def _named(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with the products' names of the day: the report is read later, when a
    product may be gone."""
    keys = {row[field] for row in rows for field in ("product", "taken_for")}
    found = get_product_model()._default_manager.in_bulk(list(keys))
    names = {str(pk): str(product) for pk, product in found.items()}
    return [
        {
            **row,
            "name": names.get(row["product"], row["product"]),
            "taken_for_name": names.get(row["taken_for"], row["taken_for"]),
        }
        for row in rows
    ]


def describe(rows: list[dict[str, Any]]) -> str:
    """One line for the command's progress and the status page."""
    return "; ".join(
        f"{row['name']} first in {row['found_first']} of {row['held_out']}, "
        f"taken for {row['taken_for_name']} in {row['taken_times']}"
        for row in rows
    )


def headline(rows: list[dict[str, Any]]) -> str:
    """``describe`` under its label: the command's progress line and the status page's part."""
    return f"found least often on held-out images: {describe(rows)}"
