"""For the shop's own ProductAdmin: a status column and filter, the reindex action and a
"similar products" preview on the change page.

    class ProductAdmin(VisualSearchAdminMixin, admin.ModelAdmin): ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy

from visual_search.admin_actions import reindex_selected_products
from visual_search.models import EmbeddingStatus, ProductEmbedding
from visual_search.spaces import current_space_name

# The mixins below extend ModelAdmin; type checkers see them as ModelAdmins, Python as objects
# (so that the shop's class lists ModelAdmin itself after them).
if TYPE_CHECKING:
    ModelAdminMixinBase = admin.ModelAdmin
else:
    ModelAdminMixinBase = object

STATUS_LABELS = {
    "failed": gettext_lazy("Failed"),
    "pending": gettext_lazy("Pending"),
    "ready": gettext_lazy("Ready"),
    "missing": gettext_lazy("Missing"),
}
STATUSES = {
    "failed": Q(vs_failed=True),
    "pending": Q(vs_failed=False, vs_pending=True),
    "ready": Q(vs_failed=False, vs_pending=False, vs_ready=True),
    "missing": Q(vs_failed=False, vs_pending=False, vs_ready=False),
}


def annotate_status(queryset: QuerySet) -> QuerySet:
    rows = ProductEmbedding.objects.filter(product_id=OuterRef("pk"), space_id=current_space_name())
    return queryset.annotate(
        vs_failed=Exists(rows.filter(status=EmbeddingStatus.FAILED)),
        vs_pending=Exists(rows.filter(status=EmbeddingStatus.PENDING)),
        vs_ready=Exists(rows.filter(status=EmbeddingStatus.READY)),
    )


def status_of(product: Any) -> str:
    """The status of a product annotated by annotate_status (same precedence as STATUSES)."""
    for flag, name in (("vs_failed", "failed"), ("vs_pending", "pending"), ("vs_ready", "ready")):
        if getattr(product, flag, False):
            return name
    return "missing"


class EmbeddingStatusFilter(admin.SimpleListFilter):
    title = gettext_lazy("visual search")
    parameter_name = "visual_search"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [(name, STATUS_LABELS[name]) for name in STATUSES]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        value = self.value()
        if value in STATUSES:
            return annotate_status(queryset).filter(STATUSES[value])
        return None


class VisualSearchAdminMixin(ModelAdminMixinBase):
    change_form_template = "admin/visual_search/product_change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return annotate_status(super().get_queryset(request))

    def get_list_display(self, request: HttpRequest) -> list:
        return [*super().get_list_display(request), "visual_search_status"]

    def get_list_filter(self, request: HttpRequest) -> list:
        return [*super().get_list_filter(request), EmbeddingStatusFilter]

    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict:
        # Django 6.1 asks per location (change list or change form) and wants Action objects;
        # earlier versions call get_actions(request) and want tuples: get_action builds either.
        if action_location is None:
            actions = super().get_actions(request)
            entry = self.get_action(reindex_selected_products)
        else:
            # Django 6.1's signatures, which django-stubs does not declare.
            actions = super().get_actions(request, action_location=action_location)  # type: ignore[call-arg]
            entry = self.get_action(reindex_selected_products, action_location)  # type: ignore[call-arg]
        if entry is not None:  # None: not offered at this location (the change form)
            actions.setdefault(reindex_selected_products.__name__, entry)
        return actions

    @admin.display(description=gettext_lazy("visual search"))
    def visual_search_status(self, product: Any) -> str:
        return str(STATUS_LABELS[status_of(product)])
