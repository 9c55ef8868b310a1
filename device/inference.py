"""On-device inference: a TFLite interpreter behind one small interface.

Backends are tried in order: ai-edge-litert (maintained successor of tflite-runtime, wheels for
64-bit Pi OS), ``tflite_runtime``, then ``tensorflow.lite``. All are imported lazily.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models import manifest as manifest_mod

log = logging.getLogger(__name__)


class BackendError(RuntimeError):
    """No TFLite runtime is installed, or the model could not be loaded."""


def _litert() -> Callable[..., Any]:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter


def _tflite_runtime() -> Callable[..., Any]:
    from tflite_runtime.interpreter import Interpreter

    return Interpreter


def _tensorflow() -> Callable[..., Any]:
    import tensorflow as tf

    return tf.lite.Interpreter


BACKENDS: dict[str, Callable[[], Callable[..., Any]]] = {
    "ai-edge-litert": _litert,
    "tflite-runtime": _tflite_runtime,
    "tensorflow": _tensorflow,
}


def interpreter_class(preferred: Sequence[str] = tuple(BACKENDS)) -> tuple[str, Callable[..., Any]]:
    errors = []
    for name in preferred:
        try:
            return name, BACKENDS[name]()
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    raise BackendError("no TFLite runtime available (" + "; ".join(errors) + ")")


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class TFLiteModel:
    """One loaded ``.tflite`` file: uint8/int8/float input, logits out (dequantised)."""

    def __init__(self, path: str | Path, threads: int = 1, backend: Sequence[str] = tuple(BACKENDS)) -> None:
        self.path = Path(path)
        self.backend, cls = interpreter_class(backend)
        try:
            self._interp = cls(model_path=str(self.path), num_threads=threads)
            self._interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"{self.path}: cannot load model ({exc})") from None
        self._in = self._interp.get_input_details()[0]
        self._out = self._interp.get_output_details()[0]
        self.input_size = int(self._in["shape"][1])
        self.input_dtype = np.dtype(self._in["dtype"])
        self._lock = threading.Lock()  # an interpreter is not thread-safe

    def _quantise(self, pixels: np.ndarray) -> np.ndarray:
        scale, zero = self._in["quantization"]
        if self.input_dtype == np.float32:
            return pixels.astype(np.float32)
        if scale == 0:
            return pixels.astype(self.input_dtype)
        info = np.iinfo(self.input_dtype)
        q = np.round(pixels.astype(np.float32) / scale + zero)
        return np.clip(q, info.min, info.max).astype(self.input_dtype)

    def _dequantise(self, raw: np.ndarray) -> np.ndarray:
        scale, zero = self._out["quantization"]
        if raw.dtype == np.float32 or scale == 0:
            return raw.astype(np.float32)
        return (raw.astype(np.float32) - zero) * scale

    def logits(self, pixels: np.ndarray) -> np.ndarray:
        """``pixels``: (size, size, 3) uint8 RGB from :func:`device.preprocess.model_input`."""
        if pixels.shape != (self.input_size, self.input_size, 3):
            raise ValueError(f"model input must be {self.input_size}x{self.input_size}x3, got {pixels.shape}")
        with self._lock:
            self._interp.set_tensor(self._in["index"], self._quantise(pixels)[None])
            self._interp.invoke()
            raw = self._interp.get_tensor(self._out["index"])[0]
        return self._dequantise(raw)


@dataclass(frozen=True)
class Prediction:
    label: str
    confidence: float
    probabilities: dict[str, float]
    unsure: bool
    latency_ms: float
    model_version: str

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: kv[1], reverse=True)[:k]


class Classifier:
    """A model plus its manifest: labels, temperature and abstention threshold."""

    def __init__(self, manifest_path: str | Path, role: str = "int8", threads: int = 1,
                 backend: Sequence[str] = tuple(BACKENDS)) -> None:
        self.manifest, entry, path = manifest_mod.resolve(manifest_path, role)
        if entry.calibration is None:
            raise manifest_mod.ManifestError(f"{manifest_path}: the {role} file has no calibration")
        self.calibration = entry.calibration
        self.model = TFLiteModel(path, threads=threads, backend=backend)
        if self.model.input_size != self.manifest.input_size:
            raise manifest_mod.ManifestError(
                f"{path}: input is {self.model.input_size} px, model.json says {self.manifest.input_size}")
        self.labels = self.manifest.labels
        self.version = self.manifest.version
        log.info("loaded %s (%s, v%s) with %s", path.name, role, self.version, self.model.backend)

    @property
    def input_size(self) -> int:
        return self.manifest.input_size

    def predict_pixels(self, pixels: np.ndarray | Sequence[np.ndarray]) -> Prediction:
        """Classify one prepared input, or average the logits of several views (test-time augmentation)."""
        start = time.perf_counter()
        views = [pixels] if isinstance(pixels, np.ndarray) else list(pixels)
        logits = np.mean([self.model.logits(v) for v in views], axis=0)
        probs = softmax(logits, self.calibration.temperature)
        best = int(np.argmax(probs))
        confidence = float(probs[best])
        return Prediction(
            label=self.labels[best],
            confidence=confidence,
            probabilities={label: float(p) for label, p in zip(self.labels, probs, strict=True)},
            unsure=confidence < self.calibration.threshold,
            latency_ms=(time.perf_counter() - start) * 1000.0,
            model_version=self.version,
        )
