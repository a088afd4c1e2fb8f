"""``camkit report``'s page in a real browser: Debian's chromium and chromedriver, driven by selenium.

Nothing is installed here: without chromium, chromedriver or selenium the test is skipped, saying
which is missing and how to install it (``apt-get install chromium chromium-driver``,
``pip install selenium``). One page load from ``file://``, a few interactions (about 3 s).
"""
from __future__ import annotations

import io
import shutil
import time

import numpy as np
import pytest
from PIL import Image
from report_fixtures import CLASSES, IMAGES, make_export

from camkit.report import build_report

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
DRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select
    HAVE_SELENIUM = True
except ImportError:  # pragma: no cover - depends on the machine
    HAVE_SELENIUM = False

MISSING = [what for what, ok in (("chromium (apt-get install chromium)", CHROMIUM),
                                 ("chromedriver (apt-get install chromium-driver)", DRIVER),
                                 ("selenium (pip install selenium)", HAVE_SELENIUM)) if not ok]
pytestmark = pytest.mark.skipif(bool(MISSING), reason="the browser test needs " + ", ".join(MISSING))


def _driver():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1000", "--allow-file-access-from-files", "--no-first-run"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)


def _wait(driver, script: str, timeout: float = 5.0):
    end = time.time() + timeout
    while time.time() < end:
        got = driver.execute_script(script)
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


def _names(driver):
    return [e.get_attribute("textContent") for e in driver.find_elements(By.CSS_SELECTOR, "#grid .card .nm")]


ALL_LOADED = ("return [...document.querySelectorAll(arguments[0] || 'img')].every("
              "i => i.complete && i.naturalWidth > 0)")


def test_the_report_works_in_chromium_from_file_urls(tmp_path):
    photos = tmp_path / "photos"
    a = make_export(tmp_path / "cams_layercam", photos)
    b = make_export(tmp_path / "cams_gradcam", photos, method="gradcam", shift=0.2)
    rep = build_report(a, [b], labels=photos / "labels.csv", page_size=4)
    # the foreground share of each mask, read from the PNGs themselves
    fg = {rel: float((np.asarray(Image.open(a / "masks" / f"{rel}.png")) > 0).mean()) for rel, _, _ in IMAGES}
    by_fg = sorted(fg, key=lambda r: -fg[r])
    driver = _driver()
    try:
        driver.get(rep.path.resolve().as_uri())
        _wait(driver, "return document.body.dataset.ready === '1'")
        assert driver.find_element(By.ID, "count").text == f"{len(IMAGES) + 1} of {len(IMAGES) + 1} images"
        assert driver.find_element(By.ID, "pageno").text == "page 1 of 3"
        first_page = _names(driver)
        assert first_page == [r for r, _, _ in IMAGES[:4]]  # file order; odd names shown as text
        driver.find_element(By.ID, "next").click()
        assert _names(driver) == [r for r, _, _ in IMAGES[4:8]]  # <script> names are text, not markup
        # filter: true class (from the labels file), then predicted class, then a name search
        Select(driver.find_element(By.ID, "f-true")).select_by_value(str(CLASSES.index("sun flower")))
        assert _names(driver) == [r for r, t, _ in IMAGES if t == 2]
        Select(driver.find_element(By.ID, "f-pred")).select_by_value("0")
        assert _names(driver) == [r for r, t, p in IMAGES if t == 2 and p == 0]
        Select(driver.find_element(By.ID, "f-true")).select_by_value("-1")
        Select(driver.find_element(By.ID, "f-pred")).select_by_value("-1")
        driver.find_element(By.ID, "q").send_keys("FAÇADE")
        assert _names(driver) == ["odd/façade ß \"q\" 'q'"]
        driver.find_element(By.ID, "q").clear()
        driver.find_element(By.ID, "q").send_keys(" ", Keys.BACKSPACE)  # an input event with the empty box
        # sort by foreground share, high first, then low first (missing values last either way)
        Select(driver.find_element(By.ID, "size")).select_by_value("48")
        Select(driver.find_element(By.ID, "sort")).select_by_value("fg")
        assert _names(driver) == by_fg + ["plain/broken"]
        Select(driver.find_element(By.ID, "dir")).select_by_value("1")
        assert _names(driver) == by_fg[::-1] + ["plain/broken"]
        driver.execute_script("document.getElementById('grid').lastElementChild.scrollIntoView()")  # lazy: in view
        _wait(driver, ALL_LOADED, 5)  # the thumbnails load from relative file:// links
        assert len(driver.find_elements(By.CSS_SELECTOR, "#grid .card img")) == 2 * len(IMAGES)
        driver.find_element(By.ID, "masks").click()  # the pseudo-mask toggle adds one thumbnail per card
        assert len(driver.find_elements(By.CSS_SELECTOR, "#grid .card img.mask")) == len(IMAGES)
        # enlarge: the photo, the mask and each method's map, all loaded; Esc closes
        driver.find_elements(By.CSS_SELECTOR, "#grid .card")[0].click()
        assert driver.find_element(By.ID, "modal").is_displayed()
        assert driver.find_element(By.ID, "m-title").text == by_fg[-1]
        assert len(driver.find_elements(By.CSS_SELECTOR, "#m-views img")) == 4
        _wait(driver, ALL_LOADED.replace("arguments[0] || 'img'", "'#m-views img'"), 5)
        shot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
        driver.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
        assert not driver.find_element(By.ID, "modal").is_displayed()
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, errors
    finally:
        driver.quit()
    px = np.asarray(shot.resize((350, 250)))
    assert px.std() > 20 and len(np.unique(px.reshape(-1, 3), axis=0)) > 500  # not blank: a page with maps
