from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

from django.core.files import File
from django.core.files.base import ContentFile
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils.text import slugify
from PIL import Image

from shop_demo.catalog.models import Category, Product, ProductImage
from visual_search.models import Look, LookItem

DEMO_DATA = Path(__file__).resolve().parents[3] / "demo_data"

LOOKS = [
    ("Fruit bowl", ["banana", "granny-smith", "kiwi", "lemon"]),
    (
        "Breakfast table",
        ["arla-standard-milk", "tropicana-apple-juice", "alpro-blueberry-soyghurt", "pink-lady"],
    ),
    ("Soup vegetables", ["carrots", "leek", "yellow-onion", "floury-potato"]),
]


def _look_picture(
    data: Path, slugs: list[str]
) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    """Four in-store photos on a 2 x 2 canvas with a margin; returns the boxes too."""
    canvas = Image.new("RGB", (900, 900), (244, 241, 234))
    boxes = []
    for index, slug in enumerate(slugs):
        photo = Image.open(_photo(data, slug)).convert("RGB").resize((380, 380))
        x, y = 50 + (index % 2) * 420, 50 + (index // 2) * 420
        canvas.paste(photo, (x, y))
        boxes.append((x, y, x + 380, y + 380))
    return canvas, boxes


def _photo(data: Path, slug: str) -> Path:
    entries = json.loads((data / "catalog.json").read_text())
    entry = next(e for e in entries if e["slug"] == slug)
    return data / entry["gallery"][-1]


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
        looks = 0 if only else self._load_looks(data)
        self.stdout.write(
            self.style.SUCCESS(
                f"Catalogue ready: {len(entries)} products ({created} new), {looks} new looks."
            )
        )

    def _load_looks(self, data: Path) -> int:
        """A few merchant looks: in-store photos of several products on one picture, with a
        hotspot per product (as a merchant marks them after the admin's suggestions)."""
        created = 0
        for title, slugs in LOOKS:
            if Look.objects.filter(title=title).exists():
                continue
            found = [Product.objects.filter(slug=slug).first() for slug in slugs]
            products = [product for product in found if product is not None]
            if len(products) < len(slugs):
                continue
            canvas, boxes = _look_picture(data, slugs)
            buffer = io.BytesIO()
            canvas.save(buffer, "JPEG", quality=88)
            with transaction.atomic():
                look = Look(title=title)
                look.image.save(f"{slugify(title)}.jpg", ContentFile(buffer.getvalue()))
                for position, (product, box) in enumerate(zip(products, boxes, strict=True)):
                    LookItem.objects.create(
                        look=look,
                        product=product,
                        position=position,
                        left=box[0] / canvas.width,
                        top=box[1] / canvas.height,
                        right=box[2] / canvas.width,
                        bottom=box[3] / canvas.height,
                    )
            created += 1
        return created

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
