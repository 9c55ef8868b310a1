"""Training-time augmentation on lesion crops (numpy/OpenCV, seeded).

Lesions have no canonical orientation, so any rotation and both flips are label-preserving;
zoom, shift and colour jitter model framing and lighting differences between cameras.
"""

from __future__ import annotations

import cv2
import numpy as np


def augment(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = crop.shape[:2]
    angle = rng.uniform(0.0, 360.0)
    scale = rng.uniform(1.0, 1.35)
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    matrix[:, 2] += rng.uniform(-0.06, 0.06, size=2) * (w, h)
    out = cv2.warpAffine(crop, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:
        out = out[::-1, :]
    hsv = cv2.cvtColor(np.ascontiguousarray(out), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-5, 5)) % 180  # OpenCV hue is 0-179 (2 degrees a step)
    hsv[..., 1] *= rng.uniform(0.85, 1.15)
    out = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
    mean = out.mean()
    out = (out - mean) * rng.uniform(0.85, 1.15) + mean * rng.uniform(0.85, 1.15)
    return np.clip(out, 0, 255).astype(np.uint8)
