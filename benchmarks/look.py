"""Shop the look on composites of real in-store photos with known items and boxes.

The catalogue is one product per class (studio image + the photos of --gallery splits); each
look photo is a canvas with 2 to 6 photos from the --queries split (never in the gallery)
pasted at random sizes and positions. For each photo, services.shop_the_look(k) runs end to
end; an item counts as found when a group's box overlaps it with IoU >= 0.5 and its product is
in that group's top k. A group that overlaps no item that much is a false group. --sweep
regroups the same regions under other thresholds; --diagnose says which step lost each item.
--fit learns the objectness model that scores regions as items (visual_search/look.py) from
the composites' true boxes, prints it and evaluates nothing: fit on other seeds than the ones
you measure with.

    python benchmarks/look.py --data ../shared/data/grocery --items 4 --photos 100
    python benchmarks/look.py --fit --items 2-6 --photos 150 --seed 100 --output look-fit
"""

from __future__ import annotations

import itertools
import random
import statistics
import time
from pathlib import Path

import common


def composite(paths: list[Path], rng: random.Random, size: int = 800):
    """Paste the photos without overlap; returns the canvas and each photo's box (None for a
    photo that found no free place)."""
    from PIL import Image

    shade = rng.randint(215, 250)
    canvas = Image.new("RGB", (size, size), (shade, shade, rng.randint(205, 245)))
    boxes = []
    for path in paths:
        photo = Image.open(path).convert("RGB")
        for _ in range(200):
            side = rng.randint(size // 5, int(size / 2.3))
            scale = side / max(photo.size)
            w, h = max(1, int(photo.width * scale)), max(1, int(photo.height * scale))
            x, y = rng.randint(0, size - w), rng.randint(0, size - h)
            box = (x, y, x + w, y + h)
            if all(
                box[2] <= b[0] or box[0] >= b[2] or box[3] <= b[1] or box[1] >= b[3]
                for b in boxes
                if b is not None
            ):
                canvas.paste(photo.resize((w, h)), (x, y))
                boxes.append(box)
                break
        else:
            boxes.append(None)
    return canvas, boxes


def regions_of(canvas, k: int) -> list:
    """The regions shop_the_look groups, before grouping (for the sweep and the diagnosis)."""
    from visual_search import services

    return services.look_regions(canvas, k=k)


def objectness_of(regions: list, size: tuple[int, int], k: int) -> tuple[list, object]:
    from visual_search.conf import vs_settings
    from visual_search.look import item_scores

    look = vs_settings.LOOK
    return item_scores(
        regions, size=size, k=k, min_score=look["MIN_SCORE"], model=look["OBJECTNESS"]
    )


def why_missed(regions: list, groups: list, fine: int, box, fine_of: dict, size, k) -> str:
    """The first step of shop_the_look that lost an item (or "found")."""
    from visual_search.conf import vs_settings
    from visual_search.look import iou

    def has(matches) -> bool:
        return fine in [fine_of[m.product.pk] for m in matches]

    if any(iou(g.box, box) >= 0.5 and has(g.results) for g in groups):
        return "found"
    good = [r for r in regions if iou(r.box, box) >= 0.5 and has(r.matches)]
    if not good:
        return "no region with IoU >= 0.5 and the product in its top k"
    if any(iou(g.box, box) >= 0.5 for g in groups):
        return "a group's box fits, its products do not"
    look = vs_settings.LOOK
    usable, objectness = objectness_of(regions, size, k)
    scored = [p for r, p in zip(usable, objectness, strict=True) if any(r is g for g in good)]
    if not scored:
        return "its regions score below MIN_SCORE"
    if max(scored) <= look["MIN_OBJECTNESS"]:
        return "its regions' objectness is below MIN_OBJECTNESS"
    if any(iou(g.box, box) >= 0.3 for g in groups):
        return "a group's box overlaps it with IoU 0.3-0.5"
    return "a region overlapping it was chosen instead"


def run_sweep(photos: list, fine_of: dict, k: int) -> list[dict]:
    from visual_search.conf import vs_settings
    from visual_search.look import group_regions, iou

    look = vs_settings.LOOK
    rows = []
    for min_objectness, overlap_iou in itertools.product(
        (0.03, 0.06, 0.1, 0.15, 0.2, 0.3), (0.1, 0.2, 0.3)
    ):
        found = total = false = 0
        for regions, picks, boxes, size in photos:
            groups = group_regions(
                regions,
                size=size,
                k=k,
                min_score=look["MIN_SCORE"],
                min_objectness=min_objectness,
                overlap_iou=overlap_iou,
                model=look["OBJECTNESS"],
            )
            for (_, fine), box in zip(picks, boxes, strict=True):
                found += any(
                    iou(g.box, box) >= 0.5 and fine in [fine_of[r.product.pk] for r in g.results]
                    for g in groups
                )
            false += sum(1 for g in groups if all(iou(g.box, b) < 0.5 for b in boxes))
            total += len(boxes)
        rows.append(
            {
                "min_objectness": min_objectness,
                "overlap_iou": overlap_iou,
                f"recall@{k}": found / total,
                "false_groups_per_photo": false / len(photos),
            }
        )
    print("\nthreshold sweep (same regions):")
    print(common.table(rows, list(rows[0])))
    return rows


def fit_objectness(photos: list, k: int) -> dict:
    """Logistic model of "this region is an item" (IoU >= 0.5 with a pasted photo)."""
    import numpy as np

    from visual_search import logistic
    from visual_search.conf import vs_settings
    from visual_search.look import REGION_FEATURES, iou, region_features

    features, outcomes = [], []
    for regions, _, boxes, size in photos:
        usable = [r for r in regions if r.matches and r.best.score >= vs_settings.LOOK["MIN_SCORE"]]
        if not usable:
            continue
        features.append(region_features(usable, size, k))
        outcomes += [any(iou(r.box, b) >= 0.5 for b in boxes) for r in usable]
    model = logistic.fit(np.concatenate(features), np.array(outcomes), l2=1e-2)
    model = {
        "coef": [round(c, 4) for c in model["coef"]],
        "intercept": round(model["intercept"], 4),
    }
    print(f"objectness model from {len(outcomes)} regions ({np.mean(outcomes):.1%} items):")
    for name, coef in zip(REGION_FEATURES, model["coef"], strict=True):
        print(f"  {name:16} {coef:+.4f}")
    print(f"  {'intercept':16} {model['intercept']:+.4f}")
    print(f"LOOK OBJECTNESS = {model}")
    return model


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--gallery", default="train")
    parser.add_argument("--queries", default="val")
    parser.add_argument(
        "--items", default="4", help="items per photo: a number or a range like 2-6"
    )
    parser.add_argument("--photos", type=int, default=100)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="also evaluate a grid of grouping thresholds on the same regions",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the catalogue of the last run (same --data and --gallery)",
    )
    parser.add_argument(
        "--adapt",
        action="store_true",
        help="adapt the catalogue first: the items are still found in the base space, their "
        "products come from the adapted one (LOOK ADAPTED_SPACE; the space is learned from the "
        "gallery and kept with --reuse)",
    )
    parser.add_argument(
        "--fit",
        action="store_true",
        help="fit the objectness model on these composites and print it (no evaluation)",
    )
    parser.add_argument(
        "--diagnose",
        action="store_true",
        help="say for each item which step of shop_the_look lost it (embeds the regions again)",
    )
    parser.add_argument("--output", default="")
    args = parser.parse_args()

    common.setup_django("look", fresh=not args.reuse)
    from retrieval import build_catalogue, read_split

    from visual_search import services
    from visual_search.look import iou

    products = build_catalogue(args.data, args.gallery.split(","), reuse=args.reuse)
    started = time.monotonic()
    services.embed_many([p.pk for p in products.values()])
    print(f"catalogue: {len(products)} products embedded in {time.monotonic() - started:.0f} s")
    fine_of = {p.pk: fine for fine, p in products.items()}
    if args.adapt:
        from visual_search import adaptation
        from visual_search.spaces import query_space

        space = query_space()
        if not (args.reuse and space is not None and space.base_id is not None):
            space = adaptation.adapt(force=True).space  # the default method
        print(f"searching in {space.name} (held-out {space.report['after']})")
    from django.conf import settings

    look_settings = {**settings.VISUAL_SEARCH.get("LOOK", {}), "ADAPTED_SPACE": args.adapt}
    settings.VISUAL_SEARCH = {**settings.VISUAL_SEARCH, "LOOK": look_settings}
    services.vs_settings.reload()

    sweep: list[tuple[list, list, list, tuple]] = []  # (regions, picks, boxes, size) per photo
    rng = random.Random(args.seed)
    pool = read_split(args.data, args.queries)
    low, _, high = args.items.partition("-")
    found = total = false_groups = 0
    latencies, per_count, reasons = [], {}, {}
    for _ in range(args.photos):
        count = rng.randint(int(low), int(high or low))
        picks = rng.sample(pool, count)
        canvas, boxes = composite([args.data / p for p, _ in picks], rng)
        picks = [pick for pick, box in zip(picks, boxes, strict=True) if box is not None]
        boxes = [box for box in boxes if box is not None]
        regions = regions_of(canvas, args.k) if args.sweep or args.diagnose or args.fit else []
        if args.sweep or args.fit:
            sweep.append((regions, picks, boxes, canvas.size))
        if args.fit:
            continue
        started = time.perf_counter()
        groups = services.shop_the_look(canvas, k=args.k)
        latencies.append(time.perf_counter() - started)
        if args.diagnose:
            for (_, fine), box in zip(picks, boxes, strict=True):
                reason = why_missed(regions, groups, fine, box, fine_of, canvas.size, args.k)
                reasons[reason] = reasons.get(reason, 0) + 1
        hits = 0
        for (_, fine), box in zip(picks, boxes, strict=True):
            if any(
                iou(g.box, box) >= 0.5 and fine in [fine_of[r.product.pk] for r in g.results]
                for g in groups
            ):
                hits += 1
        false_groups += sum(1 for g in groups if all(iou(g.box, b) < 0.5 for b in boxes))
        found += hits
        total += len(boxes)
        stats = per_count.setdefault(len(boxes), [0, 0])
        stats[0] += hits
        stats[1] += len(boxes)
    if args.fit:
        model = fit_objectness(sweep, args.k)
        common.save(args.output or "look-fit", {"objectness": model, "photos": args.photos})
        return
    latencies.sort()
    row = {
        "items": args.items,
        "photos": args.photos,
        f"recall@{args.k}": found / total,
        "false_groups_per_photo": false_groups / args.photos,
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[int(0.95 * (len(latencies) - 1))],
    }
    print(common.table([row], list(row)))
    by_count = {n: hits / items for n, (hits, items) in sorted(per_count.items())}
    print("recall by items per photo:", {n: round(r, 3) for n, r in by_count.items()})
    payload = {"results": [row], "recall_by_items": by_count, "settings": services.vs_settings.LOOK}
    if args.diagnose:
        payload["items_by_outcome"] = dict(sorted(reasons.items(), key=lambda kv: -kv[1]))
        print("items by outcome:", payload["items_by_outcome"])
    if args.sweep:
        payload["sweep"] = run_sweep(sweep, fine_of, args.k)
    common.save(args.output or f"look-{args.items}", payload)


if __name__ == "__main__":
    main()
