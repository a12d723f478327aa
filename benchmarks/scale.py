"""Query latency and recall at scale: synthetic embeddings that behave like real ones
(clustered, with a decaying spectrum; uniform random vectors make HNSW look broken), 1280-dim
halfvec, N products. Measures the HNSW build time and index size, then p50/p99 latency of
visual_search.services.similar_products through the service layer, with and without a shop
filter matching ~1.6 % of products (one category; filtered while scanning the whole index, and
through that category's own index: SEGMENTS["FIELD"] = "category"), recall@10 against an exact
scan, and an ef_search sweep.

    python benchmarks/scale.py --products 100000
    python benchmarks/scale.py --products 1000000 --queries 100     # about an hour on 2 cores
"""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

import common

DIM = 1280
CATEGORIES = 64  # one category is ~1.6 % of the products: the "selective filter"


def synthetic(n: int, rng, clusters: int, chunk: int):
    """Yield float16 unit vectors in chunks: cluster centres with a power-law spectrum plus noise."""
    import numpy as np

    scale = (np.arange(1, DIM + 1) ** -0.6).astype(np.float32)
    centres = rng.standard_normal((clusters, DIM)).astype(np.float32) * scale
    for start in range(0, n, chunk):
        size = min(chunk, n - start)
        members = rng.integers(0, clusters, size)
        vectors = (
            centres[members] + 0.7 * rng.standard_normal((size, DIM)).astype(np.float32) * scale
        )
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        yield start, vectors.astype(np.float16)


def load(n: int, clusters: int, seed: int) -> None:
    import numpy as np
    from django.db import connection
    from pgvector import HalfVector
    from pgvector.psycopg import register_vector

    from shop_demo.catalog.models import Category
    from visual_search.models import EmbeddingSpace
    from visual_search.spaces import current_space_name

    rng = np.random.default_rng(seed)
    Category.objects.bulk_create(Category(name=f"c{i}", slug=f"c{i}") for i in range(CATEGORIES))
    category_ids = list(Category.objects.order_by("pk").values_list("pk", flat=True))
    space = EmbeddingSpace.objects.create(name=current_space_name(), dimension=DIM)
    connection.ensure_connection()
    raw = connection.connection
    register_vector(raw)
    started = time.monotonic()
    with raw.cursor() as cursor:
        for start, vectors in synthetic(n, rng, clusters, 50_000):
            with cursor.copy(
                "COPY catalog_product (id, name, slug, description, price, category_id, "
                "in_stock, image) FROM STDIN"
            ) as copy:
                for i in range(start, start + len(vectors)):
                    copy.write_row(
                        (i + 1, f"p{i}", f"p{i}", "", 1, category_ids[i % CATEGORIES], True, "")
                    )
            with cursor.copy(
                "COPY visual_search_productembedding (product_id, space_id, image_key, "
                "content_hash, embedding, status, error, attempts, created_at, updated_at, "
                "segment) FROM STDIN WITH (FORMAT BINARY)"
            ) as copy:
                copy.set_types(
                    [
                        "int8",
                        "varchar",
                        "varchar",
                        "varchar",
                        "halfvec",
                        "varchar",
                        "text",
                        "int4",
                        "timestamptz",
                        "timestamptz",
                        "text",
                    ]
                )
                now = datetime.now(UTC)
                for i, vector in enumerate(vectors, start):
                    copy.write_row(
                        (
                            i + 1,
                            space.name,
                            "main",
                            "x",
                            HalfVector(vector),
                            "ready",
                            "",
                            0,
                            now,
                            now,
                            str(category_ids[i % CATEGORIES]),
                        )
                    )
            print(
                f"  loaded {start + len(vectors)}/{n} ({time.monotonic() - started:.0f} s)",
                flush=True,
            )
        cursor.execute("SELECT setval('catalog_product_id_seq', %s)", [n])
    raw.commit()
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE visual_search_productembedding")
        cursor.execute("ANALYZE catalog_product")


