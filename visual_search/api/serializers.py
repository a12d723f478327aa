from __future__ import annotations

from functools import lru_cache
from typing import Any

from django.utils.module_loading import import_string
from django.utils.translation import gettext_lazy
from rest_framework import serializers

from visual_search.conf import vs_settings
from visual_search.models_registry import get_product_model


@lru_cache(maxsize=4)
def _default_product_serializer(label: str) -> type[serializers.ModelSerializer]:
    meta = type("Meta", (), {"model": get_product_model(), "fields": "__all__"})
    return type("ProductSerializer", (serializers.ModelSerializer,), {"Meta": meta})


def product_serializer_class() -> type[serializers.BaseSerializer]:
    path = vs_settings.API["PRODUCT_SERIALIZER"]
    return import_string(path) if path else _default_product_serializer(vs_settings.PRODUCT_MODEL)


class BoxField(serializers.Field):
    """A crop box "left,top,right,bottom" in pixels of the uploaded image."""

    default_error_messages = {
        "invalid": gettext_lazy('Give the box as four numbers "left,top,right,bottom" (pixels).'),
        "empty": gettext_lazy("The box must have right > left and bottom > top."),
    }

    def to_internal_value(self, data: Any) -> tuple[float, float, float, float]:
        parts = data if isinstance(data, (list, tuple)) else str(data).split(",")
        try:
            left, top, right, bottom = (float(p) for p in parts)
        except (TypeError, ValueError):
            self.fail("invalid")
        if right <= left or bottom <= top or min(left, top) < 0:
            self.fail("empty")
        return left, top, right, bottom

    def to_representation(self, value: Any) -> list[float]:
        return list(value)


class KSerializer(serializers.Serializer):
    k = serializers.IntegerField(required=False, min_value=1)

    def validate_k(self, value: int) -> int:
        max_k = int(vs_settings.QUERY["MAX_K"])
        if value > max_k:
            # DRF's own message for an IntegerField's max_value, so DRF's translations apply.
            message = serializers.IntegerField.default_error_messages["max_value"]
            raise serializers.ValidationError(str(message).format(max_value=max_k))
        return value


class QuerySerializer(KSerializer):
    box = BoxField(required=False)
    min_confidence = serializers.FloatField(
        required=False,
        min_value=0,
        max_value=1,
        help_text="Answer only when the top result's calibrated confidence reaches this "
        "(default: VISUAL_SEARCH['QUERY']['MIN_CONFIDENCE']); below it the answer is "
        '"match": false and no results.',
    )


class ImageSearchSerializer(QuerySerializer):
    image = serializers.FileField(help_text="The photo: JPEG, PNG, WebP, GIF, BMP or TIFF.")


class UrlSearchSerializer(QuerySerializer):
    url = serializers.URLField(help_text="An http(s) URL of a photo on a public host.")


class LookSerializer(KSerializer):
    image = serializers.FileField(help_text="A look or scene photo showing several products.")


class ReindexSerializer(serializers.Serializer):
    which = serializers.ChoiceField(
        choices=["missing", "failed", "stale", "all"], default="missing"
    )


class ResultSerializer(serializers.Serializer):
    product = serializers.SerializerMethodField()
    score = serializers.FloatField(
        help_text="Cosine similarity of the best image pair, -1 to 1 (higher is closer); in a "
        "photo search of a catalogue-adapted space, plus a bonus (at most 1) for the nearest "
        "product its model did not learn. Results are ordered by it."
    )
    matched_image = serializers.CharField(
        source="image_key", help_text="The product image that matched best."
    )
    confidence = serializers.FloatField(
        required=False,
        allow_null=True,
        help_text="Calibrated probability that this is the photographed product (photo "
        "searches, once visual_search_adapt has calibrated the space); null otherwise.",
    )

    def get_product(self, result: Any) -> dict[str, Any]:
        return product_serializer_class()(result.product, context=self.context).data


class ResultsSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    space = serializers.CharField(help_text="The embedding space the search ran in.")
    indexing = serializers.BooleanField(
        help_text="True while some catalogue images still wait to be embedded (a worker is "
        "catching up, or none is running): their products cannot be found yet."
    )
    results = ResultSerializer(many=True)


class PhotoResultsSerializer(ResultsSerializer):
    match = serializers.BooleanField(
        allow_null=True,
        help_text="With a confidence threshold: whether the photo shows a product of the "
        "catalogue (false: no results are returned). Null without a threshold or before the "
        "space's confidence is calibrated.",
    )
    min_confidence = serializers.FloatField(allow_null=True)


class LookGroupSerializer(serializers.Serializer):
    box = serializers.ListField(
        child=serializers.FloatField(),
        help_text="[left, top, right, bottom] in pixels of the uploaded photo.",
    )
    score = serializers.FloatField(help_text="Similarity of the item's best match.")
    objectness = serializers.FloatField(
        help_text="How likely the box is an item (0-1, the grouping's model); groups come "
        "most likely first."
    )
    results = ResultSerializer(many=True)


class LookResultsSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    space = serializers.CharField()
    indexing = serializers.BooleanField(help_text="As in the search results.")
    width = serializers.IntegerField(help_text="Width of the photo the boxes refer to.")
    height = serializers.IntegerField()
    groups = LookGroupSerializer(many=True)


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField()
