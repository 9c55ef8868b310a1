"""Transfer-learn MobileNet on a folder-per-class tree and ship int8 + float models.

    python -m models.train --data ../shared/data/skin --out models/

``--data`` holds ``train/<class>/`` and ``val/<class>/``. The label list comes from the train
folders and travels in model.json, so new classes need no code change.

Stages: (1) lesion-centred crops, (2) backbone choice by a linear probe on val when ``--arch auto``,
(3) K augmented views per image (more for rare classes) pushed once through the frozen lower
backbone and cached, (4) the head trained on pooled features, (5) the top blocks fine-tuned at a
low learning rate on the cached maps with early stopping on val balanced accuracy, (6) int8 and
float TFLite conversion, temperature and abstention threshold fitted on val, model.json.
Caching the frozen part is what makes this fit in under an hour on two CPU cores.

The stages are functions (:func:`fit`, :func:`ship`, :func:`write_manifest`) so that
``models.retrain`` fine-tunes an existing model with exactly the same code.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # after the log-level setting above

log = logging.getLogger("models.train")

DANGEROUS = ["melanoma", "basal_cell_carcinoma", "actinic_keratosis"]


def add_training_args(p: argparse.ArgumentParser, lr: float = 2e-4, head_epochs: int = 30,
                      fine_epochs: int = 8) -> argparse.ArgumentParser:
    """The options shared by ``models.train`` and ``models.retrain`` (everything but data and arch)."""
    p.add_argument("--out", required=True, type=Path, help="where model files and model.json go")
    p.add_argument("--weights-dir", default=None, help="ImageNet weights folder, or 'none' (tests only)")
    p.add_argument("--seed", type=int, default=20261126)
    p.add_argument("--head-epochs", type=int, default=head_epochs)
    p.add_argument("--fine-epochs", type=int, default=fine_epochs)
    p.add_argument("--patience", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=lr, help="peak fine-tuning learning rate")
    p.add_argument("--target-views", type=int, default=1500, help="augmented views aimed for per class")
    p.add_argument("--min-views", type=int, default=2)
    p.add_argument("--max-views", type=int, default=16)
    p.add_argument("--weight-power", type=float, default=0.5,
                   help="class weights = (1/views per class)^power: 0 none, 1 fully balanced")
    p.add_argument("--target-accuracy", type=float, default=0.92,
                   help="accuracy the kept (not 'unsure') predictions should reach on val")
    p.add_argument("--max-abstain", type=float, default=0.25)
    p.add_argument("--version", default=None, help="model version (default: UTC date and time)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="folder with train/ and val/ class folders")
    p.add_argument("--arch", choices=["auto", "v1", "v2"], default="auto")
    p.add_argument("--size", type=int, default=224, help="square input size in pixels")
    add_training_args(p)
    return p.parse_args(argv)


def views_per_class(counts: np.ndarray, target: int, lo: int, hi: int) -> np.ndarray:
    return np.clip(np.ceil(target / np.maximum(counts, 1)), lo, hi).astype(int)


def batched(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def predict(fn, x: np.ndarray, batch: int = 128, desc: str | None = None) -> np.ndarray:
    out = []
    for s in tqdm(list(batched(len(x), batch)), desc=desc, leave=False, disable=desc is None):
        out.append(np.asarray(fn(x[s].astype(np.float32))))
    return np.concatenate(out)


class CachedBatches(keras.utils.PyDataset):
    """Shuffled float32 batches cut from the float16 cache, so the cache is never copied whole."""

    def __init__(self, x: np.ndarray, y: np.ndarray, w: np.ndarray, batch: int, rng: np.random.Generator):
        super().__init__()
        self.x, self.y, self.w, self.batch, self.rng = x, y, w, batch, rng
        self.order = rng.permutation(len(x))

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch)

    def __getitem__(self, i: int):
        idx = np.sort(self.order[i * self.batch:(i + 1) * self.batch])
        return self.x[idx].astype(np.float32), self.y[idx], self.w[idx]

    def on_epoch_end(self) -> None:
        self.order = self.rng.permutation(len(self.x))


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    recalls = [(pred[y == c] == c).mean() for c in np.unique(y)]
    return float(np.mean(recalls))


def probe_arch(arch: str, size: int, weights, train_x, train_y, val_x, val_y, classes) -> float:
    """Val balanced accuracy of a class-balanced logistic regression on frozen pooled features."""
    import tensorflow as tf
    from sklearn.linear_model import LogisticRegression

    from models.backbone import build

    parts = build(arch, size, len(classes), weights)
    features = tf.function(lambda x: tf.reduce_mean(parts.upper(parts.lower(parts.rescale(x))), axis=[1, 2]))
    ftr = predict(features, train_x, desc=f"probe {arch} train")
    fva = predict(features, val_x, desc=f"probe {arch} val")
    clf = LogisticRegression(max_iter=3000, class_weight="balanced", C=0.5)
    clf.fit(ftr, train_y)
    score = balanced_accuracy(val_y, clf.predict(fva))
    log.info("probe %s: val balanced accuracy %.3f", arch, score)
    return score


@dataclass
class FitReport:
    """What :func:`fit` learnt, for model.json's ``training`` block."""

    head_score: float
    history: list[dict[str, float]]
    views_per_class: dict[str, int]
    class_weights: dict[str, float]
    extra: dict[str, object] = field(default_factory=dict)


