"""shallowdeep: Shallow-Deep Networks (Kaya et al., ICML 2019) for any CNN.

The public API, imported on first use (``import shallowdeep`` itself loads neither torch nor numpy):

- :func:`attach` (model, input_shape, num_classes, ...): any ``torch.fx``-traceable classifier as an
  :class:`SDN` with internal classifiers placed by FLOPs;
- :func:`early_exit` (net, x, threshold): batched early exit;
- :func:`calibrate`, :class:`ExitOutputs`, :func:`simulate`, :func:`summarise`: thresholds on stored outputs;
- :class:`ModelSpec`, :func:`open_run`: a run folder's network and records;
- :func:`load_classifier` (run folder): its SDN with the preprocessing of its data, for new images.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "attach": "surgery", "SDN": "sdn", "ModelSpec": "model_spec", "open_run": "run",
    "load_classifier": "classifier", "Classifier": "classifier", "ExitOutputs": "exit_outputs",
    "early_exit": "exits", "calibrate": "exits", "simulate": "exits", "summarise": "exits",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'shallowdeep' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
