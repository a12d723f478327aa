"""The app's own tables: embedding spaces and one embedding row per (product, image, space).

The product is a real ForeignKey to the model named by ``VISUAL_SEARCH_PRODUCT_MODEL`` (the
pattern of DRF's authtoken), so the shop never edits its Product model and deleting a product
cascades to its embeddings.
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _
from pgvector.django import HalfVectorField

from visual_search.models_registry import product_model_label


class EmbeddingSpace(models.Model):
    """One encoder configuration; its vectors are only ever compared with each other."""

    name = models.CharField(_("name"), max_length=100, primary_key=True)
    # Unknown until the encoder first runs (in a worker), so a web process never loads it.
    dimension = models.PositiveIntegerField(_("dimension"), null=True, blank=True)
    encoder = models.JSONField(_("encoder configuration"), default=dict)
    # An adapted space (see adaptation.py) is derived from a base space: a linear transform of
    # its vectors or a fine-tuned copy of its model;
    # at most one space per base is active, and queries then run in it.
    base = models.ForeignKey(
        "self",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="derived",
        verbose_name=_("derived from"),
    )
    is_active = models.BooleanField(_("active"), default=False)
    report = models.JSONField(_("evaluation report"), default=dict, blank=True)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("embedding space")
        verbose_name_plural = _("embedding spaces")
        constraints = [
            models.UniqueConstraint(
                fields=["base"],
                condition=models.Q(is_active=True),
                name="visual_search_one_active_space_per_base",
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.dimension or '?'}d)"

    @property
    def known_dimension(self) -> int:
        """The dimension, for SQL that reads the space's vectors (known once one exists)."""
        if self.dimension is None:
            raise ValueError(f"Embedding space {self.name} has no vectors yet.")
        return int(self.dimension)


class SpaceWeights(models.Model):
    """The fine-tuned model of an adapted space, kept in the database so that every web and
    worker process (on any machine) loads the same weights, written in the same transaction
    as the space. A separate table so that reading a space never reads megabytes."""

    space = models.OneToOneField(
        EmbeddingSpace,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="weights",
        verbose_name=_("space"),
    )
    data = models.BinaryField(_("torch state dict"))
    sha256 = models.CharField(_("SHA-256"), max_length=64)

    class Meta:
        verbose_name = _("fine-tuned weights")
        verbose_name_plural = _("fine-tuned weights")

    def __str__(self) -> str:
        return f"{self.space_id} ({self.sha256[:12]})"


class AdaptationState(models.TextChoices):
    QUEUED = "queued", _("Queued")
    RUNNING = "running", _("Running")
    SWITCHED = "switched", _("Switched on")
    BUILT = "built", _("Built, not switched on")
    REFUSED = "refused", _("Refused")
    FAILED = "failed", _("Failed")


class AdaptationRun(models.Model):
    """One requested catalogue adaptation (admin button or command): the admin shows whether
    one is queued or running and its last progress line, and keeps a refusal or a crash in the
    worker visible instead of in a log only."""

    method = models.CharField(_("method"), max_length=20)
    state = models.CharField(
        _("state"), max_length=10, choices=AdaptationState.choices, default=AdaptationState.QUEUED
    )
    progress = models.TextField(_("last progress"), blank=True)
    message = models.TextField(_("outcome"), blank=True)
    space = models.ForeignKey(
        EmbeddingSpace,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        verbose_name=_("adapted space"),
    )
    created_at = models.DateTimeField(_("requested"), auto_now_add=True)
    updated_at = models.DateTimeField(_("last change"), auto_now=True)

    class Meta:
        verbose_name = _("adaptation run")
        verbose_name_plural = _("adaptation runs")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.method} adaptation of {self.created_at:%Y-%m-%d %H:%M} ({self.state})"

    @property
    def unfinished(self) -> bool:
        return self.state in (AdaptationState.QUEUED, AdaptationState.RUNNING)

    @property
    def latest(self) -> str:
        """Its last progress line while it runs, its outcome once it has ended."""
        return self.progress if self.unfinished else self.message


class EmbeddingStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    READY = "ready", _("Ready")
    FAILED = "failed", _("Failed")


