"""Internal classifiers (ICs): the exit heads of an SDN, in three designs, and ZTW's ensemble.

- ``paper``: the SDN paper's IC: mixed max/average pooling to 4x4, then one linear layer.
- ``conv``: a small convolutional head: mixed pooling to at most 8x8, a 3x3 convolution, a
  strided 3x3 convolution to 4x4 (each with batch norm and ReLU), then one linear layer.
- ``ztw``: Zero Time Waste (Wojcik et al., NeurIPS 2021) on the ``conv`` head: each IC also reads
  the previous IC's softmax probabilities (detached; *cascading*), and exit k answers with a
  learned weighted geometric mean of the probabilities of ICs 1..k (:class:`GeometricEnsemble`).

Exits on token sequences (a vision transformer's (tokens, dim) blocks, or a channels-last map
such as Swin's, read as H*W tokens) get a :class:`TokenHead` in every design: the mean token,
layer norm, one linear layer. ``conv`` has no convolution to add there (its ``width`` is unused on
token exits); ``ztw``'s token heads cascade and ensemble like its conv heads.

Every head splits its forward pass in two: :meth:`ExitHead.reduce` is a fixed, parameter-free
reduction of its input (what the IC-only feature cache stores), :meth:`ExitHead.classify`
the learned rest. ``head(x, prev)`` is ``classify(reduce(x), prev)``, where ``prev`` is the
previous IC's logits (read by cascading heads only).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .choices import IC_DESIGNS, IC_WIDTH
from .errors import UserError

POOLED_SIZE = 4  # the paper IC's pooled map, and the conv head's output map
CONV_INPUT_SIZE = 8  # the conv head pools larger maps to this size before its first convolution

Reduced = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class ICDesign:
    """Which exit heads an SDN has, as saved in a run's model spec (``{"design": "conv", "width": 64}``)."""

    design: str = "paper"
    width: int = IC_WIDTH

    def __post_init__(self) -> None:
        if self.design not in IC_DESIGNS:
            raise UserError(f"unknown IC design '{self.design}': choose one of {', '.join(IC_DESIGNS)}")
        if not isinstance(self.width, int) or not 1 <= self.width <= 4096:
            raise UserError(f"IC width {self.width!r} must be a whole number from 1 to 4096")

    @property
    def cascades(self) -> bool:
        return self.design == "ztw"

    @property
    def ensembles(self) -> bool:
        return self.design == "ztw"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) if self.design != "paper" else {"design": "paper"}

    @classmethod
    def parse(cls, value: "ICDesign | str | Mapping[str, Any] | None") -> "ICDesign":
        """A design from its name, its saved dict, or itself (None: the paper's IC)."""
        if value is None:
            return cls()
        if isinstance(value, ICDesign):
            return value
        if isinstance(value, str):
            return cls(value)
        try:
            return cls(**dict(value))
        except TypeError as exc:
            raise UserError(f"IC design {dict(value)} has unknown settings ({exc})") from exc


class ExitHead(nn.Module):
    """An internal classifier reading a (C, H, W) feature map or a token sequence; see the module docstring."""

    def __init__(self, cascade_classes: int = 0) -> None:
        super().__init__()
        self.cascade_classes = cascade_classes  # > 0: reads the previous IC's logits

    def reduce(self, x: torch.Tensor) -> Reduced:
        """The fixed (parameter-free) reduction of the head's input that :meth:`classify` reads."""
        raise NotImplementedError

    def classify(self, reduced: Reduced, prev: torch.Tensor | None = None) -> torch.Tensor:
        """Logits from the reduced maps and, for a cascading head, the previous IC's logits."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor, prev: torch.Tensor | None = None) -> torch.Tensor:
        return self.classify(self.reduce(x), prev)

    def _with_previous(self, features: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
        """``features`` followed by the previous IC's probabilities (detached), for a cascading head."""
        if not self.cascade_classes:
            return features
        if prev is None:
            raise ValueError("a cascading internal classifier needs the previous IC's logits")
        return torch.cat([features, torch.softmax(prev.detach().float(), dim=1).to(features.dtype)], dim=1)


