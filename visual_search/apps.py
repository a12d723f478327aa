from django.apps import AppConfig, apps
from django.utils.translation import gettext_lazy as _


class VisualSearchConfig(AppConfig):
    name = "visual_search"
    verbose_name = _("Visual search")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created
        from django.db.models.signals import post_delete

        from visual_search import checks, signals
        from visual_search.conf import vs_settings
        from visual_search.models import EmbeddingSpace
        from visual_search.queries import configure_session
        from visual_search.spaces import forget_spaces

        checks.register()
        connection_created.connect(configure_session, dispatch_uid="visual_search_hnsw")
        post_delete.connect(
            lambda **kwargs: forget_spaces(),
            sender=EmbeddingSpace,
            weak=False,
            dispatch_uid="visual_search_forget_spaces",
        )
        post_delete.connect(
            signals.space_deleted, sender=EmbeddingSpace, dispatch_uid="visual_search_space_indexes"
        )
        if not checks.product_model_errors():
            signals.connect()
            if vs_settings.ADMIN["REGISTER_ACTION"] and apps.is_installed("django.contrib.admin"):
                from visual_search.admin_actions import register_reindex_action

                # Works when django.contrib.admin comes before visual_search in
                # INSTALLED_APPS (its ready() has then registered the shop's ModelAdmins).
                register_reindex_action()
