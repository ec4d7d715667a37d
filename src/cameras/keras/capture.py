"""The TensorFlow side of the backend seam: per input size, the class scores, the layer's
output and the gradient of the target's pre-softmax score with respect to it.

``KerasCapture`` is what the PyTorch ``LayerCapture`` is for torch models: opened for one
call, then ``run(x, targets) -> (ScaleCapture, targets)`` for each scale. Tensors cross
the seam as torch tensors in PyTorch's layout ((B, C, h, w)), so resizing, the scale rule,
fusion and normalisation are the same code for both backends.

Memory: the gradient tape starts at the layer (inside its recorded call), so nothing
before the layer is taped; the backward pass stops there, as in the PyTorch backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import tensorflow as tf
import torch

from ..core.capture import ScaleCapture
from ..core.targets import Class, Target
from .network import FlexibleNetwork, KerasModelError, wrapped_calls


def main_output(output: object) -> tf.Tensor:
    """The tensor a Keras model's output explains: a tensor, the first of a list or tuple,
    or a dict's ``"logits"``."""
    if isinstance(output, dict) and "logits" in output:
        output = output["logits"]
    elif isinstance(output, list | tuple) and output:
        output = output[0]
    if not tf.is_tensor(output):
        raise TypeError(
            f"the model returned {type(output).__name__}; expected a tensor (class scores, "
            "a segmentation map or an embedding)"
        )
    return output


def scores_of(output: object) -> tf.Tensor:
    """The (B, K) class scores of a Keras classifier's output."""
    scores = main_output(output)
    if scores.shape.rank != 2:
        raise ValueError(
            f"the model's class scores have shape {tuple(scores.shape)}; expected (B, K)"
        )
    return scores


def as_torch_layout(values: torch.Tensor) -> torch.Tensor:
    """A Keras output in PyTorch's layout, which the targets read: a (B, h, w, K)
    segmentation map becomes (B, K, h, w); other ranks stay as they are."""
    return values.permute(0, 3, 1, 2) if values.dim() == 4 else values


