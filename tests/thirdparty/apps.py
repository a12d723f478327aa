from django.apps import AppConfig


class ThirdPartyConfig(AppConfig):
    """Stands for a third-party shop framework: visual_search never edits its Product."""

    name = "tests.thirdparty"
    label = "thirdparty"
