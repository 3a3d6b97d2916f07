"""What ``torch.fx`` records as one call instead of tracing through its code: the escape hatch for a model it
cannot trace.

fx cannot trace Python control flow on tensor values (``if x.sum() > 0:``). The module whose forward holds such
code can be made a *leaf module*: fx records one call of it and never reads its code (as
``torchvision.models.feature_extraction`` does with ``leaf_modules``); a plain function called from a forward can
be *autowrapped*: recorded as one call (fx's ``autowrap_functions``). No exit can go inside either.

Both are given by name, so that a run records them in its ``config.json`` like its exits: a class or function by
its name (``Gate``; ``Outer.Gate`` for a nested one), or by its full import path (``timm.layers.mlp.Mlp``) where
two share a name. Every module of a leaf class is a leaf (its subclasses are not). A class or function given as an
object is recorded by its qualified name.
"""

from __future__ import annotations

import os
import types
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from torch import nn

from .errors import SettingError, first_line

_TORCH_DIR = os.path.dirname(os.path.dirname(nn.__file__)) + os.sep  # frames of torch's own code are not the model's


@dataclass(frozen=True)
class TraceOptions:
    """The names of the leaf module classes and autowrapped functions (see the module docstring)."""

    leaf_modules: tuple[str, ...] = ()
    autowrap_functions: tuple[str, ...] = ()

    @classmethod
    def of(cls, leaf_modules: Iterable[str | type] = (), autowrap_functions: Iterable[str | Callable] = ()
           ) -> "TraceOptions":
        """Options from names, classes and functions; a one-line error for anything else."""
        return cls(names(leaf_modules, "leaf_modules"), names(autowrap_functions, "autowrap_functions"))

    def leaf_classes(self, model: nn.Module) -> tuple[type, ...]:
        """The classes of ``model``'s modules that :attr:`leaf_modules` names; one that names none is an error."""
        if not self.leaf_modules:
            return ()
        classes = {type(m) for m in model.modules()}
        return tuple(_resolve(self.leaf_modules, classes, "leaf module", "class of the model's modules",
                              "leaf_modules"))

    def functions(self, model: nn.Module) -> tuple[Callable, ...]:
        """The functions :attr:`autowrap_functions` names, among those the model's forward code calls by a global
        name (the only calls fx can wrap); one that names none is an error."""
        if not self.autowrap_functions:
            return ()
        found = {value for m in model.modules()
                 for value in getattr(type(m).forward, "__globals__", {}).values()
                 if isinstance(value, types.FunctionType)}
        return tuple(_resolve(self.autowrap_functions, found, "autowrap function",
                              "function the model's forward code calls by a global name", "autowrap_functions"))


def names(items: Iterable[str | type | Callable], setting: str) -> tuple[str, ...]:
    """``items`` as names: strings as they are, classes and functions by their qualified name."""
    if isinstance(items, (str, type)) or callable(items):
        items = [items]  # one name or object given alone
    try:
        found = tuple(item if isinstance(item, str) else item.__qualname__ for item in items)
    except (TypeError, AttributeError):
        raise SettingError(f"{setting} must be names, classes or functions, got {items!r:.80}", setting) from None
    if not all(found):
        raise SettingError(f"{setting} holds an empty name", setting)
    return found


def _resolve(wanted: tuple[str, ...], candidates: set[Any], what: str, among: str, setting: str) -> list[Any]:
    """The candidates each of ``wanted`` names (see :func:`_is_named`), in order; a name matching none is an error."""
    chosen = []
    for name in wanted:
        matches = sorted((c for c in candidates if _is_named(c, name)), key=lambda c: (c.__module__, c.__qualname__))
        if not matches:
            raise SettingError(f"{what} '{name}' is no {among}", setting)
        chosen += matches
    return chosen


def _is_named(obj: Any, name: str) -> bool:
    """Whether ``name`` is ``obj``'s name, qualified name or full import path."""
    return name in (obj.__name__, obj.__qualname__, f"{obj.__module__}.{obj.__qualname__}")


def untraceable(model: nn.Module, error: Exception) -> SettingError:
    """The one-line error for fx failing with ``error`` on ``model``, naming what to make a leaf module (or which
    function to autowrap): the innermost of the model's modules (and plain functions) whose code was running."""
    said = f"cannot split {type(model).__name__}: torch.fx could not trace its forward ({first_line(error)})"
    module, function = _failing_code(error)
    inside = f"{type(module).__qualname__}.forward" if module is not None else "the model"
    if function is not None:
        return SettingError(f"{said} in the function {function} (called in {inside}); trace it as one call: "
                            f"autowrap_functions=['{function}'], or make a module around it a leaf module "
                            "(leaf_modules)", "autowrap_functions", "leaf_modules")
    if module is not None and module is not model:
        name = type(module).__qualname__
        return SettingError(f"{said} in {inside}; make it a leaf module, traced as one call: "
                            f"leaf_modules=['{name}']", "leaf_modules")
    return SettingError(f"{said}; data-dependent control flow in {type(model).__qualname__}.forward itself must be "
                        "removed, or moved into a submodule made a leaf module (leaf_modules)", "leaf_modules")


def _failing_code(error: Exception) -> tuple[nn.Module | None, str | None]:
    """Where in the model's code (not torch's, not the tracer's caller) ``error`` was raised: the innermost module
    whose method was running, and the plain function running inside it, if the innermost frame is one."""
    frames, tb = [], error.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    in_torch = [f.f_code.co_filename.startswith(_TORCH_DIR) for f in frames]
    traced = frames[in_torch.index(True):] if True in in_torch else []  # the model's code runs inside the tracer
    function = None
    for frame, torch_code in reversed(list(zip(traced, in_torch[len(frames) - len(traced):]))):
        if torch_code:
            continue
        owner = frame.f_locals.get("self")
        if isinstance(owner, nn.Module):
            return owner, function
        if function is None and isinstance(frame.f_globals.get(frame.f_code.co_name), types.FunctionType):
            function = frame.f_code.co_name
    return None, function
