"""CAMERAS (Jalwana et al., CVPR 2021): multi-scale accumulation of activations and gradients."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.budget import capped_size, check_call, is_extreme, nominal_side
from ..core.capture import LayerCapture, LayerSpec
from ..core.fusion import fuse_scales
from ..core.precision import DEFAULT_PRECISION, keep_layout
from ..core.targets import Target
from .base import SaliencyMethod, probabilities_of, scale_records, scale_row, target_or_top1

# The paper's scales for a 224 input: 224, 324, ..., 924. Other inputs use the same
# factors of their shorter side (s / 224), so a 448 input goes up to 1848.
PAPER_SCALES = tuple(range(224, 925, 100))


# Which scales count towards the map (docs/benchmarks.md, "Which scales count").
#   top1: a scale counts when its own top-1 is the explained class (the paper's rule).
#   top5: a scale counts while the explained class stays in that scale's top 5.
#   all:  every scale counts (what the authors' code does when a class is passed).
SCALE_RULES = ("top1", "top5", "all")
# The rule used when no class is given; with a class given every scale counts. Chosen on
# the measurements of benchmarks/scale_rules.py (docs/benchmarks.md: "Which scales count"): on real
# photos keeping every scale scored best on pointing, map density and deletion, while the
# paper's top1 rule kept a median of 3 of 8 scales.
DEFAULT_RULE = "all"


def kept_by_rule(rule: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B,) bool: whether a scale with class scores ``logits`` (B, K) counts for ``targets``:
    (B,) class indices, or (B, n) sets of classes, each of which must rank (a set of n
    classes counts within the top max(k, n))."""
    ranked = targets if targets.dim() == 2 else targets[:, None]
    if rule == "all":
        return torch.ones(ranked.shape[0], dtype=torch.bool, device=ranked.device)
    k = max(1 if rule == "top1" else 5, ranked.shape[1])
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top[:, :, None] == ranked.to(top.device)[:, None, :]).any(1).all(1)


def kept_at_scale(rule: str, logits: torch.Tensor | None, target: Target, present: torch.Tensor):
    """(B,) bool: whether a scale counts. A class target (or set of classes) counts by the
    rule's ranks; any other target where it is present (a region its class holds, a
    box a detection matches): its score elsewhere would explain something else."""
    ranked = target.ranked_classes
    if ranked is None or logits is None:
        return present
    return kept_by_rule(rule, logits, ranked)


def default_scales(shorter_side: int, largest: int = PAPER_SCALES[-1]) -> list[int]:
    """The default scales for an input whose shorter side is ``shorter_side``.

    largest: where the 224-based sizes 224, 324, ... stop (924, the paper's, by default;
    the web page's quality presets stop elsewhere), scaled like the rest.
    """
    sizes = range(PAPER_SCALES[0], largest + 1, 100)
    scaled = [_round_half_up(shorter_side * s, PAPER_SCALES[0]) for s in sizes]
    # A tiny input rounds several sizes to one (1 px: 1, 1, 2, 2, ...): each runs once.
    return sorted(set(scaled))


def _round_half_up(numerator: int, denominator: int) -> int:
    # Integer arithmetic: round(n / d) with halves going up, no float error.
    return (2 * numerator + denominator) // (2 * denominator)


def resized_size(height: int, width: int, scale: int) -> tuple[int, int]:
    """(height, width) with the shorter side ``scale``, aspect kept, each side rounded.

    Past the aspect cap (``budget.MAX_ASPECT``: a side over 4 times the other) the input
    gets ``MAX_ASPECT * scale**2`` pixels instead, aspect kept, so a thin strip cannot grow
    without bound (``budget.capped_size``).
    """
    if is_extreme(height, width):
        return capped_size(height, width, scale)
    shorter = min(height, width)
    return _round_half_up(height * scale, shorter), _round_half_up(width * scale, shorter)


def resize_to_scale_size(height: int, width: int, scale: int) -> tuple[int, int]:
    """The (height, width) ``resize_to_scale`` gives an input of this size at ``scale``."""
    if scale == nominal_side(height, width):
        return height, width
    return resized_size(height, width, scale)


