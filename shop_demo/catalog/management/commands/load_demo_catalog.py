from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.core.files import File
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils.text import slugify

from shop_demo.catalog.models import Category, Product, ProductImage

DEMO_DATA = Path(__file__).resolve().parents[3] / "demo_data"


class Command(BaseCommand):
    help = "Load the grocery demo catalogue (idempotent: running it again duplicates nothing)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--data", type=Path, default=DEMO_DATA, help="folder with catalog.json")
        parser.add_argument("--only", help="comma-separated product classes (e.g. Banana,Kiwi)")

    def handle(self, *args: Any, data: Path, only: str | None, **options: Any) -> None:
        listing = data / "catalog.json"
        if not listing.exists():
            raise CommandError(f"{listing} not found")
        entries = json.loads(listing.read_text())
        if only:
            wanted = {name.strip() for name in only.split(",")}
            entries = [e for e in entries if e["class"] in wanted]
            missing = wanted - {e["class"] for e in entries}
            if missing:
                raise CommandError(f"Unknown product classes: {', '.join(sorted(missing))}")
        created = 0
        for index, entry in enumerate(entries, 1):
            created += self._load(data, entry)
            if index % 20 == 0 or index == len(entries):
                self.stdout.write(f"{index}/{len(entries)} products")
        self.stdout.write(
            self.style.SUCCESS(f"Catalogue ready: {len(entries)} products ({created} new).")
        )

    @transaction.atomic
    def _load(self, data: Path, entry: dict[str, Any]) -> bool:
        category, _ = Category.objects.get_or_create(
            slug=slugify(entry["category"]), defaults={"name": entry["category"]}
        )
        product, created = Product.objects.get_or_create(
            slug=entry["slug"],
            defaults={
                "name": entry["name"],
                "description": entry["description"],
                "price": Decimal(entry["price"]),
                "category": category,
            },
        )
        if not created:
            return False
        with open(data / entry["image"], "rb") as handle:
            product.image.save(f"{entry['slug']}.jpg", File(handle))
        for position, path in enumerate(entry["gallery"]):
            with open(data / path, "rb") as handle:
                image = ProductImage(product=product, position=position)
                image.image.save(f"{entry['slug']}-{position + 1}.jpg", File(handle))
        return True
