"""Export and the torch-free runtime against the PyTorch engine, sample by sample.

For every IC design (a small CNN with ``paper`` ICs, a torchvision CNN with ``conv``, a timm CNN with ``ztw``, a
vision transformer with ``paper``), and every policy: onnxruntime's
answers (streamed in batches, and one image at a time through the fused graph) equal those of
``early_exit_stream`` in PyTorch, exit and class for every sample (a sample whose score lies within
``TIE`` of the threshold may differ: none did here), and every exit's logits agree within 1e-4 of their scale.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from torch import nn

import shallowdeep
from shallowdeep.data.augment import normalize
from shallowdeep.errors import UserError
from shallowdeep.exits import Entropy, MaxProb, early_exit_stream, make_policy
from shallowdeep.export import export_sdn
from shallowdeep.export.stages import StageModule
from shallowdeep.runtime import Policy, load, read_manifest
from shallowdeep.runtime.engine import make_session

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
TIE = 1e-5  # scores this close to the key may fall on either side in two libraries' float32 arithmetic
SAMPLES = 40


def block(i: int, o: int, stride: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())


def tiny_cnn() -> nn.Module:
    return nn.Sequential(block(3, 8, 1), block(8, 16, 2), block(16, 16, 1), block(16, 32, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def _randomise_batch_norm(model: nn.Module) -> nn.Module:
    """Running statistics and affine weights away from identity, so that the export must carry them."""
    generator = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
    return model


def _model(case: str) -> tuple[nn.Module, tuple[int, int, int], str]:
    if case == "paper":
        return tiny_cnn(), (3, 16, 16), case
    if case == "torchvision":
        torchvision = pytest.importorskip("torchvision")
        return torchvision.models.resnet18(num_classes=10), (3, 32, 32), "conv"
    timm = pytest.importorskip("timm")
    if case == "timm":
        return timm.create_model("resnet10t", num_classes=10), (3, 32, 32), "ztw"
    return (timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3, num_classes=10),
            (3, 32, 32), "paper")


CASES = ("paper", "torchvision", "timm", "vit")  # each IC design once: the exports are the slow part


@pytest.fixture(scope="module", params=CASES)
def exported(request, tmp_path_factory, one_thread):
    """An SDN with two exits, exported, and a seeded batch of uint8 images."""
    torch.manual_seed(0)
    model, shape, design = _model(request.param)
    net = shallowdeep.attach(_randomise_batch_norm(model).eval(), shape, 10, fractions=(0.3, 0.6), ic=design).eval()
    folder = tmp_path_factory.mktemp(request.param) / "export"
    export_sdn(net, folder, classes=[f"class {i}" for i in range(10)], mean=MEAN, std=STD,
               policy=Policy("maxprob", 0.5), input_shape=shape)
    images = torch.randint(0, 256, (SAMPLES, *shape), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    return net, folder, images


def _thresholds(net: nn.Module, x: torch.Tensor) -> dict[str, float | tuple[float, ...]]:
    """One threshold per policy under which about half the samples leave at the first IC (the median of its
    scores; per exit, the median of each IC's)."""
    with torch.no_grad():
        ics = torch.stack(net.exit_logits(x)[:-1])
    maxprob, entropy = MaxProb.scores(ics), Entropy.scores(ics)
    return {"maxprob": float(maxprob[0].median()), "entropy": -float(entropy[0].median()), "patience": 2.0,
            "maxprob-per-exit": tuple(float(s.median()) for s in maxprob)}


@pytest.mark.parametrize("design", ("paper", "conv", "ztw"))
def test_the_stages_chained_give_every_exits_logits(design):
    torch.manual_seed(0)
    net = shallowdeep.attach(_randomise_batch_norm(tiny_cnn()).eval(), (3, 16, 16), 10, fractions=(0.3, 0.6),
                             ic=design).eval()
    x = torch.randn(4, 3, 16, 16)
    values, logits = {"h": x}, []
    with torch.no_grad():
        for index in range(net.num_exits):
            stage = StageModule(net, index)
            out = dict(zip(stage.output_names, stage(*(values[name] for name in stage.input_names))))
            logits.append(out["logits"])
            values = {name.removesuffix("_next"): value for name, value in out.items()}
        expected = net.exit_logits(x)
    assert len(logits) == len(expected) == 3
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(logits, expected))


