"""REST API (Django REST framework + drf-spectacular): the only module that imports DRF.

Mount it with ``path("api/visual-search/", include("visual_search.api.urls"))``.
"""
