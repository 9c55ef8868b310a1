"""Validated configuration models for the device and the cloud."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from contract.topics import DEVICE_ID_PATTERN, Topics

Port = int  # range checked by Field bounds below so the error names the field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MqttConfig(_Section):
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    username: str = ""
    password: str = ""
    password_file: Path | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    topic_prefix: str = "skinscan/v1"
    keepalive_s: int = Field(ge=5, le=3600)
    # How long the broker keeps a disconnected client's session (subscriptions and queued QoS 1
    # messages: a kiosk's results, a consumer's captures). 0 would forget them at disconnect.
    session_expiry_s: int = Field(default=7 * 24 * 3600, ge=60, le=0xFFFFFFFE)

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        Topics(value)
        return value

    def resolved_password(self) -> str:
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return self.password


class ModelConfig(_Section):
    manifest: Path
    threads: int = Field(ge=1, le=64)


class CameraConfig(_Section):
    source: Literal["picamera2", "opencv", "folder"]
    # opencv: a webcam index ("0"), a video file or an RTSP/HTTP URL; folder: a directory of stills.
    uri: str
    width: int = Field(ge=64, le=4096)
    height: int = Field(ge=64, le=4096)
    fps: float = Field(gt=0, le=120)
    loop: bool = True
    # Seconds between attempts to reopen a camera that is missing, unplugged or whose video ended.
    retry_s: float = Field(default=2.0, gt=0, le=300)


class KioskConfig(_Section):
    host: str
    port: int = Field(ge=1, le=65535)
    locale: Literal["en", "ar"]
    public_url: str = ""


class PreprocessConfig(_Section):
    # Morphological black-hat + inpainting before resizing; only if the model was trained the same way.
    hair_removal: bool = False


class StreamConfig(_Section):
    # Weight of the newest frame in the exponential moving average of probabilities (1 = no smoothing).
    ema_alpha: float = Field(default=0.3, gt=0, le=1)
    # Upper bound on live classifications per second; the worker drops frames to keep up.
    max_classify_hz: float = Field(default=15.0, gt=0, le=120)
    jpeg_quality: int = Field(default=75, ge=30, le=95)


class OutboxConfig(_Section):
    path: Path
    max_bytes: int = Field(ge=1024 * 1024)
    retry_initial_s: float = Field(gt=0)
    retry_max_s: float = Field(gt=0)
    stats_interval_s: float = Field(default=60.0, gt=0)
    # A sent capture with no result after this long is sent again (the time doubles per resend, at most 12 h).
    answer_timeout_s: float = Field(default=600.0, gt=0)
    # Answered captures keep a small row (no image) so the kiosk can show sent/answered; pruned after this.
    keep_sent_days: float = Field(default=30.0, gt=0)


class DeviceUpdatesConfig(_Section):
    """Over-the-air model updates (device.updater)."""

    # Ed25519 public key (PEM) of the cloud; a model whose signature does not verify is never loaded.
    public_key: Path
    # One folder per installed version, plus state.json naming the current and previous one.
    versions_dir: Path
    max_bundle_bytes: int = Field(ge=1024 * 1024, le=1024 * 1024 * 1024)
    download_timeout_s: float = Field(gt=0, le=3600)
    # CA bundle for an HTTPS bundle URL signed by a private CA; empty: the system's CAs.
    ca_file: Path | None = None


class DeviceConfig(_Section):
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    data_dir: Path
    mqtt: MqttConfig
    model: ModelConfig
    camera: CameraConfig
    kiosk: KioskConfig
    outbox: OutboxConfig
    preprocess: PreprocessConfig = PreprocessConfig()
    stream: StreamConfig = StreamConfig()
    updates: DeviceUpdatesConfig


class DatabaseConfig(_Section):
    url: str = Field(min_length=1)


class StorageConfig(_Section):
    image_dir: Path


class ConsumerConfig(_Section):
    share_group: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    tta: bool = True
    # Names this worker's persistent MQTT session; empty: the host name. Unique per running worker.
    worker_id: str = Field(default="", pattern=r"^[A-Za-z0-9_-]*$")
    # MQTT v5 receive maximum: unacknowledged captures the broker hands this worker at once.
    max_in_flight: int = Field(default=8, ge=1, le=1000)


class BrokerConfig(_Section):
    # broker/run's data dir: `skinscan-cloud add-device` writes the password file and secrets here.
    data_dir: Path = Path("var/broker")


class DashboardConfig(_Section):
    host: str
    port: int = Field(ge=1, le=65535)
    public_url: str = ""
    secret_key_file: Path
    session_timeout_min: int = Field(ge=1, le=24 * 60)
    pairing_token_days: int = Field(ge=1, le=365)


class CloudUpdatesConfig(_Section):
    """Retraining, the model registry and over-the-air bundles (cloud.registry, cloud.bundles)."""

    # Ed25519 private key (PEM, mode 600) that signs model announcements.
    signing_key_file: Path
    # BUNDLE_DIR/<version>/bundle.zip, served by cloud.model_files at /models/<version>/bundle.zip.
    bundle_dir: Path
    # Base URL devices download bundles from (the server that mounts cloud.model_files).
    base_url: str = Field(min_length=1)
    # Promotion: no class's test-set recall may drop by more than this (0.05 = 5 points).
    max_recall_drop: float = Field(ge=0, le=1)
    # `skinscan-cloud retrain` writes each candidate to MODELS_DIR/<version>/ (model.json and its files),
    # where the next retraining finds its parent.
    models_dir: Path = Path("var/cloud/models")
    # The original training data (train/ and val/ class folders) retraining starts from.
    training_data: Path = Path("../shared/data/skin")


class CloudConfig(_Section):
    data_dir: Path
    mqtt: MqttConfig
    model: ModelConfig
    database: DatabaseConfig
    storage: StorageConfig
    consumer: ConsumerConfig
    dashboard: DashboardConfig
    updates: CloudUpdatesConfig
    broker: BrokerConfig = BrokerConfig()
