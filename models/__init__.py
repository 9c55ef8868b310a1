"""Training, quantisation and evaluation of the SkinScan classifier, and the shipped model files.

Heavy dependencies (TensorFlow) are imported inside the modules that need them, so the device
can read ``models.manifest`` without TensorFlow installed.
"""

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent
