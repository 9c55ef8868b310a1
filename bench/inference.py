"""Single-image inference latency of the shipped models, printed.

    python bench/inference.py [--manifest models/model.json] [--runs 200]

int8 and float32 TFLite through ai-edge-litert with 1 and 2 threads, and the float Keras model
through ``tf.function`` (not ``predict()``), median and p95 in ms, with ratios to int8/1 thread.
Inputs are real val images through the device preprocessing when ../shared is present.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from device.inference import TFLiteModel  # noqa: E402
from models.manifest import resolve  # noqa: E402


def inputs(size: int, count: int) -> tuple[np.ndarray, str]:
    val = ROOT.parent / "shared" / "data" / "skin" / "val"
    if val.is_dir():
        from device import imageio
        from device.preprocess import model_input

        paths = sorted(val.glob("*/*.jpg"))[:: max(1, len(list(val.glob("*/*.jpg"))) // count)][:count]
        return np.stack([model_input(imageio.read(p), size) for p in paths]), f"{len(paths)} real val images"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, size, size, 3), dtype=np.uint8), "random pixels (../shared absent)"


def measure(fn, xs: np.ndarray, runs: int) -> tuple[float, float]:
    for x in xs[:10]:
        fn(x)
    times = []
    for i in range(runs):
        x = xs[i % len(xs)]
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times)), float(np.percentile(times, 95))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, default=ROOT / "models" / "model.json")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--no-keras", action="store_true")
    args = parser.parse_args()
    manifest, _, int8_path = resolve(args.manifest, "int8")
    _, _, float_path = resolve(args.manifest, "float")
    xs, source = inputs(manifest.input_size, 50)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}")
    print(f"model {manifest.version} ({manifest.architecture}, {manifest.input_size}px), inputs: {source}, "
          f"{args.runs} runs each\n")
    rows = []
    for name, path in (("int8 tflite", int8_path), ("float32 tflite", float_path)):
        for threads in (1, 2):
            model = TFLiteModel(path, threads=threads)
            label = f"{name}, {threads} thread{'s' if threads > 1 else ''}"
            rows.append((label, *measure(model.logits, xs, args.runs)))
    if not args.no_keras:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
        import tensorflow as tf

        _, _, keras_path = resolve(args.manifest, "keras")
        net = keras.saving.load_model(keras_path, compile=False)
        run = tf.function(lambda x: net(x, training=False))
        rows.append(("float keras, tf.function", *measure(lambda x: run(x[None].astype(np.float32)).numpy(),
                                                          xs, args.runs)))
    base = rows[0][1]
    print(f"{'model':<28}{'median ms':>10}{'p95 ms':>10}{'x int8/1':>10}")
    for label, median, p95 in rows:
        print(f"{label:<28}{median:>10.2f}{p95:>10.2f}{median / base:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
