"""Admin for the app's own tables and the index status page."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import models, transaction
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext, gettext_lazy, ngettext, pgettext

from visual_search import adaptation_runs, services
from visual_search.adaptation import switch
from visual_search.admin_actions import can_reindex, queue_and_report
from visual_search.admin_mixins import ModelAdminMixinBase
from visual_search.indexing import index_state
from visual_search.models import (
    AdaptationRun,
    AdaptationState,
    EmbeddingSpace,
    Look,
    LookItem,
    ProductEmbedding,
)
from visual_search.models_registry import get_product_model
from visual_search.spaces import get_current_space


class ProductSearchMixin(ModelAdminMixinBase):
    """Search embeddings by the product fields the shop's ProductAdmin searches (or by key)."""

    def get_search_results(self, request: HttpRequest, queryset: QuerySet, search_term: str) -> Any:
        queryset, duplicates = super().get_search_results(request, queryset, search_term)
        if search_term:
            product_admin = admin.site._registry.get(get_product_model())
            fields = list(getattr(product_admin, "search_fields", None) or [])
            products = get_product_model()._default_manager.all()
            if fields and product_admin is not None:
                products, _duplicates = product_admin.get_search_results(
                    request, products, search_term
                )
            else:
                products = (
                    products.filter(pk__in=[search_term])
                    if search_term.isdigit()
                    else products.none()
                )
            queryset = queryset | self.model.objects.filter(product__in=products.values("pk"))
        return queryset, duplicates


@admin.register(ProductEmbedding)
class ProductEmbeddingAdmin(ProductSearchMixin, admin.ModelAdmin):
    list_display = [
        "product",
        "image_key",
        "space",
        "status_badge",
        "short_error",
        "attempts",
        "updated_at",
    ]
    list_filter = ["status", "space", "learned"]
    list_select_related = ["product"]
    search_fields = ["image_key"]
    readonly_fields = [
        "product",
        "space",
        "image_key",
        "content_hash",
        "status",
        "learned",
        "error",
        "attempts",
        "created_at",
        "updated_at",
    ]
    exclude = ["embedding"]
    actions = ["reindex_products"]
    date_hierarchy = "updated_at"
    change_list_template = "admin/visual_search/productembedding/change_list.html"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # rows are computed by the pipeline, never typed in

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=gettext_lazy("status"), ordering="status")
    def status_badge(self, obj: ProductEmbedding) -> str:
        colours = {"ready": "#15803d", "pending": "#b45309", "failed": "#b91c1c"}
        return format_html(
            '<strong style="color:{}">{}</strong>', colours[obj.status], obj.get_status_display()
        )

    @admin.display(description=gettext_lazy("error"))
    def short_error(self, obj: ProductEmbedding) -> str:
        return obj.error[:120]

    @admin.action(description=gettext_lazy("Reindex the products of the selected rows"))
    def reindex_products(self, request: HttpRequest, queryset: QuerySet) -> None:
        pks = list(queryset.values_list("product_id", flat=True).distinct())
        queue_and_report(self, request, pks)

    def _queue_adaptation(self, request: HttpRequest) -> None:
        try:
            run = adaptation_runs.request_run()
        except adaptation_runs.AdaptationBusy as exc:
            self.message_user(request, str(exc), messages.WARNING)
            return
        # The worker reads the run: queue once it is committed (at once, outside a transaction).
        transaction.on_commit(lambda: adaptation_runs.send(run))
        if run.state == AdaptationState.FAILED:
            self.message_user(
                request,
                gettext("Adaptation not queued: %(reason)s") % {"reason": run.message},
                messages.ERROR,
            )
            return
        self.message_user(
            request,
            gettext(
                "Adaptation queued: a worker learns it, checks it on held-out images and switches "
                "to it only if it is better. This page shows its progress and outcome."
            ),
            messages.SUCCESS,
        )

    def _activate(self, request: HttpRequest, name: str) -> None:
        base = get_current_space()
        space = base and EmbeddingSpace.objects.filter(name=name, base=base).first()
        if space is None:
            self.message_user(
                request,
                gettext("No adapted space %(name)r of the current encoder.") % {"name": name},
                messages.ERROR,
            )
            return
        switch(space)
        self.message_user(
            request,
            gettext("Queries run in %(space)s now.") % {"space": space.name},
            messages.SUCCESS,
        )

    def get_urls(self) -> list:
        info = self.model._meta.app_label, self.model._meta.model_name
        return [
            path(
                "status/",
                self.admin_site.admin_view(self.status_view),
                name="{}_{}_status".format(*info),
            ),
            *super().get_urls(),
        ]

    def status_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        if request.method == "POST":
            if not can_reindex(request):
                raise PermissionDenied
            action = request.POST.get("action", "reindex")
            if action == "adapt":
                self._queue_adaptation(request)
            elif action == "revert":
                switch(None)
                self.message_user(
                    request, gettext("Queries run in the base space again."), messages.SUCCESS
                )
            elif action == "activate":
                self._activate(request, request.POST.get("space", ""))
            else:
                pks = list(services.products_to_reindex("missing")) + list(
                    services.products_to_reindex("failed")
                )
                queue_and_report(self, request, list(dict.fromkeys(pks)))
            return HttpResponseRedirect(request.path)
        context = {
            **self.admin_site.each_context(request),
            "title": gettext("Visual search index status"),
            "opts": self.model._meta,
            "report": services.status_report(),
            "can_reindex": can_reindex(request),
        }
        return TemplateResponse(request, "admin/visual_search/status.html", context)


