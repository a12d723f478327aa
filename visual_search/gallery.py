"""Where a product's images are, as configured by ``VISUAL_SEARCH["PRODUCT_IMAGES"]``.

The setting is either the name of a file/image field on the product, or a dotted path to a
callable ``f(product)`` that returns the product's gallery. A gallery item may be a Django
``File``/``FieldFile`` (keyed by its storage name), a filesystem path (keyed by the path), or a
``(key, source)`` pair where source is anything ``images.load_image`` accepts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.core.exceptions import FieldDoesNotExist, ImproperlyConfigured
from django.core.files import File
from django.db import models
from django.utils.module_loading import import_string

from visual_search.conf import vs_settings
from visual_search.models_registry import get_product_model


@dataclass(frozen=True)
class GalleryImage:
    key: str
    source: Any


def product_images(product: models.Model) -> list[GalleryImage]:
    """The product's gallery, de-duplicated by key, empty files left out."""
    seen: dict[str, GalleryImage] = {}
    for item in _gallery_function()(product) or ():
        image = _as_gallery_image(item)
        if image is not None and image.key not in seen:
            seen[image.key] = image
    return list(seen.values())


def _as_gallery_image(item: Any) -> GalleryImage | None:
    if isinstance(item, GalleryImage):
        return item
    if isinstance(item, tuple) and len(item) == 2:
        return GalleryImage(str(item[0]), item[1])
    if isinstance(item, File):
        return GalleryImage(item.name, item) if item.name else None
    if isinstance(item, (str, os.PathLike)):
        return GalleryImage(os.fspath(item), item)
    raise ImproperlyConfigured(
        "A product gallery item must be a File, a path or a (key, source) pair, "
        f"not {type(item).__name__}."
    )


def _gallery_function() -> Callable[[models.Model], Iterable[Any]]:
    return _resolve(vs_settings.PRODUCT_IMAGES)


@lru_cache(maxsize=8)
def _resolve(spec: str) -> Callable[[models.Model], Iterable[Any]]:
    if "." in spec:
        return import_string(spec)
    get_product_model()._meta.get_field(spec)  # raises FieldDoesNotExist early

    def field_images(product: models.Model) -> list[Any]:
        return [getattr(product, spec)]

    return field_images


def check_gallery_setting() -> str | None:
    """A description of what is wrong with PRODUCT_IMAGES, or None."""
    spec = vs_settings.PRODUCT_IMAGES
    if not isinstance(spec, str) or not spec:
        return "VISUAL_SEARCH['PRODUCT_IMAGES'] must be a field name or a dotted path."
    if "." in spec:
        try:
            func = import_string(spec)
        except ImportError as exc:
            return f"VISUAL_SEARCH['PRODUCT_IMAGES'] = {spec!r} cannot be imported: {exc}"
        if not callable(func):
            return f"VISUAL_SEARCH['PRODUCT_IMAGES'] = {spec!r} is not callable."
        return None
    model = get_product_model()
    try:
        field = model._meta.get_field(spec)
    except FieldDoesNotExist:
        return f"{model._meta.label} has no field {spec!r} (VISUAL_SEARCH['PRODUCT_IMAGES'])."
    if not isinstance(field, models.FileField):
        return f"{model._meta.label}.{spec} is not a FileField or ImageField."
    return None
