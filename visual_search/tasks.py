"""Celery tasks; the only module that imports Celery. Tasks take primary keys only (JSON)."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from visual_search.conf import vs_settings

logger = logging.getLogger(__name__)


@shared_task(
    bind=True,
    name="visual_search.embed_products",
    acks_late=True,  # safe: the work is idempotent, and a worker lost mid-task is redone
    reject_on_worker_lost=True,
    ignore_result=True,
)
def embed_products_task(
    self: Any, pks: list[str], force: bool = False, space: str | None = None
) -> dict[str, int]:
    from visual_search import services
    from visual_search.pipeline import mark_products_failed

    max_retries = int(vs_settings.CELERY["MAX_RETRIES"])
    try:
        report = services.embed_many(pks, force=force, space=space)
    except Exception as exc:
        if self.request.retries >= max_retries:
            mark_products_failed(pks, f"Gave up after {max_retries + 1} attempts: {exc!r}")
            logger.exception("Embedding of products %s failed for good", pks[:20])
            raise
        countdown = min(600, 2 ** (self.request.retries + 1))
        raise self.retry(exc=exc, countdown=countdown, max_retries=max_retries) from exc
    return {"embedded": report.embedded, "skipped": report.skipped, "failed": len(report.failed)}


@shared_task(name="visual_search.reindex", acks_late=True, ignore_result=True)
def reindex_task(which: str = "missing") -> int:
    from visual_search import services

    return services.reindex(which)


@shared_task(name="visual_search.adapt", ignore_result=True)
def adapt_task(run_id: int, dims: int = 80, shrink: float = 0.1) -> dict[str, Any]:
    """Learn and (if better on held-out images) switch on an adapted space for the run that
    the admin requested; its progress and outcome are kept on the run, the report on the new
    space, and both are shown on the admin's index status page."""
    from visual_search import adaptation, adaptation_runs
    from visual_search.models import AdaptationRun

    run = AdaptationRun.objects.get(pk=run_id)
    try:
        result = adaptation_runs.execute(run, dims=dims, shrink=shrink, progress=logger.info)
    except adaptation.AdaptationRefused as exc:
        logger.warning("Catalogue adaptation refused: %s", exc)
        return {"refused": str(exc)}
    return {"space": result.space.name, **result.report}


def enqueue_embedding(pks: list[str], *, force: bool = False, space: str | None = None) -> None:
    """Send the task, retrying the broker once: a save must never hang on a dead broker.

    How long one connection attempt may take is Celery's ``broker_connection_timeout``.
    """
    options: dict[str, Any] = {
        "retry": True,
        "retry_policy": {
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.2,
        },
    }
    if vs_settings.CELERY["QUEUE"]:
        options["queue"] = vs_settings.CELERY["QUEUE"]
    kwargs = {"force": force, "space": space}
    embed_products_task.apply_async(args=[pks], kwargs=kwargs, **options)
