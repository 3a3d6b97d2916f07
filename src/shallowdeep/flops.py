"""FLOP counting, one convention for the whole project.

FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode`, which counts
2 FLOPs per multiply-add of convolution and matrix-multiply (linear) layers and
ignores element-wise work (batch norm, activations, pooling, additions).
All figures are per image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from .eval_mode import eval_mode

if TYPE_CHECKING:
    from torch.utils.flop_counter import FlopCounterMode


def flop_counter() -> FlopCounterMode:
    """A :class:`~torch.utils.flop_counter.FlopCounterMode` that prints nothing. Its module is imported here, on first
    use: it imports triton where that is installed, most of a second, which loading a run does not need."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False)


def count_flops(fn: Callable[..., Any], *inputs: torch.Tensor) -> int:
    """FLOPs of one call ``fn(*inputs)`` divided by the batch size of the first input."""
    with torch.no_grad(), flop_counter() as counter:
        fn(*inputs)
    return counter.get_total_flops() // max(1, inputs[0].shape[0])


def model_flops(model: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs per image of ``model`` in eval mode on one zero input of ``input_shape`` (C, H, W)."""
    with eval_mode(model):
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        return count_flops(model, torch.zeros(1, *input_shape, device=device))
