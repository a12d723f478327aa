"""Test settings: the demo shop (integer product keys, a gallery model) plus a third-party app."""

import os
import tempfile
from pathlib import Path

from shop_demo.settings import *  # noqa: F403

INSTALLED_APPS = [*INSTALLED_APPS, "tests.thirdparty"]  # noqa: F405

MEDIA_ROOT = Path(
    os.environ.get("VISUAL_SEARCH_TEST_MEDIA") or tempfile.mkdtemp(prefix="vs-media-")
)
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
VISUAL_SEARCH["ENCODER"]["THREADS"] = 1  # noqa: F405 - the worker process uses the other core
VISUAL_SEARCH["CELERY"] = {"MAX_RETRIES": 2}  # noqa: F405
CELERY_BROKER_CONNECTION_TIMEOUT = 2
