"""The demo shop in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright).

Screenshots go to artifacts/screenshots/ (git-ignored) so a person can look at the pages.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connections
from playwright.sync_api import expect

from tests.conftest import REPO, grocery_photos
from visual_search import services

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SHOTS = REPO / "artifacts" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
CLASSES = [
    "Arla-Standard-Milk",
    "Arla-Medium-Fat-Milk",
    "Arla-Lactose-Medium-Fat-Milk",
    "Garant-Ecological-Standard-Milk",
    "Golden-Delicious",
    "Granny-Smith",
    "Pink-Lady",
    "Royal-Gala",
    "Banana",
    "Kiwi",
    "Lemon",
    "Tropicana-Apple-Juice",
]
MILK = {"Arla Medium Fat Milk", "Arla Lactose Medium Fat Milk", "Garant Ecological Standard Milk"}


@pytest.fixture
def shop(live_server, settings):
    """The demo catalogue (a dozen products) loaded and embedded, served by a live server."""
    settings.DEBUG = True  # the live server serves media files as runserver would
    call_command("load_demo_catalog", "--only", ",".join(CLASSES), verbosity=0)
    services.reindex("missing", inline=True)
    return live_server.url


@pytest.fixture
def page(shop):
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"Chromium not found at {CHROMIUM}: apt-get install chromium"
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"  # Playwright's sync API runs a loop here
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        yield page
        # The test's own queries ran under Playwright's loop, on a connection of that context
        # which pytest-django does not close; left open, it blocks dropping the test database.
        connections.close_all()
        browser.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


def submit(page, selector: str) -> None:
    """Click a button that posts a form and wait for the whole answer page: click() itself
    returns as soon as the next page starts loading, before all of it is parsed."""
    page.click(selector)
    page.wait_for_load_state()


def screenshot(page, name: str) -> None:
    page.wait_for_load_state("networkidle")
    page.evaluate(  # lazy images load when scrolled near: scroll through the page first
        "async () => { for (let y = 0; y < document.body.scrollHeight; y += 300) {"
        " window.scrollTo(0, y); await new Promise(r => setTimeout(r, 60)); }"
        " window.scrollTo(0, 0); }"
    )
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_search_by_an_unseen_in_store_photo(page, shop):
    page.goto(f"{shop}/search/")
    photo = grocery_photos("val", "Arla-Standard-Milk")[1]  # a validation photo, not in the shop
    page.set_input_files("#image", str(photo))
    page.wait_for_selector("#preview:not([hidden])")
    screenshot(page, "search-preview")
    submit(page, "button[type=submit]")
    page.wait_for_selector("#results")
    names = page.locator("#results .card-name").all_inner_texts()
    assert "Arla Standard Milk" in names[:3], names
    assert page.locator("#results .score").first.inner_text().endswith("% match")
    # The photo searched stays in view beside its results, without a box when none was drawn.
    assert page.locator("#searched-photo img").evaluate("img => img.naturalWidth") > 0
    assert page.locator("#searched-photo figcaption").inner_text() == "Your photo"
    assert page.locator("#searched-box").count() == 0
    screenshot(page, "search-results")


def test_crop_box_drawn_on_the_preview_is_sent(page, shop):
    page.goto(f"{shop}/search/")
    page.set_input_files("#image", str(grocery_photos("val", "Banana")[0]))
    page.wait_for_selector("#preview:not([hidden])")
    box = page.locator("#box-canvas").bounding_box()
    page.mouse.move(box["x"] + 10, box["y"] + 10)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] - 10, box["y"] + box["height"] - 10, steps=5)
    page.mouse.up()
    value = page.input_value("#box")
    left, top, right, bottom = (int(v) for v in value.split(","))
    assert 0 < left < right and 0 < top < bottom
    submit(page, "button[type=submit]")
    page.wait_for_selector("#results")
    assert "Banana" in page.locator("#results .card-name").all_inner_texts()[:3]
    # The box searched is drawn where it was, on the photo shown with the results.
    frame = page.locator("#searched-photo img").bounding_box()
    drawn = page.locator("#searched-box").bounding_box()
    assert drawn["x"] > frame["x"] and drawn["y"] > frame["y"]
    assert drawn["x"] + drawn["width"] < frame["x"] + frame["width"]
    assert drawn["width"] > 0.8 * frame["width"] and drawn["height"] > 0.8 * frame["height"]


def test_product_page_shows_a_carousel_of_the_same_category(page, shop):
    page.goto(f"{shop}/p/arla-standard-milk/")
    carousel = page.locator(".vs-carousel__item")
    assert carousel.count() >= 3
    names = page.locator(".vs-carousel__name").all_inner_texts()
    assert "Arla Standard Milk" not in names
    assert len(MILK & set(names[:4])) >= 2, names
    assert page.locator(".vs-carousel__list").get_attribute("tabindex") == "0"
    screenshot(page, "product-page")


def test_catalogue_filters_and_text_search(page, shop):
    page.goto(f"{shop}/")
    assert page.locator("#products .card").count() == len(CLASSES)
    page.click("nav.categories >> text=Milk")
    expect(page.locator("#products .card-name")).to_have_count(len(MILK) + 1)
    assert set(page.locator("#products .card-name").all_inner_texts()) == MILK | {
        "Arla Standard Milk"
    }
    page.fill("#q", "kiwi")
    page.press("#q", "Enter")
    expect(page.locator("#products .card-name")).to_have_text(["Kiwi"])
    page.goto(f"{shop}/")
    assert page.locator("a[href='/admin/']").is_visible()
    screenshot(page, "catalogue")


def test_an_unusable_file_shows_a_helpful_message(page, shop, tmp_path):
    fake = tmp_path / "holiday.jpg"
    fake.write_text("this is a text file, not a photo")
    page.goto(f"{shop}/search/")
    page.set_input_files("#image", str(fake))
    submit(page, "button[type=submit]")
    error = page.locator("#search-error")
    error.wait_for()
    assert "could not use that file" in error.inner_text()
    assert "not an image" in error.inner_text()
    screenshot(page, "search-error")


def test_shop_the_look_page(page, shop, tmp_path):
    from PIL import Image

    canvas = Image.new("RGB", (800, 800), (238, 238, 232))
    for index, name in enumerate(["Banana", "Arla-Standard-Milk"]):
        photo = Image.open(grocery_photos("val", name)[0]).convert("RGB").resize((340, 340))
        canvas.paste(photo, (30 + index * 420, 200))
    look = tmp_path / "look.jpg"
    canvas.save(look, "JPEG")
    page.goto(f"{shop}/look/")
    page.set_input_files("#look-image", str(look))
    submit(page, "#look-form button[type=submit]")
    page.wait_for_selector("#look-result")
    boxes = page.locator(".look-box")
    assert boxes.count() >= 1
    names = page.locator(".look-group .card-name").all_inner_texts()
    assert "Banana" in names or "Arla Standard Milk" in names, names
    boxes.first.click()
    assert "active" in boxes.first.get_attribute("class")
    screenshot(page, "shop-the-look")
    photo = page.locator("#look-photo-image").bounding_box()
    page.mouse.move(photo["x"] + photo["width"] * 0.55, photo["y"] + photo["height"] * 0.27)
    page.mouse.down()
    page.mouse.move(
        photo["x"] + photo["width"] * 0.95, photo["y"] + photo["height"] * 0.68, steps=6
    )
    page.mouse.up()
    page.wait_for_selector("#box-results:not([hidden]) .card-name")
    assert "Arla Standard Milk" in page.locator("#box-grid .card-name").all_inner_texts()
    screenshot(page, "shop-the-look-box")


def test_merchant_reviews_suggested_hotspots_in_the_admin(page, shop, tmp_path, django_user_model):
    from PIL import Image

    from visual_search.models import Look

    canvas = Image.new("RGB", (900, 600), (238, 238, 232))
    for index, name in enumerate(["Banana", "Arla-Standard-Milk", "Kiwi"]):
        photo = Image.open(grocery_photos("val", name)[0]).convert("RGB").resize((260, 260))
        canvas.paste(photo, (20 + index * 300, 170))
    upload = tmp_path / "breakfast.jpg"
    canvas.save(upload, "JPEG")
    django_user_model.objects.create_superuser("merchant", "m@example.com", "pw")
    page.goto(f"{shop}/admin/login/?next=/admin/visual_search/look/add/")
    page.fill("#id_username", "merchant")
    page.fill("#id_password", "pw")
    submit(page, "input[type=submit]")
    page.fill("#id_title", "Breakfast")
    page.set_input_files("#id_image", str(upload))
    submit(page, "input[name=_continue]")
    assert "suggested hotspot" in page.locator("ul.messagelist").inner_text()
    look = Look.objects.get(title="Breakfast")
    suggested = list(look.items.order_by("position"))
    assert len(suggested) >= 2
    assert page.locator(".vs-look__box--suggested").count() == len(suggested)
    screenshot(page, "admin-look-suggestions")

    # Row 0: take its second candidate and accept it; row 1: remove it.
    row = page.locator("#items-group tr.has_original").first
    candidate = row.locator(".vs-candidate").nth(1)
    chosen = suggested[0].alternatives[1]
    candidate.click()
    assert page.input_value("#id_items-0-product") == chosen["pk"]
    assert candidate.get_attribute("aria-pressed") == "true"
    page.uncheck("#id_items-0-suggested")
    page.check("#id_items-1-DELETE")
    submit(page, "input[name=_continue]")
    assert page.locator(".errorlist").count() == 0
    items = list(look.items.order_by("position"))
    assert len(items) == len(suggested) - 1
    assert str(items[0].product.pk) == chosen["pk"] and not items[0].suggested
    assert suggested[1].pk not in {item.pk for item in items}

    # A box the wrong way round is refused with the form's message, and nothing is saved.
    page.fill("#id_items-0-left", "0.9")
    page.fill("#id_items-0-right", "0.1")
    submit(page, "input[name=_continue]")
    page.locator(".errornote").wait_for()
    assert "0 <= left < right <= 1" in page.locator("#items-group .errorlist").inner_text()
    items[0].refresh_from_db()
    assert items[0].left < items[0].right

    # Shoppers see the accepted hotspot only, without the review boxes.
    page.goto(f"{shop}/look/")
    card = page.locator(".vs-look", has_text="Breakfast")
    assert card.locator(".vs-look__hotspot").count() == 1
    assert card.locator(".vs-look__box").count() == 0
    assert card.locator(".vs-look__label").inner_text() == chosen["name"]