class KerasCapture:
    """Records one layer of a ``FlexibleNetwork`` for the duration of a ``with`` block.

    reshape_transform: optional; turns the layer's output (and its gradient), as a torch
    tensor in Keras's own layout, into (B, C, h, w). Without it a 4-D (B, h, w, C) output
    is permuted to (B, C, h, w).
    """

    def __init__(
        self,
        network: FlexibleNetwork,
        layer_name: str,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.network = network
        self.layer_name = layer_name
        self.reshape_transform = reshape_transform
        self._outputs: list[tf.Tensor] = []
        self._tape: tf.GradientTape | None = None
        self._stack: contextlib.ExitStack | None = None
        self._channel_mask: tf.Tensor | None = None

    def __enter__(self) -> KerasCapture:
        self.network.sync_weights()
        stack = contextlib.ExitStack()
        layer = {self.layer_name: self.network.layers[self.layer_name]}
        stack.enter_context(wrapped_calls(layer, self._record))
        self._stack = stack
        return self

    def __exit__(self, *exc_info) -> None:
        self._outputs.clear()
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def _record(self, _name: str, call: Callable) -> Callable:
        def recording_call(*args, **kwargs):
            output = call(*args, **kwargs)
            if self._channel_mask is not None:  # a scores-only pass (``scores``): no tape
                mask = tf.cast(self._channel_mask, output.dtype)
                # (B, C) -> (B, 1, ..., 1, C): a Keras layer's channels are its last axis.
                shape = [mask.shape[0]] + [1] * (output.shape.rank - 2) + [mask.shape[1]]
                return output * tf.reshape(mask, shape)
            self._outputs.append(output)
            if self._tape is None and tf.is_tensor(output):
                # From here on operations are taped, rooted at the layer's output.
                self._tape = tf.GradientTape()
                self._tape.__enter__()
                self._tape.watch(output)
            return output

        return recording_call

    def run(
        self,
        x: torch.Tensor,
        target: Target | torch.Tensor,
        input_size: tuple[int, int] | None = None,
    ) -> tuple[ScaleCapture, Target]:
        """Forward ``x`` (B, C, h, w), back-propagate the target's score to the layer.
        Returns the capture (torch tensors, CPU) and the target.

        The target (``cameras.core.targets``) reads the output as a torch tensor; the
        gradient of its score with respect to that output is handed back to TensorFlow's
        tape (a vector-Jacobian product), so every target works on Keras unchanged."""
        if self._stack is None:
            raise RuntimeError("KerasCapture.run must be called inside its with-block")
        if isinstance(target, torch.Tensor):
            target = Class(target).bind(x.shape[0], None)
        size = (int(x.shape[2]), int(x.shape[3]))
        images = tf.convert_to_tensor(x.detach().cpu().permute(0, 2, 3, 1).numpy())
        self._outputs, self._tape = [], None
        try:
            output = main_output(self._forward(images, size))
            if len(self._outputs) != 1:
                raise RuntimeError(
                    f"layer {self.layer_name!r} ran {len(self._outputs)} times in one forward "
                    "pass; pick a layer that runs exactly once"
                )
            seen = torch.from_numpy(np.array(output, dtype=np.float32)).requires_grad_(True)
            score, present = target(as_torch_layout(seen), size, input_size or size)
        finally:
            tape, self._tape = self._tape, None
            if tape is not None:
                tape.__exit__(None, None, None)
        layer_output = self._outputs[0]
        if tape is None:
            raise TypeError(
                f"layer {self.layer_name!r} returned {type(layer_output).__name__}; pick a layer "
                "whose output is a tensor"
            )
        gradients = self._layer_gradients(tape, output, layer_output, score, seen)
        logits = seen.detach() if seen.dim() == 2 else None
        capture = ScaleCapture(
            logits,
            self._to_grid(layer_output),
            self._to_grid(gradients),
            score=score.detach().float(),
            present=present,
        )
        return capture, target

    def _forward(self, images: tf.Tensor, size: tuple[int, int]) -> object:
        try:
            return self.network.copy(images, training=False)
        except Exception as error:  # noqa: BLE001 - TensorFlow's errors vary by layer
            first = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
            raise KerasModelError(
                f"model {self.network.name!r} does not run at input size "
                f"{size[0]}x{size[1]} ({type(error).__name__}: {first}); a layer such as "
                "Flatten or Reshape may fix the size"
            ) from None

    def _layer_gradients(self, tape, output, layer_output, score, seen) -> tf.Tensor:
        """d sum(score) / d layer output: the score's gradient at the model's output (torch),
        then TensorFlow's tape from the output back to the layer."""
        if not score.requires_grad:  # nothing to explain at this size (no matching box)
            return tf.zeros_like(layer_output)
        (at_output,) = torch.autograd.grad(score.sum(), seen)
        gradients = tape.gradient(
            output, layer_output, output_gradients=tf.constant(at_output.numpy(), output.dtype)
        )
        if gradients is None:
            raise RuntimeError(
                f"the scores explained do not depend on layer {self.layer_name!r}; pick a "
                "layer that feeds the model's output"
            )
        return gradients

    def _to_grid(self, tensor: tf.Tensor) -> torch.Tensor:
        values = torch.from_numpy(np.array(tensor, dtype=np.float32))
        if self.reshape_transform is not None:
            values = self.reshape_transform(values)
        elif values.dim() == 4:
            values = values.permute(0, 3, 1, 2)
        if values.dim() != 4:
            raise ValueError(
                f"layer {self.layer_name!r} gives a {tuple(values.shape)} output; a saliency "
                "map needs (B, h, w, C): pick a convolutional layer or pass reshape_transform"
            )
        return values.contiguous()

    def target_scores(
        self,
        x: torch.Tensor,
        target: Target,
        input_size: tuple[int, int] | None = None,
        channel_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B,) scores of ``target`` for ``x`` (B, C, h, w): one forward pass, no tape
        (float32, CPU). channel_mask: (B, C) factors for the layer's channels (its last
        axis) on the way through; None leaves the layer's output as it is."""
        if self._stack is None:
            raise RuntimeError("KerasCapture.target_scores must be called inside its with-block")
        images = tf.convert_to_tensor(x.detach().cpu().permute(0, 2, 3, 1).numpy())
        mask = torch.ones(x.shape[0], 1) if channel_mask is None else channel_mask.cpu()
        self._channel_mask = tf.constant(mask.float().numpy())
        size = (int(x.shape[2]), int(x.shape[3]))
        try:
            output = main_output(self.network.copy(images, training=False))
        finally:
            self._channel_mask = None
        seen = torch.from_numpy(np.array(output, dtype=np.float32))
        with torch.no_grad():
            score, _ = target(as_torch_layout(seen), size, input_size or size)
        return score.float()
