from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError

from visual_search import services
from visual_search.conf import vs_settings


class Command(BaseCommand):
    help = "Embed products that need it: inline with a progress bar, or queued to Celery."
    requires_migrations_checks = True  # warn before a missing table fails the command

    def add_arguments(self, parser: Any) -> None:
        which = parser.add_mutually_exclusive_group()
        for name, text in (
            (
                "missing",
                "never embedded, still pending, or absent from the active adapted space (default)",
            ),
            ("failed", "with a failed image (tried again)"),
            ("stale", "embedded in another space but not in this one"),
            ("all", "every product, recomputed"),
        ):
            which.add_argument(
                f"--{name}", dest="which", action="store_const", const=name, help=text
            )
        parser.add_argument("--space", help="Embedding space (default: the configured encoder's).")
        parser.add_argument(
            "--batch-size",
            type=int,
            default=None,
            help="Products per batch or per Celery task (default: ADMIN CHUNK_SIZE).",
        )
        parser.add_argument(
            "--queue",
            action="store_true",
            help="Queue Celery tasks instead of embedding in this process.",
        )

    def handle(
        self,
        *args: Any,
        which: str | None,
        space: str | None,
        batch_size: int | None,
        queue: bool,
        **options: Any,
    ) -> None:
        which = which or "missing"
        size = int(vs_settings.ADMIN["CHUNK_SIZE"]) if batch_size is None else batch_size
        if size < 1:
            raise CommandError("--batch-size must be at least 1.")
        try:
            services.encoder_for_space(space)  # an unknown space is an error, not "nothing to do"
            pks = list(services.products_to_reindex(which, space=space))
        except services.VisualSearchError as exc:
            raise CommandError(str(exc))
        force = which in ("failed", "all")
        if not pks:
            self.stdout.write(f"Nothing to do: no {which} products.")
            return
        if queue:
            self._queue(pks, force, space, size)
        else:
            self._inline(pks, force, space, size)

    def _queue(self, pks: list, force: bool, space: str | None, size: int) -> None:
        try:
            products, tasks = services.queue_products(
                pks, force=force, space=space, chunk_size=size
            )
        except services.VisualSearchError as exc:
            raise CommandError(str(exc))
        self.stdout.write(self.style.SUCCESS(f"Queued {products} products in {tasks} tasks."))

    def _inline(self, pks: list, force: bool, space: str | None, size: int) -> None:
        total = services.EmbedReport()
        for start in range(0, len(pks), size):
            total.merge(services.embed_many(pks[start : start + size], force=force, space=space))
            done = min(start + size, len(pks))
            bar = "#" * (30 * done // len(pks))
            self.stdout.write(
                f"[{bar:<30}] {done}/{len(pks)} products, {total.embedded} images embedded, "
                f"{len(total.failed)} failed"
            )
        for (pk, key), error in list(total.failed.items())[:20]:
            self.stderr.write(f"  product {pk}, {key}: {error}")
        if total.failed:
            raise CommandError(f"{len(total.failed)} image(s) could not be embedded (see above).")
        self.stdout.write(
            self.style.SUCCESS(
                f"Done: {total.embedded} embedded, {total.skipped} unchanged, {total.removed} removed."
            )
        )