def fit(parts, crops: np.ndarray, y_train: np.ndarray, val_x: np.ndarray, y_val: np.ndarray, classes: list[str],
        args: argparse.Namespace, rng: np.random.Generator, repeat: np.ndarray | None = None,
        keep_start: bool = False) -> FitReport:
    """Stages 3-5 on ``parts`` in place: cached augmented views, head, then the upper blocks.

    ``repeat`` multiplies the views of individual images (retraining gives the few confirmed
    cases more views); ``keep_start`` lets the starting head win early stopping when no epoch
    beats it (retraining starts from a trained model, training from a random head).
    """
    import tensorflow as tf

    from device.preprocess import finish
    from models.augment import augment

    lower = tf.function(lambda x: parts.lower(parts.rescale(x), training=False))
    upper_pool = tf.function(lambda a: tf.reduce_mean(parts.upper(a, training=False), axis=[1, 2]))

    # Augmented views, more for rare classes, pushed once through the frozen lower backbone.
    counts = np.bincount(y_train, minlength=len(classes))
    per_class = views_per_class(counts, args.target_views, args.min_views, args.max_views)
    per_image = per_class[y_train] if repeat is None else per_class[y_train] * repeat
    index = np.repeat(np.arange(len(y_train)), per_image)
    rng.shuffle(index)
    log.info("views per class: %s (%d in all)", dict(zip(classes, per_class.tolist(), strict=True)), len(index))
    acts = None
    for s in tqdm(list(batched(len(index), 64)), desc="augment + lower backbone", unit="batch"):
        batch = np.stack([finish(augment(crops[i], rng), args.size) for i in index[s]])
        out = np.asarray(lower(batch.astype(np.float32)))
        if acts is None:  # preallocated: the cache is the largest thing in memory (GBs for v1)
            acts = np.empty((len(index), *out.shape[1:]), dtype=np.float16)
        acts[s] = out
    y_views = y_train[index]
    val_acts = predict(lower, val_x, desc="val lower backbone").astype(np.float16)

    view_counts = np.bincount(y_views, minlength=len(classes)).astype(np.float64)
    class_w = (view_counts.sum() / (len(classes) * np.maximum(view_counts, 1))) ** args.weight_power
    class_w /= (class_w[y_views]).mean()
    sample_w = class_w[y_views].astype(np.float32)
    log.info("class weights: %s", dict(zip(classes, np.round(class_w, 3).tolist(), strict=True)))

    # Stage 4: head on pooled features of the (still frozen) upper blocks.
    pooled = predict(upper_pool, acts, desc="pooled features")
    val_pooled = predict(upper_pool, val_acts)
    parts.pooled_head.compile(optimizer=keras.optimizers.Adam(1e-3),
                              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    best, best_weights, waited = -1.0, None, 0
    if keep_start:
        best = balanced_accuracy(y_val, parts.pooled_head.predict(val_pooled, verbose=0).argmax(1))
        best_weights = parts.pooled_head.get_weights()
        log.info("starting head: val balanced accuracy %.4f", best)
    for epoch in range(args.head_epochs):
        parts.pooled_head.fit(pooled, y_views, sample_weight=sample_w, batch_size=256, epochs=1, verbose=0,
                              shuffle=True)
        score = balanced_accuracy(y_val, parts.pooled_head.predict(val_pooled, verbose=0).argmax(1))
        log.info("head epoch %d: val balanced accuracy %.4f", epoch + 1, score)
        if score > best:
            best, best_weights, waited = score, parts.pooled_head.get_weights(), 0
        else:
            waited += 1
            if waited > args.patience + 2:
                break
    if best_weights is not None:
        parts.pooled_head.set_weights(best_weights)
    head_score = best

    # Stage 5: fine-tune the upper blocks (BatchNorm stays frozen) on the cached maps.
    parts.upper.trainable = True
    for layer in parts.upper.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    feat_in = keras.Input(acts.shape[1:], name="cut")
    tuner = keras.Model(feat_in, parts.head(parts.upper(feat_in)))
    steps = math.ceil(len(acts) / args.batch) * max(1, args.fine_epochs)
    schedule = keras.optimizers.schedules.CosineDecay(args.lr, decay_steps=steps, warmup_target=None)
    tuner.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainable = tuner.trainable_weights
    best_weights, waited, history = [w.numpy() for w in trainable], 0, []
    batches = CachedBatches(acts, y_views, sample_w, args.batch, rng)
    for epoch in range(args.fine_epochs):
        t0 = time.time()
        tuner.fit(batches, epochs=1, verbose=2)
        val_logits = predict(tuner, val_acts)
        score = balanced_accuracy(y_val, val_logits.argmax(1))
        acc = float((val_logits.argmax(1) == y_val).mean())
        history.append({"epoch": epoch + 1, "val_balanced_accuracy": score, "val_accuracy": acc,
                        "seconds": round(time.time() - t0, 1)})
        log.info("fine-tune epoch %d: val balanced accuracy %.4f, accuracy %.4f (%.0fs)",
                 epoch + 1, score, acc, time.time() - t0)
        if score > best:
            best, best_weights, waited = score, [w.numpy() for w in trainable], 0
        else:
            waited += 1
            if waited >= args.patience:
                log.info("early stop: no val improvement for %d epochs", args.patience)
                break
    for var, value in zip(trainable, best_weights, strict=True):
        var.assign(value)
    return FitReport(head_score=head_score, history=history,
                     views_per_class=dict(zip(classes, per_class.tolist(), strict=True)),
                     class_weights=dict(zip(classes, np.round(class_w, 4).tolist(), strict=True)))


def ship(parts, out: Path, crops: np.ndarray, y_train: np.ndarray, val_x: np.ndarray, y_val: np.ndarray,
         classes: list[str], args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """Stage 6: save the Keras model, convert to int8 and float TFLite, calibrate each on val.
    Returns (files, metrics per role, coverage curves per role) for model.json."""
    from device.inference import TFLiteModel, softmax
    from device.preprocess import finish
    from models import calibrate, convert, metrics
    from models.manifest import sha256_file

    out.mkdir(parents=True, exist_ok=True)
    keras_path = out / "skin_float.keras"
    parts.full.save(keras_path)
    log.info("saved %s", keras_path)

    rep = convert.representative_set(crops, y_train, 300, args.seed)
    rep = np.stack([finish(c, args.size) for c in rep])
    (out / "skin_int8.tflite").write_bytes(convert.to_int8(parts.full, rep))
    (out / "skin_float.tflite").write_bytes(convert.to_float(parts.full))

    files, all_metrics, curves = {}, {}, {}
    for role, name, kind in (("int8", "skin_int8.tflite", "tflite_int8"),
                             ("float", "skin_float.tflite", "tflite_float32")):
        model = TFLiteModel(out / name, threads=args.workers)
        logits = np.stack([model.logits(x) for x in tqdm(val_x, desc=f"val {role}", leave=False)])
        temperature = calibrate.fit_temperature(logits, y_val)
        probs = softmax(logits, temperature)
        threshold = calibrate.choose_threshold(probs, y_val, args.target_accuracy, args.max_abstain)
        all_metrics[role] = metrics.compute(y_val, probs, classes, threshold, dangerous=DANGEROUS)
        curves[role] = calibrate.coverage_curve(probs, y_val)
        files[role] = {"path": name, "sha256": sha256_file(out / name), "bytes": (out / name).stat().st_size,
                       "kind": kind, "calibration": {"temperature": temperature, "threshold": threshold}}
        log.info("%s: val accuracy %.4f, balanced %.4f, T=%.3f, threshold %.3f, coverage %.3f",
                 role, all_metrics[role]["accuracy"], all_metrics[role]["balanced_accuracy"], temperature,
                 threshold, all_metrics[role]["coverage"])
    files["keras"] = {"path": keras_path.name, "sha256": sha256_file(keras_path),
                      "bytes": keras_path.stat().st_size, "kind": "keras"}
    return files, all_metrics, curves


def write_manifest(out: Path, *, version: str | None, arch: str, size: int, classes: list[str], files: dict,
                   seed: int, data_hash: str, training: dict[str, object], all_metrics: dict,
                   parent: str | None = None, dangerous: list[str] | None = None) -> Path:
    """model.json beside the files; ``parent`` is the model a retrained one started from."""
    manifest: dict[str, object] = {
        "version": version or datetime.now(UTC).strftime("%Y%m%d.%H%M"),
        "architecture": f"mobilenet_{arch}_1.0",
        "input_size": size,
        "normalisation": "rgb_0_255_rescaled_in_model",
        "output": "logits",
        "labels": classes,
        "dangerous": dangerous if dangerous is not None else [c for c in DANGEROUS if c in classes],
        "files": files,
        "seed": seed,
        "data_manifest_sha256": data_hash,
        "training": training,
        "metrics": {f"val_{k}": {m: v for m, v in val.items() if m != "confusion_matrix"}
                    for k, val in all_metrics.items()},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if parent is not None:
        manifest["parent"] = parent
    path = out / "model.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from device.preprocess import finish
    from models import backbone, data

    started = time.time()
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    weights = backbone.weights_dir(args.weights_dir)

    train_split = data.scan(args.data / "train")
    classes = train_split.classes
    val_split = data.scan(args.data / "val", classes)
    log.info("classes: %s", classes)
    log.info("train counts: %s", train_split.counts())
    log.info("val counts: %s", val_split.counts())
    data_hash = data.manifest_sha256(train_split, val_split)
    log.info("data manifest sha256 %s", data_hash)

    side = round(args.size * 1.15)
    crops, y_train = data.load_crops(train_split, side, args.workers)
    val_x, y_val = data.load_inputs(val_split, args.size, args.workers)
    plain_train = np.stack([finish(c, args.size) for c in crops])

    probes: dict[str, float] = {}
    arch = args.arch
    if arch == "auto":
        for name in ("v2", "v1"):
            probes[name] = probe_arch(name, args.size, weights, plain_train, y_train, val_x, y_val, classes)
            keras.backend.clear_session()
        arch = max(probes, key=probes.get)
        log.info("chose MobileNet %s by val balanced accuracy of the linear probe", arch)

    parts = backbone.build(arch, args.size, len(classes), weights)
    report = fit(parts, crops, y_train, val_x, y_val, classes, args, rng)
    files, all_metrics, curves = ship(parts, args.out, crops, y_train, val_x, y_val, classes, args)

    training = {
        "arch_probe_val_balanced_accuracy": probes,
        "head_val_balanced_accuracy": report.head_score,
        "fine_tune": report.history,
        "views_per_class": report.views_per_class,
        "class_weights": report.class_weights,
        "train_counts": train_split.counts(),
        "val_counts": val_split.counts(),
        "coverage_curves": curves,
        "args": {k: str(v) for k, v in vars(args).items()},
        "minutes": round((time.time() - started) / 60, 1),
    }
    path = write_manifest(args.out, version=args.version, arch=arch, size=args.size, classes=classes, files=files,
                          seed=args.seed, data_hash=data_hash, training=training, all_metrics=all_metrics)
    log.info("wrote %s in %.1f min", path, (time.time() - started) / 60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
