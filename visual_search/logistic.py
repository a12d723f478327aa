"""A small logistic regression (Newton's method): the match confidence and the look's box
scores each have a handful of features, too few to need a machine-learning library."""

from __future__ import annotations

from typing import Any

import numpy as np


def fit(
    features: np.ndarray,
    outcomes: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    l2: float = 1e-3,
) -> dict[str, Any]:
    """{"coef": [...], "intercept": b}: weighted, with a light L2 penalty so that separable
    data still converges."""
    x = np.concatenate([np.atleast_2d(features), np.ones((len(features), 1))], axis=1)
    x = x.astype(np.float64)
    y = outcomes.astype(np.float64)
    v = np.ones(len(y)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = np.zeros(x.shape[1])
    for _ in range(50):
        p = 1 / (1 + np.exp(-(x @ w)))
        gradient = x.T @ (v * (p - y)) + l2 * w
        hessian = (x * (v * p * (1 - p))[:, None]).T @ x + l2 * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return {"coef": w[:-1].tolist(), "intercept": float(w[-1])}


def probability(model: dict[str, Any], features: np.ndarray) -> np.ndarray:
    z = np.atleast_2d(features) @ np.asarray(model["coef"]) + model["intercept"]
    return 1 / (1 + np.exp(-z))
