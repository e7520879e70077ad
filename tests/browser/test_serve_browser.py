"""`ldm serve` in headless Chromium: every kind of tab, brush inpainting, progress, error toasts, localhost only.

Three tiny untrained models (text: Generate, Image to image, Inpaint; super-resolution: Upscale; semantic
maps: Semantic synthesis) are served by `ldm serve` subprocesses; one browser drives their pages. Every wait
is for a condition with a generous timeout, never for a duration.
"""

import io
import json
import urllib.parse
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")

from tests.serve_models import save_models

pytestmark = pytest.mark.browser

WAIT_S = 120  # for a page, a run or a toast; sampling on 2 busy cores can be slow
UNREADABLE = ("Image: the uploaded file is not a readable image (not an image (unknown format)); "
              "upload a PNG or JPEG image")


@pytest.fixture(scope="module")
def servers(serve, tmp_path_factory):
    return serve(save_models(tmp_path_factory.mktemp("models"), ("text", "upscale", "semantic")))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Uploads: a noise photo, a white image, a small photo to upscale, a class-id map and a text file named .png."""
    import torch

    from ldmkit.pipelines.semantic import save_map_png

    root = tmp_path_factory.mktemp("uploads")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(root / "photo.png")
    Image.new("RGB", (64, 64), "white").save(root / "white.png")
    Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).save(root / "small.png")
    ids = torch.zeros(16, 16, dtype=torch.long)
    ids[4:12, 4:12] = 2
    save_map_png(ids, root / "map.png")
    (root / "not-an-image.png").write_text("a text file, renamed\n")
    return root


@pytest.fixture(autouse=True)
def browser_stays_clean_and_local(driver):
    """After each test: nothing SEVERE in the console, and no request to anywhere but 127.0.0.1."""
    yield
    severe = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe
    assert not _off_machine_requests(driver)


def _off_machine_requests(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] in ("Network.requestWillBeSent", "Network.webSocketCreated"):
            urls.append(message["params"].get("request", {}).get("url") or message["params"].get("url"))
    remote = [url for url in urls if urllib.parse.urlsplit(url).scheme in ("http", "https", "ws", "wss")]
    return [url for url in remote if urllib.parse.urlsplit(url).hostname != "127.0.0.1"]


# --- driving the page -------------------------------------------------------------------------------------------------

def _wait(driver, condition, message):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # An element the page re-renders between finding and reading it is stale: look again at the next poll.
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
                         ).until(lambda _: condition(), message)


def _find(driver, css):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def _open(driver, server):
    driver.get(server.url)
    _wait(driver, lambda: driver.find_elements("css selector", "[id$='-run']"), "the page did not load")


def _tab(driver, label):
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, f"//button[@role='tab' and normalize-space()='{label}']").click()


def _type(driver, elem_id, text):
    """Replace the value of a widget's text or number box."""
    from selenium.webdriver.common.keys import Keys

    box = _find(driver, f"#{elem_id} textarea, #{elem_id} input[type=number]")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(text), Keys.TAB)
    return box


def _upload(driver, elem_id, path):
    _find(driver, f"#{elem_id} input[type=file]").send_keys(str(path))


def _caption(driver) -> str:
    return _find(driver, "#ldm-caption [data-testid='markdown']").text


def _run(driver, task, expected_caption):
    """Press the tab's button and wait for the caption of the new results."""
    before = _caption(driver)
    _find(driver, f"#ldm-{task}-run").click()
    _wait(driver, lambda: _caption(driver) != before and _caption(driver).startswith(expected_caption),
          f"no new caption starting {expected_caption!r} after pressing the {task} button")


def _gallery(driver) -> list:
    """The gallery's images (their elements), in order."""
    return driver.find_elements("css selector", "#ldm-gallery .grid-container img")


def _image(element) -> Image.Image:
    with urllib.request.urlopen(element.get_attribute("src"), timeout=30) as response:
        return Image.open(io.BytesIO(response.read())).convert("RGB")


def _toast(driver, text):
    """Wait for an error toast saying exactly ``text``."""
    def shown():
        return [toast for toast in driver.find_elements("css selector", "[data-testid='toast-body']")
                if toast.text.splitlines()[-1:] == [text]]
    return _wait(driver, shown, f"no error toast saying {text!r}")


def _server_errors(server) -> list[str]:
    log = server.log()
    assert "Traceback" not in log, log
    return [line for line in log.splitlines() if line.startswith("error: ")]


# --- the text model: Generate, Image to image, Inpaint ----------------------------------------------------------------

def test_generate_shows_a_progress_bar_then_the_images(driver, servers):
    _open(driver, servers["text"])
    driver.execute_script("""
        window.progressSeen = [];
        new MutationObserver(() => {
            const bar = document.querySelector('#ldm-caption [role=progressbar]');
            if (bar) window.progressSeen.push(bar.getAttribute('aria-label'));
        }).observe(document.querySelector('#ldm-caption'), {subtree: true, childList: true, attributes: true});
    """)
    _type(driver, "ldm-prompt", "a red circle")
    _type(driver, "ldm-steps", 200)
    _type(driver, "ldm-n", 2)
    _run(driver, "generate", "Generate: 2 images of 16x16 px, seeds 0–1")
    assert len(_gallery(driver)) == 2
    seen = driver.execute_script("return window.progressSeen")
    assert any(label and label.startswith("step ") and label.endswith("/200") for label in seen), seen


