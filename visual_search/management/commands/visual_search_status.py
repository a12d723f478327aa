from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.template.defaultfilters import pluralize
from django.utils import timezone

from visual_search.indexing import IndexState
from visual_search.services import status_report


class Command(BaseCommand):
    help = "Embedding counts per space and status, and the health of each HNSW index."
    requires_migrations_checks = True  # warn before a missing table fails the command

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--check",
            action="store_true",
            help="Exit non-zero when anything failed, is missing or the index is not valid.",
        )

    def handle(self, *args: Any, check: bool, **options: Any) -> None:
        report = status_report()
        self.stdout.write(
            f"Products: {report['products']}; not embedded in the current space: "
            f"{report['missing']}"
        )
        problems = []
        for space in report["spaces"]:
            counts, index = space["counts"], space["index"]
            health = "missing" if not index.exists else ("valid" if index.valid else "INVALID")
            marker = " (current)" if space["current"] else ""
            self.stdout.write(
                f"{space['name']}{marker}: {counts['ready']} ready, {counts['pending']} pending, "
                f"{counts['failed']} failed; HNSW index {health}"
                + (f", {index.size_bytes // 1024} kB" if index.exists else "")
                + _segment_summary(space["segment_indexes"])
            )
            if (added := space["added_since_adaptation"]) and added["images"]:
                self.stdout.write(
                    f"  {added['images']} image{pluralize(added['images'])} of "
                    f"{added['products']} product{pluralize(added['products'])} added since "
                    "this space was adapted: encoded, not learned (visual_search_adapt learns them)"
                )
            if space["current"]:
                if counts["failed"]:
                    problems.append(f"{counts['failed']} failed embeddings")
                if index.exists and not index.valid or not index.exists and counts["ready"]:
                    problems.append(f"index {health}")
        for row in report["last_errors"]:
            self.stdout.write(f"  failed: product {row.product_id}, {row.image_key}: {row.error}")
        if report["missing"]:
            problems.append(f"{report['missing']} products not embedded")
        if stuck := report["stuck_pending"]:
            since = timezone.localtime(stuck["since"])
            line = f"{stuck['count']} embeddings pending since {since:%Y-%m-%d %H:%M}"
            self.stdout.write(f"{line}: is a Celery worker running?")
            problems.append(line)
        if report["adaptations"]:
            run, stalled = report["adaptations"][0]
            self.stdout.write(
                f"Last adaptation ({run.method}, requested "
                f"{timezone.localtime(run.created_at):%Y-%m-%d %H:%M}): "
                f"{run.get_state_display()}{' (stalled)' if stalled else ''}: {run.latest}"
            )
        if check and problems:
            raise CommandError("; ".join(problems))


def _segment_summary(indexes: list[IndexState]) -> str:
    if not indexes:
        return ""
    return f"; {len(indexes)} segment indexes, {sum(i.size_bytes for i in indexes) // 1024} kB"
