from django.urls import path

from shop_demo.catalog import views

app_name = "catalog"

urlpatterns = [
    path("", views.catalogue, name="catalogue"),
    path("p/<slug:slug>/", views.product_detail, name="product"),
    path("search/", views.search_by_photo, name="search"),
    path("look/", views.shop_the_look_page, name="look"),
    path("healthz", views.healthz, name="healthz"),
]
