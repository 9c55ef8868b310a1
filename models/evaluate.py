"""Evaluate a model file on a folder-per-class tree with exactly the device's preprocessing.

    python -m models.evaluate --model models/skin_int8.tflite --data ../shared/data/skin/val [--json]

Works on the int8 ``.tflite``, the float ``.tflite`` and the float ``.keras`` model. Labels,
input size, temperature and abstention threshold come from the model.json beside the model
(or ``--manifest``). Writes metrics.json, confusion.png and reliability.png to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from device.inference import TFLiteModel, softmax
from models import data, metrics
from models.manifest import Calibration, Manifest, ManifestError, load

log = logging.getLogger("models.evaluate")


def calibration_for(manifest: Manifest, model_path: Path) -> Calibration:
    """The calibration of the manifest entry for this file; the Keras model shares the float one."""
    for entry in manifest.files.values():
        if entry.path == model_path.name and entry.calibration is not None:
            return entry.calibration
    if model_path.suffix == ".keras" and "float" in manifest.files and manifest.files["float"].calibration:
        return manifest.files["float"].calibration
    raise ManifestError(f"{model_path.name}: no calibration for this file in model.json")


def logits_fn(model_path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """Batch of uint8 inputs -> logits, for a .tflite or a .keras file."""
    if model_path.suffix == ".tflite":
        model = TFLiteModel(model_path, threads=threads)
        return lambda batch: np.stack([model.logits(x) for x in batch])
    if model_path.suffix == ".keras":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import keras
        import tensorflow as tf

        net = keras.saving.load_model(model_path, compile=False)
        run = tf.function(lambda x: net(x, training=False))
        return lambda batch: np.asarray(run(batch.astype(np.float32)))
    raise ValueError(f"{model_path}: expected a .tflite or .keras file")


def widen(probs: np.ndarray, model_labels: list[str], truth_labels: list[str]) -> np.ndarray:
    """Probabilities over ``truth_labels``: a class the model does not know gets probability 0."""
    out = np.zeros((len(probs), len(truth_labels)), dtype=probs.dtype)
    for j, name in enumerate(truth_labels):
        if name in model_labels:
            out[:, j] = probs[:, model_labels.index(name)]
    return out


def evaluate(model_path: Path, data_dir: Path, manifest_path: Path | None = None, threads: int = 2,
             workers: int = 2, labels: list[str] | None = None) -> tuple[dict[str, object], np.ndarray, np.ndarray]:
    """Metrics of one model file on a folder-per-class tree. ``labels`` is the ground-truth label
    space (default: the model's); it lets a parent model be scored on a test set with a class only
    its retrained child knows: those images count as misses for the parent."""
    manifest = load(manifest_path or model_path.parent / "model.json")
    calibration = calibration_for(manifest, model_path)
    truth_labels = labels or manifest.labels
    unknown = sorted(set(manifest.labels) - set(truth_labels))
    if unknown:
        raise ValueError(f"label list {truth_labels} lacks the model's classes {unknown}")
    split = data.scan(data_dir, truth_labels)
    inputs, y = data.load_inputs(split, manifest.input_size, workers)
    run = logits_fn(model_path, threads)
    logits = np.concatenate([run(inputs[i:i + 64]) for i in range(0, len(inputs), 64)])
    probs = softmax(logits, calibration.temperature)
    if truth_labels != manifest.labels:
        probs = widen(probs, manifest.labels, truth_labels)
    result = metrics.compute(y, probs, truth_labels, calibration.threshold, dangerous=manifest.dangerous)
    result.update({"model": model_path.name, "model_version": manifest.version, "data": str(data_dir),
                   "temperature": calibration.temperature,
                   "reliability": metrics.reliability(probs, y)})
    return result, probs, y


def plot(result: dict[str, object], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = result["labels"]
    cm = np.asarray(result["confusion_matrix"], dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{result['model']}: accuracy {result['accuracy']:.3f}, "
                 f"balanced {result['balanced_accuracy']:.3f}")
    fig.tight_layout()
    fig.savefig(out / "confusion.png", dpi=110)
    plt.close(fig)

    rows = result["reliability"]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.bar([(r["lo"] + r["hi"]) / 2 for r in rows], [r["accuracy"] for r in rows],
           width=[r["hi"] - r["lo"] for r in rows], alpha=0.7, edgecolor="black", label="accuracy")
    ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], "o", color="darkred",
            label="mean confidence")
    ax.set_xlabel("confidence (temperature-scaled top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{result['model']}: ECE {result['ece']:.3f}")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path, help="folder-per-class images (e.g. the val split)")
    parser.add_argument("--manifest", type=Path, help="model.json (default: beside the model)")
    parser.add_argument("--out", type=Path, help="where metrics.json and the plots go (default: runs/eval-<model>)")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object on stdout")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        result, _, _ = evaluate(args.model, args.data, args.manifest, args.threads)
    except (ManifestError, FileNotFoundError, ValueError) as exc:
        print(f"models.evaluate: {exc}", file=sys.stderr)
        return 2
    out = args.out or Path("runs") / f"eval-{args.model.stem}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out)
    log.info("accuracy %.4f, balanced accuracy %.4f, melanoma sensitivity %s, ECE %.4f -> %s",
             result["accuracy"], result["balanced_accuracy"], result.get("melanoma_sensitivity"),
             result["ece"], out)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
