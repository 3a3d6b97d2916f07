"""A run as a classifier of new images: the same answers as the evaluation path, from raw uint8 images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from shallowdeep.classifier import load
from shallowdeep.data import load_dataset
from shallowdeep.errors import UserError
from shallowdeep.model_spec import ModelSpec
from shallowdeep.outputs import load_outputs
from shallowdeep.run import open_run
from shallowdeep.train import Recipe, TrainConfig, new_run

DATA = {"name": "digits", "data_dir": None, "holdout_fraction": 0.1, "seed": 0, "limit": 128}


@pytest.fixture(scope="module")
def sdn_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("clf") / "run"
    new_run(path, DATA, ModelSpec(arch="resnet56"), TrainConfig("sdn", Recipe("sgd", 0.02, 1, [], batch_size=64)),
            device=torch.device("cpu"))
    return path


@pytest.mark.slow
def test_a_classifier_answers_raw_images_as_the_stored_outputs_do(sdn_run):
    clf = load(sdn_run)
    images = load_dataset(**DATA).test.images  # uint8, as read from files
    outputs = load_outputs(open_run(sdn_run), "test")  # the evaluation path: batches, normalisation, all exits
    final = clf.predict(images)
    assert np.array_equal(final.indices.numpy(), outputs.predictions[-1])
    assert (final.exits == len(clf.net.ics)).all() and (final.flops == clf.net.backbone_flops).all()
    assert final.classes[:3] == [clf.class_names[i] for i in outputs.predictions[-1][:3]]
    first = clf.predict(images, threshold=0.0)  # every image leaves at the first IC
    assert np.array_equal(first.indices.numpy(), outputs.predictions[0]) and (first.exits == 0).all()
    one = clf.predict(images[5], threshold=0.0)  # a single (C, H, W) image
    assert one.indices.tolist() == [outputs.predictions[0][5]]
    floats = clf.predict(images.float() / 255)  # floats in [0, 1]
    assert np.array_equal(floats.indices.numpy(), outputs.predictions[-1])


@pytest.mark.slow
def test_images_of_another_shape_are_one_line(sdn_run):
    with pytest.raises(UserError, match=r"images of shape \(3, 32, 32\) given, but this network takes \(3, 16, 16\)"):
        load(sdn_run).predict(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
