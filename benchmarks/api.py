"""Photo search end to end through the HTTP API (multipart upload -> JSON results) at scale.

Loads N products with synthetic 1280-d embeddings (as scale.py) plus the real grocery products
with their studio images, serves the demo shop with gunicorn, and posts real validation photos
to /api/visual-search/search/: p50/p99 latency with one client, then requests per second with
several concurrent clients.

    python benchmarks/api.py --products 100000 --clients 4
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import common


def post_photo(url: str, photo: bytes) -> float:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + photo
        + f"\r\n--{boundary}--\r\n".encode()
    )
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}")
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=100, help="sequential requests for latency")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30, help="duration of the throughput test")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--output", default="")
    args = parser.parse_args()

    common.setup_django("api", fresh=True)
    from django.conf import settings
    from django.core.files import File
    from django.db import connection
    from retrieval import read_classes, read_split
    from scale import load

    from shop_demo.catalog.models import Product
    from visual_search import embedded, services

    load(args.products, max(50, args.products // 20), seed=1)
    first = Product.objects.count() + 1
    for offset, entry in enumerate(read_classes(args.data)):
        product = Product(pk=first + offset, name=entry["name"], slug=entry["name"].lower())
        with open(args.data / entry["iconic"], "rb") as handle:
            product.image.save(Path(entry["iconic"]).name, File(handle))
    services.reindex("missing", inline=True)
    from visual_search.indexing import ensure_index
    from visual_search.spaces import get_current_space

    print(f"index ready in {ensure_index(get_current_space()):.1f} s")
    photos = [(args.data / p).read_bytes() for p, _ in read_split(args.data, "val")]

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
        "DJANGO_DEBUG": "0",
        "DATABASE_URL": embedded.url_from_config(connection.settings_dict),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "VISUAL_SEARCH_BENCH_MEDIA": str(settings.MEDIA_ROOT),
        "VISUAL_SEARCH_THREADS": "1",
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "shop_demo.wsgi:application",
            "--bind",
            f"127.0.0.1:{args.port}",
            "--workers",
            str(args.workers),
            "--log-level",
            "warning",
        ],
        cwd=common.REPO,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{args.port}/api/visual-search/search/?k=10"
    try:
        deadline = time.monotonic() + 120
        while True:  # warm every worker (model load) before measuring
            try:
                for photo in photos[: args.workers * 4]:
                    post_photo(url, photo)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(1)
        latencies = sorted(post_photo(url, photos[i % len(photos)]) for i in range(args.requests))
        done, stop = [], time.monotonic() + args.seconds

        def client(offset: int) -> None:
            i = offset
            while time.monotonic() < stop:
                done.append(post_photo(url, photos[i % len(photos)]))
                i += args.clients

        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    row = {
        "products": Product.objects.count(),
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "clients": args.clients,
        "requests_per_s": len(done) / elapsed,
        "concurrent_p50_ms": statistics.median(done),
    }
    print(common.table([row], list(row)))
    common.save(args.output or f"api-{args.products}", {"workers": args.workers, "results": [row]})


if __name__ == "__main__":
    main()