@admin.register(AdaptationRun)
class AdaptationRunAdmin(admin.ModelAdmin):
    """The history of catalogue adaptations; they are started from the index status page."""

    list_display = ["created_at", "method", "state", "space", "outcome"]
    list_filter = ["state", "method"]
    readonly_fields = [
        "method",
        "state",
        "space",
        "progress",
        "message",
        "created_at",
        "updated_at",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.unfinished and not adaptation_runs.is_stalled(obj):
            return False  # its worker records progress on this row: deleting it stops nothing
        return super().has_delete_permission(request, obj)

    @admin.display(description=gettext_lazy("progress and outcome"))
    def outcome(self, run: AdaptationRun) -> str:
        return run.latest[:160]


def _spaces_in_use() -> set[str]:
    """The current encoder's space and the one photo searches run in (its active adapted
    space, if any): the spaces whose rows searches read."""
    used = services.query_space()
    return {services.current_space_name(), *([used.name] if used else [])}


@admin.register(EmbeddingSpace)
class EmbeddingSpaceAdmin(admin.ModelAdmin):
    """Spaces are read here, and those no search uses deleted. The encoder and the adaptation
    make them, and the status page switches them (``adaptation.switch``: one transaction that
    every process follows). An "active" box or a report edited here would bypass that, and
    could leave a calibration that no search can read."""

    list_display = ["name", "role", "dimension", "created_at", "index_health"]
    readonly_fields = fields = (
        "name",
        "role",
        "base",
        "dimension",
        "created_at",
        "evaluation",
        "encoder_settings",
        "full_report",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.name in _spaces_in_use():
            return False  # searches read its rows: switch, or change the encoder, first
        return super().has_delete_permission(request, obj)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple:
        """Counts instead of Django's list of every row the deletion takes: a space holds one
        row per catalogue image (a million at scale), which the confirmation page would list.
        A base space takes the spaces adapted from it along."""
        chosen = [space.pk for space in objs]
        spaces = list(
            EmbeddingSpace.objects.filter(models.Q(pk__in=chosen) | models.Q(base__in=chosen))
        )
        rows = ProductEmbedding.objects.filter(space__in=spaces).count()
        refused = {
            str(self.opts.verbose_name)
            for space in spaces
            if not self.has_delete_permission(request, space)
        }
        counts = {
            str(self.opts.verbose_name_plural): len(spaces),
            str(ProductEmbedding._meta.verbose_name_plural): rows,
        }
        return [str(space) for space in spaces], counts, refused, []

    @admin.display(description=gettext_lazy("role"))
    def role(self, obj: EmbeddingSpace) -> str:
        used = services.query_space()
        searched = used is not None and used.pk == obj.pk
        if obj.name == services.current_space_name():
            if searched:
                return gettext("current encoder; searches run here")
            return gettext("current encoder")
        if searched:
            return gettext("adapted; searches run here")
        if obj.base_id is not None:
            return gettext("adapted; not in use (switch on the index status page)")
        return gettext("another encoder; not in use")

    @admin.display(description=gettext_lazy("evaluation"))
    def evaluation(self, obj: EmbeddingSpace) -> str:
        return services.describe_evaluation(obj.report) or "-"

    @admin.display(description=gettext_lazy("encoder configuration"))
    def encoder_settings(self, obj: EmbeddingSpace) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.encoder, indent=2, sort_keys=True))

    @admin.display(description=gettext_lazy("evaluation report"))
    def full_report(self, obj: EmbeddingSpace) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.report, indent=2, sort_keys=True))

    @admin.display(description=gettext_lazy("HNSW index"))
    def index_health(self, obj: EmbeddingSpace) -> str:
        state = index_state(obj.name)
        if not state.exists:
            return pgettext("index", "missing")
        size = state.size_bytes // 1024
        if state.valid:
            return gettext("valid, %(size)d kB") % {"size": size}
        return gettext("INVALID, %(size)d kB") % {"size": size}


