from __future__ import annotations

from typing import Any

from rest_framework.throttling import SimpleRateThrottle

from visual_search.conf import vs_settings


class EndpointThrottle(SimpleRateThrottle):
    """Per client (user, else IP) and endpoint; rates from VISUAL_SEARCH["API"]["THROTTLE_RATES"]."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        super().__init__()

    def get_rate(self) -> str | None:
        return vs_settings.API["THROTTLE_RATES"].get(self.scope)

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        if self.rate is None:
            return None
        user = getattr(request, "user", None)
        ident = (
            f"user-{user.pk}"
            if user is not None and user.is_authenticated
            else self.get_ident(request)
        )
        return f"visual_search_throttle_{self.scope}_{ident}"
