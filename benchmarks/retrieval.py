"""Retrieval quality through the real pipeline: products in PostgreSQL, embeddings by the app's
service functions, queries through visual_search.services.search_by_image (HNSW index), and
the same queries as exact scans (index scans disabled) side by side.

The catalogue is one product per class of a folder in the Grocery Store Dataset layout
(classes.csv + <split>.txt); a product's gallery is its studio image plus the photos of the
--gallery splits; the queries are the photos of the --queries split. Every gallery variant is
built incrementally on the same products (images already embedded are skipped by hash).

    python benchmarks/retrieval.py --data ../shared/data/grocery --gallery iconic --gallery iconic,train --queries val
"""

from __future__ import annotations

import csv
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import common


def read_split(data: Path, split: str) -> list[tuple[str, str]]:
    rows = []
    for line in (data / f"{split}.txt").read_text().splitlines():
        if line.strip():
            path, fine, *_ = (part.strip() for part in line.split(","))
            rows.append((path, fine))
    return rows


def read_classes(data: Path) -> list[dict[str, str]]:
    with open(data / "classes.csv", newline="") as handle:
        return [
            {
                "name": r["Class Name (str)"],
                "id": r["Class ID (int)"],
                "iconic": r["Iconic Image Path (str)"].lstrip("/"),
            }
            for r in csv.DictReader(handle)
        ]


def build_catalogue(data: Path, splits: list[str], *, reuse: bool = False) -> dict[str, Any]:
    """One product per class with its studio image, plus the photos of ``splits`` as its
    gallery; {fine class id: product}. ``reuse`` keeps the products an earlier run made."""
    from django.core.files import File

    from shop_demo.catalog.models import Product, ProductImage

    existing = {p.name: p for p in Product.objects.all()} if reuse else {}
    products = {}
    for entry in read_classes(data):
        if entry["name"] in existing:
            products[entry["id"]] = existing[entry["name"]]
            continue
        product = Product(name=entry["name"], slug=entry["name"].lower()[:200])
        with open(data / entry["iconic"], "rb") as handle:
            product.image.save(Path(entry["iconic"]).name, File(handle))
        products[entry["id"]] = product
    for split in [s for s in splits if s and not existing]:
        for position, (path, fine) in enumerate(read_split(data, split)):
            if fine in products:
                image = ProductImage(product=products[fine], position=position)
                with open(data / path, "rb") as handle:
                    image.image.save(Path(path).name, File(handle))
    return products


