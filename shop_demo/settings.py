"""Settings of the demo shop. Production values come from the environment.

With no DATABASE_URL / CELERY_BROKER_URL, an embedded PostgreSQL (+pgvector) and Redis are
started in VISUAL_SEARCH_DATA_DIR (default: .devdata/ in the repository).
"""

import os
from pathlib import Path
from typing import Any

from visual_search import embedded

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("VISUAL_SEARCH_DATA_DIR", BASE_DIR / ".devdata"))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-demo-key-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "1") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",")
CSRF_TRUSTED_ORIGINS = [
    o for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "shop_demo.catalog",
    "visual_search",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "shop_demo.urls"
WSGI_APPLICATION = "shop_demo.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "shop_demo.catalog.context.indexing",
            ],
        },
    },
]

DATABASES = {"default": embedded.database_config(embedded.database_url(DATA_DIR), CONN_MAX_AGE=60)}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CELERY_BROKER_URL = embedded.broker_url(DATA_DIR)
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", DATA_DIR / "static"))
MEDIA_URL = "media/"
MEDIA_ROOT = Path(os.environ.get("DJANGO_MEDIA_ROOT", DATA_DIR / "media"))

VISUAL_SEARCH_PRODUCT_MODEL = "catalog.Product"
VISUAL_SEARCH: dict[str, Any] = {
    "PRODUCT_IMAGES": "shop_demo.catalog.gallery.product_images",
    "IMAGE_MODELS": {"catalog.ProductImage": "product"},
    "DISPLAY_IMAGE": "image",
    "API": {
        "FILTERS": {
            "category": "category__slug",
            "in_stock": "in_stock",
            "min_price": "price__gte",
            "max_price": "price__lte",
        },
    },
    "ENCODER": {
        "RUNTIME": os.environ.get("VISUAL_SEARCH_RUNTIME", "onnx"),
        "THREADS": int(os.environ.get("VISUAL_SEARCH_THREADS", "2")),
        "CACHE_DIR": os.environ.get("VISUAL_SEARCH_CACHE_DIR"),
    },
    "CELERY": {"QUEUE": os.environ.get("VISUAL_SEARCH_QUEUE") or None},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"visual_search": {"handlers": ["console"], "level": "INFO"}},
}
