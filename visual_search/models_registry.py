"""The shop's product model, named by ``VISUAL_SEARCH_PRODUCT_MODEL`` (like get_user_model)."""

from __future__ import annotations

from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.db import models

from visual_search.conf import vs_settings


def product_model_label() -> str:
    """The setting's value; models.py declares its foreign keys with it, so a shop that has not
    set it learns so at start-up instead of from ForeignKey(None)'s TypeError."""
    label = vs_settings.PRODUCT_MODEL
    if not label:
        raise ImproperlyConfigured(
            "Set VISUAL_SEARCH_PRODUCT_MODEL = 'app_label.ModelName': the shop's product model "
            "that visual_search indexes."
        )
    return label


def get_product_model() -> type[models.Model]:
    label = product_model_label()
    try:
        return apps.get_model(label, require_ready=False)
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"VISUAL_SEARCH_PRODUCT_MODEL must be of the form 'app_label.ModelName', not {label!r}."
        ) from exc
    except LookupError as exc:
        raise ImproperlyConfigured(
            f"VISUAL_SEARCH_PRODUCT_MODEL refers to model {label!r}, which is not installed."
        ) from exc
