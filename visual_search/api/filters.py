"""The shop's declared filters: query parameters mapped to lookups on its product queryset."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import FieldDoesNotExist, FieldError, ValidationError
from django.db import models
from django.utils.module_loading import import_string
from django.utils.translation import gettext
from rest_framework.exceptions import ValidationError as ApiValidationError
from rest_framework.request import Request

from visual_search.conf import vs_settings
from visual_search.models_registry import get_product_model

BOOLEAN = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def filtered_queryset(
    request: Request, params: Mapping[str, Any], reserved: set[str]
) -> models.QuerySet:
    """The shop's queryset, narrowed by the declared filters; unknown parameters are a 400."""
    queryset = get_product_model()._default_manager.all()
    hook = vs_settings.API["QUERYSET_HOOK"]
    if hook:
        queryset = import_string(hook)(request, queryset)
    declared: dict[str, str] = vs_settings.API["FILTERS"]
    unknown = sorted(set(params) - reserved - set(declared) - {"format"})
    if unknown:
        allowed = ", ".join(sorted(declared)) or gettext("none")
        raise ApiValidationError(
            {
                "detail": gettext(
                    "Unknown parameter(s): %(unknown)s. Filters allowed: %(allowed)s."
                )
                % {"unknown": ", ".join(unknown), "allowed": allowed},
                "code": "unknown_parameter",
            }
        )
    lookups = {}
    for name, lookup in declared.items():
        if name in params:
            value = params[name]
            if lookup.endswith("__in"):
                value = [v for v in str(value).split(",") if v]
            elif _is_boolean(lookup) and str(value).lower() in BOOLEAN:
                value = BOOLEAN[str(value).lower()]
            lookups[lookup] = value
    try:
        queryset = queryset.filter(**lookups)  # bad values ("abc" for a price) raise here
    except (ValidationError, ValueError, TypeError, FieldError) as exc:
        raise ApiValidationError(
            {
                "detail": gettext("Invalid filter value: %(error)s") % {"error": exc},
                "code": "invalid_filter",
            }
        )
    return queryset


def _is_boolean(lookup: str) -> bool:
    if lookup.endswith("__isnull"):
        return True
    try:
        field = get_product_model()._meta.get_field(lookup.split("__")[0])
    except FieldDoesNotExist:
        return False
    return isinstance(field, models.BooleanField)
