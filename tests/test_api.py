"""The REST API with DRF's test client: results, filters, every error case, SSRF refusals."""

from __future__ import annotations

import http.server
import threading

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from tests.conftest import jpeg_bytes
from visual_search import services
from visual_search.api.fetch import FetchRefused, fetch
from visual_search.models_registry import get_product_model

pytestmark = pytest.mark.django_db

SEARCH = "/api/visual-search/search/"
URL_SEARCH = "/api/visual-search/search/url/"


@pytest.fixture(autouse=True)
def _fresh_throttles():
    cache.clear()


@pytest.fixture
def client():
    return APIClient()


def similar_url(pk):
    return f"/api/visual-search/products/{pk}/similar/"


def upload(client, path_or_bytes, **data):
    content = path_or_bytes.read_bytes() if hasattr(path_or_bytes, "read_bytes") else path_or_bytes
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(
        SEARCH, {"image": SimpleUploadedFile("photo.jpg", content), **data}, format="multipart"
    )


def test_search_by_photo_returns_products_with_scores(client, catalogue, photos):
    response = upload(client, photos("val", "Banana")[0], k=3)
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["count"] == 3 and len(body["results"]) == 3
    first = body["results"][0]
    assert first["product"]["id"] == catalogue["Banana"].pk
    assert first["product"]["name"] == "Banana"
    assert first["matched_image"].startswith("products/")
    assert 0 < first["score"] <= 1 and first["score"] >= body["results"][1]["score"]


def test_filters_and_crop_box(client, catalogue, photos):
    response = upload(client, photos("val", "Banana")[0], category="dairy", k=5)
    assert response.status_code == 200
    assert [r["product"]["name"] for r in response.json()["results"]] == ["Arla-Standard-Milk"]
    boxed = upload(client, photos("val", "Kiwi")[0], box="20,20,300,300", k=1)
    assert boxed.status_code == 200 and boxed.json()["results"][0]["product"]["name"] == "Kiwi"


def test_similar_products_by_key(client, catalogue):
    response = client.get(similar_url(catalogue["Kiwi"].pk), {"k": 2, "category": "fruit"})
    assert response.status_code == 200
    names = [r["product"]["name"] for r in response.json()["results"]]
    assert len(names) == 2 and "Kiwi" not in names and "Arla-Standard-Milk" not in names


@pytest.mark.parametrize(
    "data,status,code",
    [
        ({}, 400, "no_file"),
        ({"image": b"not an image at all"}, 400, "not_an_image"),
        ({"image": b""}, 400, None),  # an empty upload is refused by DRF's FileField
        ({"image": jpeg_bytes((300, 200))[:500]}, 400, "corrupt"),
        ({"image": jpeg_bytes(), "box": "1,2,3"}, 400, None),
        ({"image": jpeg_bytes(), "box": "50,50,10,10"}, 400, None),
        ({"image": jpeg_bytes((64, 48)), "box": "100,100,200,200"}, 400, "bad_box"),
        ({"image": jpeg_bytes(), "k": 0}, 400, None),
        ({"image": jpeg_bytes(), "k": 1000}, 400, None),
        ({"image": jpeg_bytes(), "k": "many"}, 400, None),
        ({"image": jpeg_bytes(), "colour": "red"}, 400, "unknown_parameter"),
        ({"image": jpeg_bytes(), "max_price": "cheap"}, 400, "invalid_filter"),
    ],
    ids=[
        "no-file",
        "not-image",
        "empty",
        "truncated",
        "box-3",
        "box-inverted",
        "box-outside",
        "k-0",
        "k-1000",
        "k-text",
        "unknown-param",
        "bad-filter-value",
    ],
)
def test_bad_search_requests_get_clear_json_errors(client, catalogue, data, status, code):
    from django.core.files.uploadedfile import SimpleUploadedFile

    if "image" in data:
        data = {**data, "image": SimpleUploadedFile("x.jpg", data["image"])}
    response = client.post(SEARCH, data, format="multipart")
    assert response.status_code == status
    body = response.json()
    assert body  # a JSON body that says what is wrong
    if code:
        assert body["code"] == code and body["detail"]


