from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from visual_search import services


def indexing(request: HttpRequest) -> dict[str, Any]:
    """How far visual search indexing has got, for the banner while the worker catches up."""
    try:
        counts = services.status_counts().get(services.current_space_name(), {})
    except Exception:
        return {}
    total = sum(counts.values())
    pending = counts.get("pending", 0)
    missing = services.products_to_reindex("missing").count() if pending or not total else 0
    return {
        "indexing": {
            "ready": counts.get("ready", 0),
            "total": total,
            "pending": pending,
            "missing_products": missing,
            "busy": bool(pending or missing),
        }
    }
