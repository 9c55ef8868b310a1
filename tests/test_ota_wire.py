"""The self-learning loop wired end to end through the real broker: `skinscan-cloud retrain` ->
registry -> signed bundle -> retained announcement -> the real device uplink and updater -> the
kiosk's live stream switches model without stopping; bad updates are refused on the same path;
a device that was offline, or a broker that lost its retained message, catches up.

The retraining step itself is the session's ``tiny_lineage`` (models.retrain run once per session):
the cloud's retrain command is handed a trainer that checks the arguments it would pass to
models.retrain and puts that already retrained candidate where models.retrain would write it."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from cloud import bundles
from cloud.model_updates import ModelUpdateError, publish_announcement, republish_current, retrain_and_release
from cloud.registry import Registry
from contract import DeviceStatus, ModelAnnouncement, Topics, decode
from contract.signing import generate_keypair
from device.kiosk import create_app
from device.updater import Updater
from device.uplink import Uplink
from settings import load_cloud, load_device
from tests.support import samples
from tests.support.link import wait_for
from tests.support.ota import serve_bundles

pytestmark = pytest.mark.slow
TOPICS = Topics()


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    folder = tmp_path / "keys"
    generate_keypair(folder / "cloud.pem", folder / "cloud.pub")
    generate_keypair(folder / "other.pem", folder / "other.pub")
    return folder


def cloud_env(broker, tmp_path: Path, keys: Path, lineage, base_url: str) -> dict[str, str]:
    return {
        "SKINSCAN_DATA_DIR": str(tmp_path / "cloud"),
        "SKINSCAN_MQTT__PORT": str(broker.port),
        "SKINSCAN_MQTT__USERNAME": "cloud",
        "SKINSCAN_MQTT__PASSWORD_FILE": str(broker.data_dir / "credentials" / "cloud.secret"),
        "SKINSCAN_MODEL__MANIFEST": str(lineage.parent / "model.json"),  # the factory model
        "SKINSCAN_DATABASE__URL": f"sqlite:///{tmp_path / 'cloud' / 'cloud.sqlite3'}",
        "SKINSCAN_STORAGE__IMAGE_DIR": str(tmp_path / "cloud" / "images"),
        "SKINSCAN_UPDATES__SIGNING_KEY_FILE": str(keys / "cloud.pem"),
        "SKINSCAN_UPDATES__BUNDLE_DIR": str(tmp_path / "cloud" / "bundles"),
        "SKINSCAN_UPDATES__MODELS_DIR": str(tmp_path / "cloud" / "models"),
        "SKINSCAN_UPDATES__TRAINING_DATA": str(lineage.data),
        "SKINSCAN_UPDATES__BASE_URL": base_url,
    }


def device_config(broker, device_id: str, tmp_path: Path, keys: Path, lineage):
    folder = tmp_path / "stream"
    if not folder.exists():
        samples.write_folder(folder, 4, 320, 240)
    root = tmp_path / device_id
    return load_device(environ={
        "SKINSCAN_DEVICE_ID": device_id,
        "SKINSCAN_DATA_DIR": str(root),
        "SKINSCAN_MQTT__PORT": str(broker.port),
        "SKINSCAN_MQTT__USERNAME": device_id,
        "SKINSCAN_MQTT__PASSWORD_FILE": str(broker.data_dir / "credentials" / f"{device_id}.secret"),
        "SKINSCAN_MQTT__KEEPALIVE_S": "5",
        "SKINSCAN_MODEL__MANIFEST": str(lineage.parent / "model.json"),
        "SKINSCAN_MODEL__THREADS": "1",
        "SKINSCAN_OUTBOX__PATH": str(root / "outbox.sqlite3"),
        "SKINSCAN_OUTBOX__RETRY_INITIAL_S": "1.0",
        "SKINSCAN_OUTBOX__RETRY_MAX_S": "2.0",
        "SKINSCAN_CAMERA__SOURCE": "folder",
        "SKINSCAN_CAMERA__URI": str(folder),
        "SKINSCAN_CAMERA__FPS": "20",
        "SKINSCAN_UPDATES__PUBLIC_KEY": str(keys / "cloud.pub"),
        "SKINSCAN_UPDATES__VERSIONS_DIR": str(root / "models"),
        "SKINSCAN_UPDATES__DOWNLOAD_TIMEOUT_S": "10",
        "SKINSCAN_KIOSK__PUBLIC_URL": "https://care.example.org",
    })


def trainer_from(lineage, calls: list[list[str]]):
    """Stands in for ``models.retrain.main``: checks the command line and puts the session's retrained
    child (tiny-2, trained by models.retrain from tiny-1 on ``lineage.extra``) where it would write it."""

    def train(argv: list[str]) -> int:
        calls.append(argv)
        opts = dict(zip(argv[::2], argv[1::2], strict=False))
        assert Path(opts["--current"]) == lineage.parent / "model.json"
        assert Path(opts["--data"]) == lineage.data and Path(opts["--extra"]) == lineage.extra
        assert opts["--version"] == "tiny-2"
        shutil.copytree(lineage.child, opts["--out"])
        return 0

    return train


class Watcher:
    """A cloud-side MQTT client recording what arrives on some topics (statuses, announcements)."""

    def __init__(self, broker, user: str, topics: list[str]) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-watch-{time.monotonic_ns()}",
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(user, broker.secret(user))
        self.client.on_message = lambda _c, _u, msg: self.messages.append((msg.topic, msg.payload))
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()
        self.client.subscribe([(t, 1) for t in topics])
        assert subscribed.wait(5)

    def statuses(self) -> list[DeviceStatus]:
        return [decode(p, expect=DeviceStatus) for t, p in self.messages if t.endswith("/status") and p]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Device:
    """A kiosk as `skinscan-device kiosk` builds it: updater from config, real uplink, kiosk app."""

    def __init__(self, cfg, page: bool = True) -> None:
        self.updater = Updater.from_config(cfg)
        self.uplink = Uplink(cfg, self.updater)
        self.uplink.start()
        self.app = create_app(cfg, self.uplink, updater=self.updater) if page else None
        self.kiosk = self.app.extensions["skinscan_kiosk"] if page else None

    def api_model(self) -> dict:
        return self.app.test_client().get("/api/live").get_json()["model"]

    def close(self) -> None:
        if self.kiosk is not None:
            self.kiosk.stop()
        self.uplink.close()
        self.updater.close()


def test_retrain_promote_announce_and_a_running_kiosk_swaps_without_dropping_the_stream(
        broker, tiny_lineage, tmp_path: Path, keys: Path, caplog):
    calls: list[list[str]] = []
    with serve_bundles(tmp_path / "cloud" / "bundles") as base:
        cloud = load_cloud(environ=cloud_env(broker, tmp_path, keys, tiny_lineage, base))
        watcher = Watcher(broker, "cloud", [TOPICS.status("kiosk-a")])
        device = Device(device_config(broker, "kiosk-a", tmp_path, keys, tiny_lineage))
        try:
            kiosk = device.kiosk
            wait_for(lambda: device.uplink.stats()["connected"], 10, "the kiosk's uplink to connect")
            wait_for(lambda: kiosk.live.result is not None, 20, "live classification")
            assert device.api_model()["version"] == "tiny-1"

            # Sample the live stream all through the update: it must keep classifying, never fail.
            seen: list[tuple[int, str | None, str | None]] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.01):
                    result = kiosk.live.result
                    seen.append((kiosk.live.classified, result.model_version if result else None,
                                 kiosk.live.model_error))

            sampler = threading.Thread(target=sample)
            sampler.start()
            try:
                outcome = retrain_and_release(cloud, tiny_lineage.extra, by="dr.amal", version="tiny-2",
                                              trainer=trainer_from(tiny_lineage, calls))
                assert outcome.record.status == "promoted" and outcome.record.parent == "tiny-1"
                assert outcome.announcement.url == f"{base}/models/tiny-2/bundle.zip"
                wait_for(lambda: device.updater.slot.version == "tiny-2", 60, "the kiosk to install tiny-2")
                switched_at = kiosk.live.classified
                wait_for(lambda: kiosk.live.classified >= switched_at + 5 and
                         kiosk.live.result.model_version == "tiny-2", 30, "live frames on tiny-2")
            finally:
                stop.set()
                sampler.join(5)

            assert len(calls) == 1
            counts = [c for c, _, _ in seen]
            assert counts == sorted(counts) and counts[-1] > counts[0]
            assert all(error is None for _, _, error in seen), {e for _, _, e in seen}
            versions = [v for _, v, _ in seen]
            assert versions[0] == "tiny-1" and versions[-1] == "tiny-2"
            assert versions == sorted(versions)  # one switch, never back
            assert "live classification failed" not in caplog.text
            # The new model's classes (delta is new) reach the live view.
            assert set(kiosk.live.result.probabilities) == {"alpha", "beta", "gamma", "delta"}

            model = device.api_model()
            assert model["ok"] and model["version"] == "tiny-2"
            assert model["update"]["last_update"]["outcome"] == "installed"
            assert model["update"]["last_update"]["version"] == "tiny-2"
            page = device.app.test_client().get("/").get_data(as_text=True)
            assert 'id="model-line"' in page
            report = device.app.test_client().post("/api/capture").get_json()["report"]
            assert report["model_version"] == "tiny-2"
            wait_for(lambda: any(s.model_version == "tiny-2" for s in watcher.statuses()), 10,
                     "a status carrying the new model version")
            assert watcher.statuses()[0].model_version == "tiny-1"
        finally:
            device.close()
            watcher.close()

    registry = Registry.connect(cloud.database.url)
    rows = {r.version: r for r in registry.all()}
    assert rows["tiny-1"].status == "promoted" and "factory" in rows["tiny-1"].reason
    assert rows["tiny-2"].status == "promoted" and rows["tiny-2"].promoted_by == "dr.amal"
    assert registry.current().version == "tiny-2"
    assert (cloud.updates.models_dir / "tiny-2" / "model.json").is_file()


def test_an_offline_kiosk_catches_up_and_a_broker_that_lost_the_announcement_gets_it_again(
        broker, tiny_lineage, tmp_path: Path, keys: Path, monkeypatch, capsys):
    with serve_bundles(tmp_path / "cloud" / "bundles") as base:
        env = cloud_env(broker, tmp_path, keys, tiny_lineage, base)
        cloud = load_cloud(environ=env)
        # Promoted and announced while no kiosk is connected.
        retrain_and_release(cloud, tiny_lineage.extra, by="dr.amal", version="tiny-2",
                            trainer=trainer_from(tiny_lineage, []))

        device = Device(device_config(broker, "kiosk-a", tmp_path, keys, tiny_lineage), page=False)
        try:
            assert device.updater.slot.version == "tiny-1"  # from disk, before the broker answers
            wait_for(lambda: device.updater.slot.version == "tiny-2", 60, "the offline kiosk to catch up")
            # A reconnect brings the retained announcement again: a no-op.
            device.uplink.stop()
            device.updater.last_result = None
            device.uplink.start()
            wait_for(lambda: device.updater.last_result is not None, 20, "the announcement after reconnecting")
            assert device.updater.last_result.outcome == "unchanged"
        finally:
            device.close()

        # The broker loses its retained message (cleared here): a new kiosk gets nothing ...
        clear = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="clear", protocol=mqtt.MQTTv5)
        clear.username_pw_set("cloud", broker.secret("cloud"))
        clear.connect("127.0.0.1", broker.port)
        clear.loop_start()
        clear.publish(TOPICS.model_current, b"", qos=1, retain=True).wait_for_publish(5)
        clear.disconnect()
        clear.loop_stop()
        other = Device(device_config(broker, "kiosk-b", tmp_path, keys, tiny_lineage), page=False)
        try:
            wait_for(lambda: other.uplink.stats()["connected"], 10, "kiosk-b to connect")
            time.sleep(1.0)
            assert other.updater.slot.version == "tiny-1"
            # ... until the cloud announces the current model again.
            from cloud.cli import main

            for key, value in env.items():
                monkeypatch.setenv(key, value)
            assert main(["publish-model"]) == 0
            ann = decode(capsys.readouterr().out.strip().encode(), expect=ModelAnnouncement)
            assert ann.version == "tiny-2"
            wait_for(lambda: other.updater.slot.version == "tiny-2", 60, "kiosk-b to install the re-announced model")
        finally:
            other.close()


@pytest.mark.parametrize("attack", ["bad signature", "tampered bundle"])
def test_bad_announcements_through_the_broker_are_refused_and_the_kiosk_keeps_its_model(
        attack, broker, tiny_lineage, tmp_path: Path, keys: Path):
    bundle_dir = tmp_path / "cloud" / "bundles"
    bundle = bundles.build_bundle(tiny_lineage.child / "model.json", bundle_dir)
    with serve_bundles(bundle_dir) as base:
        cloud = load_cloud(environ=cloud_env(broker, tmp_path, keys, tiny_lineage, base))
        url = bundles.bundle_url(base, "tiny-2")
        if attack == "bad signature":
            ann = bundles.announce(bundle, url, (keys / "other.pem").read_bytes())
            expected = "bad signature"
        else:
            ann = bundles.announce(bundle, url, (keys / "cloud.pem").read_bytes())
            blob = bytearray(bundle.path.read_bytes())
            blob[len(blob) // 2] ^= 0xFF
            bundle.path.write_bytes(bytes(blob))
            expected = "sha256 of the download differs"
        device = Device(device_config(broker, "kiosk-a", tmp_path, keys, tiny_lineage))
        try:
            wait_for(lambda: device.kiosk.live.result is not None, 20, "live classification")
            publish_announcement(cloud, ann)
            wait_for(lambda: device.updater.last_result is not None, 30, "the announcement to be handled")
            result = device.updater.last_result
            assert result.outcome == "rejected" and expected in result.reason, result
            before = device.kiosk.live.classified
            wait_for(lambda: device.kiosk.live.classified > before + 3, 10, "the stream to go on")
            assert device.kiosk.live.result.model_version == "tiny-1" and device.kiosk.live.model_error is None
            model = device.api_model()
            assert model["version"] == "tiny-1"
            assert model["update"]["last_update"]["outcome"] == "rejected"
            assert expected in model["update"]["last_update"]["reason"]
            assert not (device.updater.versions_dir / "tiny-2").exists()
        finally:
            device.close()


def test_retrain_refuses_missing_inputs_and_cleans_up_a_failed_training(broker, tiny_lineage, tmp_path: Path,
                                                                         keys: Path, monkeypatch, capsys):
    from cloud.cli import main

    env = cloud_env(broker, tmp_path, keys, tiny_lineage, "http://cloud")
    cloud = load_cloud(environ=env)
    with pytest.raises(ModelUpdateError, match="not a folder"):
        retrain_and_release(cloud, tmp_path / "nope", by="t", trainer=trainer_from(tiny_lineage, []))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["retrain", "--labelled", str(tmp_path / "nope"), "--by", "t", "--", "--fine-epochs", "1"]) == 1
    assert "labelled cases" in capsys.readouterr().err

    def failing(argv: list[str]) -> int:
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir()
        (out / "model.json").write_text("{}")  # half written
        return 2

    with pytest.raises(ModelUpdateError, match="exit status 2"):
        retrain_and_release(cloud, tiny_lineage.extra, by="t", version="tiny-2", trainer=failing)
    assert not (cloud.updates.models_dir / "tiny-2").exists()
    registry = Registry.connect(cloud.database.url)
    # The factory model was registered as the parent; nothing else.
    assert [(r.version, r.status) for r in registry.all()] == [("tiny-1", "promoted")]
    # Nothing to re-announce: the factory model has no bundle (devices ship with it).
    assert republish_current(cloud) is None


def test_a_rejected_candidate_is_recorded_and_not_announced(broker, tiny_lineage, tmp_path: Path, keys: Path):
    def rejecting(argv: list[str]) -> int:
        out = Path(argv[argv.index("--out") + 1])
        shutil.copytree(tiny_lineage.child, out)
        decision = json.loads((out / "decision.json").read_text())
        decision.update(promote=False, reasons=["recall of alpha drops 0.9 -> 0.5"])
        (out / "decision.json").write_text(json.dumps(decision))
        return 0

    watcher = Watcher(broker, "cloud", [TOPICS.model_current])
    try:
        cloud = load_cloud(environ=cloud_env(broker, tmp_path, keys, tiny_lineage, "http://cloud"))
        outcome = retrain_and_release(cloud, tiny_lineage.extra, by="t", version="tiny-2", trainer=rejecting)
        assert outcome.announcement is None and outcome.record.status == "rejected"
        assert "alpha" in outcome.record.reason
        time.sleep(0.5)
        assert watcher.messages == []
    finally:
        watcher.close()


def test_consume_start_up_re_announces_the_current_model(broker, tiny_lineage, tmp_path: Path, keys: Path):
    """`skinscan-cloud consume` (a real process) publishes the current announcement again when it starts."""
    import os
    import signal
    import subprocess
    import sys

    env = cloud_env(broker, tmp_path, keys, tiny_lineage, "http://cloud.example")
    promoted = retrain_and_release(load_cloud(environ=env), tiny_lineage.extra, by="dr.amal", version="tiny-2",
                                   trainer=trainer_from(tiny_lineage, []), publish=False)
    watcher = Watcher(broker, "cloud", [TOPICS.model_current])
    proc = subprocess.Popen([sys.executable, "-m", "cloud.cli", "consume", "--worker-id", "w1"],
                            env={**os.environ, **env, "SKINSCAN_MODEL__THREADS": "1"}, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: watcher.messages, 60, "the announcement from the starting consumer")
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        watcher.close()
    ann = decode(watcher.messages[0][1], expect=ModelAnnouncement)
    assert ann.version == "tiny-2" and ann.sha256 == promoted.announcement.sha256, err.decode()[-2000:]
    assert ann.url == "http://cloud.example/models/tiny-2/bundle.zip"
