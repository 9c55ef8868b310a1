"""Keras -> TFLite: full-integer int8 for the device, float32 for the cloud.

    python -m models.convert --keras models/skin_float.keras --rep-data DIR/train --out DIR
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def to_float(model) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    return converter.convert()


def to_int8(model, representative: np.ndarray) -> bytes:
    """Full-integer quantisation: uint8 pixels in (scale set from the calibration range, about 1 for
    real photos),
    int8 weights and activations, int8 logits out. ``representative``: (N, size, size, 3) uint8."""
    import tensorflow as tf

    def samples() -> Iterator[list[np.ndarray]]:
        for image in representative:
            yield [image[None].astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = samples
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.int8
    return converter.convert()


def representative_set(images: np.ndarray, labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Class-balanced sample so rare classes' activation ranges are calibrated too."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    per = max(1, count // len(classes))
    picks = [rng.choice(np.flatnonzero(labels == c), size=min(per, int((labels == c).sum())), replace=False)
             for c in classes]
    return images[np.concatenate(picks)]


def main(argv: list[str] | None = None) -> int:
    import keras

    from device.preprocess import finish
    from models import data

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keras", required=True, type=Path)
    parser.add_argument("--rep-data", required=True, type=Path, help="folder-per-class images for calibration")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model = keras.saving.load_model(args.keras)
    size = int(model.input_shape[1])
    split = data.scan(args.rep_data)
    crops, labels = data.load_crops(split, size)
    rep = np.stack([finish(c, size) for c in representative_set(crops, labels, args.count, args.seed)])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "skin_int8.tflite").write_bytes(to_int8(model, rep))
    (args.out / "skin_float.tflite").write_bytes(to_float(model))
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
