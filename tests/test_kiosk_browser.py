"""End to end in a real headless Chromium: stream from a video file, capture, crop, see the report."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from device.kiosk import create_app
from settings import load_device
from tests.support import samples
from tests.support.browser import chromium

pytestmark = [pytest.mark.browser, pytest.mark.slow]



@pytest.fixture
def kiosk_url(tmp_path: Path, model_manifest: Path):
    video = samples.write_video(tmp_path / "clinic.avi", count=60, fps=25)
    cfg = load_device(environ={"SKINSCAN_CAMERA__SOURCE": "opencv", "SKINSCAN_CAMERA__URI": str(video),
                               "SKINSCAN_MODEL__MANIFEST": str(model_manifest), "SKINSCAN_MODEL__THREADS": "1",
                               "SKINSCAN_STREAM__MAX_CLASSIFY_HZ": "5"})
    app = create_app(cfg)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    app.extensions["skinscan_kiosk"].stop()


@pytest.fixture
def browser(tmp_path: Path):
    driver = chromium(tmp_path / "chromium-profile", "800,480")
    # exactly the Pi touch screen's viewport (--window-size would include the window frame)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 800, "height": 480, "deviceScaleFactor": 1, "mobile": False})
    yield driver
    driver.quit()


def test_stream_capture_crop_and_report(kiosk_url: str, browser):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 30)
    browser.get(kiosk_url + "/?lang=en")
    live = browser.find_element(By.ID, "live")
    # the MJPEG stream is playing: the <img> has frames and the live label is filled in
    wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", live) == 640)
    wait.until(lambda d: "%" in d.find_element(By.ID, "live-label").text)
    assert browser.find_element(By.ID, "disclaimer").text == "Screening aid, not a diagnosis."
    # fits the 800x480 touch screen without scrolling the page
    assert browser.execute_script("return document.documentElement.scrollHeight") <= 480
    assert browser.execute_script("return document.documentElement.scrollWidth") <= 800

    browser.find_element(By.ID, "capture-btn").click()
    wait.until(lambda d: d.find_element(By.ID, "report").is_displayed())
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#report-top tr.top-row")) >= 2)
    rows = browser.find_elements(By.CSS_SELECTOR, "#report-top tr.top-row")
    assert all("%" in row.text for row in rows)
    assert browser.find_element(By.ID, "report-headline").text
    assert not live.is_displayed() and browser.find_element(By.ID, "still").is_displayed()

    # drag a crop rectangle on the still and analyse that area
    canvas = browser.find_element(By.ID, "crop-canvas")
    ActionChains(browser).move_to_element_with_offset(canvas, -120, -100).click_and_hold() \
        .move_by_offset(200, 160).release().perform()
    browser.find_element(By.ID, "analyse-btn").click()
    wait.until(lambda d: d.execute_script("return current.report.user_crop") is True)
    x0, y0, x1, y1 = browser.execute_script("return current.report.box")
    assert 255 <= x1 - x0 <= 280 and 205 <= y1 - y0 <= 222  # 200x160 screen px = 267x213 image px
    assert browser.find_element(By.ID, "report-headline").text

    # no uplink: "send to a doctor" says the kiosk is not connected
    browser.find_element(By.ID, "send-btn").click()
    wait.until(lambda d: d.find_element(By.ID, "upload-state").get_attribute("data-state") == "offline")
    assert "not connected to the cloud service" in browser.find_element(By.ID, "report-error").text.lower()

    # the printable report opens with the same top classes and the disclaimer
    href = browser.find_element(By.ID, "print-link").get_attribute("href")
    browser.get(href)
    assert len(browser.find_elements(By.CSS_SELECTOR, "tr.top-row")) == len(rows)
    assert "Screening aid, not a diagnosis." in browser.find_element(By.TAG_NAME, "footer").text

    # back on the kiosk page, "retake" returns to the live view
    browser.back()
    browser.find_element(By.ID, "capture-btn").click()
    wait.until(lambda d: d.find_element(By.ID, "report").is_displayed())
    browser.find_element(By.ID, "retake-btn").click()
    live = browser.find_element(By.ID, "live")
    wait.until(lambda d: live.is_displayed() and d.execute_script("return arguments[0].naturalWidth", live) == 640)


def test_arabic_layout_is_right_to_left(kiosk_url: str, browser):
    from selenium.webdriver.common.by import By

    browser.get(kiosk_url + "/?lang=ar")
    assert browser.find_element(By.TAG_NAME, "html").get_attribute("dir") == "rtl"
    view = browser.find_element(By.ID, "view").rect
    panel = browser.find_element(By.ID, "panel").rect
    assert view["x"] > panel["x"]  # the live view sits on the right in Arabic
    assert browser.find_element(By.ID, "capture-btn").text == "التقاط"


def test_the_page_shows_the_model_version_and_a_refused_update(tmp_path: Path, model_manifest: Path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from contract import ModelAnnouncement, signing, utc_now
    from contract.signing import generate_keypair
    from device.updater import ModelSlot, Updater

    generate_keypair(tmp_path / "cloud.pem", tmp_path / "cloud.pub")
    generate_keypair(tmp_path / "other.pem", tmp_path / "other.pub")
    updater = Updater(ModelSlot(), tmp_path / "versions", (tmp_path / "cloud.pub").read_bytes(),
                      factory_manifest=model_manifest)
    version = updater.load_active().version
    forged = ModelAnnouncement(version="v-forged", url="http://127.0.0.1:9/models/v-forged/bundle.zip",
                               sha256="a" * 64, signature=signing.sign((tmp_path / "other.pem").read_bytes(),
                                                                       "v-forged", "a" * 64),
                               published_at=utc_now())
    assert updater.handle(forged).outcome == "rejected"
    folder = tmp_path / "stream"
    samples.write_folder(folder, 4)
    cfg = load_device(environ={"SKINSCAN_CAMERA__SOURCE": "folder", "SKINSCAN_CAMERA__URI": str(folder),
                               "SKINSCAN_MODEL__MANIFEST": str(model_manifest), "SKINSCAN_MODEL__THREADS": "1",
                               "SKINSCAN_STREAM__MAX_CLASSIFY_HZ": "5"})
    app = create_app(cfg, updater=updater)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        browser.get(f"http://127.0.0.1:{server.server_port}/?lang=en")
        line = browser.find_element(By.ID, "model-line")
        WebDriverWait(browser, 30).until(lambda _d: "refused" in line.text)
        assert line.text.startswith(f"Model version: {version}")
        assert "update refused (v-forged): bad signature" in line.text
        assert browser.execute_script("return document.documentElement.scrollHeight") <= 480
    finally:
        server.shutdown()
        app.extensions["skinscan_kiosk"].stop()
        updater.close()