def resize_to_scale(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic resize of a (B, C, H, W) batch so its shorter side is ``scale``."""
    height, width = x.shape[2:]
    size = resize_to_scale_size(height, width, scale)
    if size == (height, width):
        return x
    # A channels_last input stays channels_last on every device (core.precision).
    return keep_layout(F.interpolate(x, size=size, mode="bicubic", align_corners=False), x)


class CAMERAS(SaliencyMethod):
    """CAMERAS saliency: sharp maps at the input's resolution from one layer at many scales.

    model: a classifier returning (B, K) scores (or an object with ``.logits``).
    layer: module name, module, or None for the last spatial layer before pooling.
    scales: shorter-side sizes, ascending; None for ``default_scales`` of the input.
    rule: which scales count: ``"top1"`` (the paper's rule: the scale's own top-1 is the
        class), ``"top5"`` (the class is in the scale's top 5) or ``"all"``. None (default)
        applies ``DEFAULT_RULE`` (``"all"``: every scale, for the first scale's top-1 when
        no class is given, as the authors' code does for a class passed); a name applies
        that rule with or without a class.
    strict: older spelling: True is ``rule="top1"``, False is ``rule="all"``.
    backend: a ``cameras.backends`` backend for ``model`` (None: picked from its type).
    precision: ``"fp32"`` (default), ``"bf16"`` or ``"fp16"`` (``core.precision``).
    """

    name = "cameras"

    def __init__(
        self,
        model: nn.Module,
        layer: LayerSpec = None,
        scales: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        strict: bool | None = None,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        rule: str | None = None,
        backend=None,
        precision: str = DEFAULT_PRECISION,
    ) -> None:
        super().__init__(model, layer, class_names, reshape_transform, backend, precision)
        if scales is not None:
            if any(s != int(s) for s in scales):  # 64.5 would run at 64, silently
                raise ValueError(f"scales must be whole numbers of pixels, got {list(scales)}")
            scales = [int(s) for s in scales]
            if not scales or any(s < 1 for s in scales):
                raise ValueError(f"scales must be positive sizes, got {scales}")
            if any(b <= a for a, b in zip(scales, scales[1:], strict=False)):
                raise ValueError(f"scales must be strictly ascending, got {scales}")
        if rule is not None and rule not in SCALE_RULES:
            raise ValueError(f"rule must be one of {', '.join(SCALE_RULES)}, not {rule!r}")
        if rule is not None and strict is not None:
            raise ValueError("pass rule= or strict=, not both (strict=True is rule='top1')")
        if strict is not None:
            rule = "top1" if strict else "all"
        self.scales = scales
        self.rule = rule

    def scales_for(self, height: int, width: int) -> list[int]:
        if self.scales is not None:
            return list(self.scales)
        return default_scales(nominal_side(height, width))

    def check_budget(self, x: torch.Tensor, scales: list[int]) -> None:
        """Refuse (``MemoryBudgetError``, saying which scales fit) a call on the batch ``x``
        whose estimated memory exceeds the budget (``cameras.core.budget``)."""
        cost = self.pass_cost(x)
        if cost is None:
            return
        height, width = x.shape[2:]
        sizes = [tuple(resize_to_scale_size(height, width, s)) for s in scales]
        # Per image: what an input and its scales cost is the budget's business; a batch
        # (--batch-size, a caller's stack) multiplies it by the caller's own choice.
        check_call(cost, scales, sizes, batch=1)

    def rule_for(self, targets: torch.Tensor | None) -> str:
        """The scale rule of a call: the one asked for, else by whether a class was given."""
        if self.rule is not None:
            return self.rule
        return DEFAULT_RULE if targets is None else "all"

    def _explain(self, capture: LayerCapture, x: torch.Tensor, targets: Target | None):
        height, width = x.shape[2:]
        rule = self.rule_for(targets)
        target = target_or_top1(targets)
        activations, gradients, covered, kept, rows, sizes = [], [], [], [], [], []
        probabilities = None
        scales = self.scales_for(height, width)
        self.check_budget(x, scales)
        for scale in scales:
            scaled = resize_to_scale(x, scale)
            step, target = capture.run(scaled, target, (height, width))
            if not rows:
                probabilities = probabilities_of(step.logits)
            keep = kept_at_scale(rule, step.logits, target, step.present)
            activations.append(step.activations)
            gradients.append(step.gradients)
            covered.append(getattr(step, "covered", None))  # token grids padded to whole patches
            kept.append(keep)
            rows.append(scale_row(step.logits, step.score, keep))
            sizes.append(tuple(scaled.shape[2:]))
        kept_mask = torch.stack(kept, 1).float()  # (B, T)
        # An image with no kept scale (a rule given with a class its scales never rank, a
        # box no detection matches) gets an all-zero map.
        weights = kept_mask / kept_mask.sum(1, keepdim=True).clamp(min=1)
        maps = fuse_scales(activations, gradients, weights, (height, width), covered)
        return maps, target, scale_records(rows, scales, sizes), probabilities
