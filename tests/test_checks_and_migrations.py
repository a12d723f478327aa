"""System checks with ids for each misconfiguration, and migrations that never name a shop model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connections
from django.test import override_settings

import visual_search
from visual_search import checks

MIGRATIONS = Path(visual_search.__file__).parent / "migrations"


def ids(messages):
    return sorted({m.id for m in messages})


def test_app_migrations_never_contain_a_literal_product_label():
    text = "\n".join(p.read_text() for p in MIGRATIONS.glob("0*.py"))
    assert "settings.VISUAL_SEARCH_PRODUCT_MODEL" in text
    assert "swappable_dependency(settings.VISUAL_SEARCH_PRODUCT_MODEL)" in text
    for label in ("catalog", "thirdparty", "shop"):
        assert not re.search(rf"['\"]{label}\.", text, re.IGNORECASE), label


@pytest.mark.django_db
def test_makemigrations_has_nothing_to_write():
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


def test_default_configuration_passes():
    messages = [
        *checks.check_product_model(),
        *checks.check_gallery(),
        *checks.check_image_models(),
        *checks.check_database_engine(),
        *checks.check_encoder(),
        *checks.check_query_settings(),
        *checks.check_adaptation_settings(),
        *checks.check_look_settings(),
    ]
    assert messages == []


@override_settings(VISUAL_SEARCH_PRODUCT_MODEL="shop.Nothing")
def test_unknown_product_model():
    (error,) = checks.check_product_model()
    assert error.id == "visual_search.E001" and "not installed" in error.msg


@override_settings(VISUAL_SEARCH_PRODUCT_MODEL="no-dot")
def test_malformed_product_model():
    assert ids(checks.check_product_model()) == ["visual_search.E001"]


def test_missing_product_model_setting_says_what_to_set(tmp_path):
    # The app's foreign keys need the setting while its models load, before any system check.
    (tmp_path / "bare_settings.py").write_text(
        'SECRET_KEY = "x"\n'
        'INSTALLED_APPS = ["django.contrib.contenttypes", "visual_search"]\n'
        'DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}\n'
    )
    run = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env={
            "PYTHONPATH": os.pathsep.join(
                [str(tmp_path), str(Path(visual_search.__file__).parents[1])]
            ),
            "DJANGO_SETTINGS_MODULE": "bare_settings",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "ImproperlyConfigured: Set VISUAL_SEARCH_PRODUCT_MODEL = 'app_label.ModelName'" in (
        run.stderr
    )


@pytest.mark.parametrize(
    "images,fragment",
    [
        ("picture", "has no field"),
        ("name", "not a FileField"),
        ("nowhere.gallery", "cannot be imported"),
    ],
)
def test_bad_image_setting(settings, images, fragment):
    settings.VISUAL_SEARCH = {**settings.VISUAL_SEARCH, "PRODUCT_IMAGES": images}
    (error,) = checks.check_gallery()
    assert error.id == "visual_search.E002" and fragment in error.msg


def test_bad_image_models(settings):
    settings.VISUAL_SEARCH = {**settings.VISUAL_SEARCH, "IMAGE_MODELS": {"nope.Image": "product"}}
    assert ids(checks.check_image_models()) == ["visual_search.E003"]


def test_database_not_postgresql(monkeypatch):
    monkeypatch.setattr(connections["default"], "vendor", "sqlite")
    (error,) = checks.check_database_engine()
    assert error.id == "visual_search.E004" and "sqlite" in error.msg


@pytest.mark.parametrize(
    "encoder,expected",
    [
        ({"CLASS": "nowhere.Encoder"}, "E005"),
        ({"RUNTIME": "tpu"}, "E006"),
        ({"MODEL": "tf_efficientnet_lite3"}, None),  # no packaged weights: caught on load (E011)
        ({"WEIGHTS": "/no/such/checkpoint.pth"}, "E008"),
    ],
)
def test_encoder_settings(settings, encoder, expected):
    settings.VISUAL_SEARCH = {
        **settings.VISUAL_SEARCH,
        "ENCODER": {**settings.VISUAL_SEARCH["ENCODER"], **encoder},
    }
    found = ids(checks.check_encoder())
    assert found == ([f"visual_search.{expected}"] if expected else [])


def test_encoder_dependencies_missing(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxruntime" else real(name, *a),
    )
    with override_settings(VISUAL_SEARCH={"ENCODER": {"RUNTIME": "onnx"}}):
        (error,) = checks.check_encoder()
    assert error.id == "visual_search.E007" and "onnxruntime" in error.msg


def test_encoder_that_cannot_load_fails_the_deploy_check(settings):
    settings.VISUAL_SEARCH = {
        **settings.VISUAL_SEARCH,
        "ENCODER": {**settings.VISUAL_SEARCH["ENCODER"], "MODEL": "tf_efficientnet_lite3"},
    }
    (error,) = checks.check_encoder_loads()
    assert error.id == "visual_search.E011" and "packaged weights" in error.msg


def test_query_settings(settings):
    settings.VISUAL_SEARCH = {
        **settings.VISUAL_SEARCH,
        "QUERY": {"ITERATIVE_SCAN": "sometimes", "EF_SEARCH": 0},
    }
    messages = checks.check_query_settings()
    assert ids(messages) == ["visual_search.E009"] and len(messages) == 2


@pytest.mark.django_db
def test_pgvector_is_available_and_missing_extension_is_reported(monkeypatch):
    assert checks.check_pgvector(databases=["default"]) == []
    monkeypatch.setattr(checks, "PGVECTOR_EXTENSION", "vector_that_does_not_exist")
    (error,) = checks.check_pgvector(databases=["default"])
    assert error.id == "visual_search.E010"


def test_checks_run_through_manage_py(settings):
    settings.VISUAL_SEARCH = {**settings.VISUAL_SEARCH, "PRODUCT_IMAGES": "picture"}
    from django.core.management.base import SystemCheckError

    with pytest.raises(SystemCheckError, match="visual_search.E002"):
        call_command("check")


def test_confidence_threshold_and_adaptation_settings(settings):
    settings.VISUAL_SEARCH = {
        **settings.VISUAL_SEARCH,
        "QUERY": {"MIN_CONFIDENCE": 1.5},
        "ADAPTATION": {
            "METHOD": "magic",
            "EPOCHS": 0,
            "COMPOSITES": -1,
            "HELD_OUT": 1,
            "STRANGERS": -0.1,
            "UNLEARNED_BONUS": "auto",
        },
    }
    (query,) = checks.check_query_settings()
    assert query.id == "visual_search.E009" and "MIN_CONFIDENCE" in query.msg
    messages = checks.check_adaptation_settings()
    assert ids(messages) == ["visual_search.E012"] and len(messages) == 6
    assert "METHOD" in messages[0].msg and "EPOCHS" in messages[1].msg
    assert "COMPOSITES" in messages[2].msg and "-1" in messages[2].msg
    assert "UNLEARNED_BONUS" in messages[5].msg and "'auto'" in messages[5].msg
    settings.VISUAL_SEARCH = {**settings.VISUAL_SEARCH, "ADAPTATION": {}, "QUERY": {}}
    assert checks.check_adaptation_settings() == [] and checks.check_query_settings() == []


def test_look_settings(settings):
    settings.VISUAL_SEARCH = {
        **settings.VISUAL_SEARCH,
        "LOOK": {
            "DETECTOR": "shop.detectors.Missing",
            "MIN_OBJECTNESS": 1.5,
            "OVERLAP_IOU": 0,
            "MAX_SIDE": 10,
            "ADAPTED_SPACE": "yes",
            "OBJECTNESS": {"coef": [1.0, 2.0], "intercept": 0},
        },
    }
    messages = checks.check_look_settings()
    assert ids(messages) == ["visual_search.E013"] and len(messages) == 6
    assert [m.msg.split()[1] for m in messages] == [
        "DETECTOR",
        "MIN_OBJECTNESS",
        "OVERLAP_IOU",
        "MAX_SIDE",
        "ADAPTED_SPACE",
        "OBJECTNESS",
    ]
    settings.VISUAL_SEARCH = {**settings.VISUAL_SEARCH, "LOOK": {}}
    assert checks.check_look_settings() == []


@pytest.mark.parametrize(
    "field, problem",
    [
        ("nope", "is not a field of catalog.Product"),
        ("gallery", "must be a concrete field"),
        ("price", "DecimalField is not"),
        ("category", None),
        ("in_stock", None),
    ],
)
def test_segment_settings(settings, field, problem):
    settings.VISUAL_SEARCH = {**settings.VISUAL_SEARCH, "SEGMENTS": {"FIELD": field}}
    messages = checks.check_segment_settings()
    if problem is None:
        assert messages == []
    else:
        (message,) = messages
        assert message.id == "visual_search.E014" and problem in message.msg


def test_segment_min_rows_must_be_a_positive_integer(settings):
    settings.VISUAL_SEARCH = {**settings.VISUAL_SEARCH, "SEGMENTS": {"MIN_ROWS": 0}}
    (message,) = checks.check_segment_settings()
    assert message.id == "visual_search.E014" and "MIN_ROWS" in message.msg
