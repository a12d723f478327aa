"""Catalogue adaptation: a space learned from the shop's own products, beside the current one.

Two methods, both learned from the catalogue's products that have several images, checked
on held-out images of those products before anything is switched, stored as a new embedding
space derived from the current one, switched on in one transaction and reversible:

- ``finetune`` (default): the encoder's last stages retrained on the catalogue's images
  (fine_tuning.py); the adapted space has its own model, kept in the database
  (``SpaceWeights``), and every image is embedded by it, from the early-stage features kept
  for the training (read and encoded again beyond ``MAX_TRAINING_IMAGES``).
- ``whitening``: a closed-form linear transform of the stored vectors: whiten the covariance
  of images *within* a product (light, angle, background), then keep the main directions
  *between* products. No image is encoded again; works with any encoder.

New embeddings are written to the base space and to its adapted spaces (pipeline.py), so
reverting is instant. The same held-out images, with photos of a share of the products left
out of the check ("strangers"), calibrate match confidence (calibration.py), for the base
space and for the adapted one.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from django.db import transaction
from django.utils import timezone
from PIL import Image

from visual_search import calibration
from visual_search.conf import vs_settings
from visual_search.encoders import Encoder, build_encoder, get_encoder
from visual_search.exceptions import UnusableImage, VisualSearchError
from visual_search.models import EmbeddingSpace, EmbeddingStatus, ProductEmbedding, SpaceWeights
from visual_search.spaces import forget_spaces, get_current_space
from visual_search.unlearned import fit_bonus
from visual_search.weak_products import headline, weakest_products

_transforms: dict[str, tuple[np.ndarray, np.ndarray]] = {}
_encoders: dict[str, Encoder] = {}


class AdaptationRefused(VisualSearchError):
    """Not enough labelled images, or the adapted space is not better than the current one."""


def learned_whitening(
    vectors: np.ndarray, labels: np.ndarray, dims: int, shrink: float
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, projection d x dims): whitened within-product scatter, then PCA of the means."""
    mean = vectors.mean(0)
    x = vectors - mean
    classes = np.unique(labels)
    centred = np.concatenate([x[labels == c] - x[labels == c].mean(0) for c in classes])
    within = centred.T @ centred / max(1, len(centred))
    within = (1 - shrink) * within + shrink * np.trace(within) / len(within) * np.eye(len(within))
    values, basis = np.linalg.eigh(within)
    whiten = basis / np.sqrt(np.maximum(values, 1e-9))
    means = np.stack([(x[labels == c] @ whiten).mean(0) for c in classes])
    _, _, vt = np.linalg.svd(means - means.mean(0), full_matrices=False)
    dims = min(dims, vt.shape[0])
    return mean.astype(np.float32), (whiten @ vt[:dims].T).astype(np.float32)


def apply(vectors: np.ndarray, mean: np.ndarray, projection: np.ndarray) -> np.ndarray:
    y = (np.atleast_2d(vectors).astype(np.float32) - mean) @ projection
    return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)


def transform_of(space: EmbeddingSpace) -> tuple[np.ndarray, np.ndarray]:
    if space.name not in _transforms:
        stored = space.encoder.get("TRANSFORM")
        if not stored:
            raise VisualSearchError(f"Space {space.name!r} has no transform.")
        _transforms[space.name] = (
            np.asarray(stored["mean"], dtype=np.float32),
            np.asarray(stored["projection"], dtype=np.float32),
        )
    return _transforms[space.name]


def is_fine_tuned(space: EmbeddingSpace) -> bool:
    return bool(space.encoder.get("FINE_TUNED"))


