"""Match confidence from held-out images: fitted, ranked and thresholded as documented."""

from __future__ import annotations

import numpy as np

from visual_search import calibration


def _clusters(rng, products=12, per_product=6, spread=0.35, dims=16):
    centres = rng.normal(size=(products, dims))
    vectors = np.repeat(centres, per_product, axis=0) + spread * rng.normal(
        size=(products * per_product, dims)
    )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, np.repeat(np.arange(products), per_product).astype(str)


def test_strangers_are_the_held_out_images_with_their_own_product_left_out():
    rng = np.random.default_rng(0)
    vectors, labels = _clusters(rng)
    queries, gallery = vectors[::6], np.delete(vectors, np.s_[::6], axis=0)
    features, outcomes = calibration.matches_and_strangers(
        queries, labels[::6], gallery, np.delete(labels, np.s_[::6])
    )
    half = len(queries)
    assert features.shape == (2 * half, 2) and not outcomes[half:].any()
    assert outcomes[:half].mean() > 0.8  # well separated clusters: found
    # A stranger's best score is lower than a found product's, on average.
    assert features[:half, 0].mean() > features[half:, 0].mean()


def test_calibrated_confidence_separates_matches_from_strangers():
    rng = np.random.default_rng(1)
    vectors, labels = _clusters(rng)
    held = np.zeros(len(labels), dtype=bool)
    held[5::6] = True
    fitted = calibration.calibrate(vectors[held], labels[held], vectors[~held], labels[~held])
    assert fitted["coef"][0] > 0 and fitted["coef"][1] > 0  # higher score, wider margin: surer
    assert 0 < fitted["coverage_at_90_precision"] <= 1
    assert fitted["threshold_for_90_precision"] is not None
    sure, unsure = calibration.result_confidences(fitted, [0.9, 0.5, 0.45])[:2]
    assert 0 <= unsure < 0.5 < sure <= 1


def test_photos_of_products_left_out_calibrate_as_strangers_weighing_as_much_as_matches():
    rng = np.random.default_rng(2)
    vectors, labels = _clusters(rng, products=16)
    outside = np.isin(labels, ["0", "1", "2", "3"])  # 24 photos of 4 products not sold
    held = np.zeros(len(labels), dtype=bool)
    held[5::6] = True
    queries, gallery = held & ~outside, ~held & ~outside
    features, outcomes = calibration.matches_and_strangers(
        vectors[queries], labels[queries], vectors[gallery], labels[gallery], vectors[outside]
    )
    assert len(outcomes) == queries.sum() + outside.sum() and not outcomes[12:].any()
    fitted = calibration.calibrate(
        vectors[queries], labels[queries], vectors[gallery], labels[gallery], vectors[outside]
    )
    assert fitted["strangers"] == 24 and fitted["held_out_queries"] == 12
    # Twice as many strangers as matches: unweighted, the intercept would lean to "no".
    unweighted = calibration.fit(features, outcomes)
    assert fitted["intercept"] > unweighted["intercept"]


def test_precision_coverage_counts_answered_strangers_as_wrong():
    confidence = np.array([0.9, 0.8, 0.7, 0.6])
    outcomes = np.array([True, False, True, False])
    in_catalogue = np.array([True, False, True, True])
    rows = {
        r["threshold"]: r
        for r in calibration.precision_coverage(confidence, outcomes, in_catalogue)
    }
    assert rows[0.9] == {"threshold": 0.9, "precision": 1.0, "coverage": 1 / 3}
    assert rows[0.7]["precision"] == 2 / 3 and rows[0.7]["coverage"] == 2 / 3
    assert calibration.coverage_at(list(rows.values()), 0.9)["threshold"] == 0.9


def test_no_calibration_means_no_confidence():
    assert calibration.result_confidences(None, [0.9, 0.8]) == [None, None]
