"""FullGrad (Srinivas & Fleuret 2019): input gradients plus every bias's gradient, as
pytorch-grad-cam computes it.

map = sum over the input's channels of N(|x * dy/dx|) + sum over bias layers l and
their channels c of N(|b_lc * dy/dz_lc|), resized to the input, where N min-max
normalises one (h, w) channel, z_l is a layer's output and b_l its bias (for BatchNorm
the bias of the equivalent affine map, beta - mean * gamma / sqrt(var + eps)). The bias
layers are every ``Conv2d`` and ``BatchNorm2d`` with a bias; ``layer`` is ignored.

One difference from pytorch-grad-cam: it takes exactly those two types, so it skips the
BatchNorm-plus-activation modules of timm and of this package's EfficientNet-Lite
(``BatchNormAct2d``, a BatchNorm2d subclass; on the default model it would see no bias
at all). Here subclasses count too, with the gradient taken at the BatchNorm's output,
before the module's own ``act`` child.

It needs the gradient at every bias layer, so it runs a full backward pass on PyTorch
models only (a Keras model is refused).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..core.budget import check_call, nominal_side
from ..core.capture import (
    autograd_enabled,
    dtype_errors,
    eval_mode,
    model_input,
    widened,
)
from ..core.precision import DEFAULT_PRECISION
from ..core.targets import Target, class_scores_or_none
from .base import (
    SaliencyMethod,
    probabilities_of,
    scale_records,
    scale_row,
    target_or_top1,
)

BIAS_LAYERS = (nn.Conv2d, nn.BatchNorm2d)


def layer_bias(layer: nn.Module) -> torch.Tensor:
    """The bias added per channel by a Conv2d or (in eval mode) a BatchNorm2d."""
    if isinstance(layer, nn.BatchNorm2d):
        scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
        return (layer.bias - layer.running_mean * scale).detach()
    return layer.bias.detach()


def channel_normalised(values: torch.Tensor) -> torch.Tensor:
    """Each (h, w) channel of (B, C, h, w) min-max normalised (pytorch-grad-cam's 1e-7)."""
    low = values.amin((2, 3), keepdim=True)
    values = values - low
    return values / (values.amax((2, 3), keepdim=True) + 1e-7)


def bias_layers(model: nn.Module) -> list[nn.Module]:
    """Every Conv2d and BatchNorm2d (subclasses included) of ``model`` that adds a bias."""
    return [m for m in model.modules() if isinstance(m, BIAS_LAYERS) and m.bias is not None]


class FullGradCapture:
    """The with-block of one FullGrad call: eval mode, and a hook on every bias layer that
    keeps its output (and gives the network a copy, safe from in-place ops)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers = bias_layers(model)
        self.outputs: list[torch.Tensor] = []
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> FullGradCapture:
        # Entered together, as LayerCapture does: a step that raises undoes the others.
        with contextlib.ExitStack() as opening:
            opening.enter_context(autograd_enabled())  # as every capture: the caller's modes
            opening.enter_context(eval_mode(self.model))
            for layer in self.layers:
                opening.callback(self._hook(layer).remove)
            self._stack = opening.pop_all()
        return self

    def __exit__(self, *exc_info) -> None:
        self.outputs.clear()
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def _hook(self, layer: nn.Module):
        act = getattr(layer, "act", None)
        if isinstance(layer, nn.BatchNorm2d) and isinstance(act, nn.Module):
            # BatchNorm + activation in one module: the BatchNorm's output is the act's input.
            return act.register_forward_pre_hook(lambda _m, inputs: (self._keep(inputs[0]),))
        return layer.register_forward_hook(lambda _m, _inputs, output: self._keep(output))

    def _keep(self, output: torch.Tensor) -> torch.Tensor:
        self.outputs.append(output)
        return output.clone()

    def run(self, x: torch.Tensor, target: Target):
        """(terms (B, H, W) before the last normalisation, logits or None, the target's
        score and presence)."""
        self.outputs = []
        x = model_input(x, self.model).detach().requires_grad_(True)
        size = tuple(x.shape[2:])
        with dtype_errors(self.model):
            output = self.model(x)
            score, present = target(output, size, size)
            score_sum = score.sum()
            if len(self.outputs) != len(self.layers):
                raise RuntimeError(
                    "fullgrad: a bias layer ran more than once in one forward pass (a shared "
                    "module); its bias gradient is ambiguous"
                )
            sources = [x, *self.outputs]
            if score_sum.requires_grad:
                grads = torch.autograd.grad(score_sum, sources)
            else:  # nothing to explain at all (a box no detection matches): no gradient
                grads = [torch.zeros_like(source) for source in sources]
        self.outputs = []
        size = tuple(x.shape[2:])
        total = channel_normalised(widened((grads[0] * x).detach()).abs()).sum(1)
        for layer, grad in zip(self.layers, grads[1:], strict=True):
            bias = widened(layer_bias(layer))[None, :, None, None]
            terms = channel_normalised((bias * widened(grad)).abs()).sum(1, keepdim=True)
            total = total + F.interpolate(terms, size=size, mode="bilinear")[:, 0]
        logits = class_scores_or_none(output)
        logits = None if logits is None else widened(logits.detach())
        return total, logits, widened(score.detach()), present


class FullGrad(SaliencyMethod):
    """FullGrad: the input's and every bias's gradient, summed over the whole network."""

    name = "fullgrad"

    def __init__(
        self,
        model,
        layer=None,
        class_names=None,
        reshape_transform=None,
        backend=None,
        precision: str = DEFAULT_PRECISION,
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"fullgrad needs every bias gradient and runs on PyTorch models only, not on "
                f"{type(model).__name__}"
            )
        if not bias_layers(model):
            raise ValueError("fullgrad needs Conv2d or BatchNorm2d layers with a bias; none found")
        # The backend checks a given layer name (a misspelt one is an error, as elsewhere);
        # the map itself reads every bias layer.
        super().__init__(model, layer, class_names, reshape_transform, backend, precision)
        self.layer_name, self.layer = "all bias layers", model

    def _open_capture(self) -> FullGradCapture:
        return FullGradCapture(self.model)

    def _explain(self, capture, x, targets):
        cost = self.pass_cost(x)  # a full backward pass keeps every activation
        if cost is not None:
            check_call(cost, [nominal_side(*x.shape[2:])], [tuple(x.shape[2:])], batch=2)
        used = target_or_top1(targets)
        maps, logits, score, present = capture.run(x, used)
        size = tuple(x.shape[2:])
        records = scale_records([scale_row(logits, score, present)], [min(size)], [size])
        return maps, used, records, probabilities_of(logits)
