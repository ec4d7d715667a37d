"""The result type every method returns, and the base class that owns the forward passes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.budget import PassCost
from ..core.capture import LayerCapture, LayerSpec, autograd_enabled
from ..core.classes import Targets, class_index, class_indices, class_names_for
from ..core.fusion import normalise_maps
from ..core.precision import DEFAULT_PRECISION, autocast_for, check_precision


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
    ``capture.run(x_scaled, targets) -> (ScaleCapture, targets)``, as torch tensors, on
    the object ``self.backend.capture(...)`` opens for one call; resizing, the scale rule,
    fusion and normalisation stay here, in PyTorch, for every kind of model. The backend
    (``cameras.backends``: PyTorch, or Keras on TensorFlow) is picked from the model's
    type unless one is given.
    """

    name = "base"

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = None,
        class_names: Sequence[str] | None = None,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        backend=None,
        precision: str = DEFAULT_PRECISION,
    ) -> None:
        from ..backends import backend_for

        self.backend = backend if backend is not None else backend_for(model)
        # "bf16" / "fp16": the model's passes run under autocast (core/precision.py).
        self.precision = check_precision(precision, self.backend.name)
        self.model = model
        self.layer_name, self.layer = self.backend.resolve_layer(layer)
        if class_names is None:
            class_names = class_names_for(model)
        self.class_names = list(class_names) if class_names is not None else None
        self.reshape_transform = reshape_transform
        self._pass_cost: PassCost | None = None

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
        backend = self.backend
        with autograd_enabled():
            x, source = backend.input_batch(x)
            wanted = self._check_targets(targets, x.shape[0])
            with self._open_capture() as capture, autocast_for(self.precision, x.device):
                maps, used, scales, probabilities = self._explain(capture, x, wanted)
            return Explanation(
                maps=backend.output(normalise_maps(maps.float()), source),
                targets=[int(t) for t in used],
                scales=scales,
                probabilities=backend.output(probabilities, source),
                method=self.name,
                layer=self.layer_name,
                class_names=self.class_names,
            )

    def pass_cost(self, x: torch.Tensor) -> PassCost | None:
        """The model's memory cost per input pixel (``cameras.core.budget``), probed by the
        backend on the first call (on ``x``) and kept; None where the backend has no
        probe (Keras: only the aspect cap applies)."""
        if self._pass_cost is None:
            self._pass_cost = self.backend.pass_cost(self.layer, x)
        return self._pass_cost

    def _open_capture(self):
        """The with-block object whose ``run`` gives each pass's scores, layer output and
        gradient: the backend's capture of the layer (a method that reads more of the
        model, such as FullGrad, opens its own)."""
        return self.backend.capture(self.layer, self.reshape_transform)

    def _explain(
        self, capture: LayerCapture, x: torch.Tensor, targets: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, list[list[ScaleRecord]], torch.Tensor]:
        raise NotImplementedError

    def class_index(self, target: int | str) -> int:
        """A class index from an index or a class name (the rule in ``cameras.core.classes``)."""
        return class_index(target, self.class_names)

    def _check_targets(self, targets: Targets, batch: int) -> torch.Tensor | None:
        return class_indices(self.backend.plain_targets(targets), batch, self.class_names)


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
