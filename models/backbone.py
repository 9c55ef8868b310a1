"""MobileNet backbones from the offline ImageNet weights, split for cached fine-tuning.

The classifier is ``pixels 0-255 -> rescale to [-1, 1] -> MobileNet -> 7x7 (at 224) feature map
-> global average pooling -> dropout -> dense logits`` (the paper's head; softmax is applied by the
runtime with the calibrated temperature). ``lower`` is the frozen part below the fine-tuned blocks.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

ARCHS = {
    # name: (keras.applications class, weights file, last frozen layer)
    # The cut leaves the top half of each network to fine-tune: dermoscopy is far from ImageNet, and
    # fine-tuning only the last two blocks stayed near the linear probe (val balanced accuracy 0.66).
    # Both cuts are where the cached maps are small (v2: 24x24x32 at 192 px; v1: 12x12x512).
    "v2": ("MobileNetV2", "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5", "block_5_add"),
    "v1": ("MobileNet", "mobilenet_v1_1.0_224_imagenet_no_top.weights.h5", "conv_pw_7_relu"),
}
DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "weights"


def weights_dir(explicit: str | None) -> Path | None:
    """``none`` means random initialisation (tests); default: ../shared/weights or $SKINSCAN_WEIGHTS_DIR."""
    chosen = explicit or os.environ.get("SKINSCAN_WEIGHTS_DIR") or str(DEFAULT_WEIGHTS_DIR)
    if chosen.lower() == "none":
        return None
    path = Path(chosen)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: ImageNet weights folder not found (see ../shared/weights/WEIGHTS.md)")
    return path


@dataclass
class Parts:
    arch: str
    size: int
    full: object  # keras.Model: pixels -> logits
    lower: object  # keras.Model: rescaled pixels -> cut feature map (frozen)
    upper: object  # keras.Model: cut feature map -> backbone output (fine-tuned)
    head: object  # keras.Model: backbone output -> logits
    pooled_head: object  # keras.Model: pooled features -> logits (shares the head's layers)
    rescale: object


def build(arch: str, size: int, n_classes: int, weights: Path | None, dropout: float = 0.3) -> Parts:
    import keras

    app_name, weights_file, cut = ARCHS[arch]
    app = getattr(keras.applications, app_name)
    backbone = app(weights=None, include_top=False, input_shape=(size, size, 3), alpha=1.0)
    if weights is not None:
        backbone.load_weights(str(weights / weights_file))
        log.info("loaded %s", weights / weights_file)
    # The shipped weights carry identity BatchNorm statistics (WEIGHTS.md): keep BN in inference mode.
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    cut_tensor = backbone.get_layer(cut).output
    lower = keras.Model(backbone.input, cut_tensor, name="lower")
    upper = keras.Model(cut_tensor, backbone.output, name="upper")
    lower.trainable = False

    channels = backbone.output.shape[-1]
    drop = keras.layers.Dropout(dropout, name="dropout")
    dense = keras.layers.Dense(n_classes, name="logits")
    feat_in = keras.Input(backbone.output.shape[1:], name="features")
    head = keras.Model(feat_in, dense(drop(keras.layers.GlobalAveragePooling2D(name="gap")(feat_in))), name="head")
    pooled_in = keras.Input((channels,), name="pooled")
    pooled_head = keras.Model(pooled_in, dense(drop(pooled_in)), name="pooled_head")

    rescale = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")
    pixels = keras.Input((size, size, 3), name="pixels")
    full = keras.Model(pixels, head(backbone(rescale(pixels))), name=f"skinscan_mobilenet_{arch}")
    return Parts(arch, size, full, lower, upper, head, pooled_head, rescale)