def test_too_large_upload_is_413(client, catalogue, settings):
    settings.VISUAL_SEARCH = {**settings.VISUAL_SEARCH, "IMAGE": {"MAX_BYTES": 2000}}
    response = upload(client, jpeg_bytes((400, 400), quality=95))
    assert response.status_code == 413 and response.json()["code"] == "too_large"


def test_unknown_product_and_product_without_embedding(client, catalogue, make_product):
    assert client.get(similar_url(987654321)).status_code == 404
    assert client.get(similar_url("not-a-key")).json()["code"] == "unknown_product"
    fresh = make_product("Pending", jpeg_bytes())
    response = client.get(similar_url(fresh.pk))
    assert response.status_code == 409 and response.json()["code"] == "not_embedded"


def test_answers_say_while_catalogue_images_wait_to_be_embedded(
    client, catalogue, make_product, photos
):
    banana = photos("val", "Banana")[0]
    assert upload(client, banana).json()["indexing"] is False
    fresh = make_product("Pending", jpeg_bytes())
    services.mark_pending(fresh)  # what saving it records before the worker's task runs
    body = upload(client, banana).json()
    assert body["indexing"] is True
    assert body["results"][0]["product"]["name"] == "Banana"  # the embedded ones still answer
    assert client.get(similar_url(catalogue["Kiwi"].pk)).json()["indexing"] is True
    services.embed_many([fresh.pk])
    assert upload(client, banana).json()["indexing"] is False


def test_throttled_with_429(client, catalogue, settings):
    api = settings.VISUAL_SEARCH.get("API", {})
    settings.VISUAL_SEARCH = {
        **settings.VISUAL_SEARCH,
        "API": {**api, "THROTTLE_RATES": {"similar": "2/minute"}},
    }
    url = similar_url(catalogue["Kiwi"].pk)
    assert [client.get(url).status_code for _ in range(3)] == [200, 200, 429]


def test_reindex_needs_staff(client, catalogue, django_user_model):
    assert client.post("/api/visual-search/reindex/", {"which": "missing"}).status_code == 403
    user = django_user_model.objects.create_user("shopper", password="x")
    client.force_authenticate(user)
    assert client.post("/api/visual-search/reindex/", {"which": "missing"}).status_code == 403
    staff = django_user_model.objects.create_user("staff", password="x", is_staff=True)
    client.force_authenticate(staff)
    response = client.post("/api/visual-search/reindex/", {"which": "missing"})
    assert response.status_code == 202 and response.json() == {"queued": 0, "which": "missing"}


def test_openapi_schema_describes_the_endpoints(client):
    response = client.get("/api/visual-search/schema/", {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    assert set(paths) == {
        "/api/visual-search/search/",
        "/api/visual-search/search/url/",
        "/api/visual-search/look/",
        "/api/visual-search/products/{key}/similar/",
        "/api/visual-search/reindex/",
    }
    search = paths["/api/visual-search/search/"]["post"]
    props = search["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert "image" in schema["components"]["schemas"][props["$ref"].split("/")[-1]]["properties"]
    assert {"200", "400", "413"} <= set(search["responses"])
    assert "409" in paths["/api/visual-search/products/{key}/similar/"]["get"]["responses"]
    look = paths["/api/visual-search/look/"]["post"]["responses"]["200"]["content"][
        "application/json"
    ]
    assert look["schema"]["$ref"].endswith("/LookResults")
    docs = client.get("/api/visual-search/docs/")
    assert docs.status_code == 200 and b"swagger-ui" in docs.content
    assert b"cdn.jsdelivr" not in docs.content  # served from the sidecar, works offline


# -- search by URL, and the server-side request forgery guard ----------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    photo = b""
    target_port = 0

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path == "/photo.jpg":
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(self.photo)))
            self.end_headers()
            self.wfile.write(self.photo)
        elif self.path == "/to-loopback":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/photo.jpg")
            self.end_headers()
        elif self.path == "/huge":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"\xff" * 300_000)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def image_server(photos):
    """A local image host on 127.0.0.2, which the tests allow as if it were a shop's CDN."""
    _Handler.photo = photos("val", "Banana")[0].read_bytes()
    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.2:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def url_search(settings):
    settings.VISUAL_SEARCH = {
        **settings.VISUAL_SEARCH,
        "API": {
            **settings.VISUAL_SEARCH.get("API", {}),
            "URL_SEARCH": True,
            "URL_ALLOWED_NETWORKS": ["127.0.0.2/32"],
        },
    }