def test_out_of_range_seed_is_a_toast_and_steps_stop_at_the_sliders_end(driver, servers):
    _open(driver, servers["text"])
    _type(driver, "ldm-prompt", "a blue square")
    steps = _type(driver, "ldm-steps", 100000)
    _wait(driver, lambda: steps.get_attribute("value") == "200", "steps past the slider's end were not set to 200")
    _type(driver, "ldm-steps", 2)
    _run(driver, "generate", "Generate: 4 images")
    _type(driver, "ldm-seed", 2**70)
    _find(driver, "#ldm-generate-run").click()
    _toast(driver, f"Seed must be a number from 0 to {2**53 - 1}; got {2**70}")
    assert len(_gallery(driver)) == 4 and all(image.is_displayed() for image in _gallery(driver))
    assert f"error: Seed must be a number from 0 to {2**53 - 1}; got {2**70}" in _server_errors(servers["text"])


def test_img2img_previews_the_upload_readably_and_redraws_it(driver, servers, files):
    _open(driver, servers["text"])
    _type(driver, "ldm-prompt", "a red circle")
    _type(driver, "ldm-steps", 2)
    _tab(driver, "Image to image")
    _upload(driver, "ldm-img2img-image", files / "photo.png")
    preview = _wait(driver, lambda: driver.find_elements("css selector", "#ldm-img2img-image img"), "no preview")[0]
    _wait(driver, lambda: preview.size["height"] > 0, "the preview did not render")
    width, height = preview.size["width"], preview.size["height"]
    assert height >= 200 and abs(width / height - 64 / 48) < 0.05, preview.size  # tall, aspect kept
    _type(driver, "ldm-n", 2)
    _run(driver, "img2img", "Image to image: 2 images of 20x16 px")  # fitted: shorter side 16, sides even


def test_a_corrupt_upload_is_a_one_line_toast_and_the_gallery_stays(driver, servers, files):
    _open(driver, servers["text"])
    _type(driver, "ldm-prompt", "a red circle")
    _type(driver, "ldm-steps", 2)
    _run(driver, "generate", "Generate: 4 images")
    _tab(driver, "Image to image")
    _upload(driver, "ldm-img2img-image", files / "not-an-image.png")
    _toast(driver, UNREADABLE)  # refused on upload
    for toast in driver.find_elements("css selector", "[data-testid='toast-close']"):
        toast.click()
    _find(driver, "#ldm-img2img-run").click()
    _toast(driver, UNREADABLE)  # and again on the button
    assert _caption(driver).startswith("Generate: 4 images")
    assert len(_gallery(driver)) == 4 and all(image.is_displayed() for image in _gallery(driver))
    assert f"error: {UNREADABLE}" in _server_errors(servers["text"])


def _painted_fraction(driver, canvas) -> float:
    """How much of the editor's canvas shows the brush's magenta (the pointer moved off it first)."""
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).move_to_element(_find(driver, "#ldm-caption")).perform()  # no brush cursor in the shot
    pixels = np.asarray(Image.open(io.BytesIO(canvas.screenshot_as_png)).convert("RGB")).astype(int)
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return float(((red > 200) & (blue > 200) & (green < 150)).mean())


def _paint_stroke(driver, canvas) -> bool:
    """Drag the brush across the middle of the canvas; whether a broad stroke shows (the editor may still be
    starting, or its brush not yet sized to the upload: the caller paints again then)."""
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).move_to_element(canvas).move_by_offset(-30, 0).click_and_hold().move_by_offset(30, 0) \
        .move_by_offset(30, 0).release().perform()
    return _painted_fraction(driver, canvas) > 0.01


def test_inpaint_fills_a_stroke_painted_with_the_brush(driver, servers, files):
    _open(driver, servers["text"])
    _type(driver, "ldm-prompt", "a red circle")
    _type(driver, "ldm-steps", 2)
    _type(driver, "ldm-n", 1)
    _tab(driver, "Inpaint")
    _upload(driver, "ldm-inpaint-image", files / "white.png")
    canvas = _wait(driver, lambda: driver.find_elements("css selector", "#ldm-inpaint-image canvas"), "no canvas")[0]
    _wait(driver, lambda: _paint_stroke(driver, canvas), "the brush left no broad magenta stroke on the canvas")
    _run(driver, "inpaint", "Inpaint: 1 image of 16x16 px")
    [result] = _gallery(driver)
    pixels = np.asarray(_image(result))
    changed = np.any(pixels != 255, axis=-1)
    assert changed[6:10, 6:10].any(), "the painted stroke was not filled in"
    assert not changed[[0, -1]].any() and not changed[:, [0, -1]].any(), "pixels outside the stroke changed"


# --- the image-conditioned models: Upscale, Semantic synthesis --------------------------------------------------------

def test_upscale_doubles_the_upload(driver, servers, files):
    _open(driver, servers["upscale"])
    _type(driver, "ldm-steps", 2)
    _upload(driver, "ldm-upscale-image", files / "small.png")
    _run(driver, "upscale", "Upscale: 1 image of 16x12 px")


def test_semantic_synthesis_follows_the_map(driver, servers, files):
    _open(driver, servers["semantic"])
    _type(driver, "ldm-steps", 2)
    _type(driver, "ldm-n", 2)
    _upload(driver, "ldm-synthesize-segmentation-map", files / "map.png")
    uploaded = "#ldm-synthesize-segmentation-map [aria-label='map.png']"
    _wait(driver, lambda: driver.find_elements("css selector", uploaded), "the map did not upload")
    _run(driver, "synthesize", "Semantic synthesis: 2 images of 16x16 px")
    assert not _server_errors(servers["semantic"])