class LookItemInline(admin.TabularInline):
    """One row per hotspot; a suggested row's other candidates are one click away."""

    model = LookItem
    extra = 0
    fields = ["product", "suggested", "left", "top", "right", "bottom", "match", "candidates"]
    readonly_fields = ["match", "candidates"]
    raw_id_fields = ["product"]
    formfield_overrides = {
        models.FloatField: {
            "widget": forms.NumberInput(
                attrs={"step": "0.001", "min": "0", "max": "1", "class": "vs-box-input"}
            )
        }
    }

    @admin.display(description=gettext_lazy("match score"))
    def match(self, item: LookItem) -> str:
        return "-" if item.score is None else f"{item.score:.2f}"

    @admin.display(description=gettext_lazy("top products (click one to use it)"))
    def candidates(self, item: LookItem) -> str:
        if not item.alternatives:
            return "-"
        return format_html_join(
            " ",
            '<button type="button" class="vs-candidate" data-pk="{}" data-name="{}">'
            "{} ({})</button>",
            ((c["pk"], c["name"], c["name"], f"{c['score']:.2f}") for c in item.alternatives),
        )


@admin.register(Look)
class LookAdmin(admin.ModelAdmin):
    """Upload a look, get suggested hotspots, then accept (untick "suggested"), edit or delete."""

    list_display = ["title", "hotspots", "suggestions", "created_at"]
    inlines = [LookItemInline]
    actions = ["suggest_hotspots"]
    change_form_template = "admin/visual_search/look/change_form.html"

    class Media:
        css = {"all": ["visual_search/look_admin.css"]}
        js = ["visual_search/look_admin.js"]

    @admin.display(description=gettext_lazy("hotspots"))
    def hotspots(self, look: Look) -> int:
        return look.items.filter(suggested=False).count()

    @admin.display(description=gettext_lazy("suggestions to review"))
    def suggestions(self, look: Look) -> int:
        return look.items.filter(suggested=True).count()

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        look = form.instance
        if not look.items.exists():  # a new look: suggest hotspots straight away
            self._suggest(request, [look])

    @admin.action(description=gettext_lazy("Suggest hotspots (shop the look)"))
    def suggest_hotspots(self, request: HttpRequest, queryset: QuerySet) -> None:
        self._suggest(request, list(queryset))

    def _suggest(self, request: HttpRequest, looks: list[Look]) -> None:
        for look in looks:
            try:
                found = services.suggest_look_items(look)
            except Exception as exc:  # a bad image or search outage: say so, keep the look
                self.message_user(
                    request,
                    gettext("%(look)s: no suggestions (%(error)s)") % {"look": look, "error": exc},
                    messages.WARNING,
                )
                continue
            self.message_user(
                request,
                ngettext(
                    "%(look)s: %(count)d suggested hotspot. Review it below: untick "
                    '"suggested" to accept, change the product or box, or delete.',
                    "%(look)s: %(count)d suggested hotspots. Review them below: untick "
                    '"suggested" to accept, change the product or box, or delete.',
                    len(found),
                )
                % {"look": look, "count": len(found)},
                messages.INFO,
            )
