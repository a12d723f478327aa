"""Shop the look: region proposals, grouping, the service, API, admin suggestions and the tag."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import SimpleUploadedFile
from django.template import Context, Template
from PIL import Image

from visual_search import services
from visual_search.look import (
    Proposal,
    Region,
    activation_contrast,
    component_boxes,
    grid_boxes,
    group_regions,
    heaviest_compatible_set,
    iou,
    with_contrast,
)
from visual_search.models import Look, LookItem
from visual_search.queries import Neighbour


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)


def test_grid_covers_the_image_at_every_scale():
    boxes = grid_boxes(800, 600, (0.5,))
    assert all(b[2] - b[0] == pytest.approx(300) for b in boxes)
    assert max(b[2] for b in boxes) == pytest.approx(800) and max(
        b[3] for b in boxes
    ) == pytest.approx(600)


def test_component_boxes_find_separate_active_areas():
    energy = np.zeros((14, 14))
    energy[1:5, 1:5] = 1.0
    energy[8:13, 7:12] = 2.0
    boxes = sorted(component_boxes(energy, 1400, 1400, pad=0))
    assert len(boxes) == 2
    assert boxes[0] == pytest.approx((100, 100, 500, 500))
    assert boxes[1] == pytest.approx((700, 800, 1200, 1300))


class _P:
    def __init__(self, pk):
        self.pk = pk


# Objectness from the best score alone (and the contrast around the box, for the last test):
# sigmoid(20 * (score - 0.7)), so 0.9 -> 0.98, 0.8 -> 0.88, 0.7 -> 0.5, 0.5 -> 0.02.
SCORE_ONLY = {"coef": [20.0, 0, 0, 0, 0, 0, 0, 0, 0], "intercept": -14.0}


def grouped(regions, model=SCORE_ONLY, **options):
    return group_regions(
        regions,
        size=(800, 800),
        **{"k": 2, "min_score": 0.45, "min_objectness": 0.1, "overlap_iou": 0.1, **options},
        model=model,
    )


def test_grouping_picks_the_items_not_the_box_over_them():
    a, b, c = _P(1), _P(2), _P(3)
    regions = [
        Region((0, 0, 100, 100), [Neighbour(a, "x", 0.8, 0.8), Neighbour(c, "x", 0.5, 0.5)]),
        Region((10, 10, 110, 110), [Neighbour(c, "x", 0.75, 0.75)]),  # on item a: pooled, no group
        Region((300, 300, 400, 400), [Neighbour(b, "x", 0.85, 0.85)]),
        Region((320, 320, 360, 360), [Neighbour(b, "x", 0.83, 0.83)]),  # a part of item b
        Region((600, 0, 700, 100), [Neighbour(c, "x", 0.55, 0.55)]),  # too unlikely an item
        Region((600, 600, 700, 700), [Neighbour(c, "x", 0.4, 0.4)]),  # below MIN_SCORE
        Region(
            (0, 0, 400, 400), [Neighbour(c, "x", 0.9, 0.9)]
        ),  # over both items: beats each alone
    ]
    groups = grouped(regions)
    assert [(g.box, [r.product.pk for r in g.results]) for g in groups] == [
        ((300, 300, 400, 400), [2]),
        ((0, 0, 100, 100), [1, 3]),
    ]
    assert groups[0].objectness >= groups[1].objectness > 0.1
    assert groups[1].regions == 2  # its own region and the one on the same item


def test_an_items_box_is_fitted_by_the_regions_that_match_its_product():
    a, b = _P(1), _P(2)
    regions = [
        Region((100, 100, 300, 300), [Neighbour(a, "x", 0.9, 0.9)]),  # the item's best region
        Region((100, 100, 340, 300), [Neighbour(a, "x", 0.9, 0.9), Neighbour(b, "x", 0.88, 0.88)]),
        Region((60, 100, 300, 300), [Neighbour(a, "x", 0.8, 0.8)]),  # a much weaker match of a
        Region((100, 40, 300, 300), [Neighbour(b, "x", 0.85, 0.85)]),  # does not hold a: no say
    ]
    (group,) = grouped(regions)
    left, top, right, bottom = group.box
    assert 315 < right < 325  # two regions match a equally well: half-way between them
    assert 99 < left < 100  # the weak match moves it by a fraction of a pixel
    assert (top, bottom) == (100, 300)
    assert [r.product.pk for r in group.results] == [1, 2]


def test_heaviest_compatible_set_trades_one_box_for_two():
    conflict = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 1]], dtype=bool)
    assert heaviest_compatible_set([0, 1, 2], np.array([3.0, 2.0, 2.0]), conflict) == [1, 2]
    assert heaviest_compatible_set([0, 1, 2], np.array([5.0, 2.0, 2.0]), conflict) == [0]


def test_activation_contrast_prefers_the_box_that_fits_the_active_area():
    heat = np.zeros((20, 20))
    heat[5:10, 5:10] = 1.0
    fit, loose, background = activation_contrast(
        heat, [(250, 250, 500, 500), (100, 100, 650, 650), (700, 700, 950, 950)], 1000, 1000
    )
    assert fit[0] > loose[0] > 0 >= background[0]
    assert fit[1] > loose[1] > background[1]


def test_contrast_decides_between_equal_matches():
    a = _P(1)
    model = {"coef": [0, 0, 0, 0, 0, 0, 0, 1.0, 0], "intercept": 0.0}
    tight = Region((0, 0, 100, 100), [Neighbour(a, "x", 0.8, 0.8)], contrast=(2.0, 2.0))
    loose = Region((0, 0, 200, 200), [Neighbour(a, "x", 0.8, 0.8)], contrast=(0.5, 1.0))
    (group,) = grouped([loose, tight], model=model, min_objectness=0.5)
    assert group.box == (0, 0, 100, 100)
    assert grouped([loose], model=model, min_objectness=0.7) == []


def test_proposals_without_contrast_get_it_from_the_activation_map(photos):
    canvas, boxes = look_photo([photos("val", "Banana")[0]])
    whole, item = with_contrast(
        [Proposal((0, 0, 800, 800)), Proposal(boxes[0], True, (9.0, 9.0))], canvas
    )
    assert whole.contrast == pytest.approx((0.0, 0.0), abs=1e-6)  # the photo is its own ring
    assert item.contrast == (9.0, 9.0)  # a detector's own values are kept


def look_photo(paths, size=800):
    """Photos side by side on a light canvas, with their boxes."""
    canvas = Image.new("RGB", (size, size), (238, 238, 232))
    boxes = []
    for index, path in enumerate(paths):
        photo = Image.open(path).convert("RGB").resize((340, 340))
        x, y = 30 + (index % 2) * 420, 30 + (index // 2) * 420
        canvas.paste(photo, (x, y))
        boxes.append((x, y, x + 340, y + 340))
    return canvas, boxes


@pytest.fixture
def gallery_catalogue(make_product, photos):
    """Products with a studio-like main photo and in-store gallery photos (train split)."""
    names = ["Banana", "Kiwi", "Lemon", "Arla-Standard-Milk", "Granny-Smith", "Carrots"]
    made = {
        n: make_product(n, photos("train", n)[0], gallery=photos("train", n)[5:30:6]) for n in names
    }
    services.embed_many([p.pk for p in made.values()])
    return made


@pytest.mark.django_db
def test_shop_the_look_finds_each_item(gallery_catalogue, photos):
    items = ["Banana", "Arla-Standard-Milk", "Kiwi"]
    canvas, boxes = look_photo([photos("val", n)[0] for n in items])
    groups = services.shop_the_look(canvas, k=4)
    assert 1 <= len(groups) <= 5, [(g.box, g.score, str(g.results[0].product)) for g in groups]
    for name, box in zip(items, boxes, strict=True):
        assert any(
            iou(g.box, box) >= 0.5
            and gallery_catalogue[name].pk in [r.product.pk for r in g.results]
            for g in groups
        ), (name, [(g.box, [str(r.product) for r in g.results]) for g in groups])


class ItemBoxesDetector:
    """A stand-in for a shop's object detector: plain (box, precise) tuples, no contrast."""

    boxes: list = []

    def propose(self, image):
        return [(box, True) for box in self.boxes]


