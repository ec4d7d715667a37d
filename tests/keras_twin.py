"""One small CNN built twice, in Keras and in PyTorch, with the same weights.

The Keras backend must give the PyTorch maps exactly: the twins make that testable.
Two layout differences are handled here, not hidden: Keras's 'same' padding with
stride 2 pads the bottom and right more on even sizes (``TFSamePad`` does the same in
PyTorch), and Keras kernels are (kh, kw, in, out) against PyTorch's (out, in, kh, kw).
Weights come from NumPy's seeded generator, so both twins and every platform get
the same numbers.
"""

from __future__ import annotations

import keras
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LAYER = "act"  # the last spatial layer, named the same in both twins


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding of TensorFlow's 'same' along one axis."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class TFSamePad(nn.Module):
    def __init__(self, kernel: int, stride: int) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = tf_same_padding(x.shape[2], self.kernel, self.stride)
        left, right = tf_same_padding(x.shape[3], self.kernel, self.stride)
        return F.pad(x, (left, right, top, bottom))


class TorchTwin(nn.Module):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.pad1 = TFSamePad(3, 2)
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)  # stride 1: 'same' is symmetric
        self.bn = nn.BatchNorm2d(16, eps=1e-3)  # Keras's default epsilon
        self.act = nn.ReLU()
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(self.pad1(x)))
        x = self.act(self.bn(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def conv_layers() -> list[keras.Layer]:
    """The twin's convolutional part, fresh layers."""
    return [
        keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv1"),
        keras.layers.Conv2D(16, 3, padding="same", name="conv2"),
        keras.layers.BatchNormalization(epsilon=1e-3, name="bn"),
        keras.layers.ReLU(name=LAYER),
    ]


def keras_twin(num_classes: int, input_size=(None, None), kind: str = "functional"):
    """The Keras twin, ending in softmax as keras.applications do.

    kind: "functional"; "sequential"; or "nested" (the convolutional part is a model
    named ``backbone`` inside the classifier: its layer is ``backbone.act``).
    """
    head = [
        keras.layers.GlobalAveragePooling2D(name="pool"),
        keras.layers.Dense(num_classes, activation="softmax", name="fc"),
    ]
    if kind == "sequential":
        return keras.Sequential([keras.Input((*input_size, 3)), *conv_layers(), *head])
    inputs = keras.Input((*input_size, 3))
    if kind == "nested":
        features = inner = keras.Input((*input_size, 3))
        for layer in conv_layers():
            features = layer(features)
        x = keras.Model(inner, features, name="backbone")(inputs)
    else:
        x = inputs
        for layer in conv_layers():
            x = layer(x)
    for layer in head:
        x = layer(x)
    return keras.Model(inputs, x, name="twin")


def random_weights(seed: int, num_classes: int) -> dict[str, np.ndarray]:
    """Weights in Keras's layout, from a seeded NumPy generator."""
    rng = np.random.RandomState(seed)

    def normal(*shape, scale):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    return {
        "conv1": [normal(3, 3, 3, 8, scale=0.5), normal(8, scale=0.1)],
        "conv2": [normal(3, 3, 8, 16, scale=0.3), normal(16, scale=0.1)],
        "bn": [
            1 + normal(16, scale=0.2),  # gamma
            normal(16, scale=0.2),  # beta
            normal(16, scale=0.2),  # moving mean
            (0.5 + rng.rand(16)).astype(np.float32),  # moving variance
        ],
        "fc": [normal(16, num_classes, scale=0.5), normal(num_classes, scale=0.1)],
    }


def set_keras_weights(model: keras.Model, weights: dict[str, list[np.ndarray]]) -> None:
    layers = {layer.name: layer for layer in model.layers}
    if "backbone" in layers:
        layers.update({layer.name: layer for layer in layers["backbone"].layers})
    for name, values in weights.items():
        layers[name].set_weights(values)


def torch_twin(weights: dict[str, list[np.ndarray]]) -> TorchTwin:
    num_classes = weights["fc"][1].shape[0]
    model = TorchTwin(num_classes).eval()

    def tensor(array):
        return torch.from_numpy(np.ascontiguousarray(array))

    with torch.no_grad():
        for name in ("conv1", "conv2"):
            kernel, bias = weights[name]
            getattr(model, name).weight.copy_(tensor(kernel.transpose(3, 2, 0, 1)))
            getattr(model, name).bias.copy_(tensor(bias))
        gamma, beta, mean, variance = weights["bn"]
        model.bn.weight.copy_(tensor(gamma))
        model.bn.bias.copy_(tensor(beta))
        model.bn.running_mean.copy_(tensor(mean))
        model.bn.running_var.copy_(tensor(variance))
        model.fc.weight.copy_(tensor(weights["fc"][0].T))
        model.fc.bias.copy_(tensor(weights["fc"][1]))
    return model
