"""shallowdeep: Shallow-Deep Networks (Kaya et al., ICML 2019) for any CNN.

The public API, imported on first use (``import shallowdeep`` itself loads neither torch nor numpy):

- :func:`attach` (model, input_shape, num_classes, ...): any ``torch.fx``-traceable classifier as an
  :class:`SDN` with internal classifiers placed by FLOPs;
- :mod:`models`: the paper's four backbones, ``models.create(name, num_classes, input_size, in_channels)``;
- :func:`early_exit` (net, x, threshold): batched early exit;
- :func:`calibrate`, :class:`ExitOutputs`, :func:`simulate`, :func:`summarise`: thresholds on stored outputs;
- :class:`ModelSpec`, :func:`open_run`: a run folder's network and records;
- :func:`load` (run folder): a :class:`Classifier`, its trained SDN in eval mode with the preprocessing of its
  data, for new images (tensors, or files and folders with ``predict_files``);
- :func:`train_sdn` (net, train_loader, mode, epochs, ...): train an attached SDN's ICs (backbone frozen) or
  the whole SDN on your ``DataLoader``, optionally into a run folder.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "attach": "surgery", "SDN": "sdn", "ModelSpec": "model_spec", "open_run": "run",
    "load": "classifier", "Classifier": "classifier", "ExitOutputs": "exit_outputs",
    "early_exit": "exits", "calibrate": "exits", "simulate": "exits", "summarise": "exits",
    "train_sdn": "train.from_loader",
}
_SUBPACKAGES = ("models",)
__all__ = sorted([*_EXPORTS, *_SUBPACKAGES])


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)  # the import makes it an attribute of the package
    if name not in _EXPORTS:
        raise AttributeError(f"module 'shallowdeep' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    """The public names, each once (not the imports of this file nor the submodules imported so far)."""
    return sorted({*__all__, "__version__"})