@pytest.mark.django_db
def test_a_plugged_in_detector_gives_the_boxes(settings, gallery_catalogue, photos):
    items = ["Kiwi", "Arla-Standard-Milk"]
    canvas, boxes = look_photo([photos("val", n)[0] for n in items])
    ItemBoxesDetector.boxes = [tuple(float(v) for v in box) for box in boxes]
    settings.VISUAL_SEARCH = {
        **settings.VISUAL_SEARCH,
        "LOOK": {"DETECTOR": f"{__name__}.ItemBoxesDetector"},
    }
    groups = services.shop_the_look(canvas, k=4)
    assert sorted(g.box for g in groups) == sorted(ItemBoxesDetector.boxes)
    for name, box in zip(items, ItemBoxesDetector.boxes, strict=True):
        (group,) = [g for g in groups if g.box == box]
        assert gallery_catalogue[name].pk in [r.product.pk for r in group.results]


def jpeg_upload(picture, name="look.jpg"):
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG")
    return SimpleUploadedFile(name, buffer.getvalue())


@pytest.mark.django_db
def test_shop_the_look_api(client, gallery_catalogue, photos):
    canvas, _ = look_photo([photos("val", "Banana")[0], photos("val", "Kiwi")[0]])
    response = client.post("/api/visual-search/look/?k=2", {"image": jpeg_upload(canvas)})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["width"] == 800 and body["count"] == len(body["groups"]) >= 1
    assert body["indexing"] is False
    assert len(body["groups"][0]["box"]) == 4 and len(body["groups"][0]["results"]) <= 2
    objectness = [g["objectness"] for g in body["groups"]]
    assert objectness == sorted(objectness, reverse=True) and 0 < objectness[-1] <= 1
    assert client.post("/api/visual-search/look/", {}).json()["code"] == "no_file"
    bad = client.post("/api/visual-search/look/", {"image": SimpleUploadedFile("x.jpg", b"text")})
    assert bad.status_code == 400 and bad.json()["code"] == "not_an_image"


