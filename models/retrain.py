"""Fine-tune the current model on the original data plus dermatologist-confirmed cases, then decide.

    python -m models.retrain --current models/model.json --data ../shared/data/skin \\
        --extra var/cloud/labelled --out runs/candidate [--test DIR] [--max-recall-drop 0.05]

``--data`` holds ``train/`` and ``val/`` as for ``models.train``; ``--extra`` is a folder-per-class
tree of confirmed cases (``skinscan-cloud export-labelled``). A class the current model does not
know may appear there: the label list is the current model's followed by the new names, sorted;
the known output columns keep their weights and a new one starts as their mean.

The candidate starts from the current ``skin_float.keras`` (backbone BatchNorm stays frozen) and goes
through exactly ``models.train``'s cached fine-tuning, conversion and calibration. Then both the
current and the candidate model are scored by ``models.evaluate`` on the same frozen test set
(``--test``, default the val split), and the candidate is promoted only if its balanced accuracy is
not worse and no class's recall drops by more than ``--max-recall-drop``. The decision, with every
per-class delta, is written to ``--decision`` (default OUT/decision.json) and printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from models import manifest as manifest_mod

log = logging.getLogger("models.retrain")

# Balanced accuracies equal up to float noise count as "not worse".
EPSILON = 1e-9


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from models.train import add_training_args

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--current", required=True, type=Path, help="model.json of the model running now")
    p.add_argument("--data", required=True, type=Path, help="the original data: train/ and val/ class folders")
    p.add_argument("--extra", required=True, type=Path, help="folder-per-class tree of confirmed cases")
    p.add_argument("--test", type=Path, help="frozen test set, folder per class (default: DATA/val)")
    p.add_argument("--max-recall-drop", type=float, default=0.05,
                   help="largest allowed drop of any class's recall on the test set (0.05 = 5 points)")
    p.add_argument("--role", choices=["int8", "float"], default="int8",
                   help="which file the comparison scores (int8: what the devices run)")
    p.add_argument("--extra-repeat", type=int, default=4,
                   help="each confirmed case gets this many times its class's augmented views")
    p.add_argument("--decision", type=Path, help="decision JSON (default: OUT/decision.json)")
    add_training_args(p, lr=1e-4, head_epochs=10, fine_epochs=4)
    args = p.parse_args(argv)
    if args.extra_repeat < 1:
        p.error("--extra-repeat must be at least 1")
    if args.max_recall_drop < 0:
        p.error("--max-recall-drop must not be negative")
    return args


def arch_of(manifest: manifest_mod.Manifest) -> str:
    match = re.match(r"mobilenet_(v[12])_", manifest.architecture)
    if not match:
        raise manifest_mod.ManifestError(f"cannot retrain architecture {manifest.architecture!r}")
    return match.group(1)


def folders(root: Path) -> list[str]:
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such data folder")
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def label_list(current: list[str], *roots: Path) -> list[str]:
    """The current labels in their output order, then classes new in the data, sorted."""
    found = set().union(*(folders(r) for r in roots))
    return list(current) + sorted(found - set(current))


def from_current(keras_path: Path, arch: str, size: int, classes: list[str], old_labels: list[str]):
    """A fresh ``backbone.Parts`` carrying the current model's weights; output columns follow ``classes``."""
    import keras

    from models import backbone

    old = keras.saving.load_model(keras_path, compile=False)
    parts = backbone.build(arch, size, len(classes), weights=None)

    def body(model):
        nets = [layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name != "head"]
        if len(nets) != 1:
            raise manifest_mod.ManifestError(f"{keras_path}: expected one backbone inside the model")
        return nets[0]

    body(parts.full).set_weights(body(old).get_weights())
    kernel, bias = old.get_layer("head").get_layer("logits").get_weights()
    dense = parts.head.get_layer("logits")
    new_kernel, new_bias = dense.get_weights()
    # A new class starts as the mean of the known columns: its logit is the mean of the known logits,
    # never above their maximum, so the candidate starts out answering exactly as its parent did.
    for j, name in enumerate(classes):
        k = old_labels.index(name) if name in old_labels else None
        new_kernel[:, j] = kernel.mean(axis=1) if k is None else kernel[:, k]
        new_bias[j] = bias.mean() if k is None else bias[k]
    dense.set_weights([new_kernel, new_bias])
    return parts


def decide(current: dict, candidate: dict, max_recall_drop: float) -> dict[str, object]:
    """Promotion rule on two ``models.evaluate`` results over the same test set and label space."""
    reasons: list[str] = []
    ba_delta = candidate["balanced_accuracy"] - current["balanced_accuracy"]
    if ba_delta < -EPSILON:
        reasons.append(f"balanced accuracy falls {current['balanced_accuracy']:.4f} -> "
                       f"{candidate['balanced_accuracy']:.4f}")
    per_class: dict[str, dict[str, object]] = {}
    for name, support in candidate["per_class_support"].items():
        before = current["per_class_recall"].get(name, 0.0)
        after = candidate["per_class_recall"][name]
        delta = after - before if support else None
        per_class[name] = {"current": before, "candidate": after, "delta": delta, "support": support}
        if delta is not None and delta < -max_recall_drop - EPSILON:
            reasons.append(f"recall of {name} drops {before:.4f} -> {after:.4f} "
                           f"(more than {max_recall_drop:.4f})")
    return {"promote": not reasons, "reasons": reasons or ["balanced accuracy not worse and no class recall "
                                                           "drops beyond the margin"],
            "balanced_accuracy": {"current": current["balanced_accuracy"],
                                  "candidate": candidate["balanced_accuracy"], "delta": ba_delta},
            "per_class_recall": per_class, "max_recall_drop": max_recall_drop}


