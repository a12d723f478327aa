"""Translations: what shoppers and merchants read follows the request's language, and the
shipped catalogue covers every marked string and is compiled from its source."""

from __future__ import annotations

import gettext
import shutil
import subprocess
from pathlib import Path

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.template import Context, Template
from django.urls import reverse
from django.utils import translation
from rest_framework.test import APIClient

from tests.conftest import jpeg_bytes

pytestmark = pytest.mark.django_db

PACKAGE = Path(__file__).resolve().parent.parent / "visual_search"
LOCALES = sorted(path.name for path in (PACKAGE / "locale").iterdir())


@pytest.fixture
def localised(settings):
    """A shop that serves each request in the language its client asks for."""
    settings.MIDDLEWARE = [
        *settings.MIDDLEWARE[:2],
        "django.middleware.locale.LocaleMiddleware",
        *settings.MIDDLEWARE[2:],
    ]
    cache.clear()
    yield
    # LocaleMiddleware leaves the last request's language active in this thread.
    translation.deactivate()


def carousel(product) -> str:
    source = "{% load visual_search %}{% similar_products_carousel product 3 %}"
    return Template(source).render(Context({"product": product}))


def test_carousel_speaks_the_active_language(catalogue, make_product):
    cache.clear()
    with translation.override("zh-hans"):
        html = carousel(catalogue["Banana"])
        empty = carousel(make_product("Nothing yet", None))
    assert "相似商品" in html and "Similar items" not in html
    assert html.count("匹配度 ") == 3 and "% match" not in html
    assert "暂无相似商品。" in empty
    with translation.override("en"):
        assert "Similar items" in carousel(catalogue["Banana"])


@pytest.mark.parametrize(
    "data,code,start",
    [
        ({}, "no_file", "请以名为“image”的 multipart 文件字段发送照片"),
        ({"image": jpeg_bytes((300, 200))[:500]}, "corrupt", "图片已损坏或不完整"),
        ({"image": jpeg_bytes(), "colour": "red"}, "unknown_parameter", "未知参数：colour"),
    ],
    ids=["no-file", "corrupt", "unknown-parameter"],
)
def test_api_errors_in_the_clients_language_keep_their_codes(localised, data, code, start):
    from django.core.files.uploadedfile import SimpleUploadedFile

    def post(language: str):
        form = dict(data)
        if "image" in form:  # a fresh upload each time: the first request reads it
            form["image"] = SimpleUploadedFile("photo.jpg", form["image"], "image/jpeg")
        return APIClient().post("/api/visual-search/search/", form, HTTP_ACCEPT_LANGUAGE=language)

    chinese = post("zh-hans")
    assert chinese.status_code == 400
    assert chinese.json()["code"] == code and chinese.json()["detail"].startswith(start)
    english = post("en")
    assert english.json()["code"] == code and english.json()["detail"].isascii()


def test_status_page_in_chinese(localised, admin_client, catalogue):
    url = reverse("admin:visual_search_productembedding_status")
    page = admin_client.get(url, HTTP_ACCEPT_LANGUAGE="zh-hans").content.decode()
    assert "以图搜图索引状态" in page and "适配商品目录" in page and "（当前编码器）" in page
    assert "Adapt to the catalogue" not in page


def _catalog(mo: Path) -> dict:
    with mo.open("rb") as handle:
        return dict(gettext.GNUTranslations(handle)._catalog)  # type: ignore[attr-defined]


@pytest.mark.parametrize("locale", LOCALES)
def test_catalogue_is_complete_and_compiled(locale, tmp_path, monkeypatch):
    assert shutil.which("msgfmt"), "GNU gettext is missing (./scripts/test installs it)"
    shipped = PACKAGE / "locale" / locale / "LC_MESSAGES"
    # Extract the marked strings again from a copy of the package, merged into the shipped
    # catalogue: every one must be there and translated, and none the code no longer uses.
    copy = tmp_path / "visual_search"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(copy)
    call_command("makemessages", locale=[locale], verbosity=0)
    merged = copy / "locale" / locale / "LC_MESSAGES" / "django.po"
    assert "#~ msgid" not in merged.read_text(), "strings no longer used: run makemessages"
    checked = subprocess.run(
        ["msgfmt", "--check", "--statistics", "-o", str(tmp_path / "merged.mo"), str(merged)],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr
    assert "untranslated" not in checked.stderr and "fuzzy" not in checked.stderr, checked.stderr
    # The shipped .mo is the shipped .po compiled.
    subprocess.run(
        ["msgfmt", "-o", str(tmp_path / "shipped.mo"), str(shipped / "django.po")], check=True
    )
    assert _catalog(shipped / "django.mo") == _catalog(tmp_path / "shipped.mo")
    assert _catalog(tmp_path / "merged.mo") == _catalog(tmp_path / "shipped.mo")
