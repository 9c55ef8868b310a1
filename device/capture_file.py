"""Image files -> contract Captures for ``skinscan-device send``, and a one-off flush of the outbox."""

from __future__ import annotations

import io
import logging
import sys
import time
from pathlib import Path

from PIL import Image

from contract import MAX_IMAGE_BYTES, Capture, DevicePrediction
from device import imageio
from device.imageio import ImageError
from settings.schema import DeviceConfig

log = logging.getLogger(__name__)

__all__ = ["ImageError", "capture_from_file", "diagnoser_or_none", "flush", "wire_image"]

MAX_SIDE = 2048  # only for images that must be re-encoded to fit the contract's size limit


def diagnoser_or_none(cfg: DeviceConfig):  # -> Diagnoser | None (imported lazily: TFLite is optional here)
    from device.diagnose import Diagnoser
    from device.inference import BackendError
    from models.manifest import ManifestError

    try:
        return Diagnoser.from_config(cfg)
    except (ManifestError, BackendError) as exc:
        log.warning("no device model (%s): captures go without the kiosk's prediction", exc)
        return None


def wire_image(data: bytes, rgb) -> tuple[bytes, str]:
    """The file's own bytes when it is a JPEG/PNG within the limit, else a JPEG that fits."""
    if len(data) <= MAX_IMAGE_BYTES:
        if data[:3] == b"\xff\xd8\xff":
            return data, "image/jpeg"
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return data, "image/png"
    img = Image.fromarray(rgb)
    img.thumbnail((MAX_SIDE, MAX_SIDE))
    for quality in (92, 85, 75, 60):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=quality)
        if buf.tell() <= MAX_IMAGE_BYTES:
            log.info("re-encoded to a %d-byte JPEG (quality %d) to fit the %d-byte limit",
                     buf.tell(), quality, MAX_IMAGE_BYTES)
            return buf.getvalue(), "image/jpeg"
    raise ImageError(f"cannot fit the image into {MAX_IMAGE_BYTES} bytes")


def capture_from_file(path: str | Path, cfg: DeviceConfig, diagnoser=None) -> Capture:
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ImageError(f"{p}: {exc.strerror or exc}") from None
    rgb = imageio.decode(data, str(p))  # refuses anything that is not a usable image
    image, content_type = wire_image(data, rgb)
    prediction = None
    if diagnoser is not None:
        pr = diagnoser.diagnose(rgb).prediction
        prediction = DevicePrediction(label=pr.label, confidence=pr.confidence, probabilities=pr.probabilities,
                                      unsure=pr.unsure, model_version=pr.model_version)
    return Capture.from_image(image, device_id=cfg.device_id, content_type=content_type,
                              device_prediction=prediction, locale=cfg.kiosk.locale)


def flush(cfg: DeviceConfig, capture_ids: list[str], wait_s: float) -> None:
    """Send now when no uplink runs; whatever is not acknowledged in ``wait_s`` stays queued."""
    from device.uplink import Uplink, UplinkBusy

    uplink = Uplink(cfg)
    try:
        uplink.start()
    except UplinkBusy as exc:
        print(f"queued; {exc.args[0].split(';')[0]} and will send them", file=sys.stderr)
        return
    try:
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if all(uplink.state(c)["state"] != "queued" for c in capture_ids):
                break
            time.sleep(0.1)
        left = sum(uplink.state(c)["state"] == "queued" for c in capture_ids)
        if left:
            why = uplink.stats()["last_error"] or "no acknowledgement yet"
            print(f"{left} of {len(capture_ids)} still queued ({why}); "
                  f"the kiosk or `skinscan-device uplink` sends them later", file=sys.stderr)
        else:
            print(f"{len(capture_ids)} sent to the broker", file=sys.stderr)
    finally:
        uplink.close()
