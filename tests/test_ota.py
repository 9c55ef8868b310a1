"""Over-the-air updates end to end: retrain -> decision -> registry -> signed bundle -> announcement ->
real HTTP download by the device updater -> verified swap under a running stream; and every way an
update must be refused while the old model keeps serving."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cloud import bundles
from cloud.model_files import blueprint
from cloud.registry import Registry, RegistryError
from cloud.release import announcement_for, release
from contract import ModelAnnouncement, Topics, decode, encode
from contract.signing import generate_keypair
from device.updater import ModelSlot, Updater
from tests.support.ota import serve_bundles, serve_truncated

pytestmark = pytest.mark.slow
FRAME = np.full((64, 64, 3), 140, np.uint8)


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, bytes]:
    generate_keypair(tmp_path / "keys" / "cloud.pem", tmp_path / "keys" / "cloud.pub")
    generate_keypair(tmp_path / "keys" / "other.pem", tmp_path / "keys" / "other.pub")
    return {name: (tmp_path / "keys" / name).read_bytes() for name in ("cloud.pem", "cloud.pub", "other.pem")}


@pytest.fixture
def device(tmp_path: Path, keys, tiny_lineage) -> Updater:
    """A device running the parent model as its factory model."""
    updater = Updater(ModelSlot(), tmp_path / "versions", keys["cloud.pub"],
                      factory_manifest=tiny_lineage.parent / "model.json", timeout_s=10)
    updater.load_active()
    assert updater.slot.version == "tiny-1"
    yield updater
    updater.close()


def restart(device: Updater) -> Updater:
    fresh = Updater(ModelSlot(), device.versions_dir, device.public_key, factory_manifest=device.factory_manifest)
    fresh.load_active()
    return fresh


def members_as(model_json: Path, version: str, **patch) -> dict[str, bytes]:
    """A bundle of ``model_json``'s int8 file relabelled as ``version`` (the same weights)."""
    members = bundles.bundle_members(model_json)
    manifest = json.loads(members["model.json"])
    manifest.update(version=version, **patch)
    members["model.json"] = json.dumps(manifest).encode()
    return members


def assert_still_serving(device: Updater, version: str = "tiny-1") -> None:
    assert device.slot.version == version
    assert device.slot.get().predict_pixels(FRAME).model_version == version
    assert not any(p.name.startswith((".download", ".staging")) for p in device.versions_dir.iterdir())


def test_bundle_holds_the_int8_model_and_its_self_test(tiny_lineage, tmp_path: Path):
    bundle = bundles.build_bundle(tiny_lineage.child / "model.json", tmp_path / "bundles")
    assert bundle.path == tmp_path / "bundles" / "tiny-2" / "bundle.zip"
    assert bundle.sha256 == hashlib.sha256(bundle.path.read_bytes()).hexdigest()
    with zipfile.ZipFile(bundle.path) as zf:
        names = sorted(zf.namelist())
        manifest = json.loads(zf.read("model.json"))
        tflite = zf.read("skin_int8.tflite")
    assert names == ["model.json", "selftest/ref_0.png", "selftest/ref_1.png", "selftest/ref_2.png",
                     "selftest/ref_3.png", "selftest/ref_4.png", "selftest/ref_5.png", "skin_int8.tflite"]
    assert list(manifest["files"]) == ["int8"]
    assert manifest["files"]["int8"]["sha256"] == hashlib.sha256(tflite).hexdigest()
    assert tflite == (tiny_lineage.child / "skin_int8.tflite").read_bytes()
    cases = manifest["self_test"]["cases"]
    assert len(cases) == 6 and all(len(c["probabilities"]) == 4 for c in cases)
    assert all(abs(sum(c["probabilities"]) - 1) < 1e-6 for c in cases)
    # Deterministic: the same model gives the same bytes; a version's bundle never changes.
    assert bundles.build_bundle(tiny_lineage.child / "model.json", tmp_path / "bundles").sha256 == bundle.sha256
    with pytest.raises(bundles.BundleError, match="already exists"):
        bundles.write_bundle(members_as(tiny_lineage.child / "model.json", "tiny-2", seed=99), "tiny-2",
                             tmp_path / "bundles")