def space_encoder(space: EmbeddingSpace) -> Encoder:
    """The encoder of a fine-tuned space: the base encoder's settings with the space's own
    weights (written once per process from the database to the encoder's cache folder)."""
    encoder = _encoders.get(space.name)
    if encoder is not None:
        return encoder
    weights = SpaceWeights.objects.filter(space=space).values_list("data", "sha256").first()
    if weights is None:
        raise VisualSearchError(f"The fine-tuned space {space.name!r} has no stored weights.")
    config = {**vs_settings.ENCODER, **space.encoder["BASE_ENCODER"]}
    cache = Path(config.get("CACHE_DIR") or Path.home() / ".cache" / "visual_search")
    path = cache / f"adapted-{weights[1][:16]}.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".pt.tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(bytes(weights[0]))
        os.replace(tmp, path)  # atomic: concurrent workers never read half a file
    encoder = build_encoder({**config, "WEIGHTS": str(path), "SPACE": space.name})
    _encoders[space.name] = encoder
    return encoder


def to_space(
    space: EmbeddingSpace, vectors: np.ndarray | None, pictures: Sequence[Image.Image] = ()
) -> np.ndarray:
    """These pictures in ``space``, given their base-encoder vectors (which a fine-tuned
    space does not need: it encodes the pictures with its own model)."""
    if is_fine_tuned(space):
        return space_encoder(space).encode(list(pictures))
    if vectors is None:
        raise ValueError(f"Space {space.name} maps the base encoder's vectors; none were given.")
    if space.base_id is None:
        return vectors
    return apply(vectors, *transform_of(space))


def encode_in(space: EmbeddingSpace, pictures: Sequence[Image.Image]) -> np.ndarray:
    """Pictures encoded in ``space``, with one model only."""
    base = None if is_fine_tuned(space) else get_encoder().encode(list(pictures))
    return to_space(space, base, pictures)


def several_images(labels: np.ndarray) -> np.ndarray:
    """The products (labels) with two or more images: those an adaptation learns."""
    products, counts = np.unique(labels, return_counts=True)
    return products[counts >= 2]


