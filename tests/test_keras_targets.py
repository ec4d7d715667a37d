"""Keras models take the targets of cameras.targets through the same door: a Keras
segmenter and classifier give their PyTorch twins' maps (tests/keras_twin.py) for a
Region and a set of Classes, with CAMERAS and Grad-CAM."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import photo_batch

import cameras

if os.environ.get("CI"):  # CI installs the keras extra: missing means broken, not skipped
    import cameras.keras as ck
else:
    ck = pytest.importorskip("cameras.keras", reason="needs the keras extra")

import keras  # noqa: E402 - after cameras.keras, which orders the native libraries
from keras_twin import (  # noqa: E402
    LAYER,
    conv_layers,
    keras_twin,
    random_weights,
    set_keras_weights,
    torch_twin,
)
from torch import nn  # noqa: E402

from cameras.targets import Classes, Region  # noqa: E402

CLASSES = 4
SCALES = [48, 72, 96]
TOL = 1e-4


class TorchSegmenterTwin(nn.Module):
    """The twin's convolutional part and its dense layer applied at every pixel (a 1x1
    convolution): per-pixel class scores at the feature map's size."""

    def __init__(self, twin: nn.Module) -> None:
        super().__init__()
        self.twin = twin

    def forward(self, x):
        t = self.twin
        features = t.act(t.bn(t.conv2(torch.relu(t.conv1(t.pad1(x))))))
        return torch.einsum("bchw,kc->bkhw", features, t.fc.weight) + t.fc.bias[:, None, None]


@pytest.fixture(scope="module")
def segmenters():
    weights = random_weights(3, CLASSES)
    inputs = keras.Input((None, None, 3))
    x = inputs
    for layer in conv_layers():
        x = layer(x)
    x = keras.layers.Conv2D(CLASSES, 1, name="fc")(x)
    model = keras.Model(inputs, x, name="segmenter")
    set_keras_weights(model, {k: v for k, v in weights.items() if k != "fc"})
    kernel, bias = weights["fc"]
    model.get_layer("fc").set_weights([kernel.reshape(1, 1, 16, CLASSES), bias])
    return model, TorchSegmenterTwin(torch_twin(weights)).eval()


@pytest.fixture(scope="module")
def classifiers():
    weights = random_weights(5, 10)
    model = keras_twin(10)
    set_keras_weights(model, weights)
    return model, torch_twin(weights)


def _compare(name, keras_model, torch_model, x, target, torch_layer):
    options = {"scales": SCALES} if name == "cameras" else {}
    expected = cameras.METHODS[name](torch_model, layer=torch_layer, **options)(x, target)
    got = ck.METHODS[name](keras_model, layer=LAYER, **options)(
        x.permute(0, 2, 3, 1).numpy(), target
    )
    kept = [[r.kept for r in image] for image in expected.scales]
    assert [[r.kept for r in image] for image in got.scales] == kept
    scores = [[r.score for r in image] for image in expected.scales]
    got_scores = [[r.score for r in image] for image in got.scales]
    assert np.allclose(got_scores, scores, atol=1e-4)
    difference = float(np.abs(got.maps - expected.maps.numpy()).max())
    print(f"{name}: max |keras - torch| = {difference:.1e}")  # shown with pytest -s
    assert difference <= TOL
    return got


@pytest.mark.parametrize("name", ["cameras", "gradcam"])
def test_a_keras_segmenter_explains_a_region_as_its_torch_twin(segmenters, name):
    keras_model, torch_model = segmenters
    x = photo_batch(("chelsea",), size=(48, 64))
    with torch.no_grad():
        winners = torch_model(x)[0].argmax(0)  # at the feature map's size
    present = int(winners.flatten().mode().values)
    # The pixels the class wins, at the input's size: it is present there.
    up = torch.nn.functional.interpolate(winners[None, None].float(), size=(48, 64))[0, 0]
    mask = up == present
    got = _compare(name, keras_model, torch_model, x, Region(present, mask), "twin.act")
    assert got.probabilities is None and any(r.kept for r in got.scales[0])


@pytest.mark.parametrize("name", ["cameras", "gradcam"])
def test_a_keras_classifier_explains_a_set_of_classes_as_its_torch_twin(classifiers, name):
    keras_model, torch_model = classifiers
    x = photo_batch(("chelsea", "coffee"), size=(48, 64))
    got = _compare(name, keras_model, torch_model, x, Classes([1, 6]), LAYER)
    assert all(all(r.kept for r in image) for image in got.scales)
