"""Benchmark settings: the demo shop's, on a database of their own (never the demo's data)."""

import os
import tempfile
from pathlib import Path

from shop_demo.settings import *  # noqa: F403

DATABASES["default"]["NAME"] = os.environ.get("VISUAL_SEARCH_BENCH_DB", "visual_search_bench")  # noqa: F405
MEDIA_ROOT = Path(
    os.environ.get("VISUAL_SEARCH_BENCH_MEDIA") or tempfile.mkdtemp(prefix="vs-bench-")
)
VISUAL_SEARCH["AUTO_EMBED"] = False  # noqa: F405 - the benchmarks embed explicitly
LOGGING = {"version": 1, "disable_existing_loggers": False}
# The API benchmark measures the server, not the per-client throttle a shop would keep on.
_api = VISUAL_SEARCH.get("API", {})  # noqa: F405
VISUAL_SEARCH["API"] = {**_api, "THROTTLE_RATES": {"search": None, "similar": None}}  # noqa: F405