def metrics(ranks: list[int | None]) -> dict[str, float]:
    n = len(ranks)
    hit = lambda k: sum(1 for r in ranks if r is not None and r <= k) / n  # noqa: E731
    return {
        "R@1": hit(1),
        "R@5": hit(5),
        "R@10": hit(10),
        # one relevant product per query: AP@10 is 1/rank within the top 10
        "mAP@10": sum(1 / r for r in ranks if r is not None and r <= 10) / n,
    }


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument(
        "--gallery",
        action="append",
        help="gallery variant: 'iconic' plus splits, e.g. iconic,train (repeatable; "
        "default: iconic and iconic,train)",
    )
    parser.add_argument("--queries", default="val", help="split whose photos are the queries")
    parser.add_argument(
        "--limit", type=int, default=0, help="use only the first N queries (0: all)"
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--adapt",
        action="store_true",
        help="also learn a catalogue-adapted space from the gallery (never from the "
        "queries) and search in it",
    )
    parser.add_argument("--adapt-dims", type=int, default=80)
    parser.add_argument("--output", default="retrieval", help="results/<name>.json")
    args = parser.parse_args()
    variants = args.gallery or ["iconic", "iconic,train"]
    variants = sorted(variants, key=lambda v: len(v.split(",")))  # grow the gallery step by step

    common.setup_django("retrieval", fresh=True)
    from django.core.files import File
    from django.db import connection

    from shop_demo.catalog.models import Product, ProductImage
    from visual_search import services
    from visual_search.encoders import get_encoder

    classes = read_classes(args.data)
    queries = read_split(args.data, args.queries)
    if args.limit:
        queries = queries[: args.limit]
    products = {}
    for entry in classes:
        product = Product(name=entry["name"], slug=entry["name"].lower()[:200])
        with open(args.data / entry["iconic"], "rb") as handle:
            product.image.save(Path(entry["iconic"]).name, File(handle))
        products[entry["id"]] = product
    by_pk = {p.pk: fine for fine, p in products.items()}
    encoder = get_encoder()
    print(
        f"{len(products)} products, {len(queries)} queries ({args.queries}), encoder {encoder.space} "
        f"({getattr(encoder, 'runtime', '?')})"
    )

    added: set[str] = set()
    rows, timings = [], {}
    for variant in variants:
        parts = [p.strip() for p in variant.split(",") if p.strip()]
        if parts[0] != "iconic":
            parser.error("every gallery variant starts with 'iconic' (the studio image)")
        for split in parts[1:]:
            if split in added:
                continue
            photos = read_split(args.data, split)
            position = defaultdict(int)
            for path, fine in photos:
                if fine not in products:
                    continue
                position[fine] += 1
                image = ProductImage(product=products[fine], position=position[fine])
                with open(args.data / path, "rb") as handle:
                    image.image.save(Path(path).name, File(handle))
            added.add(split)
        started = time.monotonic()
        report = services.embed_many(list(by_pk))
        seconds = time.monotonic() - started
        gallery_size = services.status_counts()[encoder.space]["ready"]
        timings[variant] = {
            "embedded": report.embedded,
            "seconds": round(seconds, 1),
            "images_per_second": round(report.embedded / seconds, 1) if seconds else None,
        }
        print(
            f"gallery {variant}: {gallery_size} images ({report.embedded} embedded in {seconds:.1f} s)"
        )
        spaces = [("base", None)]
        if args.adapt:
            from visual_search import adaptation

            started = time.monotonic()
            try:
                adapted = adaptation.adapt(dims=args.adapt_dims, activate=False, force=True)
                print(
                    f"adapted space {adapted.space.name} in {time.monotonic() - started:.1f} s: "
                    f"held-out {adapted.report['before']} -> {adapted.report['after']}"
                )
                spaces.append((f"adapted (lw{adapted.space.dimension})", adapted.space))
            except adaptation.AdaptationRefused as exc:
                print(f"no adaptation for gallery {variant}: {exc}")
        for label, adapted_space in spaces:
            adaptation_module = None
            if adapted_space is not None:
                from visual_search import adaptation as adaptation_module

                adaptation_module.switch(adapted_space)
            for mode in ("hnsw", "exact"):
                ranks, latencies = [], []
                for path, fine in queries:
                    with connection.cursor() as cursor:
                        cursor.execute(
                            "SET enable_indexscan = %s", ["on" if mode == "hnsw" else "off"]
                        )
                    started = time.monotonic()
                    results = services.search_by_image(args.data / path, k=args.k)
                    latencies.append(time.monotonic() - started)
                    found = [by_pk[r.product.pk] for r in results]
                    ranks.append(found.index(fine) + 1 if fine in found else None)
                with connection.cursor() as cursor:
                    cursor.execute("RESET enable_indexscan")
                latencies.sort()
                row = {
                    "gallery": variant,
                    "gallery_images": gallery_size,
                    "space": label,
                    "search": mode,
                    **metrics(ranks),
                    "p50_ms": latencies[len(latencies) // 2] * 1000,
                }
                rows.append(row)
                print(common.table([row], list(row)))
            if adaptation_module is not None:
                adaptation_module.switch(None)

    print(
        "\n"
        + common.table(
            rows,
            [
                "gallery",
                "gallery_images",
                "space",
                "search",
                "R@1",
                "R@5",
                "R@10",
                "mAP@10",
                "p50_ms",
            ],
        )
    )
    common.save(
        args.output,
        {
            "data": str(args.data),
            "queries": args.queries,
            "n_queries": len(queries),
            "encoder": encoder.describe(),
            "runtime": getattr(encoder, "runtime", None),
            "embedding": timings,
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()
