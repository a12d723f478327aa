"""Catalogue adaptation, technique by technique (the ablation behind ADAPTATION's defaults):
what learned whitening and fine-tuning the encoder's last stages (visual_search.fine_tuning,
the code the app runs) each gain, alone and combined, in exact cosine search.

Embeds the catalogue (studio image + the --gallery splits' photos, one product per class) and
the --queries photos with the app's encoder. Everything is learned from the catalogue's
images, never from the queries. Gallery variants:
- studio + photos: the whole catalogue is searched;
- studio only, learned from the same products' photos: the shop has photos to learn from
  but searches only its studio images;
- studio only, learned from OTHER products (5 folds of products): each fold's products are
  searched by their studio image with a model that never saw any image of them;
- with --folds, also the gallery a shop holds after adapting: each fold's products added later
  with their studio image alone, beside the learned products' studio images and photos (queries
  of the fold's products, and of the others, in that one gallery). The fine-tuned fold rows
  come twice: exact search, and search as the app runs it, where the nearest product the
  model did not learn (a product of the fold) is lifted by the bonus (visual_search.unlearned).

    python benchmarks/adaptation.py --data ../shared/data/grocery --gallery train --queries val
    python benchmarks/adaptation.py --data ../shared/data/grocery --gallery train --queries val --finetune --folds
"""

from __future__ import annotations

import itertools
import time

import common
import numpy as np


def ranks(queries, q_labels, gallery, g_labels):
    """Rank of each query's product (a product scores by its best gallery image)."""
    from visual_search.calibration import product_ranks

    return product_ranks(queries, q_labels, gallery, g_labels)


def lifted_ranks(queries, q_labels, gallery, g_labels, unlearned, bonus):
    """Ranks as an adapted space's photo search gives them: the nearest product its model did
    not learn (``unlearned``) lifted by ``bonus`` (visual_search.unlearned)."""
    from visual_search.calibration import product_scores

    products, scores = product_scores(queries, gallery, g_labels)
    candidates = np.isin(products, unlearned)
    if candidates.any():
        nearest = np.where(candidates, scores, -np.inf).argmax(1)
        scores[np.arange(len(scores)), nearest] += bonus
    order = products[np.argsort(-scores, axis=1)]
    return np.argmax(order == np.asarray(q_labels)[:, None], axis=1) + 1


def whitened_ranks(transform, queries, query_labels, gallery, gallery_labels) -> np.ndarray:
    from visual_search.adaptation import apply as project

    mean, projection = transform
    return ranks(
        project(queries, mean, projection),
        query_labels,
        project(gallery, mean, projection),
        gallery_labels,
    )


def summary(r: np.ndarray) -> dict:
    return {
        "R@1": float((r <= 1).mean()),
        "R@5": float((r <= 5).mean()),
        "R@10": float((r <= 10).mean()),
    }


FOLD_GALLERIES = {
    "studio only": "studio only",
    "studio only, learned products": "studio only (queries of the other products)",
    "mixed, new products": "studio + photos, the fold's products by their studio image only",
    "mixed, learned products": "studio + photos, the fold's products by their studio image "
    "only (queries of the other products)",
}


