"""Networks nobody here wrote: torchvision and timm CNNs of many families, randomly initialised (no download).

Skipped where torchvision or timm cannot be imported; CI installs both (the ``test`` extra)."""

from __future__ import annotations

import json
import re

import pytest
import torch

from conftest import run_cli
from shallowdeep.surgery import attach
from shallowdeep.errors import UserError
from shallowdeep.exits import early_exit

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")
pytestmark = pytest.mark.slow  # library networks, traced and trained at full size

TORCHVISION = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "regnet_y_400mf",
               "densenet121", "vgg11_bn", "mnasnet0_5"]
TIMM = ["resnet18", "mobilenetv3_small_050", "efficientnet_b0", "convnext_atto", "regnetx_002", "densenet121",
        "resnext26ts", "ghostnet_050"]
SHAPE = (3, 64, 64)


def build(library: str, name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if library == "torchvision":
        return torchvision.models.get_model(name, num_classes=10).eval()
    return timm.create_model(name, num_classes=10).eval()


@pytest.mark.parametrize("library, name", [("torchvision", n) for n in TORCHVISION] + [("timm", n) for n in TIMM])
def test_attach_keeps_the_final_output_bit_for_bit(library, name):
    model = build(library, name)
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
    net = attach(model, SHAPE, 10).eval()
    with torch.no_grad():
        outputs = net(x)
    assert torch.equal(outputs[-1], expected)
    assert len(net.ics) == 6 and len(outputs) == 7
    assert all(a < b for a, b in zip(net.exit_flops, net.exit_flops[1:]))


@pytest.mark.parametrize("library, name", [("torchvision", "mobilenet_v3_small"), ("timm", "convnext_atto")])
def test_early_exit_on_a_batch_equals_one_by_one(library, name):
    net = attach(build(library, name), SHAPE, 10).eval()
    x = torch.randn(16, *SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        scores = torch.stack([o.softmax(1).max(1).values for o in net(x)[:-1]])
    best = scores.max(0).values  # a sample leaves early when its best IC reaches the threshold
    leaving = {float(t): int((best >= t).sum()) for t in scores.unique()}
    threshold = min(leaving, key=lambda t: abs(leaving[t] - len(x) / 2))  # about half leave early
    batch = early_exit(net, x, threshold)
    single = [early_exit(net, x[i:i + 1], threshold) for i in range(len(x))]
    assert 0 < int((batch[1] < len(net.ics)).sum()) < len(x)
    for got, one_by_one in zip(batch, zip(*single)):
        assert torch.equal(got, torch.cat(one_by_one))


def test_a_model_fx_cannot_trace_is_one_line():
    with pytest.raises(UserError, match="torch.fx could not trace"):
        attach(build("timm", "vgg11_bn"), SHAPE, 10)


@pytest.mark.parametrize("backbone, kwargs", [("torchvision:mobilenet_v3_small", '{"dropout": 0.1}'),
                                              ("timm:resnet18", '{"drop_path_rate": 0.1}')])
def test_ic_only_training_from_the_cli_on_a_library_model(tmp_path, backbone, kwargs):
    library, _, name = backbone.partition(":")
    torch.save(build(library, name).state_dict(), tmp_path / "weights.pt")
    run = tmp_path / "run"
    r = run_cli("train", "--mode", "ic-only", "--backbone", backbone, "--model-kwargs", kwargs, "--from",
                str(tmp_path / "weights.pt"), "--dataset", "digits", "--limit", "64", "--epochs", "1", "--out", str(run))
    assert r.returncode == 0, r.stderr
    assert f"model: {backbone}" in r.stdout
    ics = int(re.search(r"exits: (\d) 'paper' ICs", r.stdout).group(1))
    assert ics == 6 or f"so the SDN has {ics} ICs" in r.stderr  # 16x16 inputs leave few cut points: said so
    r = run_cli("evaluate", str(run))
    assert r.returncode == 0, r.stderr
    evaluated = json.loads((run / "eval-test.json").read_text())
    assert len(evaluated["exits"]) == ics + 1
    config = json.loads((run / "config.json").read_text())["model"]
    assert config["library"] == backbone and config["model_kwargs"] == json.loads(kwargs)


def test_library_weights_offline_and_misnamed_models_are_one_line(tmp_path, monkeypatch):
    from shallowdeep.library_models import create_library_model

    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match="could not fetch the weights of resnet18 .*pass --from FILE"):
        create_library_model("torchvision:resnet18", 1000, pretrained=True)
    with pytest.raises(UserError, match="torchvision cannot build no_such_net"):
        create_library_model("torchvision:no_such_net", 10)
    with pytest.raises(UserError, match="timm cannot build no_such_net"):
        create_library_model("timm:no_such_net", 10)


def test_torchvision_weights_for_1000_classes_load_then_the_classifier_is_replaced(monkeypatch):
    from shallowdeep.library_models import create_library_model

    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()  # stands in for the download: no network here
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", lambda self, *a, **k: state)
    with pytest.warns(UserWarning, match=r"classify 1000 classes: loaded them, then replaced its classifier \(fc\) "
                                         r"by a new one with 10 outputs"):
        net = create_library_model("torchvision:resnet18", 10, pretrained=True)
    assert torch.equal(net.conv1.weight, state["conv1.weight"]) and net.fc.out_features == 10


def test_timm_weights_for_1000_classes_say_the_classifier_is_new(tmp_path):
    from shallowdeep.library_models import create_library_model

    state = timm.create_model("resnet18").state_dict()
    torch.save(state, tmp_path / "r18.pth")  # timm reads a local file in place of the download
    with pytest.warns(UserWarning, match="classify 1000 classes: loaded them all but the classifier, which is new"):
        net = create_library_model("timm:resnet18", 10, {"pretrained_cfg_overlay": {"file": str(tmp_path / "r18.pth")}},
                                   pretrained=True)
    assert torch.equal(net.conv1.weight, state["conv1.weight"]) and net.fc.out_features == 10


@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn", "fcn_resnet50", "lraspp_mobilenet_v3_large"])
def test_detection_and_segmentation_models_are_refused_before_any_download(monkeypatch, name):
    from shallowdeep.library_models import create_library_model

    def no_download(*args, **kwargs):
        raise OSError("downloading")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", no_download)
    for pretrained in (True, False):
        with pytest.raises(UserError, match=f"torchvision:{name} is not a classification model"):
            create_library_model(f"torchvision:{name}", 10, pretrained=pretrained)


@pytest.mark.parametrize("returned, said", [(lambda y: {"out": y, "aux": y}, "a dict (keys 'out', 'aux')"),
                                            (lambda y: (y, y), "a tuple of 2 values")])
def test_a_model_returning_a_dict_or_tuple_is_told_what_it_returned(returned, said):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 10)

        def forward(self, x):
            return returned(self.fc(self.conv(x).mean((2, 3))))

    with pytest.raises(UserError, match=re.escape(f"the model returns {said}, not one tensor of logits [batch, 10]")):
        attach(Net(), (3, 8, 8), 10)
