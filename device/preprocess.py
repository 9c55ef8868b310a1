"""The one preprocessing pipeline shared by the kiosk, training and evaluation.

    crop_to_lesion -> (augment, training only) -> finish(size)

``model_input`` is what the kiosk and ``models.evaluate`` call; ``models.train`` calls
``crop_to_lesion`` and ``finish`` around its augmentation, so the model never sees pixels
prepared differently from the device's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), in image pixels

# Quality-gate thresholds. Blur is measured on the crop scaled to 128 px on its short side,
# so the score does not depend on camera resolution. BLUR_MIN sits below every val image
# (lowest 10.3 over every fifth val image) and above 99% of those images blurred with
# sigma = short side / 60.
BLUR_MIN = 10.0
DARK_MAX_MEAN = 45.0
BRIGHT_MIN_MEAN = 225.0
CLIPPED_MAX_FRACTION = 0.30
LESION_MIN_FRACTION = 0.01
QUALITY_SIDE = 128


@dataclass(frozen=True)
class QualityIssue:
    code: str  # blur | dark | bright | clipped | small | cut_off
    message: str
    value: float
    needed: str
    blocking: bool


@dataclass(frozen=True)
class Quality:
    blur: float
    brightness: float
    clipped: float
    lesion_fraction: float | None
    issues: list[QualityIssue] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(i.blocking for i in self.issues)

    @property
    def summary(self) -> str:
        return "; ".join(i.message for i in self.issues) or "ok"


def _lesion_map(rgb: np.ndarray) -> np.ndarray:
    """Darker and more saturated than the surrounding skin -> higher."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB)
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    score = (255 - lab[..., 0]).astype(np.float32) * 0.7 + hsv[..., 1].astype(np.float32) * 0.3
    return cv2.GaussianBlur(score, (0, 0), 2.0)