def test_blueprint_serves_bundles_with_their_length_and_nothing_else(tiny_lineage, tmp_path: Path):
    from flask import Flask

    root = tmp_path / "bundles"
    bundle = bundles.build_bundle(tiny_lineage.child / "model.json", root)
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / "bundle.zip").write_bytes(b"not yours")
    (root / "escape").symlink_to(tmp_path / "secret")
    app = Flask("t")
    app.register_blueprint(blueprint(root))
    client = app.test_client()
    resp = client.get("/models/tiny-2/bundle.zip")
    assert resp.status_code == 200
    assert int(resp.headers["Content-Length"]) == bundle.bytes == len(resp.data)
    assert resp.data == bundle.path.read_bytes()
    assert resp.mimetype == "application/zip"
    for url in ("/models/tiny-9/bundle.zip", "/models/../secret/bundle.zip", "/models/..%2Fsecret/bundle.zip",
                "/models/escape/bundle.zip", "/models/.hidden/bundle.zip", "/models/tiny-2/model.json"):
        assert client.get(url).status_code == 404, url


def test_retrain_promote_bundle_announce_and_the_device_swaps_without_stopping(tiny_lineage, tmp_path: Path,
                                                                              keys, device: Updater):
    decision = json.loads(tiny_lineage.decision.read_text())
    assert decision["promote"] is True, decision["reasons"]

    registry = Registry.connect(f"sqlite:///{tmp_path / 'registry.sqlite3'}")
    registry.register(tiny_lineage.parent / "model.json", actor="trainer")
    registry.promote("tiny-1", actor="admin")

    # A live stream reading the slot once per frame, as the kiosk does.
    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def stream() -> None:
        while not stop.is_set():
            try:
                seen.append(device.slot.get().predict_pixels(FRAME).model_version)
            except BaseException as exc:  # any failure is the test's failure
                errors.append(exc)
                return

    worker = threading.Thread(target=stream)
    worker.start()
    try:
        with serve_bundles(tmp_path / "bundles") as base:
            record, ann = release(registry, tiny_lineage.child / "model.json", decision, actor="dr.amal",
                                  bundle_dir=tmp_path / "bundles", base_url=base, private_key_pem=keys["cloud.pem"])
            assert record.status == "promoted" and record.parent == "tiny-1" and ann.version == "tiny-2"
            assert ann.url == f"{base}/models/tiny-2/bundle.zip"
            payload = encode(ann)  # what the cloud publishes retained on the topic below
            assert Topics().model_current == "skinscan/v1/models/current"
            result = device.handle_payload(payload)
            assert result.outcome == "installed", result
            for _ in range(200):
                if seen and seen[-1] == "tiny-2":
                    break
                stop.wait(0.01)
            # The retained announcement arrives again on every reconnect: a no-op.
            device.submit(payload)
            assert device.wait_idle(30)
            assert device.last_result.outcome == "unchanged"
    finally:
        stop.set()
        worker.join(10)
    assert not errors
    assert seen[0] == "tiny-1" and seen[-1] == "tiny-2"
    assert seen == sorted(seen)  # one switch, never back and forth
    assert registry.current().version == "tiny-2"
    assert registry.current().bundle_sha256 == ann.sha256 == hashlib.sha256(
        (tmp_path / "bundles" / "tiny-2" / "bundle.zip").read_bytes()).hexdigest()

    state = json.loads((device.versions_dir / "state.json").read_text())
    assert state["current"] == "tiny-2" and state["previous"] is None  # None: the factory model
    assert device.slot.get().labels == ["alpha", "beta", "gamma", "delta"]

    # A restart keeps the new model, re-verifying it from disk (the server is gone by now).
    again = restart(device)
    assert again.slot.version == "tiny-2"
    assert again.handle(decode(payload, expect=ModelAnnouncement)).outcome == "unchanged"