@pytest.mark.slow
def test_every_exits_logits_equal_pytorchs(exported):
    net, folder, images = exported
    x = normalize(images, MEAN, STD)
    with torch.no_grad():
        expected = [v.numpy() for v in net.exit_logits(x)]
    got = load(folder, threads=1).exit_logits(images.numpy())
    assert len(got) == len(expected) == net.num_exits
    for ours, theirs in zip(got, expected):
        assert np.abs(ours - theirs).max() <= 1e-4 * max(1.0, np.abs(theirs).max())


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["maxprob", "entropy", "patience", "maxprob-per-exit"])
def test_runtime_answers_as_the_pytorch_engine(exported, policy):
    net, folder, images = exported
    x = normalize(images, MEAN, STD)
    threshold = _thresholds(net, x)[policy]
    rule = make_policy(policy, threshold)
    classes, exits, flops = (v.numpy() for v in early_exit_stream(net, x.split(16), policy=rule))
    assert policy == "patience" or len(set(exits.tolist())) > 1  # the threshold spreads the samples over the exits
    runtime = load(folder, threshold, policy, threads=1)
    for batch_size in (1, 16):  # the fused graph, one image at a time; the streaming engine
        answer = runtime.predict(images.numpy(), batch_size)
        differ = (answer.exits != exits) | (answer.indices != classes)
        assert not differ[~_near_threshold(net, x, rule)].any(), f"batch size {batch_size}: {np.flatnonzero(differ)}"
        assert np.array_equal(answer.flops[~differ], flops[~differ])
        assert answer.classes[0] == f"class {answer.indices[0]}"
        probs = np.exp(answer.logits - answer.logits.max(1, keepdims=True))
        assert np.allclose(answer.confidence, (probs / probs.sum(1, keepdims=True)).max(1), atol=1e-5)


def _near_threshold(net: nn.Module, x: torch.Tensor, rule) -> np.ndarray:
    """Samples whose score at some IC lies within TIE of that IC's key (a tie, in two libraries' arithmetic)."""
    if rule.name == "patience":
        return np.zeros(len(x), bool)
    with torch.no_grad():
        scores = type(rule).scores(torch.stack(net.exit_logits(x)[:-1]))
    keys = torch.tensor([rule.key_at(i) for i in range(len(scores))]).unsqueeze(1)
    return ((scores - keys).abs() < TIE).any(0).numpy()


@pytest.mark.slow
def test_the_manifest_and_graphs(exported):
    net, folder, images = exported
    manifest = read_manifest(folder)
    assert manifest.exit_flops == tuple(net.exit_flops) and manifest.backbone_flops == net.backbone_flops
    assert manifest.exit_names[-1] == "final" and len(manifest.stages) == net.num_exits
    assert (manifest.ensemble is not None) == (net.ensemble is not None)
    for stage in manifest.stages:
        model = onnx.load(str(folder / stage.file))
        onnx.checker.check_model(model)
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a dynamic batch axis
        assert [i.name for i in model.graph.input] == list(stage.inputs)
    fused = onnx.load(str(folder / "early_exit.onnx"))
    assert sum(n.op_type == "If" for n in fused.graph.node) == 1  # the next If sits inside its branch
    # the shipped graph takes the thresholds as an input (default: the exported ones); the runtime bakes them in
    runtime = load(folder)
    assert [i.name for i in runtime.fused_session().get_inputs()] == ["h"]
    session = make_session(folder / "early_exit.onnx")  # as onnxruntime loads it, on this process's thread pool
    x = runtime.preprocess(images[:8].numpy())
    for i in range(len(x)):
        logits, exit_, _ = session.run(None, {"h": x[i:i + 1]})
        expected_logits, expected_exit, _ = runtime.fused(x[i:i + 1])
        assert exit_[0] == expected_exit[0] and np.allclose(logits, expected_logits, atol=1e-5)
        never = np.full(net.num_exits - 1, np.inf, np.float32)
        assert session.run(None, {"h": x[i:i + 1], "keys": never})[1][0] == net.num_exits - 1


