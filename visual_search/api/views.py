"""API views: thin adapters from HTTP to visual_search.services, with clear 4xx errors."""

from __future__ import annotations

from typing import Any

from django.utils.module_loading import import_string
from django.utils.translation import gettext
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.exceptions import APIException, NotFound
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView, exception_handler

from visual_search import services
from visual_search.api.fetch import FetchRefused, fetch
from visual_search.api.filters import filtered_queryset
from visual_search.api.serializers import (
    ErrorSerializer,
    ImageSearchSerializer,
    LookResultsSerializer,
    LookSerializer,
    PhotoResultsSerializer,
    QuerySerializer,
    ReindexSerializer,
    ResultsSerializer,
    UrlSearchSerializer,
)
from visual_search.api.throttling import EndpointThrottle
from visual_search.conf import vs_settings
from visual_search.exceptions import ProductNotFound, UnusableImage
from visual_search.images import load_image

ERRORS = {
    400: OpenApiResponse(ErrorSerializer, description="Bad request: the body says what and why."),
    429: OpenApiResponse(ErrorSerializer, description="Too many requests."),
}


def documented(**kwargs: Any) -> Any:
    """extend_schema on drf-spectacular's AutoSchema, whatever the shop's DEFAULT_SCHEMA_CLASS."""

    def decorator(method: Any) -> Any:
        method.schema = AutoSchema
        return extend_schema(**kwargs)(method)

    return decorator


class ApiError(APIException):
    def __init__(self, detail: str, code: str, status_code: int = 400) -> None:
        self.status_code = status_code
        super().__init__(detail, code)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus a machine-readable ``code`` beside every ``detail``."""
    response = exception_handler(exc, context)
    if response is not None and isinstance(exc, APIException) and isinstance(response.data, dict):
        if "detail" in response.data and "code" not in response.data:
            codes = exc.get_codes()
            response.data["code"] = codes if isinstance(codes, str) else "invalid"
    return response


def image_error(exc: UnusableImage | FetchRefused) -> ApiError:
    status_code = 413 if exc.code == "too_large" else 400
    return ApiError(str(exc), exc.code, status_code)


class VisualSearchView(APIView):
    """Shared behaviour: permissions and throttles per endpoint from settings."""

    endpoint = "search"
    schema = AutoSchema()
    reserved_params: set[str] = {"k", "box"}

    def get_permissions(self) -> list[Any]:
        return [import_string(path)() for path in vs_settings.API["PERMISSIONS"][self.endpoint]]

    def get_throttles(self) -> list[Any]:
        return [EndpointThrottle(self.endpoint)]

    def get_exception_handler(self) -> Any:
        return api_exception_handler

    def validated(self, serializer_class: type, data: Any) -> dict[str, Any]:
        serializer = serializer_class(data=data)
        serializer.is_valid(raise_exception=True)
        values = dict(serializer.validated_data)
        values.setdefault("k", int(vs_settings.API["DEFAULT_K"]))
        return values

    def params(self, request: Request) -> dict[str, Any]:
        """Query string and form fields together (files aside)."""
        merged = {key: request.query_params.get(key) for key in request.query_params}
        if hasattr(request.data, "items"):
            for key, value in request.data.items():
                if key not in request.FILES:
                    merged[key] = value
        return merged

    def upload(self, request: Request) -> tuple[dict[str, Any], Any]:
        """The request's parameters and its photo; a clear 400 when no photo was sent."""
        if "image" not in request.FILES:
            raise ApiError(
                gettext('Send the photo as a multipart file field named "image".'), "no_file"
            )
        return self.params(request), request.FILES["image"]

    def results(
        self,
        request: Request,
        results: list[services.SearchResult],
        serializer: type = ResultsSerializer,
        **extra: Any,
    ) -> Response:
        data = {"count": len(results), **_space_state(), "results": results, **extra}
        return Response(serializer(data, context={"request": request}).data)

    def photo_results(
        self, request: Request, results: list[services.SearchResult], values: dict[str, Any]
    ) -> Response:
        """Results of a photo search, or "no match" under the confidence threshold."""
        threshold = values.get("min_confidence", vs_settings.QUERY["MIN_CONFIDENCE"])
        match = services.is_match(results, threshold)
        if match is False:
            results = []
        return self.results(
            request, results, PhotoResultsSerializer, match=match, min_confidence=threshold
        )


def _space_state() -> dict[str, Any]:
    """What every search answer says of the space it searched."""
    space = services.query_space()
    return {
        "space": space.name if space else services.current_space_name(),
        "indexing": services.images_pending(),
    }


FILTER_NOTE = "Any filter the shop declared in VISUAL_SEARCH['API']['FILTERS'] may be added."


class SearchByImageView(VisualSearchView):
    parser_classes = [MultiPartParser, FormParser]
    reserved_params = {"k", "box", "image", "min_confidence"}

    @documented(
        operation_id="visual_search_by_image",
        summary="Find the products that look like an uploaded photo",
        description=FILTER_NOTE,
        request={"multipart/form-data": ImageSearchSerializer},
        responses={200: PhotoResultsSerializer, **ERRORS, 413: OpenApiResponse(ErrorSerializer)},
    )
    def post(self, request: Request) -> Response:
        params, photo = self.upload(request)
        values = self.validated(ImageSearchSerializer, {**params, "image": photo})
        queryset = filtered_queryset(request, params, self.reserved_params)
        try:
            found = services.search_by_image(
                values["image"], k=values["k"], box=values.get("box"), queryset=queryset
            )
        except UnusableImage as exc:
            raise image_error(exc)
        return self.photo_results(request, found, values)


