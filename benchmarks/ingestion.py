"""Ingestion through the real task path: products embedded per second by one Celery worker.

Creates the catalogue (one product per class of a grocery-layout folder, its studio image plus
the photos of --gallery splits), then, for each --chunk size (products per task), queues every
product with services.queue_products, the function behind the admin action, the API and
`visual_search_reindex --queue`, and times one real `celery worker` process (prefork, one
child, a real Redis) until every image row is ready.

    python benchmarks/ingestion.py --data ../shared/data/grocery --gallery train --chunks 1,8,32
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import common


def main() -> None:
    parser = common.argument_parser(__doc__)
    parser.add_argument(
        "--gallery", default="train", help="splits whose photos join the studio image"
    )
    parser.add_argument(
        "--chunks", default="1,8,32", help="products per task, compared side by side"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--output", default="ingestion")
    args = parser.parse_args()

    common.setup_django("ingestion", fresh=True)
    from django.conf import settings
    from django.db import connection
    from retrieval import build_catalogue

    from shop_demo.catalog.models import ProductImage
    from visual_search import embedded, services
    from visual_search.conf import vs_settings
    from visual_search.models import ProductEmbedding

    products = build_catalogue(args.data, args.gallery.split(","))
    pks = [p.pk for p in products.values()]
    images = len(pks) + ProductImage.objects.count()
    print(f"{len(pks)} products, {images} images")

    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "benchmarks.settings",
        "DATABASE_URL": embedded.url_from_config(connection.settings_dict),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "VISUAL_SEARCH_BENCH_MEDIA": str(settings.MEDIA_ROOT),
        "VISUAL_SEARCH_THREADS": str(args.threads),
    }
    rows = []
    for chunk in [int(c) for c in args.chunks.split(",")]:
        ProductEmbedding.objects.all().delete()
        worker = subprocess.Popen(
            embedded.worker_command("shop_demo", "--purge"),
            cwd=common.REPO,
            env=env,
            start_new_session=True,
        )
        try:
            services.embed_many(pks[:1])  # the space and index exist before timing starts
            ProductEmbedding.objects.all().delete()
            settings.VISUAL_SEARCH["ADMIN"] = {
                **settings.VISUAL_SEARCH.get("ADMIN", {}),
                "CHUNK_SIZE": chunk,
            }
            vs_settings.reload()
            time.sleep(3)  # the worker is up and has loaded nothing yet: model loading is timed
            started = time.monotonic()
            _, tasks = services.queue_products(pks)
            while ProductEmbedding.objects.filter(status="ready").count() < images:
                if worker.poll() is not None:
                    raise SystemExit("the worker died")
                time.sleep(0.2)
            seconds = time.monotonic() - started
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(60)
        row = {
            "products_per_task": chunk,
            "tasks": tasks,
            "images": images,
            "seconds": round(seconds, 1),
            "products_per_s": round(len(pks) / seconds, 2),
            "images_per_s": round(images / seconds, 1),
        }
        rows.append(row)
        print(common.table([row], list(row)))
    print("\n" + common.table(rows, list(rows[0])))
    common.save(
        args.output,
        {
            "products": len(pks),
            "images": images,
            "threads": args.threads,
            "note": "includes the worker child loading the model once",
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()
