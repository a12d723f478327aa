"""Nearest-neighbour SQL against the space's partial HNSW index (or a segment's, see
segments.py): one statement per search.

pgvector filters after the index scan, so a selective shop filter could leave fewer than k
rows. ``hnsw.iterative_scan`` makes the scan go on until the filter is satisfied; it and
``hnsw.ef_search`` are set for each query, on each new connection (``configure_session``,
free per query).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db import connection, models, transaction

from visual_search.conf import vs_settings
from visual_search.indexing import TABLE, index_predicate, quoted_table_and_pk, vector_expression
from visual_search.models import EmbeddingSpace, EmbeddingStatus
from visual_search.segments import queryset_segment
from visual_search.unlearned import bonus_of

# Rows fetched per wanted product on the first try: products often have several images.
OVERFETCH = 4
MAX_ROWS = 10_000
# Per space, the rows per wanted product its last crowded query needed. A fine-tuned space
# packs each product's images together, so its first rows are mostly the best product's:
# its queries start there rather than retrying from OVERFETCH every time.
_rows_per_product: dict[str, int] = {}
# Query images used for a product with a large gallery: its first ones (the main image first).
MAX_QUERY_IMAGES = 8


@dataclass(frozen=True)
class Neighbour:
    """A product found, by its best image: ``score`` ranks it (the similarity, plus the bonus
    of a product the space's model did not learn, unlearned.py); ``similarity`` is the cosine
    similarity alone."""

    product: models.Model
    image_key: str
    score: float
    similarity: float


def vector_literal(vector: Iterable[float]) -> str:
    return "[" + ",".join(f"{float(v):.6g}" for v in vector) + "]"


def session_settings() -> list[tuple[str, str]]:
    query = vs_settings.QUERY
    return [
        ("hnsw.ef_search", str(int(query["EF_SEARCH"]))),
        ("hnsw.iterative_scan", str(query["ITERATIVE_SCAN"])),
        ("hnsw.max_scan_tuples", str(int(query["MAX_SCAN_TUPLES"]))),
    ]


def configure_session(sender: Any, connection: Any, **kwargs: Any) -> None:
    """connection_created receiver: every query on this connection gets the HNSW settings.

    Behind a transaction-pooling proxy (PgBouncer), set them on the role instead:
    ``ALTER ROLE shop SET hnsw.iterative_scan = relaxed_order``.
    """
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT " + ", ".join("set_config(%s, %s, false)" for _ in session_settings()),
            [value for pair in session_settings() for value in pair],
        )


def nearest_products(
    space: EmbeddingSpace,
    *,
    k: int,
    vectors: np.ndarray | None = None,
    of_product: Any = None,
    queryset: models.QuerySet,
) -> list[Neighbour]:
    """The k products of ``queryset`` nearest to ``vectors`` or to product ``of_product``'s
    own ready vectors (itself excluded), each scored by its best (query, gallery) image pair;
    with ``vectors``, products the space's model did not learn get its bonus (unlearned.py).
    """
    dim = space.known_dimension
    expression = vector_expression(dim)
    params: list[Any] = []
    if of_product is not None:
        queries = (
            f"SELECT {expression} AS v FROM {TABLE} WHERE {index_predicate(space.name)} "
            f"AND product_id = %s ORDER BY id LIMIT {MAX_QUERY_IMAGES}"
        )
        params.append(of_product)
    elif vectors is not None:
        rows = np.atleast_2d(vectors)
        queries = " UNION ALL ".join([f"SELECT %s::halfvec({dim}) AS v"] * len(rows))
        params.extend(vector_literal(row) for row in rows)
    else:
        raise TypeError("nearest_products needs query vectors or a product.")

    where, where_params = _conditions(space, queryset, exclude_pk=of_product)
    # The bonus makes up for the gap between a shopper's photo and a studio shot that the
    # model never learned to bridge; a product's own images have no such gap to its neighbours.
    bonus = bonus_of(space) if of_product is None else 0.0

    model = queryset.model
    product_table, product_pk = quoted_table_and_pk(model)
    # The best pair per product (hits_sql), joined to the product rows in the same statement.
    sql = (
        f"WITH q AS MATERIALIZED ({queries}), "
        f"hits AS MATERIALIZED ({hits_sql(expression, where, bonus)}), "
        "best AS (SELECT DISTINCT ON (product_id) product_id, image_key, distance, ranked "
        "FROM hits ORDER BY product_id, ranked) "
        f"SELECT p.*, best.image_key AS vs_image_key, 1 - best.ranked AS vs_score, "
        "1 - best.distance AS vs_similarity, "
        "(SELECT count(*) FROM hits WHERE NOT lifted) AS vs_hits, "
        "(SELECT count(*) FROM q) AS vs_queries "
        f"FROM best JOIN {product_table} p ON p.{product_pk} = best.product_id "
        "ORDER BY best.ranked LIMIT %s"
    )
    per_product = _rows_per_product.get(space.name, OVERFETCH)
    limit = min(k * per_product, MAX_ROWS)
    while True:
        scans = hits_params(where_params, limit, bonus)
        found = list(model._default_manager.raw(sql, [*params, *scans, k]))
        fetched = found[0].vs_hits / max(1, found[0].vs_queries) if found else 0
        if len(found) >= k or fetched < limit or limit >= MAX_ROWS:
            break
        limit = min(limit * 4, MAX_ROWS)  # products with many images crowded the first rows
    if limit > k * per_product:
        _rows_per_product[space.name] = -(-limit // k)
    return [Neighbour(p, p.vs_image_key, float(p.vs_score), float(p.vs_similarity)) for p in found]


def hits_sql(expression: str, where: str, bonus: float, query_columns: str = "") -> str:
    """Per query vector (rows of ``q``, with ``v``), its nearest image rows: an index-ordered
    scan (LATERAL); MATERIALIZED by the caller and sorted at the end, because relaxed_order
    iterative scans may return rows slightly out of order. Rows are ``ranked`` by distance.
    With a ``bonus``, a second scan finds the nearest image of a product the space's model did
    not learn (a partial index holds them), ranked by its distance less the bonus: that
    product is lifted, not every such product, so that the learned ones keep their places
    behind it. ``query_columns``: those of ``q`` to keep. Parameters: ``hits_params``."""
    columns = f"{query_columns}e.product_id, e.image_key, e.distance"

    def scan(extra: str) -> str:
        return (
            f"FROM q CROSS JOIN LATERAL (SELECT product_id, image_key, {expression} <=> q.v AS "
            f"distance FROM {TABLE} WHERE {where}{extra} ORDER BY {expression} <=> q.v LIMIT %s) e"
        )

    first = f"SELECT {columns}, e.distance AS ranked, false AS lifted {scan('')}"
    if not bonus:
        return first
    return (
        f"{first} UNION ALL SELECT {columns}, e.distance - {float(bonus):.6f} AS ranked, "
        f"true AS lifted {scan(' AND NOT learned')}"
    )


def hits_params(where_params: list[Any], limit: int, bonus: float) -> list[Any]:
    """The parameters of ``hits_sql``: its second scan's (one row) only with a bonus."""
    first = [*where_params, limit]
    return [*first, *where_params, 1] if bonus else first


def _conditions(
    space: EmbeddingSpace, queryset: models.QuerySet, *, exclude_pk: Any = None
) -> tuple[str, list[Any]]:
    """The index's predicate, the excluded product and the shop's filter: on the segment
    column when it pins the segment field (so that value's own index serves it), as a
    subquery for the rest."""
    segment, segment_only = queryset_segment(queryset)
    where = [index_predicate(space.name, segment)]
    params: list[Any] = []
    if exclude_pk is not None:
        where.append("product_id <> %s")
        params.append(exclude_pk)
    if queryset.query.where and not segment_only:
        sub_sql, sub_params = queryset.order_by().values("pk").query.sql_with_params()
        where.append(f"product_id IN ({sub_sql})")
        params.extend(sub_params)
    return " AND ".join(where), params


def nearest_per_query(
    space: EmbeddingSpace, vectors: np.ndarray, *, k: int, queryset: models.QuerySet
) -> list[list[Neighbour]]:
    """For each query vector separately, its k nearest products (best image pair each), in
    one statement: shop the look matches every region of a photo at once."""
    rows = np.atleast_2d(vectors)
    if not len(rows):
        return []
    dim = space.known_dimension
    expression = vector_expression(dim)
    where, where_params = _conditions(space, queryset)
    bonus = bonus_of(space)
    queries = " UNION ALL ".join([f"SELECT %s AS i, %s::halfvec({dim}) AS v"] * len(rows))
    params: list[Any] = []
    for index, row in enumerate(rows):
        params += [index, vector_literal(row)]
    sql = (
        f"WITH q AS MATERIALIZED ({queries}), "
        f"hits AS MATERIALIZED ({hits_sql(expression, where, bonus, 'q.i, ')}) "
        "SELECT DISTINCT ON (i, product_id) i, product_id, image_key, 1 - ranked, "
        "1 - distance FROM hits ORDER BY i, product_id, ranked"
    )
    with transaction.atomic(), connection.cursor() as cursor:
        # On a small catalogue the planner prefers one exact scan per region to the index, three
        # times slower for a look photo's 60 regions (0.6-0.9 s against 0.2-0.3 s with 2,721
        # images, docs/benchmarks.md): this statement always walks the index. The setting is
        # put back for the rest of an enclosing transaction.
        cursor.execute("SELECT current_setting('enable_seqscan')")
        (seqscan,) = cursor.fetchone()
        cursor.execute("SELECT set_config('enable_seqscan', 'off', true)")
        cursor.execute(sql, [*params, *hits_params(where_params, k * OVERFETCH, bonus)])
        found = cursor.fetchall()
        cursor.execute("SELECT set_config('enable_seqscan', %s, true)", [seqscan])
    products = queryset.in_bulk({row[1] for row in found})
    per_query: list[list[Neighbour]] = [[] for _ in rows]
    for index, pk, key, score, similarity in sorted(found, key=lambda row: (row[0], -row[3])):
        if pk in products and len(per_query[index]) < k:
            per_query[index].append(Neighbour(products[pk], key, float(score), float(similarity)))
    return per_query


def has_ready_embedding(space: EmbeddingSpace | None, product_pk: Any) -> bool:
    if space is None:
        return False
    return space.embeddings.filter(product_id=product_pk, status=EmbeddingStatus.READY).exists()


def has_pending_image(space_name: str) -> bool:
    """Whether any image waits to be embedded in the space. Every search answer asks, so in SQL:
    0.2 ms for the index probe against 0.8 ms through the ORM (on 2 cores)."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT 1 FROM {TABLE} WHERE space_id = %s AND status = %s LIMIT 1",
            [space_name, EmbeddingStatus.PENDING],
        )
        return cursor.fetchone() is not None