@pytest.mark.django_db
def test_admin_suggests_hotspots_the_merchant_accepts(admin_client, gallery_catalogue, photos):
    canvas, boxes = look_photo([photos("val", "Banana")[0], photos("val", "Arla-Standard-Milk")[0]])
    response = admin_client.post(
        "/admin/visual_search/look/add/",
        {
            "title": "Breakfast",
            "image": jpeg_upload(canvas),
            "items-TOTAL_FORMS": "0",
            "items-INITIAL_FORMS": "0",
        },
        follow=True,
    )
    assert response.status_code == 200
    look = Look.objects.get(title="Breakfast")
    suggested = list(look.items.all())
    assert suggested and all(item.suggested for item in suggested)
    assert "suggested hotspot" in response.content.decode()
    assert all(item.alternatives and 0 <= item.left < item.right <= 1 for item in suggested)
    page = admin_client.get(f"/admin/visual_search/look/{look.pk}/change/").content.decode()
    assert "vs-look__hotspot--suggested" in page  # the preview shows the suggestions
    # The shopper sees only accepted hotspots.
    render = lambda: Template("{% load visual_search %}{% shop_the_look look %}").render(  # noqa: E731
        Context({"look": look})
    )
    assert "vs-look__hotspot" not in render()
    first = suggested[0]
    first.suggested = False
    first.save()
    html = render()
    assert html.count('class="vs-look__hotspot"') == 1 and str(first.product) in html
    assert "<details" in html and "<summary" in html  # keyboard-accessible, no JavaScript


@pytest.mark.django_db
def test_look_items_name_products_through_the_setting(make_product, photos):
    product = make_product("Kiwi", photos("train", "Kiwi")[0])
    look = Look(title="t")
    look.image.save("t.jpg", ContentFile(photos("train", "Kiwi")[1].read_bytes()))
    item = LookItem.objects.create(
        look=look, product=product, left=0.1, top=0.1, right=0.5, bottom=0.6
    )
    assert item.centre == pytest.approx((30, 35))
    product.delete()
    assert not LookItem.objects.filter(pk=item.pk).exists()


@pytest.mark.django_db
def test_hotspot_positions_are_css_numbers_in_any_locale(make_product, photos):
    from django.utils import translation

    product = make_product("Kiwi", photos("train", "Kiwi")[0])
    look = Look(title="t")
    look.image.save("t.jpg", ContentFile(photos("train", "Kiwi")[1].read_bytes()))
    LookItem.objects.create(look=look, product=product, left=0.1, top=0.125, right=0.5, bottom=0.6)
    template = Template("{% load visual_search %}{% shop_the_look look 0 show_boxes=True %}")
    with translation.override("de"):  # decimal comma
        html = template.render(Context({"look": look}))
    assert "left: 30.0%; top: 36.25%" in html  # the hotspot, at the box's centre
    assert "left: 10.0%; top: 12.5%; width: 40.0%; height: 47.5%" in html  # the box outline
