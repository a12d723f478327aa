from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class VisualSearchConfig(AppConfig):
    name = "visual_search"
    verbose_name = _("Visual search")
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from visual_search import checks, signals

        checks.register()
        if not checks.product_model_errors():
            signals.connect()