def main_image_copies(labels: np.ndarray, most: int = 6, every: int = 5) -> np.ndarray:
    """Places of each product's first image, repeated once for every ``every`` images the
    product has, at most ``most`` times: those copies are trained on in crops of their own.

    A studio shot is one image among a product's many in-store photos, yet it is what a
    product added later is known by. Offline, six copies (the grocery catalogue has 34 images
    a product) lifted photo search R@1 by 1-7 queries in each of three comparisons, and
    studio-only search of products never learned by 6 of 178 photos (docs/benchmarks.md,
    "The main image trained on more often"). A product with few images stays as it was, and
    the training's epochs draw as many images as there are without the copies, so the copies
    weigh more without costing time (the same R@1 offline, 30 s less a training)."""
    _, first, counts = np.unique(labels, return_index=True, return_counts=True)
    return np.repeat(first, np.minimum(most, counts // every))


def add_composites(
    tuner: Any,
    mains: Iterable[tuple[Any, Image.Image]],
    photos: Sequence[Image.Image],
    per_product: int,
    seed: int = 0,
) -> np.ndarray:
    """Add ``per_product`` composites of each product's main image (composites.py) to the
    tuner, pasted on crops of ``photos``; returns their labels, in the order added. Products
    whose main image has no plain background to cut the item from get none. ``mains``, (label,
    main image) pairs, is read one pair at a time: a large catalogue's need not fit in memory."""
    from visual_search.composites import composites, cut_out, scaled_down

    labels: list[Any] = []
    if not photos or per_product <= 0:
        return np.array(labels)
    photos = [scaled_down(photo) for photo in photos]  # a phone's 12 MP, 64 times over
    for place, (label, main) in enumerate(mains):
        item = cut_out(scaled_down(main))
        if item is not None:
            tuner.add(composites([item] * per_product, photos, seed + place), [label] * per_product)
            labels += [label] * per_product
    return np.array(labels)


def held_out_mask(labels: np.ndarray, share: float) -> np.ndarray:
    """The last ``share`` of each product's images (products with three or more; two stay
    to learn from). The last ones, not a random pick: consecutive shots of a product are near
    duplicates, and a held-out image next to its twin would flatter the check."""
    held = np.zeros(len(labels), dtype=bool)
    products, counts = np.unique(labels, return_counts=True)
    for product in products[counts >= 3]:
        index = np.flatnonzero(labels == product)
        n = min(len(index) - 2, max(1, round(len(index) * share)))
        held[index[-n:]] = True
    return held


def stranger_mask(labels: np.ndarray, held: np.ndarray, share: float) -> np.ndarray:
    """Every image of a seeded ``share`` of the products that have held-out images. The
    adaptation is checked without them, so they are photos of products it never learned and
    the check catalogue does not sell: what calibrates the "not ours" answer. With fewer than
    10 such products there are none (confidence is then calibrated by leaving each held-out
    image's own product out, which flatters a fine-tuned space). The draw is over the
    products in the order of ``labels`` (the catalogue's key order), not over the keys'
    text, so the same catalogue gets the same strangers whatever numbers its keys have."""
    candidates = labels[held]
    products = candidates[np.sort(np.unique(candidates, return_index=True)[1])]
    count = round(len(products) * share)
    if len(products) < 10 or count < 1:
        return np.zeros(len(labels), dtype=bool)
    chosen = np.random.default_rng(0).choice(products, count, replace=False)
    return np.isin(labels, chosen)


def recall(
    queries: np.ndarray, q_labels: np.ndarray, gallery: np.ndarray, g_labels: np.ndarray
) -> dict[str, float]:
    """Product-level R@1 / R@5 (a product scores by its best gallery image), exact search."""
    ranks = calibration.product_ranks(queries, q_labels, gallery, g_labels)
    return {
        "R@1": round(float((ranks <= 1).mean()), 4),
        "R@5": round(float((ranks <= 5).mean()), 4),
    }


@dataclass
class Adaptation:
    space: EmbeddingSpace
    report: dict[str, Any]
    activated: bool


@dataclass
class _Learned:
    """An adaptation learned on the fit images (vectors of the held-out, fit and stranger
    images it was checked on, with their labels); ``refit`` then makes the one to store."""

    held: np.ndarray
    held_labels: np.ndarray
    fit: np.ndarray
    fit_labels: np.ndarray
    strangers: np.ndarray
    stranger_labels: np.ndarray
    # The products (labels) the stored space's model learned: searches lift the others.
    learned_products: np.ndarray
    details: dict[str, Any]
    refit: Callable[[Callable[[str], None]], None]
    # Stops what is still learning beside the check (a refusal, an error); no-op after refit.
    stop: Callable[[], None] = lambda: None
    encoder: dict[str, Any] = field(default_factory=dict)
    weights: bytes | None = field(default=None, repr=False)
    transform: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    # The stored space's vector of every snapshot row, when learning computed them: then no
    # image is read and encoded again.
    vectors: np.ndarray | None = field(default=None, repr=False)


def adapt(
    *,
    method: str | None = None,
    dims: int = 80,
    shrink: float = 0.1,
    epochs: int | None = None,
    activate: bool = True,
    force: bool = False,
    progress: Callable[[str], None] = lambda message: None,
) -> Adaptation:
    """Learn, evaluate, store and (if better) switch on an adapted space for the catalogue.

    Whatever the outcome, the base space's match confidence is calibrated on the held-out
    images; ``AdaptationRefused`` says why nothing was switched.
    """
    settings = vs_settings.ADAPTATION
    method = method or settings["METHOD"]
    if method not in ("finetune", "whitening"):
        raise AdaptationRefused(f"Unknown adaptation method {method!r}.")
    started = time.monotonic()
    progress = _timed(progress, started)

    base = get_current_space()
    if base is None or base.dimension is None:
        raise AdaptationRefused("Nothing is embedded yet: run visual_search_reindex first.")
    # Images embedded after this moment are not learned: the status page counts them.
    catalogue_as_of = timezone.now()
    rows = list(
        ProductEmbedding.objects.filter(space=base, status=EmbeddingStatus.READY)
        .order_by("product_id", "id")
        .values_list("product_id", "image_key", "embedding", "content_hash")
    )
    progress(f"{len(rows)} ready images in {base.name}")
    vectors = np.array([row[2] for row in rows], dtype=np.float32).reshape(len(rows), -1)
    labels = np.array([str(row[0]) for row in rows])
    held = held_out_mask(labels, float(settings["HELD_OUT"]))
    strangers = stranger_mask(labels, held, float(settings["STRANGERS"]))
    fit = ~held & ~strangers
    held &= ~strangers
    fit_labels, fit_counts = np.unique(labels[fit], return_counts=True)
    if held.sum() < 5 or (fit_counts >= 2).sum() < 5:
        raise AdaptationRefused(
            "Too few products with three or more images to learn and check an adaptation "
            f"(found {int(held.sum())}); add in-store photos to the products' galleries."
        )
    stranger_products = len(np.unique(labels[strangers]))
    progress(
        f"learning on {int(fit.sum())} images of {len(fit_labels)} products, "
        f"checking on {int(held.sum())} held-out images and on the {int(strangers.sum())} "
        f"images of {stranger_products} products left out as strangers"
    )
    before = recall(vectors[held], labels[held], vectors[fit], labels[fit])
    _store_calibration(
        base,
        calibration.calibrate(
            vectors[held], labels[held], vectors[fit], labels[fit], vectors[strangers]
        ),
    )
    if method == "whitening":
        learned = _learn_whitening(vectors, labels, fit, held, strangers, dims, shrink)
    else:
        learned = _learn_fine_tuning(
            base, rows, labels, fit, held, strangers, int(epochs or settings["EPOCHS"]), progress
        )
    try:  # what learns beside the check stops if it refuses or fails
        checked = (learned.held, learned.held_labels, learned.fit, learned.fit_labels)
        after = recall(*checked)
        confidence = calibration.calibrate(*checked, learned.strangers)
        unlearned = fit_bonus(
            learned.fit,
            learned.fit_labels,
            learned.held,
            learned.held_labels,
            learned.strangers,
            learned.stranger_labels,
        )
        report = {
            "method": method,
            **learned.details,
            "fit_images": int(fit.sum()),
            "held_out_images": int(held.sum()),
            "stranger_products": stranger_products,
            "catalogue_as_of": catalogue_as_of.isoformat(),
            "before": before,
            "after": after,
            "coverage_at_90_precision": {
                "before": base.report["calibration"]["coverage_at_90_precision"],
                "after": confidence["coverage_at_90_precision"],
            },
            "calibration": confidence,
            "unlearned": unlearned,
            "weakest_products": weakest_products(*checked),
        }
        progress(
            f"held-out R@1 {before['R@1']:.3f} -> {after['R@1']:.3f}, "
            f"R@5 {before['R@5']:.3f} -> {after['R@5']:.3f}; at 90 % precision the confidence "
            f"answers {report['coverage_at_90_precision']['before']:.0%} -> "
            f"{report['coverage_at_90_precision']['after']:.0%} of held-out images"
        )
        if report["weakest_products"]:
            progress(headline(report["weakest_products"]))
        if "after" in unlearned:
            progress(
                f"products it did not learn, known by one image: found first "
                f"{unlearned['before']['unlearned_R@1']:.0%} -> "
                f"{unlearned['after']['unlearned_R@1']:.0%} with a bonus of "
                f"{unlearned['bonus']:.2f} to their scores (the learned products' held-out "
                f"images {unlearned['before']['learned_R@1']:.0%} -> "
                f"{unlearned['after']['learned_R@1']:.0%})"
            )
        better = after["R@1"] > before["R@1"] and after["R@5"] >= before["R@5"]
        if not better and not force:
            raise AdaptationRefused(
                "The adapted space is not better on held-out images "
                f"(R@1 {before['R@1']:.3f} -> {after['R@1']:.3f}, "
                f"R@5 {before['R@5']:.3f} -> {after['R@5']:.3f}); nothing switched."
            )
        learned.refit(progress)
    finally:
        learned.stop()
    space = _store_space(base, learned, report, rows)
    if learned.vectors is None:
        _encode_catalogue(space, {row[0] for row in rows}, progress)
    else:
        progress(f"stored {len(learned.vectors)} vectors without reading the images again")
        if learned.weights is not None:
            _catch_up(space, base, rows, progress)
    mark_learned(space, learned.learned_products)
    from visual_search.indexing import ensure_index
    from visual_search.segments import ensure_segment_indexes, sync_segments

    sync_segments(space)
    ensure_index(space)
    ensure_segment_indexes(space)
    report["seconds"] = round(time.monotonic() - started, 1)
    EmbeddingSpace.objects.filter(pk=space.pk).update(report=report)
    space.report = report
    if activate:
        switch(space)
        progress(f"switched queries to {space.name}")
    return Adaptation(space, report, activate)


def mark_learned(space: EmbeddingSpace, products: np.ndarray) -> None:
    """Flag the space's rows by whether its model learned their product; the pipeline flags
    the rows it adds later the same way (a new product's are not)."""
    rows, learned = ProductEmbedding.objects.filter(space=space), list(products)
    rows.filter(product_id__in=learned).update(learned=True)
    rows.exclude(product_id__in=learned).update(learned=False)


def _timed(progress: Callable[[str], None], started: float) -> Callable[[str], None]:
    """Progress lines that say how long the adaptation has taken so far."""
    return lambda message: progress(f"[{time.monotonic() - started:.0f} s] {message}")


def _store_calibration(space: EmbeddingSpace, fitted: dict[str, Any]) -> None:
    space.report = {**space.report, "calibration": fitted}
    EmbeddingSpace.objects.filter(pk=space.pk).update(report=space.report)
    forget_spaces()


def _learn_whitening(
    vectors: np.ndarray,
    labels: np.ndarray,
    fit: np.ndarray,
    held: np.ndarray,
    strangers: np.ndarray,
    dims: int,
    shrink: float,
) -> _Learned:
    def learn(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        learned.transform = mean, projection = learned_whitening(
            vectors[mask], labels[mask], dims, shrink
        )
        learned.encoder = {"TRANSFORM": {"mean": mean.tolist(), "projection": projection.tolist()}}
        learned.details["dims"] = int(projection.shape[1])  # at most the products less one
        return mean, projection

    def refit(progress: Callable[[str], None]) -> None:
        learned.vectors = apply(vectors, *learn(np.ones(len(labels), dtype=bool)))  # closed form

    learned = _Learned(
        held=np.zeros(0),
        held_labels=labels[held],
        fit=np.zeros(0),
        fit_labels=labels[fit],
        strangers=np.zeros(0),
        stranger_labels=labels[strangers],
        learned_products=several_images(labels),
        details={"dims": dims, "shrink": shrink},
        refit=refit,
    )
    transform = learn(fit)
    learned.held = apply(vectors[held], *transform)
    learned.fit = apply(vectors[fit], *transform)
    learned.strangers = apply(vectors[strangers], *transform)
    return learned


def _learn_fine_tuning(
    base: EmbeddingSpace,
    rows: list[tuple[Any, ...]],
    labels: np.ndarray,
    fit: np.ndarray,
    held: np.ndarray,
    strangers: np.ndarray,
    epochs: int,
    progress: Callable[[str], None],
) -> _Learned:
    from visual_search.encoders import TimmEncoder, load_timm_model
    from visual_search.fine_tuning import (
        FineTuneConfig,
        FineTuner,
        FineTuningUnsupported,
        TrainingBeside,
    )

    config = {**vs_settings.ENCODER, **base.encoder}
    if config.get("CLASS", "visual_search.encoders.TimmEncoder") != (
        f"{TimmEncoder.__module__}.{TimmEncoder.__qualname__}"
    ):
        raise AdaptationRefused("Fine-tuning needs the TimmEncoder; use method='whitening'.")
    try:
        tuner = FineTuner(
            load_timm_model(config["MODEL"], config["WEIGHTS"]), FineTuneConfig(epochs=epochs)
        )
    except FineTuningUnsupported as exc:
        raise AdaptationRefused(str(exc)) from exc
    # Every held-out image, and the others sampled down to the memory budget.
    learn_index = np.flatnonzero(fit | strangers)
    limit = int(vs_settings.ADAPTATION["MAX_TRAINING_IMAGES"])
    if len(learn_index) > limit:
        learn_index = np.random.default_rng(0).choice(learn_index, limit, replace=False)
    wanted = np.sort(np.concatenate([learn_index, np.flatnonzero(held)]))
    prepared = 0
    for index, pictures in _pictures(rows, wanted):  # every one of them, or a refusal
        tuner.add(pictures, labels[index])
        prepared += len(index)
        progress(f"training images prepared: {prepared}/{len(wanted)}")
    added_labels = labels[wanted]
    check_fit, check_held, check_strangers = fit[wanted], held[wanted], strangers[wanted]
    # Trained on more often, in crops of their own: each product's first image (the rows'
    # order, read as its main picture: the studio shot in most shops). Added after the
    # others: the tuner's first ``len(wanted)`` images are the catalogue's.
    copies = main_image_copies(added_labels)
    for index, pictures in _pictures(rows, wanted[copies]):
        tuner.add(pictures, labels[index])
    progress(f"training images prepared: {len(copies)} copies of the products' main images")
    # Products with a single image are embedded but not learned from: a class seen only in
    # its studio shot teaches the model that studio shots are that class, and photos of it
    # were then found first 18 % of the time, against 46 % left out and 39 % before
    # adapting (benchmarks/adaptation.py --folds --studio-classes).
    learned_products = several_images(added_labels)
    several = np.isin(added_labels, learned_products)
    composite_labels = _composites(
        tuner, rows, wanted, added_labels, several, check_fit & several, progress
    )

    def trained(mask: np.ndarray) -> dict[str, Any]:  # with the extras, epochs as long
        extras = [mask[copies], np.isin(composite_labels, added_labels[mask])]
        return {"selected": np.concatenate([mask, *extras]), "epoch_size": int(mask.sum())}

    def images(mask: np.ndarray) -> np.ndarray:  # the copies and composites left out
        return np.concatenate([mask, np.zeros(len(copies) + len(composite_labels), dtype=bool)])

    beside: TrainingBeside | None = None
    stored = tuner
    if check_strangers.any() and TrainingBeside.pays():
        # With strangers, the checked model has never seen some products: the one stored is
        # trained again on every image (without the held-out ones, R@1 fell by about 0.02
        # for a fifth less time: docs/benchmarks.md), beside the check model: on 2 cores the
        # two trainings took 0.77x the time of one after the other.
        progress("training the model to store, on every image, beside the check model")
        stored = tuner.fork()
        beside = TrainingBeside(stored, **trained(several))

    def check_progress(line: str) -> None:
        progress(f"check model: {line}")
        if beside is not None:
            beside.relay(progress)

    def refit(progress: Callable[[str], None]) -> None:
        # Without strangers, the checked model is stored as it is: the faster path, for a
        # model that has not learned those images.
        if beside is not None:
            beside.result(progress)
        elif check_strangers.any():  # one torch thread: one training after the other
            progress("training the model to store, on every image")
            tuner.train(
                **trained(several), progress=lambda line: progress(f"model to store: {line}")
            )
        learned.weights = stored.state_bytes()
        if len(wanted) == len(rows):  # the tuner holds every image's early-stage features
            learned.vectors = stored.added_vectors(images(np.ones(len(wanted), dtype=bool)))

    try:
        details = tuner.train(**trained(check_fit & several), progress=check_progress)
        details["single_image_products"] = len(np.unique(added_labels)) - len(learned_products)
        details["main_image_copies"] = len(copies)
        # Those the check model learned from (the stored model learns the strangers' too).
        check_products = added_labels[check_fit & several]
        details["composites"] = int(np.isin(composite_labels, check_products).sum())
        stages = tuner.config.trained_stages
        learned = _Learned(
            held=tuner.added_vectors(images(check_held)),
            held_labels=added_labels[check_held],
            fit=tuner.added_vectors(images(check_fit)),
            fit_labels=added_labels[check_fit],
            strangers=tuner.added_vectors(images(check_strangers)),
            stranger_labels=added_labels[check_strangers],
            learned_products=learned_products,
            details={**details, "epochs": epochs, "trained_stages": stages},
            refit=refit,
            encoder={"FINE_TUNED": {"epochs": epochs, "trained_stages": stages}},
        )
    except BaseException:
        if beside is not None:
            beside.cancel()
        raise
    if beside is not None:
        learned.stop = beside.cancel
    return learned


def _composites(
    tuner: Any,
    rows: list[tuple[Any, ...]],
    wanted: np.ndarray,
    labels: np.ndarray,
    learned: np.ndarray,
    background: np.ndarray,
    progress: Callable[[str], None],
) -> np.ndarray:
    """Composites of the main image of each learned product (``learned``: a mask of
    ``wanted``, whose ``labels`` are given), pasted on crops of up to 64 of the ``background``
    images that are not a main image: the check's fit images, so that the check model sees
    nothing of the held-out images or the strangers. Their labels, in the tuner's order."""
    _, first = np.unique(labels[learned], return_index=True)
    mains_at = np.flatnonzero(learned)[first]
    others = np.setdiff1d(np.flatnonzero(background), mains_at)
    # Within the memory budget of the training images, with the catalogue's own first.
    room = int(vs_settings.ADAPTATION["MAX_TRAINING_IMAGES"]) - len(wanted)
    per_product = min(int(vs_settings.ADAPTATION["COMPOSITES"]), room // max(1, len(mains_at)))
    if per_product <= 0 or not len(others):
        return np.array([], dtype=labels.dtype)
    chosen = np.sort(np.random.default_rng(0).choice(others, min(len(others), 64), replace=False))
    photos = [picture for _, batch in _pictures(rows, wanted[chosen]) for picture in batch]
    mains = (
        (str(rows[i][0]), picture)
        for index, batch in _pictures(rows, wanted[mains_at])
        for i, picture in zip(index, batch, strict=True)
    )
    made = add_composites(tuner, mains, photos, per_product).astype(labels.dtype)
    progress(
        f"training images prepared: {len(made)} composites of the main images of "
        f"{len(np.unique(made))} of {len(mains_at)} products (the others have no plain "
        "background to cut the product from)"
    )
    return made


def _pictures(
    rows: list[tuple[Any, ...]], index: np.ndarray, batch_size: int = 64
) -> Iterator[tuple[np.ndarray, list[Image.Image]]]:
    """The pictures of these rows, in batches (one batch in memory at a time), read from the
    products' galleries.

    Refuses at the first image that is gone or unreadable, before minutes of training on a
    catalogue that is not the one stored."""
    from visual_search.gallery import product_images
    from visual_search.images import load_image, read_bytes
    from visual_search.models_registry import get_product_model

    wanted = [int(i) for i in index]
    products = get_product_model()._default_manager.in_bulk({rows[i][0] for i in wanted})
    sources: dict[Any, dict[str, Any]] = {}
    batch: list[int] = []
    pictures: list[Image.Image] = []
    for i in wanted:
        product_id, key = rows[i][:2]
        if product_id not in sources:
            product = products.get(product_id)
            gallery = product_images(product) if product is not None else []
            sources[product_id] = {image.key: image.source for image in gallery}
        source = sources[product_id].get(key)
        if source is None:
            raise _unreadable(product_id, key, "it is no longer in the product's gallery")
        try:
            picture = load_image(read_bytes(source))
        except UnusableImage as exc:
            raise _unreadable(product_id, key, str(exc)) from exc
        batch.append(i)
        pictures.append(picture)
        if len(batch) == batch_size:
            yield np.array(batch), pictures
            batch, pictures = [], []
    if batch:
        yield np.array(batch), pictures


def _unreadable(product_id: Any, key: str, reason: str) -> AdaptationRefused:
    return AdaptationRefused(
        f"Image {key!r} of product {product_id} could not be read for fine-tuning ({reason}). "
        "Fix that image, or run visual_search_reindex --all so that the embeddings match the "
        "catalogue's images, then adapt again."
    )


def _store_space(
    base: EmbeddingSpace,
    learned: _Learned,
    report: dict[str, Any],
    rows: list[tuple[Any, ...]],
) -> EmbeddingSpace:
    """The new space's row (and its weights or its vectors); older inactive adapted spaces
    of the same base are removed: their models would cost a second encoding of each image."""
    if learned.weights is not None:
        payload, dimension, tag = learned.weights, learned.fit.shape[1], "ft"
    elif learned.transform is not None:
        projection = learned.transform[1]
        payload, dimension = np.asarray(projection).tobytes(), projection.shape[1]
        tag = f"lw{dimension}"
    else:
        raise ValueError("An adaptation without weights or a transform cannot be stored.")
    digest = hashlib.sha256(payload).hexdigest()
    name = f"{base.name}+{tag}-{digest[:8]}"[:100]
    with transaction.atomic():
        base.derived.filter(is_active=False).delete()
        space, _ = EmbeddingSpace.objects.update_or_create(
            name=name,
            defaults={
                "base": base,
                "dimension": int(dimension),
                "report": report,
                "encoder": {
                    "BASE_SPACE": base.name,
                    "BASE_ENCODER": base.encoder,
                    **learned.encoder,
                },
            },
        )
        space.embeddings.all().delete()
        if learned.weights is not None:
            SpaceWeights.objects.update_or_create(
                space=space, defaults={"data": learned.weights, "sha256": digest}
            )
        if learned.vectors is not None:
            from visual_search.models_registry import get_product_model

            existing = set(
                get_product_model()
                ._default_manager.filter(pk__in={row[0] for row in rows})
                .values_list("pk", flat=True)
            )
            ProductEmbedding.objects.bulk_create(
                [
                    ProductEmbedding(
                        product_id=row[0],
                        space=space,
                        image_key=row[1],
                        embedding=vector,
                        content_hash="derived",
                        status=EmbeddingStatus.READY,
                    )
                    for row, vector in zip(rows, learned.vectors, strict=True)
                    if row[0] in existing  # not deleted while the adaptation ran
                ],
                batch_size=1000,
            )
    _transforms.pop(name, None)
    _encoders.pop(name, None)
    return space


def _catch_up(
    space: EmbeddingSpace,
    base: EmbeddingSpace,
    rows: list[tuple[Any, ...]],
    progress: Callable[[str], None],
) -> None:
    """Products whose images changed in the base space while the model was learned (added,
    replaced or removed since the snapshot ``rows``) encoded again in the new space; the
    pipeline writes later changes to it itself, as to every adapted space."""
    then = {(row[0], row[1], row[3]) for row in rows}
    now = set(
        ProductEmbedding.objects.filter(space=base, status=EmbeddingStatus.READY).values_list(
            "product_id", "image_key", "content_hash"
        )
    )
    changed = {product for product, _, _ in then ^ now}
    if changed:
        progress(f"{len(changed)} products changed while learning")
        _encode_catalogue(space, changed, progress)


def _encode_catalogue(
    space: EmbeddingSpace, product_ids: set[Any], progress: Callable[[str], None]
) -> None:
    """These products encoded again, through the pipeline, by the new model."""
    from visual_search.pipeline import embed_products

    products = sorted(product_ids, key=str)
    encoder = space_encoder(space)
    chunk = 32
    for start in range(0, len(products), chunk):
        embed_products(products[start : start + chunk], encoder=encoder, force=True)
        progress(f"encoded {min(start + chunk, len(products))}/{len(products)} products again")


def switch(space: EmbeddingSpace | None) -> None:
    """Make ``space`` the active one for its base, or (None) go back to the base space."""
    base = get_current_space()
    with transaction.atomic():
        EmbeddingSpace.objects.filter(base=base, is_active=True).update(is_active=False)
        if space is not None:
            EmbeddingSpace.objects.filter(pk=space.pk).update(is_active=True)
    forget_spaces()


def derived_spaces(base: EmbeddingSpace) -> list[EmbeddingSpace]:
    return list(base.derived.all())
