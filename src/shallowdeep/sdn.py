"""The SDN module: backbone segments with an internal classifier after each but the last."""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import torch
from torch import nn

from .heads import ExitHead, GeometricEnsemble, ICDesign
from .model_spec import ModelSpec


_SEGMENT_PREFIX = re.compile(r"^segments\.\d+\.")


def backbone_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone's own weights inside an SDN's state dict: the ``segments.N.`` prefixes stripped,
    the ICs and the ensemble left out (a backbone's plain state dict passes through unchanged)."""
    return {_SEGMENT_PREFIX.sub("", k): v for k, v in state.items() if not k.startswith(("ics.", "ensemble."))}


class SDN(nn.Module):
    """A network split into ``len(ics) + 1`` sequential segments.

    ``segments[i]`` maps the previous segment's output to the feature map read by ``ics[i]``;
    the last segment ends with the original classifier. ``forward`` returns the logits of every
    head in depth order, the final head last (what training reads); :meth:`exit_logits` returns
    what every exit *answers*: the same, except that with a ``ensemble`` (ZTW) exit k answers with
    the ensemble of ICs 1..k. Early exit is :func:`shallowdeep.early_exit` (net, x, ...): the model
    does not import what uses it.

    Attributes:
        exit_names: where each IC reads its input (module or fx node names of the backbone).
        exit_flops: cumulative FLOPs per image to reach each exit, the ICs on the way included.
        backbone_flops: FLOPs per image of the unmodified backbone.
        ic_design: the heads' design (see :mod:`shallowdeep.heads`).
        spec: how the SDN was built (set by :func:`shallowdeep.build.build_sdn`; None for a hand-made
            SDN), saved in a run's config.
    """

    def __init__(
        self,
        segments: Sequence[nn.Module],
        ics: Sequence[ExitHead],
        exit_names: Sequence[str],
        exit_flops: Sequence[int],
        backbone_flops: int,
        ensemble: GeometricEnsemble | None = None,
        ic_design: ICDesign | None = None,
    ) -> None:
        super().__init__()
        if len(segments) != len(ics) + 1 or len(exit_flops) != len(segments):
            raise ValueError("an SDN needs one more segment and exit cost than it has ICs")
        self.segments = nn.ModuleList(segments)
        self.ics = nn.ModuleList(ics)
        self.ensemble = ensemble
        self.ic_design = ic_design or ICDesign()
        self.exit_names = list(exit_names)
        self.exit_flops = [int(f) for f in exit_flops]
        self.backbone_flops = int(backbone_flops)
        self.backbone_frozen = False
        self.spec: ModelSpec | None = None

    @property
    def num_exits(self) -> int:
        """Number of exits, the final head included."""
        return len(self.segments)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs: list[torch.Tensor] = []
        for segment, ic in zip(self.segments, self.ics):
            x = segment(x)
            outputs.append(ic(x, outputs[-1] if outputs else None))
        outputs.append(self.segments[-1](x))
        return outputs

    def combine(self, outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """What every exit answers, given every head's logits (``forward``'s output)."""
        if self.ensemble is None:
            return outputs
        return [*self.ensemble(outputs[:-1]), outputs[-1]]

    def exit_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """What every exit answers on ``x``, in depth order, the final head last."""
        return self.combine(self(x))

    def answer_at(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """IC ``k``'s answer on ``x`` (0-based), computing only the segments and ICs before it."""
        raws: list[torch.Tensor] = []
        for segment, ic in zip(self.segments[: k + 1], self.ics):
            x = segment(x)
            raws.append(ic(x, raws[-1] if raws else None))
        if self.ensemble is None:
            return raws[-1]
        return self.ensemble.exit_logits(k, [torch.log_softmax(r.float(), dim=1) for r in raws])

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
