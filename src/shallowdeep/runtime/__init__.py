"""Early exit without PyTorch: an export folder (see :mod:`shallowdeep.runtime.manifest`) run by onnxruntime.

>>> from shallowdeep import runtime
>>> model = runtime.load("export/")                      # the manifest's policy and threshold
>>> answer = model.predict_files(["cat.png", "photos/"])   # or model.predict(uint8_images, batch_size=1)
>>> answer.classes, answer.exits, answer.confidence, answer.flops

This package imports numpy, onnx, onnxruntime and Pillow, never torch (``pip install 'shallowdeep[deploy]'``).
"""

from .engine import BATCH_SIZE, Prediction, Runtime, load
from .manifest import FORMAT, MANIFEST, Manifest, Policy, is_export, read_manifest

__all__ = ["BATCH_SIZE", "FORMAT", "MANIFEST", "Manifest", "Policy", "Prediction", "Runtime", "is_export", "load",
           "read_manifest"]
