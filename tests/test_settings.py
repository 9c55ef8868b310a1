"""Configuration: defaults load, files and environment override, errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from settings import ConfigError, load_cloud, load_device
from settings.loader import PROJECT_ROOT


def test_defaults_work_on_a_laptop():
    dev = load_device(environ={})
    cloud = load_cloud(environ={})
    assert dev.device_id == "kiosk-01"
    assert dev.mqtt.port == cloud.mqtt.port == 1884
    assert dev.model.manifest == PROJECT_ROOT / "models" / "model.json"
    assert cloud.database.url.startswith("sqlite:///")


def test_environment_overrides_with_toml_literals():
    dev = load_device(environ={"SKINSCAN_MQTT__PORT": "8883", "SKINSCAN_MQTT__TLS": "true",
                               "SKINSCAN_DEVICE_ID": "kiosk-07", "SKINSCAN_CAMERA__URI": "/dev/video0",
                               "SKINSCAN_DASHBOARD__PORT": "1"})
    assert dev.mqtt.port == 8883 and dev.mqtt.tls is True
    assert dev.device_id == "kiosk-07"
    assert dev.camera.uri == "/dev/video0"


def test_file_overrides_defaults(tmp_path: Path):
    f = tmp_path / "device.toml"
    f.write_text('device_id = "field-3"\n[kiosk]\nlocale = "ar"\n[outbox]\npath = "/srv/outbox.db"\n')
    dev = load_device(f, environ={})
    assert dev.device_id == "field-3" and dev.kiosk.locale == "ar"
    assert dev.outbox.path == Path("/srv/outbox.db")
    assert dev.kiosk.port == 8080
    env_file = load_device(environ={"SKINSCAN_DEVICE_CONFIG": str(f)})
    assert env_file.device_id == "field-3"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"SKINSCAN_MQTT__PORT": "0"}, "mqtt.port must be greater than or equal to 1, got 0"),
        ({"SKINSCAN_MQTT__PORT": "70000"}, "mqtt.port must be less than or equal to 65535, got 70000"),
        ({"SKINSCAN_DEVICE_ID": "Kiosk 1"}, "device_id must match"),
        ({"SKINSCAN_CAMERA__SOURCE": "webcam"}, "camera.source"),
        ({"SKINSCAN_MQTT__PORTT": "1"}, "mqtt.portt is not a known setting"),
        ({"SKINSCAN_MQTT__TOPIC_PREFIX": "a b"}, "mqtt.topic_prefix"),
    ],
)
def test_invalid_values_have_clear_messages(environ, message):
    with pytest.raises(ConfigError) as info:
        load_device(environ=environ)
    assert message in str(info.value)


def test_missing_and_malformed_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_cloud(tmp_path / "nope.toml", environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt\nport = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_cloud(bad, environ={})


def test_kiosk_stream_and_preprocess_settings():
    dev = load_device(environ={})
    assert dev.preprocess.hair_removal is False
    assert dev.stream.ema_alpha == 0.3 and dev.stream.max_classify_hz == 15
    assert dev.camera.retry_s == 2.0 and dev.camera.uri == "tests/fixtures/stream"
    dev = load_device(environ={"SKINSCAN_STREAM__EMA_ALPHA": "1", "SKINSCAN_PREPROCESS__HAIR_REMOVAL": "true"})
    assert dev.stream.ema_alpha == 1.0 and dev.preprocess.hair_removal is True
    with pytest.raises(ConfigError, match=r"stream\.ema_alpha must be greater than 0"):
        load_device(environ={"SKINSCAN_STREAM__EMA_ALPHA": "0"})
    with pytest.raises(ConfigError, match=r"camera\.retry_s"):
        load_device(environ={"SKINSCAN_CAMERA__RETRY_S": "-1"})


def test_update_settings_are_documented_defaults_with_absolute_paths():
    dev = load_device(environ={"SKINSCAN_UPDATES__MAX_BUNDLE_BYTES": "2097152"})
    assert dev.updates.versions_dir == PROJECT_ROOT / "var" / "device" / "models"
    assert dev.updates.public_key.is_absolute() and dev.updates.ca_file is None
    assert dev.updates.max_bundle_bytes == 2097152
    cloud = load_cloud(environ={})
    assert cloud.updates.bundle_dir == PROJECT_ROOT / "var" / "cloud" / "bundles"
    assert 0 <= cloud.updates.max_recall_drop <= 1
    with pytest.raises(ConfigError, match=r"updates\.max_bundle_bytes"):
        load_device(environ={"SKINSCAN_UPDATES__MAX_BUNDLE_BYTES": "10"})
