from django.urls import path

from visual_search.api import schema, views

app_name = "visual_search_api"

urlpatterns = [
    path("search/", views.SearchByImageView.as_view(), name="search"),
    path("search/url/", views.SearchByUrlView.as_view(), name="search-url"),
    path("look/", views.ShopTheLookView.as_view(), name="look"),
    path("products/<str:key>/similar/", views.SimilarProductsView.as_view(), name="similar"),
    path("reindex/", views.ReindexView.as_view(), name="reindex"),
    path("schema/", schema.SchemaView.as_view(), name="schema"),
    path("docs/", schema.DocsView.as_view(url_name="visual_search_api:schema"), name="docs"),
]