@pytest.mark.parametrize("attack", ["tampered file", "bad signature", "wrong sha256", "truncated download"])
def test_bad_updates_are_refused_and_the_old_model_keeps_serving(attack, tiny_lineage, tmp_path: Path, keys,
                                                                 device: Updater, caplog):
    bundle = bundles.build_bundle(tiny_lineage.child / "model.json", tmp_path / "bundles")
    blob = bundle.path.read_bytes()
    with serve_bundles(tmp_path / "bundles") as base:
        url = bundles.bundle_url(base, "tiny-2")
        ann = bundles.announce(bundle, url, keys["cloud.pem"])
        if attack == "tampered file":
            data = bytearray(blob)
            data[len(data) // 2] ^= 0xFF
            bundle.path.write_bytes(bytes(data))
            expected = "sha256 of the download differs"
        elif attack == "bad signature":
            ann = bundles.announce(bundle, url, keys["other.pem"])
            expected = "bad signature"
        elif attack == "wrong sha256":
            other = hashlib.sha256(b"another file").hexdigest()
            ann = bundles.announce(bundles.Bundle("tiny-2", bundle.path, other, bundle.bytes), url, keys["cloud.pem"])
            expected = "sha256 of the download differs"
        else:
            expected = "truncated download"
        if attack == "truncated download":
            with serve_truncated(blob) as half_url:
                ann = ann.model_copy(update={"url": half_url})
                result = device.handle(ann)
        else:
            result = device.handle(ann)
    assert result.outcome in ("rejected", "failed")
    assert expected in result.reason
    assert expected in caplog.text  # logged with the reason
    assert_still_serving(device)
    assert not (device.versions_dir / "tiny-2").exists()


def test_a_model_failing_its_self_test_is_not_switched_to_and_not_retried(tiny_lineage, tmp_path: Path, keys,
                                                                          device: Updater):
    wrong = [{"label": "alpha", "probabilities": [1.0, 0.0, 0.0, 0.0]}] * 6
    members = bundles.bundle_members(tiny_lineage.child / "model.json", expectations=wrong)
    bundle = bundles.write_bundle(members, "tiny-2", tmp_path / "bundles")
    with serve_bundles(tmp_path / "bundles") as base:
        ann = bundles.announce(bundle, bundles.bundle_url(base, "tiny-2"), keys["cloud.pem"])
        result = device.handle(ann)
        assert result.outcome == "rejected" and "self-test failed" in result.reason, result
        assert_still_serving(device)
        assert not (device.versions_dir / "tiny-2").exists()
        state = json.loads((device.versions_dir / "state.json").read_text())
        assert state["rejected"]["tiny-2"]["sha256"] == bundle.sha256
        # The same retained announcement after a reconnect is not downloaded again.
        bundle.path.unlink()
        again = device.handle(ann)
        assert again.outcome == "rejected" and "failed here before" in again.reason
    assert_still_serving(device)


def test_a_model_that_does_not_load_is_rejected(tiny_lineage, tmp_path: Path, keys, device: Updater):
    members = bundles.bundle_members(tiny_lineage.child / "model.json")
    junk = os.urandom(4096)
    members["skin_int8.tflite"] = junk
    manifest = json.loads(members["model.json"])
    manifest["files"]["int8"].update(sha256=hashlib.sha256(junk).hexdigest(), bytes=len(junk))
    members["model.json"] = json.dumps(manifest).encode()
    bundle = bundles.write_bundle(members, "tiny-2", tmp_path / "bundles")
    with serve_bundles(tmp_path / "bundles") as base:
        result = device.handle(bundles.announce(bundle, bundles.bundle_url(base, "tiny-2"), keys["cloud.pem"]))
    assert result.outcome == "rejected" and "does not load" in result.reason, result
    assert_still_serving(device)


def test_a_bundle_with_unexpected_members_is_refused(tiny_lineage, tmp_path: Path, keys, device: Updater):
    members = bundles.bundle_members(tiny_lineage.child / "model.json")
    members["../../evil.sh"] = b"#!/bin/sh\n"
    bundle = bundles.write_bundle(members, "tiny-2", tmp_path / "bundles")
    with serve_bundles(tmp_path / "bundles") as base:
        result = device.handle(bundles.announce(bundle, bundles.bundle_url(base, "tiny-2"), keys["cloud.pem"]))
    assert result.outcome == "rejected" and "unexpected member" in result.reason
    assert not (tmp_path / "evil.sh").exists() and not (device.versions_dir.parent / "evil.sh").exists()
    assert_still_serving(device)


def test_restart_rolls_back_to_the_previous_version_when_the_installed_one_is_damaged(
        tiny_lineage, tmp_path: Path, keys, device: Updater):
    root = tmp_path / "bundles"
    with serve_bundles(root) as base:
        for version in ("tiny-2", "tiny-3"):
            bundle = bundles.write_bundle(members_as(tiny_lineage.child / "model.json", version), version, root)
            result = device.handle(bundles.announce(bundle, bundles.bundle_url(base, version), keys["cloud.pem"]))
            assert result.outcome == "installed", result
    state = json.loads((device.versions_dir / "state.json").read_text())
    assert (state["current"], state["previous"]) == ("tiny-3", "tiny-2")

    # Damage the installed model on disk: a restart must not load it, and falls back to tiny-2.
    (device.versions_dir / "tiny-3" / "model" / "skin_int8.tflite").write_bytes(b"garbage")
    again = restart(device)
    assert again.slot.version == "tiny-2"
    assert json.loads((device.versions_dir / "state.json").read_text())["current"] == "tiny-2"

    # Damage that one too: the factory model serves.
    (device.versions_dir / "tiny-2" / "model" / "model.json").write_text("{}")
    assert restart(device).slot.version == "tiny-1"


def test_malformed_and_non_http_announcements_are_refused(tiny_lineage, tmp_path: Path, keys, device: Updater):
    assert device.handle_payload(b"{not json").outcome == "rejected"
    bundle = bundles.build_bundle(tiny_lineage.child / "model.json", tmp_path / "bundles")
    ann = bundles.announce(bundle, f"file://{bundle.path}", keys["cloud.pem"])
    result = device.handle(ann)
    assert result.outcome == "failed" and "only http and https" in result.reason
    assert_still_serving(device)


def test_reference_images_are_generated_not_stored():
    images = bundles.reference_images(64)
    assert len(images) == 6 and all(i.shape == (64, 64, 3) and i.dtype == np.uint8 for i in images)
    assert not np.array_equal(images[0], images[1])
    again = bundles.reference_images(64)
    assert all(np.array_equal(a, b) for a, b in zip(images, again, strict=True))


def test_release_rejects_by_the_decision_and_re_announces_only_intact_promoted_bundles(tiny_lineage, tmp_path: Path,
                                                                                       keys):
    from contract.signing import verify

    registry = Registry.connect(f"sqlite:///{tmp_path / 'registry.sqlite3'}")
    no = {"promote": False, "reasons": ["recall of alpha drops 0.9 -> 0.5"]}
    record, ann = release(registry, tiny_lineage.child / "model.json", no, actor="retrain",
                          bundle_dir=tmp_path / "bundles", base_url="http://cloud", private_key_pem=keys["cloud.pem"])
    assert ann is None and record.status == "rejected" and "alpha" in record.reason
    assert not (tmp_path / "bundles").exists()
    with pytest.raises(RegistryError, match="not a promoted version"):
        announcement_for(registry, "tiny-2", tmp_path / "bundles", keys["cloud.pem"])

    # A person may override a rejection; the reason is recorded.
    record = registry.promote("tiny-2", actor="dr.amal", reason="confirmed on a new clinic set")
    bundle = bundles.build_bundle(tiny_lineage.child / "model.json", tmp_path / "bundles")
    registry.set_bundle("tiny-2", sha256=bundle.sha256, url="http://cloud/models/tiny-2/bundle.zip")
    ann = announcement_for(registry, "tiny-2", tmp_path / "bundles", keys["cloud.pem"])
    verify(keys["cloud.pub"], ann.version, ann.sha256, ann.signature)
    bundle.path.write_bytes(b"changed on disk")
    with pytest.raises(RegistryError, match="differs from the registered sha256"):
        announcement_for(registry, "tiny-2", tmp_path / "bundles", keys["cloud.pem"])


def test_cloud_cli_keygen_release_and_list(tiny_lineage, tmp_path: Path, capsys):
    from cloud.cli import main

    config = tmp_path / "cloud.toml"
    config.write_text(f"""
[database]
url = "sqlite:///{tmp_path / 'cloud.sqlite3'}"
[updates]
signing_key_file = "{tmp_path / 'keys' / 'signing.pem'}"
bundle_dir = "{tmp_path / 'bundles'}"
base_url = "http://cloud.example:8090/"
max_recall_drop = 0.05
""")
    assert main(["--config", str(config), "model-keygen"]) == 0
    assert main(["--config", str(config), "model-keygen"]) == 1  # never replaces a key
    capsys.readouterr()
    assert main(["--config", str(config), "model-release", str(tiny_lineage.child / "model.json"),
                 "--decision", str(tiny_lineage.decision), "--by", "dr.amal"]) == 0
    ann = decode(capsys.readouterr().out.strip().encode(), expect=ModelAnnouncement)
    assert ann.url == "http://cloud.example:8090/models/tiny-2/bundle.zip"
    from contract.signing import verify

    verify((tmp_path / "keys" / "signing.pub").read_bytes(), ann.version, ann.sha256, ann.signature)
    assert main(["--config", str(config), "models", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["version"], r["status"], r["promoted_by"]) for r in rows] == [("tiny-2", "promoted", "dr.amal")]


def test_from_config_serves_the_factory_model_and_needs_the_public_key(tiny_lineage, tmp_path: Path, keys):
    from device.updater import UpdateError
    from settings import load_device

    env = {"SKINSCAN_MODEL__MANIFEST": str(tiny_lineage.parent / "model.json"),
           "SKINSCAN_UPDATES__VERSIONS_DIR": str(tmp_path / "versions"),
           "SKINSCAN_UPDATES__PUBLIC_KEY": str(tmp_path / "missing.pub")}
    with pytest.raises(UpdateError, match="public key is missing"):
        Updater.from_config(load_device(environ=env))
    (tmp_path / "cloud.pub").write_bytes(keys["cloud.pub"])
    env["SKINSCAN_UPDATES__PUBLIC_KEY"] = str(tmp_path / "cloud.pub")
    updater = Updater.from_config(load_device(environ=env))
    assert updater.slot.version == "tiny-1" and updater.versions_dir == tmp_path / "versions"


def test_an_offline_device_catches_up_from_the_retained_announcement(broker, tiny_lineage, tmp_path: Path, keys,
                                                                     device: Updater):
    """Through the real broker config: the cloud publishes retained while the kiosk is away; the kiosk
    gets it on connect, installs it, and the copy it gets on every later reconnect is a no-op."""
    import paho.mqtt.client as mqtt

    topic = Topics().model_current

    def connect(user: str) -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-ota", protocol=mqtt.MQTTv5)
        client.username_pw_set(user, broker.secret(user))
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        return client

    bundle = bundles.build_bundle(tiny_lineage.child / "model.json", tmp_path / "bundles")
    with serve_bundles(tmp_path / "bundles") as base:
        ann = bundles.announce(bundle, bundles.bundle_url(base, "tiny-2"), keys["cloud.pem"])
        cloud = connect("cloud")
        cloud.publish(topic, encode(ann), qos=1, retain=True).wait_for_publish(5)
        cloud.disconnect()
        cloud.loop_stop()

        outcomes = []
        for _ in range(2):  # first connection after being offline, then a reconnect
            arrived = threading.Event()

            def on_message(_c, _u, msg, arrived=arrived):
                device.submit(msg.payload)  # never block the network loop on a download
                arrived.set()

            kiosk = connect("kiosk-a")
            kiosk.on_message = on_message
            kiosk.subscribe(topic, qos=1)
            assert arrived.wait(10), "retained announcement not delivered"
            assert device.wait_idle(30)
            outcomes.append(device.last_result.outcome)
            kiosk.disconnect()
            kiosk.loop_stop()
    assert outcomes == ["installed", "unchanged"]
    assert_still_serving(device, "tiny-2")
