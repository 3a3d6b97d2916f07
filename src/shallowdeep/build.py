"""Building backbones and SDNs from a :class:`~shallowdeep.model_spec.ModelSpec`, and loading
third-party weights."""

from __future__ import annotations

import importlib.util
import pickle
import warnings
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from . import models
from .errors import UserError, first_line
from .exit_plan import stored_plan, with_plan
from .library_models import create_library_model
from .model_spec import ModelSpec
from .sdn import SDN, backbone_state
from .surgery import attach_planned


def build_backbone(spec: ModelSpec, library_weights: bool = False) -> nn.Module:
    """The backbone a model spec describes, freshly initialised (a library model with the library's own
    pretrained weights when ``library_weights``)."""
    if spec.arch:
        return models.create(spec.arch, num_classes=spec.num_classes, input_size=spec.input_shape[-1],
                             in_channels=spec.input_shape[0])
    if spec.library:
        return create_library_model(spec.library, spec.num_classes, spec.model_kwargs, library_weights)
    factory = load_factory(spec)
    with _user_code(f"backbone function {spec.factory}"):
        backbone = factory()
    if not isinstance(backbone, nn.Module):
        raise UserError(f"backbone function {spec.factory} returned an object of type {type(backbone).__name__}, "
                        "not a torch.nn.Module")
    return backbone


@contextmanager
def _user_code(what: str) -> Iterator[None]:
    """Run the user's code: an exception it raises, or its ``sys.exit()``, becomes a one-line error naming
    ``what``; Ctrl-C still interrupts."""
    try:
        yield
    except (Exception, SystemExit) as exc:
        raise UserError(f"{what} failed: {type(exc).__name__}: {first_line(exc)}") from exc


def build_sdn(spec: ModelSpec, backbone_state: Mapping[str, torch.Tensor] | None = None,
              source: str = "weights", library_weights: bool = False) -> SDN:
    """The SDN a model spec describes: the backbone (with ``backbone_state`` loaded, if given, else a
    library's pretrained weights when ``library_weights``) with ICs at ``spec.exits`` (placed by FLOPs
    when it is None), traced with ``spec.tracing``. ``net.spec`` records the exits chosen and what attaching them
    found (its ``analysis``); a spec that carries it already is built with one trace (see
    :mod:`shallowdeep.exit_plan`)."""
    if not spec.has_backbone:
        raise UserError("say which backbone to build: --arch NAME, --backbone FILE.py:FUNCTION or LIBRARY:NAME, "
                        "or --from RUN")
    backbone = build_backbone(spec, library_weights and backbone_state is None)
    if backbone_state is not None:
        load_backbone_weights(backbone, backbone_state, source)
    net, plan = attach_planned(backbone, spec.input_shape, spec.num_classes, spec.exits, spec.fractions, spec.ic,
                               spec.tracing, stored_plan(spec))
    net.spec = with_plan(replace(spec, exits=tuple(net.exit_names)), plan)
    return net


def load_factory(spec: ModelSpec) -> Any:
    """The function ``spec.factory`` names (``'path/to/file.py:function'``, read from ``spec.base_dir``)."""
    path, name = spec.factory_path, spec.factory.rpartition(":")[2]
    if not path.is_file():
        raise UserError(f"backbone file {path} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"shallowdeep_user_{path.stem}", path)
    if module_spec is None:
        raise UserError(f"backbone file {path} is not a Python file (.py)")
    module = importlib.util.module_from_spec(module_spec)
    with _user_code(f"importing the backbone file {path}"):
        module_spec.loader.exec_module(module)
    factory = getattr(module, name, None)
    if not callable(factory):
        raise UserError(f"backbone file {path} has no function '{name}'")
    return factory


def load_checkpoint_file(path: str | Path) -> Any:
    """``torch.load`` on the CPU with ``weights_only=True``, with one-line errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive; before PyTorch 1.6 (and with _use_new_zipfile_serialization=False), a pickle
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise UserError(f"checkpoint {path} is {f'not a PyTorch file (it starts with {head!r})' if head else 'empty'}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about old pickle protocols before refusing them
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(
            f"checkpoint {path} holds objects other than tensors and plain values; refusing to unpickle it as code"
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # weights_only runs no code: anything else it raises means a damaged file
        raise UserError(f"checkpoint {path} is damaged or not a PyTorch file ({type(exc).__name__}: "
                        f"{first_line(exc)})") from exc


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint, in the common layouts.

    Accepts a bare state dict, or one nested under ``state_dict``, ``model``, ``model_state_dict``
    or ``net``; strips the ``module.`` prefix of DataParallel/DDP and keeps only an SDN's backbone
    (:func:`shallowdeep.sdn.backbone_state`), so an SDN or CNN checkpoint also yields its backbone's weights.
    """
    for key in ("state_dict", "model", "model_state_dict", "net"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{source} holds no state dict of tensors")
    return backbone_state({key.removeprefix("module."): value for key, value in obj.items()})


def check_finite_weights(state: Mapping[str, torch.Tensor], source: str) -> None:
    """A one-line error when a floating-point tensor of ``state`` holds NaN or infinite values."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not _all_finite(v)]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise UserError(f"{source} hold NaN or infinite values ({bad[0]}{more}); they cannot be trained or evaluated")


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether every value of ``tensor`` is finite: checked by numpy where it can hold the tensor (a CPU float), which
    starts no thread pool (torch's first parallel operation waits for one: up to a second on a busy machine)."""
    if tensor.device.type == "cpu" and tensor.dtype in (torch.float16, torch.float32, torch.float64):
        return bool(np.isfinite(tensor.detach().numpy()).all())
    return bool(torch.isfinite(tensor).all())


def load_backbone_weights(backbone: nn.Module, state: Mapping[str, torch.Tensor], source: str = "weights") -> None:
    """Load ``state`` into ``backbone`` strictly; a mismatch names the missing and unexpected keys."""
    own = backbone.state_dict()
    # checkpoints from before PyTorch 0.4.1 have no batch-norm step counters; keep the model's own
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **state}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items() if k in state and state[k].shape != v.shape]
    check_finite_weights(state, source)
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
                parts.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise UserError(f"{source} do not fit the {type(backbone).__name__} backbone ({'; '.join(parts)})")
    backbone.load_state_dict(state)
