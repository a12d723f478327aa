"""Adaptation runs: a row per requested adaptation, so that its progress and outcome are seen
where it was asked for (the admin), and a second request does not train beside the first.

An adaptation takes minutes of both cores of a small worker; two at once would take twice as
long and race to switch. A run that has made no progress for ``STALE_AFTER`` is taken for dead
(its worker stopped) and no longer blocks a new one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from visual_search.adaptation import Adaptation, AdaptationRefused, adapt
from visual_search.conf import vs_settings
from visual_search.models import AdaptationRun, AdaptationState

STALE_AFTER = timedelta(hours=1)  # fine-tuning reports each epoch and each batch of images
_LOCK = 0x76735F6164  # pg_advisory_xact_lock key: one request checked at a time


class AdaptationBusy(Exception):
    """Another adaptation is queued or running."""


def _alive_since() -> datetime:
    """A run last updated before this has stalled."""
    return timezone.now() - STALE_AFTER


def running_run() -> AdaptationRun | None:
    """The unfinished run that still shows signs of life, if any."""
    return (
        AdaptationRun.objects.filter(
            state__in=[AdaptationState.QUEUED, AdaptationState.RUNNING],
            updated_at__gte=_alive_since(),
        )
        .order_by("-created_at")
        .first()
    )


def is_stalled(run: AdaptationRun) -> bool:
    return run.unfinished and run.updated_at < _alive_since()


def request_run(method: str | None = None) -> AdaptationRun:
    """A new queued run, or AdaptationBusy while another one is alive."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK])
        busy = running_run()
        if busy is not None:
            raise AdaptationBusy(
                f"An adaptation is already {busy.get_state_display().lower()} (requested "
                f"{timezone.localtime(busy.created_at):%Y-%m-%d %H:%M}); wait for its outcome."
            )
        return AdaptationRun.objects.create(
            method=method or vs_settings.ADAPTATION["METHOD"], progress="waiting for a worker"
        )


def send(run: AdaptationRun) -> None:
    """Queue the worker's task for ``run``; a broker that cannot be reached fails the run, so
    the status page says so."""
    try:
        from visual_search.tasks import adapt_task

        adapt_task.apply_async(
            args=[run.pk], retry=True, retry_policy={"max_retries": 1, "interval_start": 0}
        )
    except Exception as exc:
        _update(run, state=AdaptationState.FAILED, message=f"Could not queue it: {exc}")


def execute(
    run: AdaptationRun,
    *,
    progress: Callable[[str], None] = lambda message: None,
    **options: Any,
) -> Adaptation:
    """Run ``adapt`` for ``run``, recording each progress line and the outcome on it; the
    adaptation's own exceptions propagate after they are recorded."""

    def record(message: str) -> None:
        progress(message)
        _update(run, progress=message)

    _update(run, state=AdaptationState.RUNNING, progress="started")
    try:
        result = adapt(method=run.method, progress=record, **options)
    except AdaptationRefused as exc:
        _update(run, state=AdaptationState.REFUSED, message=str(exc))
        raise
    except BaseException as exc:  # a crash, or an interrupted command: never left "running"
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        _update(run, state=AdaptationState.FAILED, message=reason)
        raise
    after = result.report["after"]
    summary = f"held-out R@1 {result.report['before']['R@1']:.3f} -> {after['R@1']:.3f}"
    if result.activated:
        state, message = (
            AdaptationState.SWITCHED,
            f"Queries now run in {result.space.name}; {summary}.",
        )
    else:
        state, message = AdaptationState.BUILT, f"Built {result.space.name}, not active; {summary}."
    _update(run, state=state, message=message, space=result.space)
    return result


def _update(run: AdaptationRun, **fields: Any) -> None:
    for name, value in fields.items():
        setattr(run, name, value)
    run.save(update_fields=[*fields, "updated_at"])
