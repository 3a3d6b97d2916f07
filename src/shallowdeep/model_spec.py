"""The whole description of a network, saved in every run's ``config.json`` under ``"model"``.

A :class:`ModelSpec` names the backbone (a built-in ``arch``, a user ``factory``:
``"file.py:function"``, the file read from ``base_dir``, or a ``library`` model: ``"torchvision:resnet18"``,
``"timm:convnext_atto"``, built with ``model_kwargs``), the data it takes (classes, input shape),
where its exits go (``exits`` by module name; ``()`` for the plain CNN; None to place them at
``fractions`` of the FLOPs, after which the chosen names are recorded), the design of their
heads, and the classes and functions torch.fx traces as one call (``leaf_modules`` and ``autowrap_functions``, by
name: see :mod:`shallowdeep.trace_options`). ``base_dir`` is where the spec was read from and is not saved.
``analysis`` is what building the network found (see :mod:`shallowdeep.exit_plan`): saved, so that rebuilding it
from a run does not find it again; it plays no part in comparing specs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

from .choices import LIBRARIES
from .errors import UserError
from .heads import ICDesign
from .trace_options import TraceOptions, names

PAPER_FRACTIONS = (0.15, 0.3, 0.45, 0.6, 0.75, 0.9)


@dataclass(frozen=True)
class ModelSpec:
    """A network: backbone, data shape, exits and their heads (see the module docstring)."""

    arch: str | None = None
    factory: str | None = None
    library: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    num_classes: int | None = None
    input_shape: tuple[int, ...] | None = None
    exits: tuple[str, ...] | None = None
    fractions: tuple[float, ...] = PAPER_FRACTIONS
    ic: ICDesign = field(default_factory=ICDesign)
    leaf_modules: tuple[str, ...] = ()
    autowrap_functions: tuple[str, ...] = ()
    base_dir: Path = Path(".")
    analysis: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if sum(map(bool, (self.arch, self.factory, self.library))) > 1:
            raise UserError("give one backbone: a built-in one (--arch) or your own or a library's (--backbone), not both")
        if self.library is not None:
            library, _, name = self.library.partition(":")
            if library not in LIBRARIES or not name:
                raise UserError(f"library model '{self.library}' must look like {' or '.join(LIBRARIES)}:NAME")
        if not isinstance(self.model_kwargs, Mapping) or not all(isinstance(k, str) for k in self.model_kwargs):
            raise UserError(f"model keyword arguments must be a JSON object, got {self.model_kwargs!r}")
        if self.factory is not None:
            path, sep, name = self.factory.rpartition(":")
            if not sep or not path or not name:
                raise UserError(f"backbone '{self.factory}' must look like path/to/file.py:function")
        if self.num_classes is not None and not _positive_int(self.num_classes):
            raise UserError(f"the number of classes must be a positive integer, got {self.num_classes!r}")
        if self.input_shape is not None and not all(_positive_int(n) for n in self.input_shape):
            raise UserError(f"the input shape must be positive integers, got {list(self.input_shape)}")
        if self.input_shape is not None:
            check_input_size(self.input_shape)
        if self.exits is not None and not all(isinstance(e, str) for e in self.exits):
            raise UserError(f"exits must be module names, got {list(self.exits)}")
        if not all(isinstance(f, (int, float)) and 0 < f <= 1 for f in self.fractions):
            raise UserError(f"exit fractions must lie in (0, 1], got {list(self.fractions)}")
        object.__setattr__(self, "ic", ICDesign.parse(self.ic))  # a design's name or settings alone, too
        object.__setattr__(self, "leaf_modules", names(self.leaf_modules, "leaf_modules"))
        object.__setattr__(self, "autowrap_functions", names(self.autowrap_functions, "autowrap_functions"))
        if self.analysis is not None and not isinstance(self.analysis, Mapping):
            raise UserError(f"the model's analysis must be a JSON object, got {self.analysis!r:.40}")

    @property
    def has_backbone(self) -> bool:
        return bool(self.arch or self.factory or self.library)

    @property
    def tracing(self) -> TraceOptions:
        """What torch.fx traces as one call in this backbone."""
        return TraceOptions(self.leaf_modules, self.autowrap_functions)

    @property
    def factory_path(self) -> Path:
        """The user's backbone file, resolved against ``base_dir``."""
        return Path(self.base_dir, self.factory.rpartition(":")[0])

    def with_data(self, num_classes: int, input_shape: tuple[int, ...]) -> "ModelSpec":
        return replace(self, num_classes=num_classes, input_shape=tuple(input_shape))

    def with_backbone_of(self, other: "ModelSpec") -> "ModelSpec":
        """This spec with ``other``'s backbone (its factory file still read from ``other.base_dir``), and how to
        trace it unless this spec says so itself."""
        return replace(self, arch=other.arch, factory=other.factory, library=other.library,
                       model_kwargs=other.model_kwargs, base_dir=other.base_dir,
                       leaf_modules=self.leaf_modules or other.leaf_modules,
                       autowrap_functions=self.autowrap_functions or other.autowrap_functions)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form saved in ``config.json``."""
        d: dict[str, Any] = ({"arch": self.arch} if self.arch else {"factory": self.factory} if not self.library
                             else {"library": self.library, "model_kwargs": dict(self.model_kwargs)})
        return {**d, "num_classes": self.num_classes, "input_shape": list(self.input_shape or ()),
                "exits": None if self.exits is None else list(self.exits), "fractions": list(self.fractions),
                "ic": self.ic.to_dict(),
                **({"leaf_modules": list(self.leaf_modules)} if self.leaf_modules else {}),
                **({"autowrap_functions": list(self.autowrap_functions)} if self.autowrap_functions else {}),
                **({"analysis": dict(self.analysis)} if self.analysis is not None else {})}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], base_dir: str | Path = ".") -> "ModelSpec":
        """The spec a saved ``"model"`` section describes; a one-line error when it is damaged."""
        try:
            exits = d.get("exits")
            return cls(arch=d.get("arch"), factory=d.get("factory"), library=d.get("library"),
                       model_kwargs=d.get("model_kwargs") or {}, num_classes=d.get("num_classes"),
                       input_shape=tuple(d["input_shape"]) if d.get("input_shape") else None,
                       exits=None if exits is None else tuple(exits),
                       fractions=tuple(d.get("fractions", PAPER_FRACTIONS)), ic=ICDesign.parse(d.get("ic")),
                       leaf_modules=d.get("leaf_modules", ()), autowrap_functions=d.get("autowrap_functions", ()),
                       base_dir=Path(base_dir), analysis=d.get("analysis"))
        except (AttributeError, TypeError, ValueError, UserError) as exc:
            raise UserError(f"the model description is damaged ({exc})") from exc


MAX_INPUT_VALUES = 2**26  # values in one input image (256 MiB as float32; 3x4096x4096 is 50 million)


def check_input_size(shape: Sequence[int]) -> None:
    """A one-line error when one image of ``shape`` holds more than :data:`MAX_INPUT_VALUES` values: tracing the
    network on it would try to allocate that much memory, and more for every layer."""
    values = math.prod(shape)
    if values > MAX_INPUT_VALUES:
        raise UserError(f"the input shape {'x'.join(map(str, shape))} is too large: {values:,} values per image, "
                        f"at most {MAX_INPUT_VALUES:,}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
