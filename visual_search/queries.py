"""Nearest-neighbour SQL against the space's partial HNSW index.

pgvector filters after the index scan, so a selective shop filter could leave fewer than k
rows; each query sets ``hnsw.ef_search`` and ``hnsw.iterative_scan`` for its own transaction
(``set_config(..., true)`` is SET LOCAL), and asks for more rows until it has k products.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db import connection, models, transaction

from visual_search.conf import vs_settings
from visual_search.indexing import TABLE, index_predicate, vector_expression
from visual_search.models import EmbeddingSpace

# Rows fetched per wanted product on the first try: products often have several images.
OVERFETCH = 4
MAX_ROWS = 10_000


@dataclass(frozen=True)
class Neighbour:
    product_pk: Any
    image_key: str
    score: float


def vector_literal(vector: Iterable[float]) -> str:
    return "[" + ",".join(f"{float(v):.6g}" for v in vector) + "]"


def nearest_products(
    vectors: np.ndarray,
    space: EmbeddingSpace,
    *,
    k: int,
    queryset: models.QuerySet | None = None,
    exclude_pk: Any = None,
) -> list[Neighbour]:
    """The k products nearest to any of ``vectors``, each scored by its best image pair."""
    best: dict[Any, Neighbour] = {}
    with transaction.atomic(), connection.cursor() as cursor:
        _configure_scan(cursor, k)
        for vector in np.atleast_2d(vectors):
            for found in _nearest_for_vector(cursor, vector, space, k, queryset, exclude_pk):
                current = best.get(found.product_pk)
                if current is None or found.score > current.score:
                    best[found.product_pk] = found
    return sorted(best.values(), key=lambda n: n.score, reverse=True)[:k]


def _configure_scan(cursor: Any, k: int) -> None:
    query = vs_settings.QUERY
    cursor.execute(
        "SELECT set_config('hnsw.ef_search', %s, true), "
        "set_config('hnsw.iterative_scan', %s, true), "
        "set_config('hnsw.max_scan_tuples', %s, true)",
        [
            str(max(int(query["EF_SEARCH"]), k * OVERFETCH)),
            str(query["ITERATIVE_SCAN"]),
            str(int(query["MAX_SCAN_TUPLES"])),
        ],
    )


def _nearest_for_vector(
    cursor: Any,
    vector: np.ndarray,
    space: EmbeddingSpace,
    k: int,
    queryset: models.QuerySet | None,
    exclude_pk: Any,
) -> list[Neighbour]:
    literal = vector_literal(vector)
    distance = f"{vector_expression(space.dimension)} <=> %s::halfvec({int(space.dimension)})"
    where = [index_predicate(space.name)]
    where_params: list[Any] = []
    if exclude_pk is not None:
        where.append("product_id <> %s")
        where_params.append(exclude_pk)
    if queryset is not None:
        sub_sql, sub_params = queryset.order_by().values("pk").query.sql_with_params()
        where.append(f"product_id IN ({sub_sql})")
        where_params.extend(sub_params)
    # MATERIALIZED + a final sort: relaxed_order iterative scans may return rows slightly out
    # of order, so the outer query orders them exactly (pgvector's documented pattern). The
    # window count (computed before DISTINCT ON) says whether the inner limit was reached.
    sql = (
        f"WITH nearest AS MATERIALIZED (SELECT product_id, image_key, {distance} AS distance "
        f"FROM {TABLE} WHERE {' AND '.join(where)} ORDER BY {distance} LIMIT %s) "
        "SELECT DISTINCT ON (product_id) product_id, image_key, distance, count(*) OVER () "
        "FROM nearest ORDER BY product_id, distance"
    )
    limit = k * OVERFETCH
    while True:
        cursor.execute(sql, [literal, *where_params, literal, limit])
        rows = cursor.fetchall()
        exhausted = not rows or rows[0][3] < limit
        if len(rows) >= k or exhausted or limit >= MAX_ROWS:
            break
        limit = min(limit * 4, MAX_ROWS)
    rows.sort(key=lambda row: row[2])
    return [Neighbour(pk, key, 1.0 - float(dist)) for pk, key, dist, _ in rows[:k]]