def set_shared_buffers(size: str) -> str:
    """Restart the embedded PostgreSQL with this shared_buffers; returns the previous value.

    The 128MB default holds a 100k-product index but not a 1M one (3.9 GiB): every graph step
    then copies pages from the OS cache. A shop's own server is tuned by its DBA instead.
    """
    import os
    import re

    from django.conf import settings
    from django.db import connection

    from visual_search import embedded

    if os.environ.get("DATABASE_URL"):
        raise SystemExit("--shared-buffers restarts the embedded PostgreSQL; set it on your server")
    if not re.fullmatch(r"\d+(kB|MB|GB)", size):
        raise SystemExit(f"--shared-buffers: a size like 8GB, not {size!r}")
    with connection.cursor() as cursor:
        cursor.execute("SHOW shared_buffers")
        previous = cursor.fetchone()[0]
        if previous == size:
            return previous
        cursor.execute(f"ALTER SYSTEM SET shared_buffers = '{size}'")
    connection.close()
    embedded.stop_postgres(settings.DATA_DIR)
    embedded.start_postgres(settings.DATA_DIR)
    return previous


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--clusters", type=int, default=0, help="default: products / 20")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef-search", default="20,40,100,200", help="values to sweep")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--m", type=int, default=0, help="HNSW m (default: the setting, 16)")
    parser.add_argument(
        "--ef-construction",
        type=int,
        default=0,
        help="HNSW ef_construction (default: the setting, 64)",
    )
    parser.add_argument(
        "--maintenance-work-mem",
        default="",
        help="for the index build (default: the HNSW setting, 1GB); 1M x 1280-d "
        "needs ~8GB to build in memory",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="keep the benchmark database of the previous run when it holds --products "
        "products and a valid index (the load is then not measured, nor the build without "
        "--rebuild)",
    )
    parser.add_argument(
        "--rebuild",
        action="store_true",
        help="with --reuse: build the space's index again with --m / --ef-construction "
        "(measured) on the same products; the category indexes are kept",
    )
    parser.add_argument(
        "--shared-buffers",
        default="",
        help="run with this PostgreSQL shared_buffers, e.g. 8GB (embedded server: set, restarted, "
        "and set back afterwards)",
    )
    parser.add_argument("--output", default="")
    args = parser.parse_args()
    if args.rebuild and not args.reuse:
        parser.error("--rebuild needs --reuse (without it every run builds the index)")

    common.setup_django("scale", fresh=not args.reuse)
    previous_buffers = set_shared_buffers(args.shared_buffers) if args.shared_buffers else None
    try:
        measure(args)
    finally:
        if previous_buffers:
            set_shared_buffers(previous_buffers)


