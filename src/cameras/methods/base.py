"""The result type every method returns, and the base class that owns the forward passes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..capture import (
    LayerCapture,
    LayerSpec,
    autograd_enabled,
    check_channels_first,
    model_device,
    resolve_layer,
    widened,
)
from ..classes import Targets, class_index, class_indices
from ..fusion import normalise_maps


@dataclass(frozen=True)
class ScaleRecord:
    """What the model predicted at one input size, and whether that size was used."""

    scale: int  # the input's shorter side at this step
    size: tuple[int, int]  # (height, width) fed to the model
    top1: int
    probability: float  # softmax probability of top1
    kept: bool


@dataclass
class Explanation:
    """Saliency maps for a batch.

    maps: (B, H, W) float32 in [0, 1], the input batch's height and width, on the
        input's device (a NumPy array from ``cameras.keras``, as is ``probabilities``).
    targets: the class explained, per image.
    scales: per image, one ScaleRecord per input size tried (kept or not).
    probabilities: (B, K) softmax of the model's scores at the input's own size.
    """

    maps: torch.Tensor
    targets: list[int]
    scales: list[list[ScaleRecord]]
    probabilities: torch.Tensor
    method: str
    layer: str
    class_names: list[str] | None = None

    @property
    def target_names(self) -> list[str] | None:
        if self.class_names is None:
            return None
        return [self.class_names[t] for t in self.targets]

    @property
    def scale_warnings(self) -> list[str | None]:
        """Per image, one line when fewer than half of its scales counted (else None)."""
        return [few_scales_warning(records) for records in self.scales]


def few_scales_warning(records: Sequence[ScaleRecord]) -> str | None:
    """A one-line warning, saying what to do, when fewer than half of the scales counted.

    Such a map is close to a single-scale one: the class left the scale rule's top ranks
    at the larger sizes. Passing the class keeps every scale (the authors' code), and
    fewer, smaller scales change the prediction less.
    """
    kept = sum(record.kept for record in records)
    if len(records) < 2 or 2 * kept >= len(records):
        return None
    return (
        f"only {kept} of {len(records)} scales counted (the class left the model's top ranks "
        "at larger sizes), so the map is close to a single-scale one; pass the class to keep "
        "every scale (--class), or use fewer, smaller scales (--scales)"
    )


class SaliencyMethod:
    """Base class: validates arguments, hooks the layer for one call, builds the result.

    Subclasses implement ``_explain(capture, x, targets) -> (raw maps, targets, scales,
    probabilities)``; raw maps are (B, H, W) and non-negative, normalised here.

    The backend seam. Per input size a method needs three things from the model: the
    class scores (B, K), the layer's output A (B, C, h, w) and the gradient of the
    target's pre-softmax score with respect to A. ``_explain`` asks for them with
    ``capture.run(x_scaled, targets) -> (ScaleCapture, targets)``, as torch tensors,
    on the object that ``_open_capture()`` opens for one call; resizing, the scale
    rule, fusion and normalisation stay here, in PyTorch. A backend for other models
    (``cameras.keras``: TensorFlow) overrides only these hooks:

    - ``_bind(model, layer) -> (layer name, layer)``: check the model, find the layer;
    - ``_open_capture()``: the with-block object whose ``run`` gives the three things;
    - ``_input_batch(x) -> (torch (B, C, H, W) batch, where results go)``;
    - ``_output(tensor, where)``: a result tensor in the caller's type and place.
    """

    name = "base"

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = None,
        class_names: Sequence[str] | None = None,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model = model
        self.layer_name, self.layer = self._bind(model, layer)
        if class_names is None:
            from ..models import class_names_for

            class_names = class_names_for(model)
        self.class_names = list(class_names) if class_names is not None else None
        self.reshape_transform = reshape_transform

    def __call__(self, x: torch.Tensor, targets: Targets = None) -> Explanation:
        """Explain a (B, 3, H, W) batch (or one (3, H, W) image) for ``targets``.

        targets: None (each image's top-1 class), an int or class name (all images),
        or a sequence with one int or name per image.

        Works inside ``torch.no_grad()`` and ``torch.inference_mode()``: the call turns on
        what it needs and puts the caller's modes back (also after an error). A float16 or
        bfloat16 model runs in its own dtype (the input is resized in float32 and cast to
        it); the maps are accumulated and returned in float32, or a TypeError names a
        dtype the device cannot run. An input with NaN or infinite values is a ValueError.
        """
        with autograd_enabled():
            x, source = self._input_batch(x)
            wanted = self._check_targets(targets, x.shape[0])
            with self._open_capture() as capture:
                maps, used, scales, probabilities = self._explain(capture, x, wanted)
            return Explanation(
                maps=self._output(normalise_maps(maps.float()), source),
                targets=[int(t) for t in used],
                scales=scales,
                probabilities=self._output(probabilities, source),
                method=self.name,
                layer=self.layer_name,
                class_names=self.class_names,
            )

    # The PyTorch backend. ----------------------------------------------------------

    def _bind(self, model: nn.Module, layer: LayerSpec) -> tuple[str, nn.Module]:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        return resolve_layer(model, layer)

    def _open_capture(self) -> LayerCapture:
        return LayerCapture(self.model, self.layer, self.reshape_transform)

    def _input_batch(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.device]:
        # Resizing runs in float32 (or the input's wider dtype); LayerCapture.run casts
        # each scale's input to the model's dtype.
        x = check_batch(x)
        check_channels_first(x, self.model)
        return widened(x.to(model_device(self.model))), x.device

    def _output(self, tensor: torch.Tensor, source: torch.device) -> torch.Tensor:
        return tensor.to(source)

    def _explain(
        self, capture: LayerCapture, x: torch.Tensor, targets: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, list[list[ScaleRecord]], torch.Tensor]:
        raise NotImplementedError

    def class_index(self, target: int | str) -> int:
        """A class index from an index or a class name (the rule in ``cameras.classes``)."""
        return class_index(target, self.class_names)

    def _check_targets(self, targets: Targets, batch: int) -> torch.Tensor | None:
        return class_indices(targets, batch, self.class_names)


def check_batch(x: torch.Tensor) -> torch.Tensor:
    """A (B, C, H, W) float batch from a batch or one (C, H, W) image; clear errors otherwise
    (a ValueError for NaN or infinite values)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, not {type(x).__name__}")
    if x.dim() == 3:
        x = x[None]
    if x.dim() == 4 and x.shape[0] == 0:
        raise ValueError(f"x is an empty batch {tuple(x.shape)}; pass at least one image")
    if x.dim() != 4:
        raise ValueError(f"x must have shape (B, C, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a float tensor (preprocessed image), not {x.dtype}")
    check_finite(x)
    return x


def check_finite(x: torch.Tensor, argument: str = "x") -> None:
    """ValueError, saying how many, when ``x`` holds NaN or infinite values: the model
    would give NaN scores, which no class or map can be read from."""
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = x[~finite]
        nan = int(bad.isnan().sum())
        raise ValueError(
            f"{argument} has {bad.numel()} non-finite values of {x.numel()} ({nan} NaN, "
            f"{bad.numel() - nan} infinite); pass a preprocessed image with finite pixels"
        )


def top1_of(logits: torch.Tensor) -> torch.Tensor:
    """Each row's top-1 class (used when no class is given)."""
    return logits.argmax(1)


def scale_records(
    logits: torch.Tensor, scale: int, size: tuple[int, int], kept: torch.Tensor
) -> list[ScaleRecord]:
    """One ScaleRecord per image for the scores ``logits`` (B, K) at one input size."""
    # top1 from the scores, as the scale rule takes it: near-equal scores can round to
    # equal probabilities, whose max would name another class.
    top1 = top1_of(logits)
    probability = torch.softmax(logits.float(), 1).gather(1, top1[:, None])[:, 0]
    return [
        ScaleRecord(scale, size, int(c), float(p), bool(k))
        for c, p, k in zip(top1.tolist(), probability.tolist(), kept.tolist(), strict=True)
    ]
