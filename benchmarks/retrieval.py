"""Retrieval quality through the real pipeline: products in PostgreSQL, embeddings by the app's
service functions, queries through visual_search.services.search_by_image (HNSW index), and
the same queries as exact scans (index scans disabled) side by side.

The catalogue is one product per class of a folder in the Grocery Store Dataset layout
(classes.csv + <split>.txt); a product's gallery is its studio image plus the photos of the
--gallery splits; the queries are the photos of the --queries split. Every gallery variant is
built incrementally on the same products (images already embedded are skipped by hash).

--adapt whitening,finetune runs the app's catalogue adaptation (visual_search.adaptation) on
the gallery, never on the queries, and searches in each adapted space: the ablation, with each
method's adaptation time and query latency. --holdout-products 0.2 leaves a seeded fifth of
the classes out of the catalogue: their photos are then queries for products the shop does
not sell, and the calibrated confidence is measured (precision of the answered queries
against the share of in-catalogue photos answered, at the threshold the adaptation chose
from the catalogue's own images and along the whole curve). --new-products 0.2 leaves another
seeded fifth out until the catalogue has been adapted, then adds them with their studio image
alone, as a shop adds products: their photos then measure products the adapted model never
learned, among those it did ("R@1 new" against "R@1 learned"), with the bonus the adaptation
fitted for them and, side by side, with each of --bonuses (default: none, 0) (unlearned.py).

    python benchmarks/retrieval.py --data ../shared/data/grocery --gallery iconic --gallery iconic,train --queries val
    python benchmarks/retrieval.py --data ../shared/data/grocery --gallery iconic,train --queries val --adapt whitening,finetune --holdout-products 0.2
    python benchmarks/retrieval.py --data ../shared/data/grocery --gallery iconic,train --queries val --adapt finetune --new-products 0.2
"""

from __future__ import annotations

import contextlib
import csv
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import common


def read_split(data: Path, split: str) -> list[tuple[str, str]]:
    listing = data / f"{split}.txt"
    if not listing.is_file():
        known = sorted(p.stem for p in data.glob("*.txt"))
        raise SystemExit(f"{data} has no split {split!r} ({split}.txt); its splits: {known}")
    rows = []
    for line in listing.read_text().splitlines():
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


def make_products(data: Path, classes: list[dict[str, str]]) -> dict[str, Any]:
    """One product per class, its studio image as the main image; {fine class id: product}."""
    from django.core.files import File

    from shop_demo.catalog.models import Product

    products = {}
    for entry in classes:
        product = Product(name=entry["name"], slug=entry["name"].lower()[:200])
        with open(data / entry["iconic"], "rb") as handle:
            product.image.save(Path(entry["iconic"]).name, File(handle))
        products[entry["id"]] = product
    return products


def build_catalogue(data: Path, splits: list[str], *, reuse: bool = False) -> dict[str, Any]:
    """One product per class with its studio image, plus the photos of ``splits`` as its
    gallery; {fine class id: product}. ``reuse`` keeps the products an earlier run made."""
    from django.core.files import File

    from shop_demo.catalog.models import Product, ProductImage

    classes = read_classes(data)
    ids = {entry["id"] for entry in classes}
    photos = [
        (position, path, fine)
        for split in splits
        if split
        for position, (path, fine) in enumerate(read_split(data, split))
        if fine in ids
    ]
    if reuse:
        existing = {p.name: p for p in Product.objects.all()}
        kept = ProductImage.objects.count()
        if set(existing) != {entry["name"] for entry in classes} or kept != len(photos):
            raise SystemExit(
                f"The kept catalogue ({len(existing)} products, {kept} gallery photos) was not "
                f"built from these splits of {data} ({len(classes)} products, {len(photos)} "
                "photos): run without --reuse."
            )
        return {entry["id"]: existing[entry["name"]] for entry in classes}
    products = make_products(data, classes)
    for position, path, fine in photos:
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


