"""The SDN module: backbone segments with an internal classifier after each but the last."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .heads import InternalClassifier


class SDN(nn.Module):
    """A network split into ``len(ics) + 1`` sequential segments.

    ``segments[i]`` maps the previous segment's output to the feature map read by ``ics[i]``;
    the last segment ends with the original classifier. ``forward`` returns the logits of every
    exit in depth order, the final head last.

    Attributes:
        exit_names: where each IC reads its input (module or fx node names of the backbone).
        exit_flops: cumulative FLOPs per image to reach each exit, the ICs on the way included.
        backbone_flops: FLOPs per image of the unmodified backbone.
        spec: how the SDN was built (set by :mod:`shallowdeep.build`), saved with checkpoints.
    """

    def __init__(
        self,
        segments: Sequence[nn.Module],
        ics: Sequence[InternalClassifier],
        exit_names: Sequence[str],
        exit_flops: Sequence[int],
        backbone_flops: int,
    ) -> None:
        super().__init__()
        if len(segments) != len(ics) + 1 or len(exit_flops) != len(segments):
            raise ValueError("an SDN needs one more segment and exit cost than it has ICs")
        self.segments = nn.ModuleList(segments)
        self.ics = nn.ModuleList(ics)
        self.exit_names = list(exit_names)
        self.exit_flops = [int(f) for f in exit_flops]
        self.backbone_flops = int(backbone_flops)
        self.backbone_frozen = False
        self.spec: dict[str, Any] = {}

    @property
    def num_exits(self) -> int:
        """Number of exits, the final head included."""
        return len(self.segments)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for segment, ic in zip(self.segments, self.ics):
            x = segment(x)
            outputs.append(ic(x))
        outputs.append(self.segments[-1](x))
        return outputs

    def features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The feature map read by every IC, and the final logits."""
        maps = []
        for segment in self.segments[:-1]:
            x = segment(x)
            maps.append(x)
        return maps, self.segments[-1](x)

    def freeze_backbone(self) -> None:
        """Freeze the backbone: no gradients, and eval mode even when the SDN is put in train mode."""
        self.backbone_frozen = True
        for p in self.segments.parameters():
            p.requires_grad_(False)
        self.segments.eval()

    def train(self, mode: bool = True) -> "SDN":
        super().train(mode)
        if self.backbone_frozen:
            self.segments.eval()
        return self

    def early_exit(self, x: torch.Tensor, threshold: float | None = None, policy: Any = None):
        """Batched early exit; see :func:`shallowdeep.exits.early_exit`."""
        from .exits import early_exit

        return early_exit(self, x, threshold=threshold, policy=policy)
