"""The OpenAPI schema of this API only, and a Swagger UI that works offline with the sidecar."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny


class VisualSearchSchemaGenerator(SchemaGenerator):
    def _initialise_endpoints(self) -> None:
        super()._initialise_endpoints()
        endpoints: list[Any] = list(self.endpoints or [])  # (path, regex, method, view)
        self.endpoints = [
            endpoint
            for endpoint in endpoints
            if getattr(endpoint[3], "cls", None) is not None
            and endpoint[3].cls.__module__ == "visual_search.api.views"
        ]


class SchemaView(SpectacularAPIView):
    generator_class = VisualSearchSchemaGenerator
    permission_classes = [AllowAny]
    custom_settings = {
        "TITLE": "Visual search API",
        "DESCRIPTION": "Search a shop's products by photo, and find similar products.",
        "VERSION": "1",
    }


class DocsView(SpectacularSwaggerView):
    permission_classes = [AllowAny]
    title = "Visual search API"

    @staticmethod
    def _swagger_ui_resource(filename: str) -> str:
        if apps.is_installed("drf_spectacular_sidecar"):
            from django.templatetags.static import static

            return static(f"drf_spectacular_sidecar/swagger-ui-dist/{filename}")
        return SpectacularSwaggerView._swagger_ui_resource(filename)

    @staticmethod
    def _swagger_ui_favicon() -> str:
        if apps.is_installed("drf_spectacular_sidecar"):
            from django.templatetags.static import static

            return static("drf_spectacular_sidecar/swagger-ui-dist/favicon-32x32.png")
        return SpectacularSwaggerView._swagger_ui_favicon()