@pytest.mark.slow
def test_the_runtime_checks_pixels_as_the_pytorch_classifier_does(exported, tmp_path):
    _, folder, images = exported
    runtime = load(folder)
    pixels = images[:3].numpy()
    expected = runtime.predict(pixels).indices.tolist()
    for same in (pixels.astype(np.int64), pixels.tolist(), list(pixels), pixels.astype(np.float64) / 255, images[:3]):
        assert runtime.predict(same, batch_size=2).indices.tolist() == expected
    shape = tuple(pixels.shape[1:])
    refused = {"float images must be in \\[0, 1\\]": pixels.astype(np.float32), "NaN or infinite":
               np.full((1, *shape), np.nan, np.float32), "pixel values 0..255": pixels.astype(np.int64) - 1,
               "of type bool": pixels > 9, f"images of shape \\({shape[1]}, {shape[2]}\\) given, but this export":
               pixels[0, 0], "call predict_files": "x.png"}
    for message, given in refused.items():
        with pytest.raises(UserError, match=message):
            runtime.predict(given)
    for batch_size in (0, 2.5, True):
        with pytest.raises(UserError, match="batch_size must be a whole number >= 1"):
            runtime.predict(pixels, batch_size=batch_size)
    one = tmp_path / "one.png"
    Image.fromarray(pixels[0].transpose(1, 2, 0).squeeze()).save(one)
    assert runtime.predict_files(str(one)).paths == [one]  # one path is one file, not a list of characters


@pytest.mark.slow
def test_export_refuses_a_folder_that_is_not_an_export_and_replaces_an_export(tmp_path):
    torch.manual_seed(0)
    net = shallowdeep.attach(tiny_cnn().eval(), (3, 16, 16), 10, fractions=(0.5,)).eval()
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    args = dict(classes=[str(i) for i in range(10)], mean=MEAN, std=STD, input_shape=(3, 16, 16))
    with pytest.raises(UserError, match="not empty and holds no export"):
        export_sdn(net, user, policy=Policy("maxprob", 0.5), **args)
    assert [p.name for p in user.iterdir()] == ["notes.txt"]
    out = tmp_path / "export"
    export_sdn(net, out, policy=Policy("maxprob", 0.5), **args)
    export_sdn(net, out, policy=Policy("entropy", 0.3), **args)  # an earlier export is replaced
    assert read_manifest(out).policy == Policy("entropy", 0.3, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "mine"]  # no temporary folder left
    with pytest.raises(UserError, match="11 class names given for a network with 10 classes"):
        export_sdn(net, tmp_path / "other", policy=Policy("maxprob", 0.5), **{**args, "classes": list("abcdefghijk")})
    with pytest.raises(UserError, match="maxprob-per-exit has 2 thresholds for 1 ICs"):
        export_sdn(net, tmp_path / "other", policy=Policy("maxprob-per-exit", (0.5, 0.5)), **args)
    _check_damaged_manifests_are_one_line(out, tmp_path / "broken")


class _Unexportable(nn.Module):
    """A CNN whose last stage uses an operator the ONNX exporter lacks."""

    def __init__(self) -> None:
        super().__init__()
        self.features = tiny_cnn()[:4]
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).mean((2, 3))
        return self.head(h) + torch.special.zeta(h.abs() + 2, 2.0).sum(1, keepdim=True)


@pytest.mark.slow
def test_a_model_that_cannot_be_exported_is_one_line_naming_the_stage_and_operator(tmp_path):
    net = shallowdeep.attach(_Unexportable().eval(), (3, 16, 16), 10, fractions=(0.5,)).eval()
    with pytest.raises(UserError) as error:
        export_sdn(net, tmp_path / "out", classes=[str(i) for i in range(10)], mean=MEAN, std=STD,
                   policy=Policy("maxprob", 0.5), input_shape=(3, 16, 16))
    message = str(error.value)
    assert "\n" not in message and message.startswith("stage 1 (up to exit 'final') cannot be exported to ONNX")
    assert "zeta" in message
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def _check_damaged_manifests_are_one_line(folder, broken):
    broken.mkdir()
    for path in folder.iterdir():
        (broken / path.name).write_bytes(path.read_bytes())
    manifest = json.loads((folder / "manifest.json").read_text())
    for edit, message in ((lambda m: m["policy"].update(threshold=None), "threshold must be a number"),
                          (lambda m: m["policy"].update(name="maxprob-per-exit", threshold=[0.5, 0.5]),
                           "2 thresholds for 1 ICs"),
                          (lambda m: m.pop("exits"), "damaged"),
                          (lambda m: m["stages"][0].update(file="../stage0.onnx"), "not in")):
        edited = json.loads(json.dumps(manifest))
        edit(edited)
        (broken / "manifest.json").write_text(json.dumps(edited))
        with pytest.raises(UserError, match=message):
            load(broken)
    (broken / "manifest.json").write_text(json.dumps(manifest))
    (broken / "stage0.onnx").write_bytes(b"not onnx")
    with pytest.raises(UserError, match="stage0.onnx is not a valid ONNX graph"):
        load(broken)
