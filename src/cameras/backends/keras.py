"""The Keras backend: a ``keras.Model`` on TensorFlow, run through a private copy with a
flexible input size (``cameras.keras.network``); the user's model is never changed.

Inputs: a torch tensor is a batch in the library's layout, (B, C, H, W) (what a
``Session`` and the pipeline give), and its results come back as torch tensors; any
other array (NumPy, TensorFlow) is a Keras batch, (B, H, W, C), and its results come
back as NumPy arrays (``cameras.keras.CAMERAS(model)(x)``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import keras  # noqa: E402, I001 - after cameras.keras, which checks and configures it
import numpy as np
import tensorflow as tf  # noqa: E402
import torch
from torch import nn

from .. import keras as _keras_setup  # noqa: F401 - TensorFlow's backend, native-library order
from ..core.capture import check_batch, check_finite
from ..keras.capture import KerasCapture, scores_of
from ..keras.network import named_layers, network_for
from .torch import Step, check_mode, grouped_steps, noise_like


class KerasBackend:
    """A built Functional or Sequential ``keras.Model`` with one (B, H, W, C) image input
    and (B, K) class scores (softmax or not) as its first output; nested models are fine.
    It is never changed: a private copy with a flexible input size runs, with the model's
    current weights copied in at every call. Layers are named by dotted names inside
    nested models (``"backbone.conv5_block3_out"``)."""

    name = "keras"

    def __init__(self, model: object) -> None:
        if not isinstance(model, keras.Model):
            raise TypeError(f"model must be a keras.Model, not {type(model).__name__}")
        self.model = model
        self.network = network_for(model)

    # ---------------------------------------------------------------- the saliency seam

    def resolve_layer(self, layer) -> tuple[str, object]:
        name = self.network.resolve_layer(layer)
        return name, self.network.layers[name]

    def capture(self, layer, reshape_transform: Callable | None = None) -> KerasCapture:
        name = next(n for n, own in self.network.layers.items() if own is layer)
        return KerasCapture(self.network, name, reshape_transform)

    def input_batch(self, x) -> tuple[torch.Tensor, str]:
        if isinstance(x, torch.Tensor):
            return check_batch(x).detach().float().cpu(), "torch"
        return keras_batch(x, self.network.channels), "numpy"

    def output(self, tensor: torch.Tensor, source: str):
        if source == "torch":
            return tensor.detach().float().cpu()
        return tensor.detach().cpu().numpy().astype(np.float32)

    def plain_targets(self, targets):
        """NumPy and TensorFlow classes as plain ints, for the shared class rule."""
        if isinstance(targets, np.ndarray | np.integer) or tf.is_tensor(targets):
            values = np.asarray(targets)
            return int(values) if values.ndim == 0 else values.reshape(-1).tolist()
        if isinstance(targets, list | tuple):
            return [int(t) if isinstance(t, np.integer) else t for t in targets]
        return targets

    def pass_cost(self, layer, x: torch.Tensor) -> None:
        return None  # no probe for TensorFlow: only the aspect cap applies

    # ---------------------------------------------------------------- the model's answers

    def scorer(self) -> nn.Module:
        """The model as a differentiable torch function (B, C, H, W) -> (B, K) pre-softmax
        scores: gradients flow back to the input through TensorFlow."""
        return KerasScorer(self.network)

    def num_classes(self, size: int) -> int:
        return int(self.model.outputs[0].shape[-1])

    def randomisation_steps(self, probe_size: int = 64) -> list[Step]:
        """Layers with trainable weights in execution order (a nested model's layers
        one by one), a normalisation layer joined to the one before, from the logits down."""
        layers = [
            (name, layer)
            for name, layer in named_layers(self.model).items()
            if layer.trainable_weights and not isinstance(layer, keras.Model)
        ]
        normalisation = [_is_normalisation(layer) for _, layer in layers]
        return grouped_steps([name for name, _ in layers], normalisation)

    def randomised_models(
        self, steps: Sequence[Step], mode: str = "cascading", seed: int = 0
    ) -> Iterator[tuple[int, Step, keras.Model]]:
        """As ``TorchBackend.randomised_models``, on clones of the Keras model. The noise
        is drawn as the PyTorch backend draws it, in PyTorch's layout (kernels (out, in,
        kh, kw), dense (out, in)) and transposed, so a Keras model and its PyTorch twin
        are randomised identically."""
        check_mode(mode)
        generator = torch.Generator().manual_seed(seed)
        cascade = self._clone() if mode == "cascading" else None
        for k, step in enumerate(steps, start=1):
            target = cascade if cascade is not None else self._clone()
            layers = named_layers(target)
            for name in step.modules:
                for weight in layers[name].trainable_weights:
                    weight.assign(_keras_noise(np.asarray(weight.numpy()), generator))
            yield k, step, target

    def _clone(self) -> keras.Model:
        clone = keras.models.clone_model(self.model)
        clone.set_weights(self.model.get_weights())
        return clone


def _is_normalisation(layer) -> bool:
    kinds = (keras.layers.BatchNormalization, keras.layers.LayerNormalization)
    return isinstance(layer, kinds) or type(layer).__name__ == "GroupNormalization"


def _keras_noise(values: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """``noise_like`` of a Keras weight, drawn in PyTorch's layout and transposed back."""
    if values.ndim == 4:  # (kh, kw, in, out) <-> (out, in, kh, kw)
        drawn = noise_like(torch.from_numpy(values.transpose(3, 2, 0, 1).copy()), generator)
        return drawn.numpy().transpose(2, 3, 1, 0)
    if values.ndim == 2:  # (in, out) <-> (out, in)
        return noise_like(torch.from_numpy(values.T.copy()), generator).numpy().T
    return noise_like(torch.from_numpy(values.copy()), generator).numpy()