def find_lesion(rgb: np.ndarray) -> Box | None:
    """Bounding box of the most central dark blob, or None when nothing stands out.

    Components touching the frame on two or more sides (dermatoscope vignettes, background)
    are ignored.
    """
    h, w = rgb.shape[:2]
    scale = 128.0 / max(h, w)
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    score = _lesion_map(small)
    norm = cv2.normalize(score, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if float(score.max() - score.min()) < 15.0:
        return None
    _, mask = cv2.threshold(norm, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    count, _, stats, centroids = cv2.connectedComponentsWithStats(mask)
    sh, sw = mask.shape
    best, best_score = None, 0.0
    for i in range(1, count):
        x, y, bw, bh, area = stats[i]
        if area < 0.003 * sh * sw:
            continue
        sides = (x == 0) + (y == 0) + (x + bw >= sw) + (y + bh >= sh)
        if sides >= 2:
            continue
        cx, cy = centroids[i]
        dist = np.hypot((cx - sw / 2) / sw, (cy - sh / 2) / sh)
        s = area * (1.0 - min(dist, 0.7))
        if s > best_score:
            best, best_score = (x, y, x + bw, y + bh), s
    if best is None:
        return None
    x0, y0, x1, y1 = best
    return (int(x0 / scale), int(y0 / scale), min(w, int(np.ceil(x1 / scale))), min(h, int(np.ceil(y1 / scale))))


def square_around(shape: tuple[int, ...], box: Box | None) -> Box:
    """A square crop centred on ``box`` (or the frame), zooming in at most to 60% of the short side."""
    h, w = shape[:2]
    short = min(h, w)
    if box is None:
        cx, cy, side = w / 2, h / 2, short
    else:
        x0, y0, x1, y1 = box
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        side = int(np.clip(max(x1 - x0, y1 - y0) * 2.0, 0.6 * short, short))
    left = int(np.clip(round(cx - side / 2), 0, w - side))
    top = int(np.clip(round(cy - side / 2), 0, h - side))
    return (left, top, left + side, top + side)


def crop(rgb: np.ndarray, box: Box) -> np.ndarray:
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = box
    x0, y0 = max(0, min(w - 1, x0)), max(0, min(h - 1, y0))
    x1, y1 = max(x0 + 1, min(w, x1)), max(y0 + 1, min(h, y1))
    return rgb[y0:y1, x0:x1]


def auto_box(rgb: np.ndarray) -> Box:
    """The default crop: a square centred on the lesion (or the frame when none stands out)."""
    return square_around(rgb.shape, find_lesion(rgb))


def crop_to_lesion(rgb: np.ndarray, user_box: Box | None = None) -> np.ndarray:
    """The user's rectangle if given (the kiosk's drag-to-crop), else an automatic lesion-centred square."""
    return crop(rgb, user_box if user_box is not None else auto_box(rgb))


def remove_hair(rgb: np.ndarray) -> np.ndarray:
    """Dull-razor style: black-hat finds thin dark hairs, inpainting fills them from the skin around."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    k = max(9, (min(rgb.shape[:2]) // 24) | 1)
    blackhat = cv2.morphologyEx(gray, cv2.MORPH_BLACKHAT, cv2.getStructuringElement(cv2.MORPH_CROSS, (k, k)))
    _, mask = cv2.threshold(blackhat, 12, 255, cv2.THRESH_BINARY)
    if not mask.any():
        return rgb
    return cv2.inpaint(rgb, mask, 2, cv2.INPAINT_TELEA)


def finish(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize a crop to the model's square input and denoise lightly (uint8 RGB out)."""
    h, w = rgb.shape[:2]
    interp = cv2.INTER_AREA if min(h, w) > size else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(rgb), (size, size), interpolation=interp)
    # Edge-preserving and mild: sensor noise goes, lesion borders stay.
    return cv2.bilateralFilter(out, 5, 20, 5)


def model_input(rgb: np.ndarray, size: int, user_box: Box | None = None, hair_removal: bool = False) -> np.ndarray:
    """Exactly what the model sees for one photo: crop, optional hair removal, resize, denoise."""
    region = crop_to_lesion(rgb, user_box)
    if hair_removal:
        region = remove_hair(region)
    return finish(region, size)


def assess(rgb: np.ndarray, user_box: Box | None = None) -> Quality:
    """Quality gate on the region that would be classified; every issue carries its measured value."""
    region = crop(rgb, user_box) if user_box is not None else rgb
    h, w = region.shape[:2]
    scale = QUALITY_SIDE / min(h, w)
    sized = cv2.resize(region, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(sized, cv2.COLOR_RGB2GRAY)
    blur = float(cv2.Laplacian(gray, cv2.CV_64F).var())
    brightness = float(gray.mean())
    clipped = float(((gray >= 250) | (gray <= 5)).mean())
    box = find_lesion(region)
    fraction = None if box is None else (box[2] - box[0]) * (box[3] - box[1]) / float(h * w)
    issues: list[QualityIssue] = []

    def flag(code: str, message: str, value: float, needed: str, blocking: bool = True) -> None:
        issues.append(QualityIssue(code, message, value, needed, blocking))

    if blur < BLUR_MIN:
        flag("blur", f"retake: too blurry (score {blur:.0f}, needs ≥ {BLUR_MIN:.0f})", blur, f">= {BLUR_MIN:.0f}")
    if brightness < DARK_MAX_MEAN:
        flag("dark", f"retake: too dark (brightness {brightness:.0f}, needs ≥ {DARK_MAX_MEAN:.0f})",
             brightness, f">= {DARK_MAX_MEAN:.0f}")
    if brightness > BRIGHT_MIN_MEAN:
        flag("bright", f"retake: too bright (brightness {brightness:.0f}, needs ≤ {BRIGHT_MIN_MEAN:.0f})",
             brightness, f"<= {BRIGHT_MIN_MEAN:.0f}")
    if clipped > CLIPPED_MAX_FRACTION:
        flag("clipped", f"retake: {clipped:.0%} of pixels are clipped (needs ≤ {CLIPPED_MAX_FRACTION:.0%})",
             clipped, f"<= {CLIPPED_MAX_FRACTION}")
    if fraction is not None and fraction < LESION_MIN_FRACTION:
        flag("small", f"move closer: lesion fills {fraction:.1%} of the frame (needs ≥ {LESION_MIN_FRACTION:.0%})",
             fraction, f">= {LESION_MIN_FRACTION}", blocking=False)
    if box is not None and user_box is not None:
        touching = (box[0] <= 0) + (box[1] <= 0) + (box[2] >= w) + (box[3] >= h)
        if touching:
            flag("cut_off", "lesion may be cut off: widen the crop", float(touching), "0 edges touched", False)
    return Quality(blur, brightness, clipped, fraction, issues)