def compare(current_json: Path, candidate_json: Path, test: Path, role: str, max_recall_drop: float,
            threads: int = 2) -> dict[str, object]:
    """Score both models on ``test`` with ``models.evaluate`` and apply :func:`decide`."""
    from models import data
    from models.evaluate import evaluate

    cur = manifest_mod.load(current_json)
    cand = manifest_mod.load(candidate_json)
    labels = cand.labels + [c for c in cur.labels if c not in cand.labels]
    results = {}
    for name, path, m in (("current", current_json, cur), ("candidate", candidate_json, cand)):
        _, _, model_path = manifest_mod.resolve(path, role)
        result, _, _ = evaluate(model_path, test, path, threads=threads, labels=labels)
        result.pop("reliability", None)
        results[name] = result
        log.info("%s %s (%s): balanced accuracy %.4f, accuracy %.4f", name, m.version, role,
                 result["balanced_accuracy"], result["accuracy"])
    decision = decide(results["current"], results["candidate"], max_recall_drop)
    decision.update({
        "current": {"version": cur.version, "manifest": str(current_json)},
        "candidate": {"version": cand.version, "manifest": str(candidate_json), "parent": cand.parent},
        "role": role,
        "test_data": str(test),
        "test_manifest_sha256": data.manifest_sha256(data.scan(test, labels)),
        "metrics": results,
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
    })
    return decision


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        current, _, keras_path = manifest_mod.resolve(args.current, "keras")
        arch = arch_of(current)
        classes = label_list(current.labels, args.data / "train", args.extra)
    except (manifest_mod.ManifestError, FileNotFoundError) as exc:
        print(f"models.retrain: {exc}", file=sys.stderr)
        return 2
    version = args.version or datetime.now(UTC).strftime("%Y%m%d.%H%M%S")
    if version == current.version:
        print(f"models.retrain: candidate version {version} equals the current one", file=sys.stderr)
        return 2
    test = args.test or args.data / "val"

    import keras

    from models import data, train

    started = time.time()
    args.size = current.input_size  # train.fit/ship read it from args
    keras.utils.set_random_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    new = [c for c in classes if c not in current.labels]
    log.info("parent %s; classes %s%s", current.version, classes, f" (new: {new})" if new else "")

    train_split = data.scan(args.data / "train", classes)
    extra_split = data.scan(args.extra, classes)
    val_split = data.scan(args.data / "val", classes)
    if not extra_split.paths:
        print(f"models.retrain: {args.extra} holds no images", file=sys.stderr)
        return 2
    log.info("train counts: %s", train_split.counts())
    log.info("confirmed cases: %s", extra_split.counts())
    data_hash = data.manifest_sha256(train_split, extra_split, val_split)

    side = round(args.size * 1.15)
    base_crops, base_y = data.load_crops(train_split, side, args.workers)
    extra_crops, extra_y = data.load_crops(extra_split, side, args.workers)
    crops = np.concatenate([base_crops, extra_crops])
    y_train = np.concatenate([base_y, extra_y])
    repeat = np.concatenate([np.ones(len(base_y), int), np.full(len(extra_y), args.extra_repeat)])
    del base_crops, extra_crops
    val_x, y_val = data.load_inputs(val_split, args.size, args.workers)

    parts = from_current(keras_path, arch, args.size, classes, current.labels)
    report = train.fit(parts, crops, y_train, val_x, y_val, classes, args, rng, repeat=repeat, keep_start=True)
    files, all_metrics, curves = train.ship(parts, args.out, crops, y_train, val_x, y_val, classes, args)
    training = {
        "parent": current.version,
        "head_val_balanced_accuracy": report.head_score,
        "fine_tune": report.history,
        "views_per_class": report.views_per_class,
        "class_weights": report.class_weights,
        "train_counts": train_split.counts(),
        "extra_counts": extra_split.counts(),
        "val_counts": val_split.counts(),
        "coverage_curves": curves,
        "args": {k: str(v) for k, v in vars(args).items()},
        "minutes": round((time.time() - started) / 60, 1),
    }
    dangerous = [c for c in classes if c in set(current.dangerous) | set(train.DANGEROUS)]
    candidate_json = train.write_manifest(
        args.out, version=version, arch=arch, size=args.size, classes=classes, files=files, seed=args.seed,
        data_hash=data_hash, training=training, all_metrics=all_metrics, parent=current.version,
        dangerous=dangerous)
    log.info("candidate %s written to %s", version, args.out)

    decision = compare(args.current, candidate_json, test, args.role, args.max_recall_drop, args.workers)
    decision_path = args.decision or args.out / "decision.json"
    decision_path.parent.mkdir(parents=True, exist_ok=True)
    decision_path.write_text(json.dumps(decision, indent=2) + "\n")
    print(f"{'PROMOTE' if decision['promote'] else 'REJECT'} {version} (parent {current.version}): "
          + "; ".join(decision["reasons"]))
    ba = decision["balanced_accuracy"]
    print(f"  balanced accuracy {ba['current']:.4f} -> {ba['candidate']:.4f} ({ba['delta']:+.4f})")
    for name, row in decision["per_class_recall"].items():
        delta = "n/a (not in test set)" if row["delta"] is None else f"{row['delta']:+.4f}"
        print(f"  recall {name}: {row['current']:.4f} -> {row['candidate']:.4f} {delta}")
    print(f"  decision: {decision_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