def measure(args) -> None:
    from django.conf import settings

    hnsw = dict(settings.VISUAL_SEARCH.get("HNSW", {}))
    if args.maintenance_work_mem:
        hnsw["MAINTENANCE_WORK_MEM"] = args.maintenance_work_mem
    if args.m:
        hnsw["M"] = args.m
    if args.ef_construction:
        hnsw["EF_CONSTRUCTION"] = args.ef_construction
    settings.VISUAL_SEARCH["HNSW"] = hnsw
    settings.VISUAL_SEARCH["SEGMENTS"] = {"FIELD": "category", "MIN_ROWS": 1000}
    import numpy as np
    from django.db import connection

    from shop_demo.catalog.models import Category, Product
    from visual_search import services
    from visual_search.conf import vs_settings
    from visual_search.indexing import ensure_index, index_state, segment_indexes
    from visual_search.models import EmbeddingSpace
    from visual_search.segments import ensure_segment_indexes
    from visual_search.spaces import current_space_name

    vs_settings.reload()

    n = args.products
    space = EmbeddingSpace.objects.filter(name=current_space_name()).first()
    if args.reuse and not (
        space is not None and space.embeddings.count() == n and index_state(space.name).valid
    ):
        raise SystemExit(f"--reuse: the previous run's database does not hold {n} indexed products")
    if args.reuse and space.embeddings.filter(segment="").exists():
        # Filling the column now would move every row (and re-enter it in the graph).
        raise SystemExit("--reuse: the previous run's rows have no category segment; run again")
    load_seconds = build_seconds = None
    if args.reuse and args.rebuild:
        print(f"reusing the {n} products; building the HNSW index again...")
        build_seconds = round(ensure_index(space, rebuild=True), 1)
    elif args.reuse:
        print(f"reusing the {n} products and the index of the previous run")
    else:
        print(f"loading {n} products with synthetic {DIM}-d embeddings...")
        started = time.monotonic()
        load(n, args.clusters or max(50, n // 20), args.seed)
        load_seconds = round(time.monotonic() - started, 1)
        space = EmbeddingSpace.objects.get(name=current_space_name())
        print("building the HNSW index...")
        build_seconds = round(ensure_index(space), 1)
    print(f"building one HNSW index per category ({n // CATEGORIES} products each)...")
    started = time.monotonic()
    built = ensure_segment_indexes(
        space, progress=lambda value, rows, seconds: print(f"  category {value}: {seconds:.1f} s")
    )
    segment_seconds = round(time.monotonic() - started, 1)
    state = index_state(space.name)
    category_indexes = segment_indexes(space.name)
    segment_count = len(category_indexes)
    segment_bytes = sum(index.size_bytes for index in category_indexes)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (regexp_match(pg_get_indexdef(%s::regclass), 'WITH \\(([^)]*)\\)'))[1]",
            [state.name],
        )
        index_options = cursor.fetchone()[0]
        cursor.execute("SHOW shared_buffers")
        shared_buffers = cursor.fetchone()[0]
        cursor.execute("SELECT pg_total_relation_size('visual_search_productembedding')")
        table_bytes = cursor.fetchone()[0]
    print(
        f"HNSW ({index_options}) build {build_seconds} s, index "
        f"{state.size_bytes / 2**20:.0f} MiB, table {table_bytes / 2**20:.0f} MiB, "
        f"shared_buffers {shared_buffers}; {segment_count} category indexes "
        f"{segment_bytes / 2**20:.0f} MiB, built in {segment_seconds} s ({len(built)} checked)"
    )

    rng = np.random.default_rng(args.seed + 1)
    query_pks = [int(pk) for pk in rng.integers(1, n + 1, args.queries)]
    # The cache is warmed by other products than those measured: a query must not find the
    # exact pages it is timed on already in memory.
    warm_pks = [int(pk) for pk in rng.integers(1, n + 1, args.queries)]
    # The same category two ways: a filter the whole-space index scan applies (a join), and
    # one on the segment field itself, which that category's own index serves.
    filters = [
        ("none", None, "none"),
        ("category ~1.6%", Product.objects.filter(category__slug="c7"), "category ~1.6%"),
        (
            "category ~1.6%, own index",
            Product.objects.filter(category=Category.objects.get(slug="c7")),
            "category ~1.6%",
        ),
    ]

    def run(queryset, exact: bool, pks=query_pks) -> tuple[list[list[int]], list[float]]:
        with connection.cursor() as cursor:
            cursor.execute("SET enable_indexscan = %s", ["off" if exact else "on"])
        found, latencies = [], []
        for pk in pks:
            t = time.perf_counter()
            results = services.similar_products(pk, k=10, queryset=queryset)
            latencies.append((time.perf_counter() - t) * 1000)
            found.append([r.product.pk for r in results])
        with connection.cursor() as cursor:
            cursor.execute("RESET enable_indexscan")
        return found, latencies

    def recall(found: list[list[int]], truth: list[list[int]]) -> float:
        return float(
            np.mean(
                [len(set(f) & set(t)) / max(1, len(t)) for f, t in zip(found, truth, strict=True)]
            )
        )

    rows = []
    truths = {}
    for label, queryset, _ in filters[:2]:
        print(f"exact ground truth, filter {label}...")
        truths[label], exact_latency = run(queryset, exact=True)
        rows.append(
            {
                "filter": label,
                "search": "exact",
                "ef_search": "-",
                "p50_ms": percentile(exact_latency, 0.5),
                "p99_ms": percentile(exact_latency, 0.99),
                "recall@10": 1.0,
                "results": float(np.mean([len(t) for t in truths[label]])),
            }
        )
    for ef in [int(v) for v in args.ef_search.split(",")]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT set_config('hnsw.ef_search', %s, false)", [str(ef)])
        for label, queryset, truth in filters:
            run(queryset, exact=False, pks=warm_pks)
            found, latency = run(queryset, exact=False)
            row = {
                "filter": label,
                "search": "hnsw",
                "ef_search": ef,
                "p50_ms": percentile(latency, 0.5),
                "p99_ms": percentile(latency, 0.99),
                "recall@10": recall(found, truths[truth]),
                "results": float(np.mean([len(f) for f in found])),
            }
            rows.append(row)
            print(common.table([row], list(row)))
    with connection.cursor() as cursor:
        cursor.execute("RESET hnsw.ef_search")
    columns = ["filter", "search", "ef_search", "p50_ms", "p99_ms", "recall@10", "results"]
    print("\n" + common.table(rows, columns))
    common.save(
        args.output or f"scale-{n}",
        {
            "products": n,
            "maintenance_work_mem": args.maintenance_work_mem or "setting",
            "hnsw": index_options,
            "shared_buffers": shared_buffers,
            "reused": args.reuse,
            "rebuilt": args.rebuild,
            "dimension": DIM,
            "queries": args.queries,
            "load_seconds": load_seconds,
            "hnsw_build_seconds": build_seconds,
            "index_mib": round(state.size_bytes / 2**20, 1),
            "category_indexes": segment_count,
            "category_indexes_mib": round(segment_bytes / 2**20, 1),
            "category_indexes_seconds": segment_seconds,
            "table_mib": round(table_bytes / 2**20, 1),
            "results": rows,
        },
    )


if __name__ == "__main__":
    main()