class SearchByUrlView(VisualSearchView):
    parser_classes = [JSONParser, FormParser, MultiPartParser]
    reserved_params = {"k", "box", "url", "min_confidence"}

    @documented(
        operation_id="visual_search_by_url",
        summary="Find the products that look like the photo at a URL (when enabled)",
        description="Off unless VISUAL_SEARCH['API']['URL_SEARCH'] is True. Only public "
        "http(s) hosts are fetched. " + FILTER_NOTE,
        request=UrlSearchSerializer,
        responses={200: PhotoResultsSerializer, **ERRORS, 404: OpenApiResponse(ErrorSerializer)},
    )
    def post(self, request: Request) -> Response:
        api = vs_settings.API
        if not api["URL_SEARCH"]:
            raise NotFound(gettext("Search by image URL is not enabled on this shop."))
        params = self.params(request)
        values = self.validated(UrlSearchSerializer, params)
        queryset = filtered_queryset(request, params, self.reserved_params)
        try:
            data = fetch(
                values["url"],
                max_bytes=int(vs_settings.IMAGE["MAX_BYTES"]),
                timeout=float(api["URL_TIMEOUT"]),
                max_redirects=int(api["URL_MAX_REDIRECTS"]),
                allowed_networks=api["URL_ALLOWED_NETWORKS"],
            )
            found = services.search_by_image(
                data, k=values["k"], box=values.get("box"), queryset=queryset
            )
        except (UnusableImage, FetchRefused) as exc:
            raise image_error(exc)
        return self.photo_results(request, found, values)


class ShopTheLookView(VisualSearchView):
    parser_classes = [MultiPartParser, FormParser]
    reserved_params = {"k", "image"}

    @documented(
        operation_id="visual_search_shop_the_look",
        summary="Find every product in a look photo: one group (box + products) per item",
        description=FILTER_NOTE,
        request={"multipart/form-data": LookSerializer},
        responses={200: LookResultsSerializer, **ERRORS, 413: OpenApiResponse(ErrorSerializer)},
    )
    def post(self, request: Request) -> Response:
        params, photo = self.upload(request)
        serializer = LookSerializer(data={**params, "image": photo})
        serializer.is_valid(raise_exception=True)
        k = serializer.validated_data.get("k", 4)
        queryset = filtered_queryset(request, params, self.reserved_params)
        upload = serializer.validated_data["image"]
        try:
            picture = load_image(upload)
            groups = services.shop_the_look(picture, k=k, queryset=queryset)
        except UnusableImage as exc:
            raise image_error(exc)
        data = {
            "count": len(groups),
            **_space_state(),
            "width": picture.width,
            "height": picture.height,
            "groups": [
                {
                    "box": list(g.box),
                    "score": g.score,
                    "objectness": g.objectness,
                    "results": g.results,
                }
                for g in groups
            ],
        }
        return Response(LookResultsSerializer(data, context={"request": request}).data)


class SimilarProductsView(VisualSearchView):
    endpoint = "similar"

    @documented(
        operation_id="visual_search_similar_products",
        summary="Products that look like a product",
        description=FILTER_NOTE,
        parameters=[
            OpenApiParameter(
                "key",
                str,
                OpenApiParameter.PATH,
                description="The product's primary key (integer or UUID).",
            ),
            OpenApiParameter("k", int, description="How many results (default 10)."),
        ],
        responses={
            200: ResultsSerializer,
            **ERRORS,
            404: OpenApiResponse(ErrorSerializer, description="No such product."),
            409: OpenApiResponse(ErrorSerializer, description="The product has no embedding yet."),
        },
    )
    def get(self, request: Request, key: str) -> Response:
        params = self.params(request)
        values = self.validated(QuerySerializer, params)
        queryset = filtered_queryset(request, params, self.reserved_params)
        try:
            found = services.similar_products(key, k=values["k"], queryset=queryset)
        except ProductNotFound as exc:
            raise ApiError(str(exc), "unknown_product", status.HTTP_404_NOT_FOUND)
        except services.ProductNotEmbedded as exc:
            raise ApiError(
                gettext(
                    "%(error)s Its images are still being processed, or failed; try again later."
                )
                % {"error": exc},
                "not_embedded",
                status.HTTP_409_CONFLICT,
            )
        return self.results(request, found)


class ReindexView(VisualSearchView):
    endpoint = "reindex"
    parser_classes = [JSONParser, FormParser, MultiPartParser]

    @documented(
        operation_id="visual_search_reindex",
        summary="Queue embedding of missing, failed, stale or all products (staff)",
        request=ReindexSerializer,
        responses={
            202: OpenApiResponse(description="Queued: {'queued': n, 'which': ...}"),
            **ERRORS,
        },
    )
    def post(self, request: Request) -> Response:
        serializer = ReindexSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        which = serializer.validated_data["which"]
        try:
            queued = services.reindex(which)
        except services.VisualSearchError as exc:
            raise ApiError(str(exc), "broker_unavailable", status.HTTP_503_SERVICE_UNAVAILABLE)
        return Response({"queued": queued, "which": which}, status=status.HTTP_202_ACCEPTED)
