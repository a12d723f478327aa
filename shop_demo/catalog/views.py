"""The demo shop's pages. Visual search is used only through its public services and tags."""

from __future__ import annotations

import base64
import io
from typing import Any

from django.core.paginator import Paginator
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render

from shop_demo.catalog.models import Category, Product
from visual_search import services
from visual_search.exceptions import UnusableImage
from visual_search.images import displayed_size, load_image
from visual_search.models import Look

RESULTS = 12


def catalogue(request: HttpRequest) -> HttpResponse:
    products = Product.objects.select_related("category")
    query = request.GET.get("q", "").strip()
    category = request.GET.get("category", "")
    if query:
        products = products.filter(Q(name__icontains=query) | Q(description__icontains=query))
    if category:
        products = products.filter(category__slug=category)
    page = Paginator(products, 24).get_page(request.GET.get("page"))
    return render(
        request,
        "catalog/catalogue.html",
        {
            "page": page,
            "query": query,
            "category": category,
            "categories": Category.objects.all(),
        },
    )


def product_detail(request: HttpRequest, slug: str) -> HttpResponse:
    product = get_object_or_404(Product.objects.select_related("category"), slug=slug)
    return render(
        request,
        "catalog/product.html",
        {
            "product": product,
            "gallery": product.gallery.all(),
        },
    )


def search_by_photo(request: HttpRequest) -> HttpResponse:
    context: dict[str, Any] = {"categories": Category.objects.all(), "category": ""}
    if request.method == "POST":
        context["category"] = category = request.POST.get("category", "")
        upload = request.FILES.get("image")
        products = Product.objects.all()
        if category:
            products = products.filter(category__slug=category)
        if upload is None:
            context["error"] = "Choose a photo of a product first."
        else:
            box = _box(request.POST.get("box"))
            try:
                results = services.search_by_image(upload, k=RESULTS, queryset=products, box=box)
                context["results"] = results
                context["match"] = services.is_match(results, services.min_confidence())
                context["photo"] = _searched_photo(upload, box)
            except UnusableImage as exc:
                context["error"] = (
                    f"We could not use that file: {exc} Try a JPEG or PNG photo of the product."
                )
            context["searched"] = True
    status = 400 if context.get("error") else 200
    return render(request, "catalog/search.html", context, status=status)


def shop_the_look_page(request: HttpRequest) -> HttpResponse:
    """Looks from the shop, and "find the products in your photo"."""
    context: dict[str, Any] = {"looks": Look.objects.prefetch_related("items")}
    status = 200
    if request.method == "POST":
        upload = request.FILES.get("image")
        if upload is None:
            context["error"] = "Choose a photo first."
        else:
            data = upload.read()
            try:
                picture = load_image(data)
                groups = services.shop_the_look(picture, k=4)
            except UnusableImage as exc:
                context["error"] = f"We could not use that file: {exc}"
            else:
                width, height = picture.size
                context["photo"] = _jpeg_data_url(picture)
                context["groups"] = [
                    {
                        "number": index,
                        "left": g.box[0] / width * 100,
                        "top": g.box[1] / height * 100,
                        "width": (g.box[2] - g.box[0]) / width * 100,
                        "height": (g.box[3] - g.box[1]) / height * 100,
                        "results": g.results,
                    }
                    for index, g in enumerate(groups, 1)
                ]
        status = 400 if context.get("error") else 200
    return render(request, "catalog/look.html", context, status=status)


def _jpeg_data_url(picture: Any) -> str:
    """The photo inline in the page: an upload is not stored anywhere it could be served from."""
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def _searched_photo(upload: Any, box: tuple[float, ...] | None) -> dict[str, Any]:
    """The photo as it was searched, shown beside its results (the form's file input is empty
    again after the search): a thumbnail, and the box as shares of the photo."""
    upload.seek(0)
    data = upload.read()
    width, height = displayed_size(data)  # a large JPEG decodes smaller; the box is in these
    picture = load_image(data)
    picture.thumbnail((480, 480))
    photo: dict[str, Any] = {"src": _jpeg_data_url(picture)}
    if box is not None:
        left, top = max(box[0], 0) / width * 100, max(box[1], 0) / height * 100
        right, bottom = min(box[2], width) / width * 100, min(box[3], height) / height * 100
        photo["box"] = {"left": left, "top": top, "width": right - left, "height": bottom - top}
    return photo


def _box(value: str | None) -> tuple[float, ...] | None:
    if not value:
        return None
    try:
        box = tuple(float(v) for v in value.split(","))
    except ValueError:
        return None
    return box if len(box) == 4 else None


def healthz(request: HttpRequest) -> JsonResponse:
    Product.objects.exists()  # the database answers
    return JsonResponse({"ok": True})
