"""Per-exit logits as one NumPy stack, and their softmax."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import UserError


def logit_stack(outputs: Any) -> np.ndarray:
    """Per-exit logits as a float64 array (exits, samples, classes), the final head last.

    Accepts a sequence of (samples, classes) arrays or tensors, one (exits, samples, classes)
    array or tensor, or anything with a ``logits`` attribute holding one (e.g. ``ExitOutputs``).
    """
    if hasattr(outputs, "logits"):
        outputs = outputs.logits
    if isinstance(outputs, Sequence) and not isinstance(outputs, np.ndarray):
        parts = [_to_numpy(o) for o in outputs]
        if not parts:
            raise UserError("no exit outputs given: pass the logits of every exit, the final head last")
        shapes = {p.shape for p in parts}
        if len(shapes) != 1 or parts[0].ndim != 2:
            raise UserError("every exit's logits must be one (samples, classes) array of the same shape, "
                            f"got {sorted(shapes)}")
        stack = np.stack(parts)
    else:
        stack = _to_numpy(outputs)
    if stack.ndim != 3:
        raise UserError(f"exit logits must form an (exits, samples, classes) array, got shape {stack.shape}")
    return stack.astype(np.float64, copy=False)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, computed stably in float64."""
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits, axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(-1, keepdims=True)


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, on any device
        value = value.detach().float().cpu().numpy()
    return np.asarray(value)