def fine_tuning_rows(
    args, gallery_paths, gallery_labels, query_paths, query_labels, studio_labels, folds
):
    """Fine-tuned on the catalogue (all products; then per fold of products for the studio-
    only rows learned from other products). Trunk features are computed once."""
    import torch

    from visual_search.adaptation import main_image_copies
    from visual_search.conf import vs_settings
    from visual_search.encoders import load_timm_model
    from visual_search.fine_tuning import FineTuneConfig, FineTuner
    from visual_search.images import load_image

    encoder_config = vs_settings.ENCODER

    def pictures(paths):
        for i in range(0, len(paths), 64):
            batch = []
            for path in paths[i : i + 64]:
                picture = load_image(args.data / path)
                picture.thumbnail((384, 384))  # as the app does before training
                batch.append(picture)
            yield batch

    rows = []
    for stages in [int(s) for s in args.trained_stages.split(",")]:
        started = time.monotonic()
        model = load_timm_model(encoder_config["MODEL"], encoder_config["WEIGHTS"])
        tuner = FineTuner(model, FineTuneConfig(trained_stages=stages))
        done = 0
        for batch in pictures(gallery_paths):
            tuner.add(batch, gallery_labels[done : done + len(batch)])
            done += len(batch)
        # As the app trains: each product's first image (its studio image) copied a few times,
        # each epoch as long as without the copies.
        copies = main_image_copies(gallery_labels)
        for start in range(0, len(copies), 64):
            index = copies[start : start + 64]
            tuner.add(next(pictures([gallery_paths[i] for i in index])), gallery_labels[index])
        composites = add_fold_composites(
            tuner,
            pictures,
            gallery_paths,
            gallery_labels,
            len(studio_labels),
            folds if args.folds else [],
        )
        query_features = torch.cat([tuner.trunk_features(b) for b in pictures(query_paths)])
        features_s = time.monotonic() - started
        margins = _floats(args.margins, FineTuneConfig.margin)
        weights = _floats(args.fine_tuned_weights, FineTuneConfig.fine_tuned_weight)
        rates = _floats(args.earlier_stage_rates, FineTuneConfig.earlier_stage_rate)
        drop_paths = _floats(args.drop_paths, FineTuneConfig.drop_path)
        dropouts = _floats(args.dropouts, FineTuneConfig.dropout)
        for margin, rate, drop_path, dropout in itertools.product(
            margins, rates, drop_paths, dropouts
        ):
            tuner.config = FineTuneConfig(
                epochs=args.epochs,
                trained_stages=stages,
                learning_rate=args.learning_rate or FineTuneConfig.learning_rate,
                earlier_stage_rate=rate,
                scale=args.scale or FineTuneConfig.scale,
                margin=margin,
                drop_path=drop_path,
                dropout=dropout,
            )
            started = time.monotonic()
            details = tuner.train(
                np.concatenate(
                    [np.ones(len(gallery_labels) + len(copies), bool), composites[1] < 0]
                ),
                epoch_size=len(gallery_labels),
            )
            fit_s = features_s + time.monotonic() - started
            label = (
                f"fine-tune {stages} stages, margin {margin}, earlier stage rate {rate}, "
                f"drop path {drop_path}, dropout {dropout}"
            )
            print(f"{label}: {details}, {fit_s:.0f} s in all")
            rows += evaluate_tuner(
                args,
                tuner,
                f"{label}, {args.epochs} epochs",
                fit_s,
                (
                    gallery_labels,
                    copies,
                    composites,
                    query_features,
                    query_labels,
                    studio_labels,
                    folds,
                ),
                weights,
            )
    return rows


def add_fold_composites(tuner, pictures, gallery_paths, gallery_labels, n_studio, folds):
    """As the app trains: ``ADAPTATION["COMPOSITES"]`` composites of each product's studio
    image, pasted on 64 of the catalogue's photos, for the training on every product (set -1)
    and, for each fold (set i), of the other products on their own photos only: no model sees
    anything of the products it is checked on as never learned. (labels, set) of each."""
    from visual_search.adaptation import add_composites
    from visual_search.conf import vs_settings

    def loaded(index):
        return [
            picture for batch in pictures([gallery_paths[i] for i in index]) for picture in batch
        ]

    per_product = int(vs_settings.ADAPTATION["COMPOSITES"])
    labels, sets = [], []
    for place, fold in enumerate([None, *folds]):
        others = ~np.isin(gallery_labels, [] if fold is None else fold)
        photos = np.flatnonzero(others & (np.arange(len(gallery_labels)) >= n_studio))
        photos = np.random.default_rng(0).choice(photos, min(64, len(photos)), replace=False)
        studio = np.flatnonzero(others[:n_studio])
        mains = zip(gallery_labels[studio], loaded(studio), strict=True)
        made = add_composites(tuner, mains, loaded(np.sort(photos)), per_product)
        labels.append(made)
        sets.append(np.full(len(made), place - 1))
    return np.concatenate(labels), np.concatenate(sets)


def _floats(listed: str | None, default: float) -> list[float]:
    """A comma list option's values, or the app's default when it is not given."""
    return [float(value) for value in listed.split(",")] if listed else [default]