def mixed_pool_parts(x: torch.Tensor, size: int) -> Reduced:
    """Max- and average-pooled maps of at most ``size`` x ``size`` (``(x,)`` when already that small)."""
    h, w = x.shape[-2:]
    if h <= size and w <= size:
        return (x,)
    out = (min(h, size), min(w, size))
    if h % out[0] == 0 and w % out[1] == 0:  # plain pooling is faster than adaptive
        k = (h // out[0], w // out[1])
        return torch.max_pool2d(x, k), F.avg_pool2d(x, k)
    return F.adaptive_max_pool2d(x, out), F.adaptive_avg_pool2d(x, out)


def _mix(reduced: Reduced, alpha: nn.Parameter | None) -> torch.Tensor:
    """``alpha * max + (1 - alpha) * avg`` of :func:`mixed_pool_parts`' output. Exported (``torch.export``) as
    two depthwise 1x1 convolutions and an add, which onnxruntime runs in its blocked layout (the exported
    ``lerp`` made it convert both maps back, and the head's input again)."""
    if len(reduced) == 1:
        return reduced[0]
    maxp, avgp = reduced
    alpha = alpha if alpha.dtype == maxp.dtype else alpha.to(maxp.dtype)
    if torch.compiler.is_exporting():
        weight = alpha.reshape(1, 1, 1, 1).expand(maxp.shape[1], 1, 1, 1)
        return (F.conv2d(maxp, weight, groups=maxp.shape[1])
                + F.conv2d(avgp, 1 - weight, groups=maxp.shape[1]))
    return torch.lerp(avgp, maxp, alpha)


class InternalClassifier(ExitHead):
    """The paper's IC: a (C, H, W) map reduced to (C, 4, 4) by ``alpha * max + (1 - alpha) * avg``
    pooling (no pooling when H and W are already 4 or smaller), flattened, one linear layer.

    ``alpha`` is one learnable scalar, initialised uniformly in [0, 1) as in the paper's code.
    """

    def __init__(self, channels: int, height: int, width: int, num_classes: int, cascade_classes: int = 0) -> None:
        super().__init__(cascade_classes)
        self.pools = height > POOLED_SIZE or width > POOLED_SIZE
        self.alpha = nn.Parameter(torch.rand(1)) if self.pools else None
        out_h, out_w = min(height, POOLED_SIZE), min(width, POOLED_SIZE)
        self.linear = nn.Linear(channels * out_h * out_w + cascade_classes, num_classes)

    def reduce(self, x: torch.Tensor) -> Reduced:
        return mixed_pool_parts(x, POOLED_SIZE)

    def classify(self, reduced: Reduced, prev: torch.Tensor | None = None) -> torch.Tensor:
        features = self._with_previous(_mix(reduced, self.alpha).flatten(1), prev)
        return F.linear(features, self.linear.weight, self.linear.bias)  # not via the module: faster


class ConvHead(ExitHead):
    """A small convolutional IC: mixed pooling to at most 8x8 (learnable ``alpha`` as in the paper's
    IC), 3x3 conv -> BN -> ReLU, 3x3 conv with stride 2 (to 4x4 from 8x8) -> BN -> ReLU, flatten,
    one linear layer. ``width`` channels in both convolutions."""

    def __init__(self, channels: int, height: int, width: int, num_classes: int, conv_width: int = 64,
                 cascade_classes: int = 0) -> None:
        super().__init__(cascade_classes)
        pools = height > CONV_INPUT_SIZE or width > CONV_INPUT_SIZE
        self.alpha = nn.Parameter(torch.rand(1)) if pools else None
        h, w = min(height, CONV_INPUT_SIZE), min(width, CONV_INPUT_SIZE)
        stride = 2 if min(h, w) > POOLED_SIZE else 1
        self.body = nn.Sequential(
            nn.Conv2d(channels, conv_width, 3, padding=1, bias=False), nn.BatchNorm2d(conv_width), nn.ReLU(inplace=True),
            nn.Conv2d(conv_width, conv_width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(conv_width),
            nn.ReLU(inplace=True),
        )
        out_h, out_w = (h - 1) // stride + 1, (w - 1) // stride + 1
        self.linear = nn.Linear(conv_width * out_h * out_w + cascade_classes, num_classes)

    def reduce(self, x: torch.Tensor) -> Reduced:
        return mixed_pool_parts(x, CONV_INPUT_SIZE)

    def classify(self, reduced: Reduced, prev: torch.Tensor | None = None) -> torch.Tensor:
        features = self._body(_mix(reduced, self.alpha)).flatten(1)
        return F.linear(self._with_previous(features, prev), self.linear.weight, self.linear.bias)

    def _body(self, x: torch.Tensor) -> torch.Tensor:
        """``self.body(x)``; in eval mode by the functions its modules call, without the modules' call overhead."""
        if self.training:
            return self.body(x)
        conv1, bn1, _, conv2, bn2, _ = self.body
        for conv, bn in ((conv1, bn1), (conv2, bn2)):
            x = F.conv2d(x, conv.weight, None, conv.stride, conv.padding)
            x = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
            x = F.relu(x, inplace=True)
        return x


class TokenHead(ExitHead):
    """An IC for a token sequence (N, tokens, dim), or a channels-last map (N, H, W, dim) read as H*W tokens:
    the mean over all tokens (the class token, where there is one, among them), layer norm, one linear layer.

    The mean rather than the class token, as every transformer has tokens to average (Swin has no class
    token). Pooling comes before the norm (as timm's ``fc_norm`` for average pooling), so :meth:`reduce`, the
    mean, is parameter-free and the IC-only cache holds one ``dim`` vector per image."""

    def __init__(self, dim: int, num_classes: int, cascade_classes: int = 0) -> None:
        super().__init__(cascade_classes)
        self.norm = nn.LayerNorm(dim)
        self.linear = nn.Linear(dim + cascade_classes, num_classes)

    def reduce(self, x: torch.Tensor) -> Reduced:
        return (x.flatten(1, -2).mean(1),)

    def classify(self, reduced: Reduced, prev: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(self._with_previous(self.norm(reduced[0]), prev))


def make_heads(design: ICDesign, shapes: Sequence[Sequence[int]], num_classes: int) -> list[ExitHead]:
    """One head of ``design`` per exit, for inputs of the given shapes: (C, H, W) of a feature map, or
    (tokens, dim) of a token sequence (a :class:`TokenHead` in every design)."""
    heads: list[ExitHead] = []
    for i, shape in enumerate(shapes):
        cascade = num_classes if design.cascades and i > 0 else 0
        if len(shape) == 2:
            heads.append(TokenHead(shape[1], num_classes, cascade_classes=cascade))
        elif design.design == "paper":
            heads.append(InternalClassifier(*shape, num_classes))
        else:
            heads.append(ConvHead(*shape, num_classes, conv_width=design.width, cascade_classes=cascade))
    return heads


class GeometricEnsemble(nn.Module):
    """ZTW's geometric ensembling: exit k answers ``log_softmax(sum_{i<=k} w_ki * log p_i + b_k)``,
    with one learned weight per IC and a per-class bias for every exit.

    Initialised to answer with IC k alone (``w_kk = 1``, the rest 0, no bias); trained after the
    ICs, with them frozen. Its cost (k x classes multiply-adds per exit) is not counted in FLOPs,
    like other element-wise work (see :mod:`shallowdeep.flops`).
    """

    def __init__(self, num_ics: int, num_classes: int) -> None:
        super().__init__()
        self.weights = nn.ParameterList([nn.Parameter(F.one_hot(torch.tensor(k), k + 1).float())
                                         for k in range(num_ics)])
        self.bias = nn.Parameter(torch.zeros(num_ics, num_classes))

    def exit_logits(self, k: int, log_probs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Exit ``k``'s answer (log-probabilities) from the log-softmax of ICs 0..k."""
        w = self.weights[k]
        mixed = sum(w[i] * log_probs[i] for i in range(k + 1))
        return torch.log_softmax(mixed + self.bias[k], dim=1)

    def forward(self, ic_logits: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Every exit's answer from every IC's logits."""
        log_probs = [torch.log_softmax(z.float(), dim=1) for z in ic_logits]
        return [self.exit_logits(k, log_probs) for k in range(len(log_probs))]
