"""A readable message when a look item's box is invalid (the admin shows it)."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("visual_search", "0006_embedding_segment"),
    ]

    operations = [
        migrations.AlterConstraint(
            model_name="lookitem",
            name="visual_search_lookitem_box",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    ("bottom__lte", 1), ("left__gte", 0), ("right__lte", 1), ("top__gte", 0)
                )
                & models.Q(("left__lt", models.F("right")), ("top__lt", models.F("bottom"))),
                name="visual_search_lookitem_box",
                violation_error_message=(
                    "A box is given in fractions of the image: 0 <= left < right <= 1 and "
                    "0 <= top < bottom <= 1."
                ),
            ),
        ),
    ]