def evaluate_tuner(args, tuner, label, fit_s, data, weights) -> list[dict]:
    """The rows of one training, for each blend of its weights with the pretrained ones: the
    whole catalogue, its studio images, whitening on top; with --folds, studio-only search of
    products the model never saw (5 folds, one training each, every blend evaluated)."""
    from visual_search.adaptation import learned_whitening
    from visual_search.unlearned import BONUSES

    gallery_labels, copies, composites, query_features, query_labels, studio_labels, folds = data
    n_studio = len(studio_labels)
    extras = len(copies) + len(composites[0])
    gallery = np.arange(len(gallery_labels) + extras) < len(gallery_labels)  # no extras
    rows = []
    for weight in weights:
        tuner.blend(weight)
        name = f"{label}, fine-tuned weight {weight}"
        g = tuner.added_vectors(gallery)
        q = tuner.embed_features(query_features)
        transform = learned_whitening(g, gallery_labels, 80, args.shrink)
        rows += [
            {
                "gallery": "studio + photos",
                "transform": name,
                **summary(ranks(q, query_labels, g, gallery_labels)),
                "fit_s": round(fit_s, 1),
            },
            {
                "gallery": "studio only",
                "transform": name + " (same products)",
                **summary(ranks(q, query_labels, g[:n_studio], studio_labels)),
            },
            {
                "gallery": "studio + photos",
                "transform": name + " + whitening d=80",
                **summary(whitened_ranks(transform, q, query_labels, g, gallery_labels)),
            },
        ]
    if not args.folds:
        return rows
    variants = {" (other products)": lambda fold: ~np.isin(gallery_labels, fold)}
    if args.studio_classes:  # what the app did before it left single-image products out
        variants[" (other products + the fold's studio images as classes)"] = lambda fold: (
            ~np.isin(gallery_labels, fold) | (np.arange(len(gallery_labels)) < n_studio)
        )
    for suffix, selection in variants.items():
        # The fold's products are not learned (unless trained as classes): photo searches
        # lift the nearest of them by the app's bonus, at most BONUSES[-1] (the bonus every
        # pipeline run fitted, docs/benchmarks.md); side by side with no bonus.
        bonuses = (0.0, BONUSES[-1]) if suffix == " (other products)" else (0.0,)
        fold_ranks: dict[tuple, list] = {}
        for place, fold in enumerate(folds):
            chosen = selection(fold)
            fold_composites = composites[1] == place
            tuner.train(
                np.concatenate([chosen, chosen[copies], fold_composites]),
                epoch_size=int(chosen.sum()),
            )
            for weight in weights:
                tuner.blend(weight)
                g = tuner.added_vectors(gallery)
                q = tuner.embed_features(query_features)
                for key, these, kept in fold_galleries(
                    fold, query_labels, gallery_labels, n_studio
                ):
                    for bonus in bonuses:
                        fold_ranks.setdefault((weight, key, bonus), []).append(
                            lifted_ranks(
                                q[these],
                                query_labels[these],
                                g[kept],
                                gallery_labels[kept],
                                fold,
                                bonus,
                            )
                        )
        rows += [
            {
                "gallery": FOLD_GALLERIES[key],
                "transform": f"{label}, fine-tuned weight {weight}{suffix}",
                "bonus": bonus,
                **summary(np.concatenate(parts)),
            }
            for (weight, key, bonus), parts in fold_ranks.items()
        ]
    return rows


