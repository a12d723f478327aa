"""Visual product search for Django shops: timm embeddings, Celery workers, pgvector queries."""

__version__ = "0.1.0"