class ProductEmbedding(models.Model):
    product = models.ForeignKey(
        product_model_label(),
        on_delete=models.CASCADE,
        related_name="+",
        verbose_name=_("product"),
    )
    space = models.ForeignKey(
        EmbeddingSpace, on_delete=models.CASCADE, related_name="embeddings", verbose_name=_("space")
    )
    # Identifies the image inside the product's gallery (a storage name, a path or a key
    # the gallery callable chose); stable across saves so unchanged images are skipped.
    image_key = models.CharField(_("image"), max_length=500)
    content_hash = models.CharField(_("content hash"), max_length=64, blank=True)
    # Dimension-free column: each space has its own dimension, and its HNSW index is a
    # partial expression index on embedding::halfvec(N) (see indexing.py).
    embedding = HalfVectorField(_("embedding"), null=True, blank=True)
    status = models.CharField(
        _("status"), max_length=10, choices=EmbeddingStatus.choices, default=EmbeddingStatus.PENDING
    )
    error = models.TextField(_("error"), blank=True)
    # The product's value of SEGMENTS["FIELD"] (as text), copied here so that a partial HNSW
    # index per value can select its rows (segments.py); "" when the feature is off.
    segment = models.TextField(_("segment"), blank=True, default="")
    # In an adapted space, whether its model learned this image's product (the product had
    # several images when it was adapted); None in a space that learns nothing (the base).
    # Photo searches raise the score of the nearest product it did not learn (unlearned.py).
    learned = models.BooleanField(_("learned"), null=True, default=None)
    attempts = models.PositiveIntegerField(_("attempts"), default=0)
    created_at = models.DateTimeField(_("created"), auto_now_add=True)
    updated_at = models.DateTimeField(_("updated"), auto_now=True)

    class Meta:
        verbose_name = _("product embedding")
        verbose_name_plural = _("product embeddings")
        permissions = [("reindex", _("Can reindex products for visual search"))]
        constraints = [
            models.UniqueConstraint(
                fields=["product", "space", "image_key"], name="visual_search_unique_image"
            )
        ]
        indexes = [
            models.Index(fields=["space", "status"], name="visual_search_space_status"),
            models.Index(fields=["space", "segment"], name="visual_search_space_segment"),
            # The few rows a search scans a second time for products the model did not learn.
            models.Index(
                fields=["space"],
                condition=models.Q(learned=False),
                name="visual_search_unlearned",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.product_id} / {self.image_key} [{self.status}]"


class Look(models.Model):
    """A merchant's look (scene) photo whose products are marked with hotspots."""

    title = models.CharField(_("title"), max_length=200)
    image = models.ImageField(_("image"), upload_to="visual_search/looks/")
    created_at = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        verbose_name = _("look")
        verbose_name_plural = _("looks")
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.title


class LookItem(models.Model):
    """A hotspot: a box on the look's image (fractions of its width and height) and a product."""

    look = models.ForeignKey(
        Look, on_delete=models.CASCADE, related_name="items", verbose_name=_("look")
    )
    product = models.ForeignKey(
        product_model_label(),
        on_delete=models.CASCADE,
        related_name="+",
        verbose_name=_("product"),
    )
    left = models.FloatField(_("left"))
    top = models.FloatField(_("top"))
    right = models.FloatField(_("right"))
    bottom = models.FloatField(_("bottom"))
    # Suggested by shop_the_look and not yet accepted by the merchant: not shown to shoppers.
    suggested = models.BooleanField(_("suggested, not yet accepted"), default=False)
    score = models.FloatField(_("match score"), null=True, blank=True)
    alternatives = models.JSONField(_("other candidate products"), default=list, blank=True)
    position = models.PositiveIntegerField(_("position"), default=0)

    class Meta:
        verbose_name = _("look item")
        verbose_name_plural = _("look items")
        ordering = ["position", "id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(left__gte=0, top__gte=0, right__lte=1, bottom__lte=1)
                & models.Q(left__lt=models.F("right"), top__lt=models.F("bottom")),
                name="visual_search_lookitem_box",
                violation_error_message=_(
                    "A box is given in fractions of the image: 0 <= left < right <= 1 and "
                    "0 <= top < bottom <= 1."
                ),
            )
        ]

    def __str__(self) -> str:
        return f"{self.product} in {self.look}"

    @property
    def centre(self) -> tuple[float, float]:
        return ((self.left + self.right) / 2 * 100, (self.top + self.bottom) / 2 * 100)