def fold_galleries(fold, query_labels, gallery_labels, n_studio):
    """(name, queries, gallery images) of each search of a fold's products that no model
    learned: among the studio images only, and in the gallery a shop holds after adapting (the
    fold's products added later with their studio image alone, beside the learned products'
    studio images and photos), where the other products' queries are searched too."""
    held = np.isin(query_labels, fold)
    studio = np.arange(len(gallery_labels)) < n_studio
    mixed = ~np.isin(gallery_labels, fold) | studio
    return (
        ("studio only", held, studio),
        ("studio only, learned products", ~held, studio),
        ("mixed, new products", held, mixed),
        ("mixed, learned products", ~held, mixed),
    )


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--gallery", default="train")
    parser.add_argument("--queries", default="val")
    parser.add_argument("--dims", default="40,80,120")
    parser.add_argument("--shrink", type=float, default=0.1)
    parser.add_argument("--finetune", action="store_true", help="add fine-tuning rows")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs")
    parser.add_argument(
        "--learning-rate", type=float, default=None, help="fine-tuning (default: the app's)"
    )
    parser.add_argument(
        "--scale", type=float, default=None, help="fine-tuning cosine scale (default: the app's)"
    )
    parser.add_argument(
        "--trained-stages", default="2", help="fine-tuning: comma list of stages trained"
    )
    parser.add_argument(
        "--margins",
        default=None,
        help="fine-tuning: comma list of CosFace margins (default: the app's)",
    )
    parser.add_argument(
        "--earlier-stage-rates",
        default=None,
        help="fine-tuning: comma list of the earlier trained stages' shares of the learning "
        "rate (layer-wise decay; default: the app's)",
    )
    parser.add_argument(
        "--drop-paths",
        default=None,
        help="fine-tuning: comma list of stochastic-depth rates (default: the app's)",
    )
    parser.add_argument(
        "--dropouts",
        default=None,
        help="fine-tuning: comma list of embedding dropout shares (default: the app's)",
    )
    parser.add_argument(
        "--folds", action="store_true", help="fine-tune per fold for the other-products rows"
    )
    parser.add_argument(
        "--studio-classes",
        action="store_true",
        help="with --folds: also train each fold's products as classes from their studio image",
    )
    parser.add_argument(
        "--fine-tuned-weights",
        default="",
        help="fine-tuning: comma list of blends of the trained with the pretrained weights, "
        "each evaluated from the same training (default: the app's)",
    )
    parser.add_argument("--output", default="adaptation")
    args = parser.parse_args()

    import os
    import sys

    sys.path.insert(0, str(common.REPO))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.settings")
    import django

    django.setup()
    from retrieval import read_classes, read_split

    from visual_search.adaptation import learned_whitening
    from visual_search.encoders import get_encoder
    from visual_search.images import load_image

    encoder = get_encoder()

    def embed(paths):
        return np.concatenate(
            [
                encoder.encode([load_image(args.data / p) for p in paths[i : i + 64]])
                for i in range(0, len(paths), 64)
            ]
        )

    started = time.monotonic()
    classes = read_classes(args.data)
    studio = embed([c["iconic"] for c in classes])
    studio_labels = np.array([c["id"] for c in classes])
    photos = [row for split in args.gallery.split(",") for row in read_split(args.data, split)]
    photo_vectors = embed([p for p, _ in photos])
    photo_labels = np.array([label for _, label in photos])
    query_rows = read_split(args.data, args.queries)
    queries = embed([p for p, _ in query_rows])
    query_labels = np.array([label for _, label in query_rows])
    print(
        f"embedded {len(classes) + len(photos) + len(queries)} images in {time.monotonic() - started:.0f} s"
    )

    gallery = np.concatenate([studio, photo_vectors])
    gallery_labels = np.concatenate([studio_labels, photo_labels])
    gallery_paths = [c["iconic"] for c in classes] + [p for p, _ in photos]
    query_paths = [p for p, _ in query_rows]
    rows = [
        {
            "gallery": "studio + photos",
            "transform": "none",
            **summary(ranks(queries, query_labels, gallery, gallery_labels)),
        }
    ]
    whitening = {}  # dims -> (mean, projection), learned from the whole catalogue
    for dims in [int(d) for d in args.dims.split(",")]:
        t = time.monotonic()
        whitening[dims] = learned_whitening(gallery, gallery_labels, dims, args.shrink)
        fit = time.monotonic() - t
        rows.append(
            {
                "gallery": "studio + photos",
                "transform": f"whitening d={dims}",
                **summary(
                    whitened_ranks(whitening[dims], queries, query_labels, gallery, gallery_labels)
                ),
                "fit_s": round(fit, 2),
            }
        )
    rows.append(
        {
            "gallery": "studio only",
            "transform": "none",
            **summary(ranks(queries, query_labels, studio, studio_labels)),
        }
    )
    for dims, transform in whitening.items():
        rows.append(
            {
                "gallery": "studio only",
                "transform": f"whitening d={dims} (same products' photos)",
                **summary(whitened_ranks(transform, queries, query_labels, studio, studio_labels)),
            }
        )
    rng = np.random.default_rng(0)
    folds = np.array_split(rng.permutation(np.unique(studio_labels)), 5)
    base_ranks: dict[str, list] = {}
    for fold in folds:
        for key, these, kept in fold_galleries(fold, query_labels, gallery_labels, len(studio)):
            if key == "studio only":  # the base space's studio-only row above covers it
                continue
            base_ranks.setdefault(key, []).append(
                ranks(queries[these], query_labels[these], gallery[kept], gallery_labels[kept])
            )
    rows += [
        {
            "gallery": FOLD_GALLERIES[key],
            "transform": "none (5 folds of products)",
            **summary(np.concatenate(parts)),
        }
        for key, parts in base_ranks.items()
    ]
    for dims in [int(d) for d in args.dims.split(",")]:
        all_ranks = []
        for fold in folds:
            train = ~np.isin(gallery_labels, fold)  # the other products' images only
            transform = learned_whitening(gallery[train], gallery_labels[train], dims, args.shrink)
            held = np.isin(query_labels, fold)
            all_ranks.append(
                whitened_ranks(transform, queries[held], query_labels[held], studio, studio_labels)
            )
        rows.append(
            {
                "gallery": "studio only",
                "transform": f"whitening d={dims} (other products)",
                **summary(np.concatenate(all_ranks)),
            }
        )
    if args.finetune:
        rows += fine_tuning_rows(
            args, gallery_paths, gallery_labels, query_paths, query_labels, studio_labels, folds
        )
    print(common.table(rows, ["gallery", "transform", "bonus", "R@1", "R@5", "R@10", "fit_s"]))
    common.save(
        args.output,
        {"queries": args.queries, "gallery": args.gallery, "shrink": args.shrink, "results": rows},
    )


if __name__ == "__main__":
    main()
