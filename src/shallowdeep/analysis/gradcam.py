"""Grad-CAM (captum's ``LayerGradCam``) of the samples where the first IC is right and the final head wrong.

Layers explained:

* an internal classifier *i*: the feature map it reads, i.e. the output of ``net.segments[i]``;
* the final head: the last feature map of more than one pixel on its way, usually computed inside
  the last segment (for the built-in backbones and CIFAR ResNets: the output of the last block, just
  before global pooling), else in the latest segment before it that has one (when the last IC reads
  an already pooled map). It is found with ``torch.fx`` shape propagation and exposed by inserting
  an ``nn.Identity`` after that node in a copy of its segment.

Each heat map explains the class the head predicts itself, is rectified, upsampled bilinearly to
the input size and scaled to [0, 1] per sample (all zeros where Grad-CAM is zero everywhere).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import UserError
from ..eval_mode import eval_mode
from ..heads import TokenHead

if TYPE_CHECKING:
    from ..sdn import SDN

TARGET = "gradcam_target"


def disagreements(correct: np.ndarray, exit_index: int = 0) -> np.ndarray:
    """Indices of the samples exit ``exit_index`` gets right and the final head wrong.

    ``correct`` is the (exits, samples) boolean array of ``ExitOutputs.correct``.
    """
    correct = np.asarray(correct, dtype=bool)
    return np.flatnonzero(correct[exit_index] & ~correct[-1])


def mark_last_feature_map(segment: nn.Module, example: torch.Tensor) -> tuple[torch.fx.GraphModule, str] | None:
    """A copy of ``segment`` with an ``nn.Identity`` named ``gradcam_target`` after its last feature map.

    The feature map is the last value the segment computes of shape (N, C, H, W) with H * W > 1;
    returns the copy and the name of the marked fx node, or None when the segment computes none.
    """
    gm = segment if isinstance(segment, torch.fx.GraphModule) else torch.fx.symbolic_trace(segment)
    gm = copy.deepcopy(gm)
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    maps = [n for n in gm.graph.nodes if n.op not in ("placeholder", "output", "get_attr") and _is_spatial_map(n)]
    if not maps:
        return None
    node = maps[-1]
    gm.add_submodule(TARGET, nn.Identity())
    with gm.graph.inserting_after(node):
        marker = gm.graph.call_module(TARGET, (node,))
    node.replace_all_uses_with(marker, delete_user_cb=lambda user: user is not marker)
    gm.recompile()
    return gm, node.name


class _ToIC(nn.Module):
    """The input-to-answer path of IC ``k``."""

    def __init__(self, net: "SDN", k: int) -> None:
        super().__init__()
        self.net, self.k = net, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.answer_at(x, self.k)


class _ExitModel(nn.Module):
    """The path from the input to one exit, with ``layer`` the module whose output Grad-CAM explains."""

    def __init__(self, net: "SDN", exit_index: int, example: torch.Tensor) -> None:
        super().__init__()
        last = net.num_exits - 1
        if not 0 <= exit_index <= last:
            raise UserError(f"exit {exit_index} does not exist: the network has exits 0 to {last}")
        if exit_index < last:
            self.path = _ToIC(net, exit_index)
            self.layer: nn.Module = net.segments[exit_index]
            where = net.exit_names[exit_index]
            self.layer_name = f"output of segment {exit_index} ({where}), read by IC {exit_index + 1}"
            return
        inputs = [example]
        with torch.no_grad():
            for segment in net.segments[:-1]:
                inputs.append(segment(inputs[-1]))
        for j in reversed(range(net.num_exits)):
            marked = mark_last_feature_map(net.segments[j], inputs[j])
            if marked is not None:
                segment, node = marked
                self.path = nn.Sequential(*net.segments[:j], segment, *net.segments[j + 1 :])
                self.layer = segment.get_submodule(TARGET)
                self.layer_name = f"last feature map before the final head (fx node '{node}' of segment {j})"
                return
        raise UserError("Grad-CAM needs a feature map of more than one pixel before the final head")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.path(x)


GRADCAM_NEEDS_MAPS = ("Grad-CAM explains convolutional feature maps, but this network's ICs read token sequences "
                      "(a vision transformer)")


def reads_feature_maps(net: "SDN") -> bool:
    """Whether the network's ICs read (C, H, W) feature maps, which Grad-CAM can explain (not token sequences)."""
    return not any(isinstance(ic, TokenHead) for ic in net.ics)


def gradcam(net: "SDN", x: torch.Tensor, targets: torch.Tensor, exit_index: int) -> tuple[np.ndarray, str]:
    """Grad-CAM maps (N, H, W) in [0, 1] of exit ``exit_index`` (``num_exits - 1`` = final head) for ``targets``.

    ``x`` is a normalised batch on the network's device. Returns the maps and a description of
    the layer they explain. The network is used in eval mode and left as it was.
    """
    from captum.attr import LayerAttribution, LayerGradCam

    if not reads_feature_maps(net):
        raise UserError(GRADCAM_NEEDS_MAPS)
    with eval_mode(net):
        model = _ExitModel(net, exit_index, x[:1])
        with torch.enable_grad():
            cam = LayerGradCam(model, model.layer).attribute(
                x.detach().clone().requires_grad_(True), target=targets.tolist(), relu_attributions=True
            )
    cam = LayerAttribution.interpolate(cam.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
    cam = cam[:, 0].clamp_min(0).cpu().numpy().astype(np.float64)
    peak = cam.reshape(len(cam), -1).max(1)
    scaled = np.divide(cam, peak[:, None, None], out=np.zeros_like(cam), where=peak[:, None, None] > 0)
    return scaled, model.layer_name


def _is_spatial_map(node: torch.fx.Node) -> bool:
    shape = tuple(getattr(node.meta.get("tensor_meta"), "shape", ()))
    return len(shape) == 4 and shape[2] * shape[3] > 1
