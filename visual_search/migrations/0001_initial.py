# Kept by hand: the product ForeignKey points at settings.VISUAL_SEARCH_PRODUCT_MODEL, never at
# a literal model label (makemigrations would write the label of the project it ran in).
import django.db.models.deletion
import pgvector.django
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        migrations.swappable_dependency(settings.VISUAL_SEARCH_PRODUCT_MODEL),
    ]

    operations = [
        pgvector.django.VectorExtension(),
        migrations.CreateModel(
            name="EmbeddingSpace",
            fields=[
                (
                    "name",
                    models.CharField(
                        max_length=100, primary_key=True, serialize=False, verbose_name="name"
                    ),
                ),
                (
                    "dimension",
                    models.PositiveIntegerField(blank=True, null=True, verbose_name="dimension"),
                ),
                (
                    "encoder",
                    models.JSONField(default=dict, verbose_name="encoder configuration"),
                ),
                ("created_at", models.DateTimeField(auto_now_add=True, verbose_name="created")),
            ],
            options={
                "verbose_name": "embedding space",
                "verbose_name_plural": "embedding spaces",
            },
        ),
        migrations.CreateModel(
            name="ProductEmbedding",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("image_key", models.CharField(max_length=500, verbose_name="image")),
                (
                    "content_hash",
                    models.CharField(blank=True, max_length=64, verbose_name="content hash"),
                ),
                (
                    "embedding",
                    pgvector.django.HalfVectorField(
                        blank=True, null=True, verbose_name="embedding"
                    ),
                ),
                (
                    "status",
                    models.CharField(
                        choices=[("pending", "Pending"), ("ready", "Ready"), ("failed", "Failed")],
                        default="pending",
                        max_length=10,
                        verbose_name="status",
                    ),
                ),
                ("error", models.TextField(blank=True, verbose_name="error")),
                ("attempts", models.PositiveIntegerField(default=0, verbose_name="attempts")),
                ("created_at", models.DateTimeField(auto_now_add=True, verbose_name="created")),
                ("updated_at", models.DateTimeField(auto_now=True, verbose_name="updated")),
                (
                    "product",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to=settings.VISUAL_SEARCH_PRODUCT_MODEL,
                        verbose_name="product",
                    ),
                ),
                (
                    "space",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="embeddings",
                        to="visual_search.embeddingspace",
                        verbose_name="space",
                    ),
                ),
            ],
            options={
                "verbose_name": "product embedding",
                "verbose_name_plural": "product embeddings",
                "constraints": [
                    models.UniqueConstraint(
                        fields=("product", "space", "image_key"), name="visual_search_unique_image"
                    )
                ],
                "indexes": [
                    models.Index(fields=["space", "status"], name="visual_search_space_status")
                ],
            },
        ),
        # A 1280-d halfvec row (2.5 kB) would otherwise be TOASTed: exact scans then read it
        # out of line, about 3x slower (NOTES.md). PLAIN keeps it in the heap page.
        migrations.RunSQL(
            "ALTER TABLE visual_search_productembedding ALTER COLUMN embedding SET STORAGE PLAIN",
            reverse_sql=migrations.RunSQL.noop,
        ),
    ]