def evaluate(
    args: Any,
    queries: list[tuple[str, str]],
    by_pk: dict[Any, str],
    strangers: set[str],
    mode: str,
    new: set[str] | frozenset[str] = frozenset(),
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Search every query in the active space; ranks of in-catalogue queries, latency, and
    (with strangers) how the calibrated confidence separates answers from strangers; with
    --per-query, each query's ranking too."""
    import numpy as np
    from django.db import connection

    from visual_search import calibration, services
    from visual_search.spaces import query_space

    ranks, latencies, confidence, correct, inside, records = [], [], [], [], [], []
    for path, fine in queries:
        with connection.cursor() as cursor:
            cursor.execute("SET enable_indexscan = %s", ["on" if mode == "hnsw" else "off"])
        started = time.monotonic()
        results = services.search_by_image(args.data / path, k=args.k)
        latencies.append(time.monotonic() - started)
        found = [by_pk[r.product.pk] for r in results]
        inside.append(fine not in strangers)
        if inside[-1]:
            ranks.append(found.index(fine) + 1 if fine in found else None)
        confidence.append(results[0].confidence if results else 0.0)
        correct.append(bool(found) and found[0] == fine)
        if args.per_query:
            records.append(
                {
                    "query": path,
                    "class": fine,
                    "in_catalogue": inside[-1],
                    "found": found,
                    "scores": [round(r.score, 5) for r in results],
                    "confidence": confidence[-1],
                }
            )
    with connection.cursor() as cursor:
        cursor.execute("RESET enable_indexscan")
    latencies.sort()
    row = {**metrics(ranks), "p50_ms": latencies[len(latencies) // 2] * 1000}
    if new:
        classes = [fine for _, fine in queries if fine not in strangers]
        for label, wanted in (("new", True), ("learned", False)):
            part = [r for r, fine in zip(ranks, classes, strict=True) if (fine in new) == wanted]
            row[f"R@1 {label}"] = metrics(part)["R@1"]
            row[f"R@5 {label}"] = metrics(part)["R@5"]
    if strangers and None not in confidence:
        confidence_a, correct_a, inside_a = map(np.array, (confidence, correct, inside))
        curve = calibration.precision_coverage(confidence_a, correct_a, inside_a)
        best = calibration.coverage_at(curve, 0.9)
        row["cov@90%"] = best["coverage"] if best else 0.0
        threshold = query_space().report["calibration"]["threshold_for_90_precision"]
        if threshold is not None:
            answered = confidence_a >= threshold
            row["threshold"] = threshold
            row["prec@thr"] = float(correct_a[answered].mean()) if answered.any() else 1.0
            row["cov@thr"] = float((answered & inside_a).sum() / inside_a.sum())
    return row, records


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
        default="",
        help="comma-separated adaptation methods (whitening, finetune) to learn from the "
        "gallery (never from the queries) and search in, besides the base space",
    )
    parser.add_argument("--adapt-dims", type=int, default=80, help="whitening dimensions")
    parser.add_argument("--adapt-epochs", type=int, default=None, help="finetune epochs")
    parser.add_argument(
        "--holdout-products",
        type=float,
        default=0.0,
        help="share of the classes left out of the catalogue (their photos: strangers)",
    )
    parser.add_argument(
        "--new-products",
        type=float,
        default=0.0,
        help="share of the catalogue's classes added after adapting, with their studio image alone",
    )
    parser.add_argument(
        "--bonuses",
        default="0",
        help="with --new-products, fixed bonuses for unlearned products to search with "
        "besides the fitted one, comma-separated",
    )
    parser.add_argument("--seed", type=int, default=0, help="which classes are held out")
    parser.add_argument(
        "--per-query",
        action="store_true",
        help="also record each query's ranking (classes, scores, confidence) in the JSON, "
        "to study the confidence offline",
    )
    parser.add_argument(
        "--output",
        default="retrieval",
        help="results/<name>.json, or an absolute path without .json",
    )
    args = parser.parse_args()
    variants = args.gallery or ["iconic", "iconic,train"]
    variants = sorted(variants, key=lambda v: len(v.split(",")))  # grow the gallery step by step

    common.setup_django("retrieval", fresh=True)
    from django.core.files import File

    from shop_demo.catalog.models import ProductImage
    from visual_search import services
    from visual_search.encoders import get_encoder

    classes = read_classes(args.data)
    strangers: set[str] = set()
    if args.holdout_products:
        ids = sorted(c["id"] for c in classes)
        strangers = set(
            random.Random(args.seed).sample(ids, round(len(ids) * args.holdout_products))
        )
        classes = [c for c in classes if c["id"] not in strangers]
    new: set[str] = set()
    if args.new_products:
        ids = sorted(c["id"] for c in classes)
        new = set(random.Random(args.seed + 1).sample(ids, round(len(ids) * args.new_products)))
        if not args.adapt:
            parser.error("--new-products measures adapted spaces: give --adapt too")
    queries = read_split(args.data, args.queries)
    if args.limit:
        queries = queries[: args.limit]
    products = make_products(args.data, [c for c in classes if c["id"] not in new])
    by_pk = {p.pk: fine for fine, p in products.items()}
    encoder = get_encoder()
    print(
        f"{len(products)} products, {len(queries)} queries ({args.queries}, "
        f"{sum(fine in strangers for _, fine in queries)} of products not in the catalogue), "
        f"encoder {encoder.space} ({getattr(encoder, 'runtime', '?')})"
    )

    added: set[str] = set()
    rows, timings, per_query = [], {}, {}
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
        # Adapted spaces first: adapting also calibrates the base space's confidence.
        methods = [m.strip() for m in args.adapt.split(",") if m.strip()]
        for label, method in [*((m, m) for m in methods), ("base", None)]:
            space = None
            adapt_s = None
            if method is not None:
                from visual_search import adaptation

                started = time.monotonic()
                try:
                    adapted = adaptation.adapt(
                        method=method,
                        dims=args.adapt_dims,
                        epochs=args.adapt_epochs,
                        activate=False,
                        force=True,
                        progress=lambda message: print("  " + message),
                    )
                except adaptation.AdaptationRefused as exc:
                    print(f"no {method} adaptation for gallery {variant}: {exc}")
                    continue
                adapt_s = time.monotonic() - started
                space = adapted.space
                print(
                    f"{method}: {space.name} in {adapt_s:.1f} s: held-out "
                    f"{adapted.report['before']} -> {adapted.report['after']}"
                )
                adaptation.switch(space)
                if new and not set(by_pk.values()) & new:
                    added = make_products(args.data, [c for c in classes if c["id"] in new])
                    services.embed_many([p.pk for p in added.values()])
                    by_pk.update({p.pk: fine for fine, p in added.items()})
                    print(f"added {len(added)} products with their studio image alone")
            bonus = (space.report.get("unlearned") or {}).get("bonus") if space else None
            searches = [("hnsw", None), ("exact", None)]
            if new and space is not None:
                searches += [
                    ("hnsw", float(b)) for b in args.bonuses.split(",") if float(b) != bonus
                ]
            for mode, override in searches:
                with unlearned_bonus(override):
                    row, records = evaluate(args, queries, by_pk, strangers, mode, new)
                if args.per_query:
                    key = f"{variant} {label} {mode}"
                    per_query[key if override is None else f"{key} bonus {override}"] = records
                row = {
                    "gallery": variant,
                    "gallery_images": gallery_size,
                    "space": label,
                    "search": mode,
                    **({"bonus": bonus if override is None else override} if new else {}),
                    **row,
                    "adapt_s": round(adapt_s, 1) if adapt_s is not None else None,
                }
                rows.append(row)
                print(common.table([row], list(row)))
            if space is not None:
                adaptation.switch(None)

    print(
        "\n"
        + common.table(
            rows,
            [
                "gallery",
                "gallery_images",
                "space",
                "search",
                *(["bonus", "R@1 new", "R@5 new", "R@1 learned", "R@5 learned"] if new else []),
                "R@1",
                "R@5",
                "R@10",
                "mAP@10",
                "p50_ms",
                "adapt_s",
                *(["cov@90%", "prec@thr", "cov@thr"] if strangers else []),
            ],
        )
    )
    common.save(
        args.output,
        {
            "data": str(args.data),
            "queries": args.queries,
            "n_queries": len(queries),
            "held_out_products": sorted(strangers, key=int),
            "new_products": sorted(new, key=int),
            "encoder": encoder.describe(),
            "runtime": getattr(encoder, "runtime", None),
            "embedding": timings,
            "results": rows,
            **({"per_query": per_query} if args.per_query else {}),
        },
    )


@contextlib.contextmanager
def unlearned_bonus(value: float | None) -> Iterator[None]:
    """Searches with this ``ADAPTATION["UNLEARNED_BONUS"]`` (None: the fitted one)."""
    if value is None:
        yield
        return
    from django.conf import settings
    from django.test import override_settings

    vs = getattr(settings, "VISUAL_SEARCH", {})
    adaptation = {**vs.get("ADAPTATION", {}), "UNLEARNED_BONUS": value}
    with override_settings(VISUAL_SEARCH={**vs, "ADAPTATION": adaptation}):
        yield


if __name__ == "__main__":
    main()
