"""End to end in headless Chromium: kiosk capture -> uplink/outbox -> broker -> consumer -> dashboard
queue (live), the doctor labels it, and the paired phone page shows the feedback live; then the
patient and the doctor exchange messages, each side live."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from cloud.consumer import Consumer
from cloud.dashboard import create_app as create_dashboard
from device.kiosk import create_app as create_kiosk
from device.uplink import Uplink
from tests.support.broker import free_port
from tests.support.browser import chromium
from tests.support.dashboard import PASSWORD, make_users
from tests.support.link import cloud_config, device_config, sample_images, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture
def system(broker, tmp_path: Path):
    """Consumer, dashboard server and a kiosk app with its real uplink, all on the test broker."""
    port = free_port()
    dash_url = f"http://127.0.0.1:{port}"
    cfg = cloud_config(broker, tmp_path, SKINSCAN_DASHBOARD__SECRET_KEY_FILE=str(tmp_path / "secret_key"),
                       SKINSCAN_DASHBOARD__PUBLIC_URL=dash_url,
                       SKINSCAN_UPDATES__BUNDLE_DIR=str(tmp_path / "bundles"))
    consumer = Consumer(cfg, worker_id="e2e")
    stop = threading.Event()
    consumer_thread = threading.Thread(target=consumer.run, args=(stop,), daemon=True)
    consumer_thread.start()
    assert consumer.ready.wait(30), "consumer did not subscribe"

    dashboard = create_dashboard(cfg)
    state = dashboard.extensions["skinscan_dashboard"]
    make_users(state.storage)
    server = make_server("127.0.0.1", port, dashboard, threaded=True)
    server_thread = threading.Thread(target=server.serve_forever, daemon=True)
    server_thread.start()
    assert state.relay.subscribed.wait(10)

    uplink = Uplink(device_config(broker, "kiosk-a", tmp_path, SKINSCAN_KIOSK__PUBLIC_URL=dash_url))
    uplink.start()
    kiosk = create_kiosk(uplink.cfg, uplink, start=False)
    yield dash_url, kiosk, uplink, state
    uplink.close()
    state.stop()
    server.shutdown()
    stop.set()
    consumer_thread.join(15)


@pytest.fixture
def browser(tmp_path: Path):
    # Two tabs stay live at once (queue and phone): keep the background one's timers running.
    driver = chromium(tmp_path / "chromium-profile", "1280,900", "--disable-background-timer-throttling",
                      "--disable-renderer-backgrounding")
    yield driver
    driver.quit()


def test_capture_to_dashboard_to_phone_live(system, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    dash_url, kiosk_app, uplink, state = system
    wait = WebDriverWait(browser, 30)

    # The doctor logs in and leaves the triage queue open.
    browser.get(dash_url + "/queue")
    browser.find_element(By.ID, "username").send_keys("drhana")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "login-btn").click()
    wait.until(lambda d: d.find_element(By.ID, "live-state").get_attribute("data-state") == "live")
    browser.execute_script("window.notReloaded = true")
    dashboard_tab = browser.current_window_handle

    # At the kiosk: capture a photo, get the instant report, send it to a doctor.
    kiosk = kiosk_app.test_client()
    resp = kiosk.post("/api/capture", data={"image": (io.BytesIO(sample_images(1)[0]), "lesion.jpg")},
                      content_type="multipart/form-data")
    assert resp.status_code == 201, resp.get_json()
    capture_id = resp.get_json()["capture_id"]
    assert kiosk.post(f"/api/captures/{capture_id}/send", json={"lang": "en"}).status_code == 202
    pairing_url = kiosk_app.extensions["skinscan_kiosk"].pairing_url(kiosk_app.extensions["skinscan_kiosk"]
                                                                     .get(capture_id))
    assert pairing_url.startswith(dash_url + "/p/")

    # It appears in the queue without a reload, with both predictions.
    row = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f'tr[data-id="{capture_id}"]'))[0]
    assert browser.execute_script("return window.notReloaded") is True
    assert "%" in row.find_element(By.CSS_SELECTOR, ".device-pred").text
    assert "%" in row.find_element(By.CSS_SELECTOR, ".cloud-pred").text

    # The patient opens the phone page from the QR code (a second tab: the phone).
    browser.switch_to.new_window("tab")
    phone_tab = browser.current_window_handle
    browser.get(pairing_url)
    wait.until(lambda d: d.find_element(By.ID, "live").get_attribute("data-state") == "live")
    assert browser.find_element(By.ID, "disclaimer").text == "Screening aid, not a diagnosis."
    assert browser.find_elements(By.ID, "feedback-waiting")
    browser.execute_script("window.notReloaded = true")

    # The doctor opens the case and corrects/confirms the diagnosis.
    browser.switch_to.window(dashboard_tab)
    row.click()
    wait.until(lambda d: d.find_elements(By.ID, "review-form"))
    labels = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "review-label")).options]
    cloud_label = state.storage.case(capture_id)["label"]
    chosen = next(label for label in labels if label not in (cloud_label, "other"))
    Select(browser.find_element(By.ID, "review-label")).select_by_value(chosen)
    browser.find_element(By.ID, "review-text").send_keys("Please book an appointment this week.")
    browser.find_element(By.ID, "review-urgent").click()
    browser.find_element(By.ID, "review-submit").click()
    wait.until(lambda d: "Please book an appointment" in d.find_element(By.ID, "current-review").text)

    # The phone shows it without a reload; the kiosk has it too.
    browser.switch_to.window(phone_tab)
    wait.until(lambda d: d.find_elements(By.ID, "feedback-text")
               and d.find_element(By.ID, "feedback-text").text == "Please book an appointment this week.")
    assert "Urgent" in browser.find_element(By.ID, "feedback").text
    assert browser.execute_script("return window.notReloaded") is True
    wait_for(lambda: (uplink.state(capture_id)["feedback"] or None), 15, "the feedback at the kiosk")
    assert uplink.state(capture_id)["feedback"].label == chosen

    # The patient writes; the doctor's open case page shows it live and answers; the phone shows the answer.
    browser.find_element(By.ID, "chat-text").send_keys("Thank you. Should I avoid the sun?")
    browser.find_element(By.ID, "chat-send").click()
    wait.until(lambda d: "avoid the sun" in d.find_element(By.ID, "chat-log").text)
    browser.switch_to.window(dashboard_tab)
    wait.until(lambda d: "avoid the sun" in d.find_element(By.ID, "chat-log").text)
    browser.find_element(By.ID, "reply-text").send_keys("Yes, and use sunscreen.")
    browser.find_element(By.ID, "reply-submit").click()
    browser.switch_to.window(phone_tab)
    wait.until(lambda d: "use sunscreen" in d.find_element(By.ID, "chat-log").text)
    assert browser.execute_script("return window.notReloaded") is True
    assert "Medical staff" in browser.find_element(By.ID, "chat-log").text