class KerasScorer(nn.Module):
    """A Keras model's pre-softmax scores as a torch module over (B, C, H, W) inputs, on
    the CPU, float32; differentiable with respect to its input."""

    def __init__(self, network) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _KerasScores.apply(x, self.network)

    def __deepcopy__(self, memo):  # the network (TensorFlow objects) is shared, not copied
        return KerasScorer(self.network)


class _KerasScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, network) -> torch.Tensor:
        network.sync_weights()
        images = tf.convert_to_tensor(x.detach().float().cpu().permute(0, 2, 3, 1).numpy())
        if ctx.needs_input_grad[0]:
            with tf.GradientTape() as tape:
                tape.watch(images)
                scores = scores_of(network.copy(images, training=False))
            ctx.tape, ctx.images, ctx.scores = tape, images, scores
        else:
            scores = scores_of(network.copy(images, training=False))
        return torch.from_numpy(np.array(scores, dtype=np.float32)).to(x.device)

    @staticmethod
    def backward(ctx, gradient: torch.Tensor):
        upstream = tf.convert_to_tensor(gradient.detach().float().cpu().numpy())
        values = ctx.tape.gradient(ctx.scores, ctx.images, output_gradients=upstream)
        ctx.tape = ctx.images = ctx.scores = None
        grid = torch.from_numpy(np.array(values, dtype=np.float32)).permute(0, 3, 1, 2)
        return grid.to(gradient.device), None


def keras_batch(x, channels: int) -> torch.Tensor:
    """A (B, H, W, C) or (H, W, C) float array (NumPy, TensorFlow, anything array-like)
    -> a (B, C, H, W) float32 torch tensor for the shared maths; NaN or infinite values
    are a ValueError, as for PyTorch models."""
    try:
        values = np.asarray(x)
    except Exception as error:  # noqa: BLE001 - any conversion failure is the same error
        raise TypeError(f"x must be a float array, not {type(x).__name__} ({error})") from None
    if values.ndim == 3:
        values = values[None]
    if values.ndim != 4 or values.shape[0] == 0 or values.shape[-1] != channels:
        raise ValueError(
            f"x must have shape (B, H, W, {channels}) (channels last), got {values.shape}"
        )
    if not np.issubdtype(values.dtype, np.floating):
        raise TypeError(f"x must be a float array (preprocessed image), not {values.dtype}")
    batch = torch.from_numpy(values.astype(np.float32))
    check_finite(batch)
    return batch.permute(0, 3, 1, 2).contiguous()
