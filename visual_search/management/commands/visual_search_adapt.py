from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from visual_search import adaptation, adaptation_runs
from visual_search.models import EmbeddingSpace


class Command(BaseCommand):
    help = (
        "Learn an adapted embedding space from the catalogue's own products (fine-tuned model "
        "or learned whitening), check it on held-out images, calibrate match confidence, and "
        "switch queries to it only if it is better (or --revert)."
    )
    requires_migrations_checks = True  # warn before a missing table fails the command

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--method",
            choices=["finetune", "whitening"],
            help="default: VISUAL_SEARCH['ADAPTATION']['METHOD'] (finetune)",
        )
        parser.add_argument("--epochs", type=int, help="finetune: training epochs")
        parser.add_argument(
            "--dims", type=int, default=80, help="whitening: dimensions kept (default 80)"
        )
        parser.add_argument("--shrink", type=float, default=0.1, help="whitening: shrinkage")
        parser.add_argument("--no-activate", action="store_true", help="build and report only")
        parser.add_argument("--force", action="store_true", help="store it even if not better")
        parser.add_argument(
            "--revert", action="store_true", help="switch queries back to the base space"
        )
        parser.add_argument(
            "--activate", metavar="SPACE", help="switch to an existing adapted space"
        )

    def handle(
        self,
        *args: Any,
        method: str | None,
        epochs: int | None,
        dims: int,
        shrink: float,
        no_activate: bool,
        force: bool,
        revert: bool,
        activate: str | None,
        **options: Any,
    ) -> None:
        if revert:
            adaptation.switch(None)
            self.stdout.write(self.style.SUCCESS("Queries run in the base space again."))
            return
        if activate:
            space = EmbeddingSpace.objects.filter(name=activate, base__isnull=False).first()
            if space is None:
                raise CommandError(f"No adapted space named {activate!r}.")
            adaptation.switch(space)
            self.stdout.write(self.style.SUCCESS(f"Queries run in {space.name}."))
            return
        if dims < 1 or not 0 <= shrink < 1 or (epochs is not None and epochs < 1):
            raise CommandError("--dims and --epochs must be >= 1 and --shrink in [0, 1).")
        try:
            run = adaptation_runs.request_run(method)
        except adaptation_runs.AdaptationBusy as exc:
            raise CommandError(str(exc))
        try:
            result = adaptation_runs.execute(
                run,
                epochs=epochs,
                dims=dims,
                shrink=shrink,
                activate=not no_activate,
                force=force,
                progress=self.stdout.write,
            )
        except adaptation.AdaptationRefused as exc:
            raise CommandError(str(exc))
        self.stdout.write(json.dumps(result.report, indent=1))
        state = "active" if result.activated else "built, not active"
        self.stdout.write(self.style.SUCCESS(f"{result.space.name}: {state}."))
