"""The result type every method returns, and the base class that owns the forward passes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.budget import PassCost
from ..core.capture import LayerCapture, LayerSpec, autograd_enabled
from ..core.classes import class_index, class_names_for
from ..core.fusion import normalise_maps
from ..core.precision import DEFAULT_PRECISION, autocast_for, check_precision
from ..core.targets import Class, PerImage, Target, as_target


@dataclass(frozen=True)
class ScaleRecord:
    """What the model predicted at one input size, and whether that size was used."""

    scale: int  # the input's shorter side at this step
    size: tuple[int, int]  # (height, width) fed to the model
    top1: int | None  # None where the model's output is no (B, K) class score
    probability: float | None  # softmax probability of top1
    kept: bool
    score: float | None = None  # the target's score at this size (what was explained)


@dataclass
class Explanation:
    """Saliency maps for a batch.

    maps: (B, H, W) float32 in [0, 1], the input batch's height and width, on the
        input's device (a NumPy array from ``cameras.keras``, as is ``probabilities``).
    targets: what was explained, per image: the class index for a class target, else the
        image's target (``cameras.targets``).
    scales: per image, one ScaleRecord per input size tried (kept or not), with the
        target's score at that size.
    probabilities: (B, K) softmax of the model's scores at the first scale; None for a
        model whose output is not a (B, K) class score.
    """

    maps: torch.Tensor
    targets: list[int | Target]
    scales: list[list[ScaleRecord]]
    probabilities: torch.Tensor | None
    method: str
    layer: str
    class_names: list[str] | None = None

    @property
    def target_names(self) -> list[str] | None:
        if self.class_names is None:
            return None
        return [
            self.class_names[t] if isinstance(t, int) else t.label(i, self.class_names)
            for i, t in enumerate(self.targets)
        ]

    @property
    def target_labels(self) -> list[str]:
        """Per image, a short description of what was explained ("tabby (281)",
        "box 10,20,90,120 dog (18)", "region of person (15)")."""
        return [
            (f"{self.class_names[t]} ({t})" if self.class_names else f"class {t}")
            if isinstance(t, int)
            else t.label(i, self.class_names)
            for i, t in enumerate(self.targets)
        ]

    @property
    def scale_warnings(self) -> list[str | None]:
        """Per image, one line when fewer than half of its scales counted (else None)."""
        return [
            few_scales_warning(records, isinstance(target, int))
            for records, target in zip(self.scales, self.targets, strict=True)
        ]


def few_scales_warning(records: Sequence[ScaleRecord], class_target: bool = True) -> str | None:
    """A one-line warning, saying what to do, when fewer than half of the scales counted.

    Such a map is close to a single-scale one: the class left the scale rule's top ranks
    at the larger sizes. Passing the class keeps every scale (the authors' code), and
    fewer, smaller scales change the prediction less. For a target that is not one class
    (a box, a region, ...) the scales dropped are those where it was absent; where it is
    absent at every scale, even a single-scale method's map explains nothing.
    """
    kept = sum(record.kept for record in records)
    if not class_target and kept == 0:
        return (
            "the target is absent at every scale (no detection matches the box, or the "
            "class does not hold the region), so the map explains nothing; check the box, "
            "mask and class against what the model sees"
        )
    if len(records) < 2 or 2 * kept >= len(records):
        return None
    if not class_target:
        return (
            f"the target was present at only {kept} of {len(records)} scales, so the map is "
            "close to a single-scale one; fewer, smaller scales (--scales) may keep more"
        )
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

    def __call__(self, x: torch.Tensor, targets: object = None) -> Explanation:
        """Explain a (B, 3, H, W) batch (or one (3, H, W) image) for ``targets``.

        targets: None (each image's top-1 class), an int or class name (all images), a
        target of ``cameras.targets`` (``Classes``, ``Region``, ``Box``, ``Similarity``)
        or any callable with the target signature (all images), or a sequence with one
        of those per image.

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
                targets=explained(used, x.shape[0]),
                scales=scales,
                probabilities=None
                if probabilities is None
                else backend.output(probabilities, source),
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
        self, capture: LayerCapture, x: torch.Tensor, targets: Target | None
    ) -> tuple[torch.Tensor, Target, list[list[ScaleRecord]], torch.Tensor | None]:
        """(raw maps (B, H, W), the target used, records per image, probabilities).

        targets: the call's bound target, or None for each image's top-1 class (a
        ``Class(None)`` target takes it at the first pass).
        """
        raise NotImplementedError

    def class_index(self, target: int | str) -> int:
        """A class index from an index or a class name (the rule in ``cameras.core.classes``)."""
        return class_index(target, self.class_names)

    def _check_targets(self, targets: object, batch: int) -> Target | None:
        return as_target(self.backend.plain_targets(targets), batch, self.class_names)


def target_or_top1(targets: Target | None) -> Target:
    """The call's target; with none given, a class target that takes each image's top-1
    class at the first pass and keeps it."""
    return Class(None) if targets is None else targets


def explained(target: Target, batch: int) -> list[int | Target]:
    """Per image, the class index of a class target (one read of the device), else the
    image's own target."""
    if isinstance(target, Class):
        return [int(t) for t in target.indices.tolist()]
    if isinstance(target, PerImage):
        return [t.class_of(i) if isinstance(t, Class) else t for i, t in enumerate(target.targets)]
    return [target] * batch


def probabilities_of(logits: torch.Tensor | None) -> torch.Tensor | None:
    """Softmax of (B, K) class scores; None for a model without them."""
    return None if logits is None else torch.softmax(logits.float(), 1)


def scale_row(logits: torch.Tensor | None, score: torch.Tensor, kept: torch.Tensor):
    """(B, 4) float32 on the scores' device: top-1, its probability, the target's score and
    whether the scale was kept. Gathered per scale and read back once per call
    (``scale_records``), so a call costs one device read, whatever its scales."""
    if logits is None:  # no class scores: top-1 and probability are unknown (-1, NaN)
        top1 = torch.full_like(score, -1.0)
        probability = torch.full_like(score, float("nan"))
    else:
        # top1 from the scores, as the scale rule takes it: near-equal scores can round to
        # equal probabilities, whose max would name another class.
        best = logits.argmax(1)
        probability = torch.softmax(logits.float(), 1).gather(1, best[:, None])[:, 0]
        top1 = best.float()
    return torch.stack([top1, probability, score.float(), kept.float()], 1)


def scale_records(
    rows: Sequence[torch.Tensor], scales: Sequence[int], sizes: Sequence[tuple[int, int]]
) -> list[list[ScaleRecord]]:
    """Per image, one ScaleRecord per scale from the ``scale_row`` of each scale."""
    table = torch.stack(rows).cpu().tolist()  # (T, B, 4): the call's one read
    per_image = []
    for image in range(len(table[0])):
        records = []
        for scale, size, row in zip(scales, sizes, table, strict=True):
            top1, probability, score, kept = row[image]
            known = top1 >= 0
            records.append(
                ScaleRecord(
                    scale,
                    tuple(size),
                    int(top1) if known else None,
                    probability if known else None,
                    bool(kept),
                    score,
                )
            )
        per_image.append(records)
    return per_image
