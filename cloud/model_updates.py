"""The cloud's half of the self-learning loop: retrain from the current model, release, announce.

``retrain_and_release`` is ``skinscan-cloud retrain``:

1. the parent is the registry's current (promoted) model; with an empty registry the factory model
   (``model.manifest``, normally ``models/model.json``) is registered and promoted first, so every
   later version has a recorded parent;
2. ``models.retrain`` fine-tunes it on ``updates.training_data`` plus the labelled cases into
   ``updates.models_dir/<version>/`` and writes the promotion decision there;
3. ``cloud.release.release`` records the candidate and, if the decision promotes it, builds and
   signs its bundle;
4. the announcement is published retained, QoS 1, on ``Topics.model_current`` with the cloud's MQTT
   account; devices (and those offline now, when they reconnect) download and swap it.

``republish_current`` sends the current announcement again (``skinscan-cloud publish-model``, and at
``skinscan-cloud consume`` start-up) so a broker that lost its retained messages recovers.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloud.registry import ModelRecord, Registry, RegistryError
from cloud.release import announcement_for, release
from contract import ModelAnnouncement, Topics, encode
from device import mqttclient
from models import manifest as manifest_mod
from settings.schema import CloudConfig

log = logging.getLogger(__name__)

FACTORY_REASON = "factory model, registered as the first version before retraining"


class ModelUpdateError(RuntimeError):
    """Retraining, releasing or announcing could not be done; the message says why."""


@dataclass(frozen=True)
class RetrainOutcome:
    record: ModelRecord
    announcement: ModelAnnouncement | None  # None: the candidate was rejected
    model_json: Path


def registry_for(cfg: CloudConfig) -> Registry:
    return Registry.connect(cfg.database.url)


def model_json_for(cfg: CloudConfig, version: str) -> Path:
    """Where the files of a registered version live: ``models_dir/<version>/``, or the factory model."""
    retrained = cfg.updates.models_dir / version / "model.json"
    if retrained.is_file():
        return retrained
    try:
        if manifest_mod.load(cfg.model.manifest).version == version:
            return cfg.model.manifest
    except manifest_mod.ManifestError:
        pass
    raise ModelUpdateError(f"the files of model {version} are neither in {retrained.parent} nor {cfg.model.manifest}")


def current_or_factory(registry: Registry, cfg: CloudConfig, actor: str) -> ModelRecord:
    """The current model; in an empty registry the factory model, registered and promoted now."""
    current = registry.current()
    if current is not None:
        return current
    try:
        factory = manifest_mod.load(cfg.model.manifest)
    except manifest_mod.ManifestError as exc:
        raise ModelUpdateError(f"the registry is empty and the factory model cannot be read: {exc}") from None
    if registry.get(factory.version) is None:
        registry.register(cfg.model.manifest, actor=actor)
    log.info("registry was empty: %s (%s) is the factory version", factory.version, cfg.model.manifest)
    return registry.promote(factory.version, actor=actor, reason=FACTORY_REASON)


def _default_trainer(argv: list[str]) -> int:
    from models import retrain

    return retrain.main(argv)


def retrain_and_release(cfg: CloudConfig, labelled: Path, *, by: str, data: Path | None = None,
                        version: str | None = None, train_args: Sequence[str] = (),
                        trainer: Callable[[list[str]], int] | None = None, publish: bool = True) -> RetrainOutcome:
    """Retrain the current model on ``data`` plus ``labelled`` (folder per class), release the candidate
    and, when promoted, publish its announcement. ``trainer`` runs ``models.retrain``'s command line
    (``train_args`` are appended to it, e.g. fewer epochs)."""
    labelled = Path(labelled)
    data = Path(data) if data else cfg.updates.training_data
    for name, folder in (("labelled cases", labelled), ("training data", data)):
        if not folder.is_dir():
            raise ModelUpdateError(f"{name}: {folder} is not a folder")
    if not cfg.updates.signing_key_file.is_file():
        raise ModelUpdateError(f"{cfg.updates.signing_key_file}: no signing key (skinscan-cloud model-keygen)")
    registry = registry_for(cfg)
    parent = current_or_factory(registry, cfg, by)
    parent_json = model_json_for(cfg, parent.version)
    version = version or datetime.now(UTC).strftime("%Y%m%d.%H%M%S")
    if registry.get(version) is not None:
        raise ModelUpdateError(f"model {version} is already registered; choose another version")
    out = cfg.updates.models_dir / version
    if out.exists():
        raise ModelUpdateError(f"{out} already exists; choose another version")
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = ["--current", str(parent_json), "--data", str(data), "--extra", str(labelled), "--out", str(out),
            "--version", version, "--max-recall-drop", str(cfg.updates.max_recall_drop), *train_args]
    log.info("retraining %s -> %s on %s + %s", parent.version, version, data, labelled)
    try:
        rc = (trainer or _default_trainer)(argv)
        if rc != 0:
            raise ModelUpdateError(f"models.retrain failed (exit status {rc})")
        decision = json.loads((out / "decision.json").read_text("utf-8"))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # a half-written candidate must not look like a model
        raise
    record, announcement = release(registry, out / "model.json", decision, actor=by,
                                   bundle_dir=cfg.updates.bundle_dir, base_url=cfg.updates.base_url,
                                   private_key_pem=cfg.updates.signing_key_file.read_bytes())
    if announcement is not None and publish:
        try:
            publish_announcement(cfg, announcement)
        except ModelUpdateError as exc:
            raise ModelUpdateError(f"model {version} is promoted but was not announced ({exc}); "
                                   "run `skinscan-cloud publish-model` when the broker is reachable") from None
    return RetrainOutcome(record, announcement, out / "model.json")


def publish_announcement(cfg: CloudConfig, announcement: ModelAnnouncement, timeout_s: float = 15.0) -> None:
    """Publish retained, QoS 1, on ``Topics.model_current`` and wait for the broker's acknowledgement."""
    topic = Topics(cfg.mqtt.topic_prefix).model_current
    # A short-lived client of its own: a fresh session that never collides with a consumer's.
    try:
        client = mqttclient.build(cfg.mqtt, client_id=f"cloud-models-{os.getpid()}-{secrets.token_hex(3)}")
    except mqttclient.MqttSetupError as exc:
        raise ModelUpdateError(str(exc)) from None
    connected = threading.Event()
    acked = threading.Event()
    outcome: dict[str, Any] = {}

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        outcome["connect"] = reason
        connected.set()

    def on_publish(_c: Any, _u: Any, _mid: int, reason: Any, _p: Any) -> None:
        outcome["puback"] = reason
        acked.set()

    client.on_connect = on_connect
    client.on_publish = on_publish
    try:
        client.connect(cfg.mqtt.host, cfg.mqtt.port, keepalive=cfg.mqtt.keepalive_s)
    except OSError as exc:
        raise ModelUpdateError(f"cannot reach the broker at {cfg.mqtt.host}:{cfg.mqtt.port}: {exc}") from None
    client.loop_start()
    try:
        if not connected.wait(timeout_s) or outcome["connect"].is_failure:
            raise ModelUpdateError(f"the broker did not accept user {cfg.mqtt.username!r}: "
                                   f"{outcome.get('connect', 'no answer')}")
        client.publish(topic, encode(announcement), qos=1, retain=True)
        if not acked.wait(timeout_s):
            raise ModelUpdateError(f"no acknowledgement for the announcement on {topic}")
        # "No matching subscribers" (0x10) is fine here: the broker keeps a retained message anyway.
        value = getattr(outcome["puback"], "value", outcome["puback"])
        if isinstance(value, int) and value >= 0x80:
            raise ModelUpdateError(f"the broker refused the announcement on {topic}: {outcome['puback']}")
    finally:
        client.disconnect()
        client.loop_stop()
    log.info("announced model %s retained on %s", announcement.version, topic)


def republish_current(cfg: CloudConfig) -> ModelAnnouncement | None:
    """Announce the current model again (freshly signed); None when there is nothing to announce
    (no promoted version, or only the factory model, which devices already have)."""
    registry = registry_for(cfg)
    try:
        current = registry.current()
        if current is None or not current.bundle_sha256:
            log.info("no current model with a bundle: nothing to announce")
            return None
        if not cfg.updates.signing_key_file.is_file():
            raise ModelUpdateError(f"{cfg.updates.signing_key_file}: no signing key to announce {current.version}")
        try:
            announcement = announcement_for(registry, current.version, cfg.updates.bundle_dir,
                                            cfg.updates.signing_key_file.read_bytes())
        except RegistryError as exc:
            raise ModelUpdateError(str(exc)) from None
    finally:
        registry.engine.dispose()
    publish_announcement(cfg, announcement)
    return announcement