def test_url_search_is_off_by_default(client, catalogue):
    response = client.post(URL_SEARCH, {"url": "http://example.com/a.jpg"}, format="json")
    assert response.status_code == 404


def test_url_search_finds_the_product(client, catalogue, image_server, url_search):
    response = client.post(URL_SEARCH, {"url": f"{image_server}/photo.jpg", "k": 2}, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["results"][0]["product"]["name"] == "Banana"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/a.jpg",
        "http://localhost/a.jpg",
        "http://[::1]/a.jpg",
        "http://[::ffff:127.0.0.1]/a.jpg",
        "http://[::ffff:7f00:1]/a.jpg",
        "http://10.0.0.8/a.jpg",
        "http://192.168.1.1/a.jpg",
        "http://172.16.0.1/a.jpg",
        "http://169.254.169.254/latest/meta-data/",
        "http://0.0.0.0/a.jpg",
        "http://2130706433/a.jpg",
        "http://0x7f000001/a.jpg",
        "http://017700000001/a.jpg",
        "http://127.1/a.jpg",
        "http://[fe80::1]/a.jpg",
        "http://224.0.0.1/a.jpg",
        "http://[64:ff9b::7f00:1]/a.jpg",
        "http://[2002:7f00:1::]/a.jpg",
    ],
)
def test_ssrf_refusals(url):
    with pytest.raises(FetchRefused) as refused:
        fetch(url, max_bytes=10_000, timeout=2)
    assert refused.value.code in ("url_forbidden", "url_unresolvable")


def test_ssrf_refusals_through_the_api(client, catalogue, url_search):
    for url in ("http://127.0.0.1/a.jpg", "file:///etc/passwd", "gopher://127.0.0.1/"):
        response = client.post(URL_SEARCH, {"url": url}, format="json")
        assert response.status_code == 400, url
        assert response.json()


def test_redirect_to_loopback_is_refused(image_server):
    with pytest.raises(FetchRefused, match="not a public address"):
        fetch(
            f"{image_server}/to-loopback",
            max_bytes=10**6,
            timeout=3,
            allowed_networks=["127.0.0.2/32"],
        )


def test_download_limits(image_server):
    with pytest.raises(FetchRefused) as refused:
        fetch(
            f"{image_server}/huge", max_bytes=100_000, timeout=3, allowed_networks=["127.0.0.2/32"]
        )
    assert refused.value.code == "too_large"
    with pytest.raises(FetchRefused, match="Only http and https"):
        fetch("ftp://example.com/a.jpg", max_bytes=10, timeout=1)


def test_product_serializer_is_replaceable(client, catalogue, settings):
    settings.VISUAL_SEARCH = {
        **settings.VISUAL_SEARCH,
        "API": {
            **settings.VISUAL_SEARCH.get("API", {}),
            "PRODUCT_SERIALIZER": "tests.serializers.TinyProductSerializer",
        },
    }
    response = client.get(similar_url(catalogue["Kiwi"].pk), {"k": 1})
    assert set(response.json()["results"][0]["product"]) == {"id", "label"}
    assert (
        get_product_model()
        .objects.filter(pk=response.json()["results"][0]["product"]["id"])
        .exists()
    )
