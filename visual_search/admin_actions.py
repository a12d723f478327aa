"""The "Reindex selected" admin action, shared by the app's admin, the mixin and the
action registered onto the shop's own ProductAdmin at start-up."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext, gettext_lazy, ngettext

from visual_search import services

REINDEX_PERMISSION = "visual_search.reindex"


def can_reindex(request: HttpRequest) -> bool:
    return (
        request.user.is_active
        and request.user.is_staff
        and request.user.has_perm(REINDEX_PERMISSION)
    )


def queue_and_report(modeladmin: Any, request: HttpRequest, pks: list[Any]) -> None:
    if not can_reindex(request):
        modeladmin.message_user(
            request, gettext("You do not have permission to reindex products."), messages.ERROR
        )
        return
    try:
        products, tasks = services.queue_products(pks, force=True)
    except services.VisualSearchError as exc:
        modeladmin.message_user(request, str(exc), messages.ERROR)
        return
    modeladmin.message_user(
        request,
        ngettext(
            "Queued %(products)d product for embedding in %(tasks)d task(s).",
            "Queued %(products)d products for embedding in %(tasks)d task(s).",
            products,
        )
        % {"products": products, "tasks": tasks},
        messages.SUCCESS,
    )


@admin.action(description=gettext_lazy("Reindex selected products (visual search)"))
def reindex_selected_products(modeladmin: Any, request: HttpRequest, queryset: QuerySet) -> None:
    queue_and_report(modeladmin, request, list(queryset.values_list("pk", flat=True)))


def register_reindex_action(site: admin.AdminSite = admin.site) -> bool:
    """Add the action to the product's registered ModelAdmin, without the shop editing it."""
    from visual_search.models_registry import get_product_model

    model_admin = site._registry.get(get_product_model())
    if model_admin is None:
        return False
    actions = list(model_admin.actions or [])
    if reindex_selected_products not in actions:
        model_admin.actions = [*actions, reindex_selected_products]
    return True
