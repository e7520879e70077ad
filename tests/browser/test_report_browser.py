"""`ldm report`'s page in headless Chromium: it opens from the disk with no network, every plot and grid
loads and is drawn, and the console stays clean."""

import json
import urllib.parse

import pytest

pytest.importorskip("matplotlib")

from ldmkit.cli.main import main as ldm  # noqa: E402
from tests.unit.test_report import TINY as REPORT_RUN  # noqa: E402

TINY = [*REPORT_RUN, "train.steps=4"]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    run = tmp_path_factory.mktemp("report") / "run"
    assert ldm(["train", "autoencoder", *TINY, f"train.out={run}"]) == 0
    assert ldm(["report", str(run)]) == 0
    return run / "report.html"


def test_the_report_opens_offline_with_every_image_drawn(driver, page):
    driver.get(page.as_uri())
    assert "report" in driver.title.lower() or driver.find_elements("css selector", "h1")
    images = driver.find_elements("css selector", "img")
    assert len(images) >= 4  # the three plots and at least one grid
    for image in images:
        loaded = driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image)
        assert loaded and loaded > 0, image.get_attribute("src")
        assert image.size["width"] > 0 and image.size["height"] > 0  # laid out, not hidden
    headings = " ".join(h.text for h in driver.find_elements("css selector", "h1, h2, h3"))
    assert "Starts and hardware" in headings
    severe = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe
    requested = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requested.append(message["params"]["request"]["url"])
    schemes = {urllib.parse.urlsplit(url).scheme for url in requested}
    assert "file" in schemes  # the page and its images came from the disk…
    assert not schemes & {"http", "https", "ws", "wss"}, requested  # …and nothing from a network
