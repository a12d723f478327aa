"""benchmarks/targets.py: which of issue 6's targets a set of benchmark results meets."""

from __future__ import annotations

from benchmarks.targets import evaluate


def results(**rows):
    return {"n_queries": 296, "results": list(rows.values())}


def runs(r5: float, coverage: float | None = 0.82, adapt_s: float = 500.0):
    photo = results(
        base={"space": "base", "search": "hnsw", "R@1": 0.55, "R@5": 0.93, "p50_ms": 20.0},
        adapted={
            "space": "finetune",
            "search": "hnsw",
            "R@1": 0.905,
            "R@5": r5,
            "p50_ms": 25.0,
            "adapt_s": adapt_s,
        },
    )
    stranger_rows = {}
    if coverage is not None:
        stranger_rows["adapted"] = {
            "space": "finetune",
            "search": "hnsw",
            "cov@90%": coverage,
            "prec@thr": 0.93,
        }
    fine_tune = "fine-tune 2 stages, margin 0.0, 10 epochs, fine-tuned weight 1.0"
    studio = results(
        own={"gallery": "studio only", "transform": f"{fine_tune} (same products)", "R@1": 0.89},
        never={"gallery": "studio only", "transform": f"{fine_tune} (other products)", "R@1": 0.37},
        whitened={
            "gallery": "studio only",
            "transform": "whitening d=80 (other products)",
            "R@1": 0.9,
        },
    )
    return photo, results(**stranger_rows), studio


def by_name(targets):
    return {t.name: t for t in targets}


def test_each_target_against_its_figure():
    targets = by_name(evaluate(*runs(r5=0.99)))
    assert targets["photo search R@1 (studio + photos)"].met is True
    assert targets["photo search R@5 (studio + photos)"].met is True
    assert targets["studio image only, products learned from photos"].measured == 0.89
    # The whitening row of the same gallery is not the fine-tuned model's figure.
    assert targets["studio image only, products never learned"].measured == 0.37
    assert targets["studio image only, products never learned"].met is False
    assert targets["adaptation time"].met is True
    latency = targets["query latency (p50), adapted against base"]
    assert round(latency.measured, 6) == 25.0 and latency.met is False  # 25 ms against 20 ms
    assert targets["in-catalogue photos answered at 90 % precision"].met is True


def test_a_recall_that_rounds_to_the_goal_is_still_under_it():
    photo, strangers, studio = runs(r5=290 / 296, adapt_s=612.0)
    targets = by_name(evaluate(photo, strangers, studio))
    r5 = targets["photo search R@5 (studio + photos)"]
    assert r5.met is False and r5.row()["measured"] == "0.9797 (290 of 296)"
    assert targets["adaptation time"].met is False


def test_a_figure_the_runs_do_not_hold_is_not_measured():
    targets = by_name(evaluate(*runs(r5=0.99, coverage=None)))
    coverage = targets["in-catalogue photos answered at 90 % precision"]
    assert coverage.met is None and coverage.row()[""] == "not measured"


def test_never_learned_products_are_measured_as_the_app_searches_with_the_bonus():
    photo, strangers, studio = runs(r5=0.99)
    never = next(r for r in studio["results"] if r["transform"].endswith("(other products)"))
    never["bonus"] = 0.0
    studio["results"].append({**never, "bonus": 0.04, "R@1": 0.45})
    targets = by_name(evaluate(photo, strangers, studio))
    assert targets["studio image only, products never learned"].measured == 0.45
