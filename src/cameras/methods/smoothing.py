"""Smoothing options shared by the single-layer CAM methods, and the class that offers them.

- ``eigen_smooth``: the map is the projection of the weighted activations (B, C, h, w) on
  their first principal component over the h * w locations, instead of their sum over
  channels (pytorch-grad-cam's ``eigen_smooth``).
- ``aug_smooth``: test-time augmentation: the map is the mean of the normalised maps of six
  variants of the input (mirrored or not, times 0.9, 1 or 1.1), each mirrored back
  (pytorch-grad-cam's ``aug_smooth``). Six times the passes.

The principal component's sign is arbitrary (an SVD gives v or -v). Here it is fixed so
that the projection's largest magnitude is positive (the correction of Seg-Eigen-CAM,
pytorch-grad-cam's ``get_2d_projection_with_sign_correction``); pytorch-grad-cam's
Eigen-CAM keeps whatever sign its SVD returns, which may be the negated map.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..core.budget import check_call, nominal_side
from ..core.capture import LayerSpec
from ..core.fusion import normalise_maps, resize_grid
from ..core.precision import DEFAULT_PRECISION
from .base import SaliencyMethod, probabilities_of, scale_records, scale_row, target_or_top1

# Test-time augmentations, in pytorch-grad-cam's (ttach's) order: (mirrored, factor).
AUGMENTATIONS = tuple((flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1))


def signed_projection(projection: torch.Tensor) -> torch.Tensor:
    """(B, n) projections, each negated when its most negative value outweighs its largest."""
    flip = projection.amin(1).abs() > projection.amax(1).abs()
    return torch.where(flip[:, None], -projection, projection)


def first_component(weighted: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h, w): each location's centred C-vector projected on the first
    principal direction of the h * w locations (sign fixed by ``signed_projection``)."""
    batch, channels, height, width = weighted.shape
    points = weighted.nan_to_num(0).double().flatten(2).transpose(1, 2)  # (B, hw, C)
    points = points - points.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(points, full_matrices=False)
    projection = (points @ vh[:, 0, :, None])[..., 0]
    return signed_projection(projection).float().view(batch, height, width)


class SmoothableCAM(SaliencyMethod):
    """A single-layer method at the input's own size with ``aug_smooth`` and, for the
    methods whose map is a sum over channels, ``eigen_smooth``.

    Subclasses give ``grid_map(capture, x, step, targets) -> (B, h, w)`` (before the
    ReLU), usually through ``weighted_activations``.
    """

    #: whether ``eigen_smooth`` applies (the map is a sum of weighted channels)
    eigen_smoothable = True
    #: forward passes per image besides the one of ``capture.run`` (for the budget check)
    extra_batch = 1

    def __init__(
        self,
        model,
        layer: LayerSpec = None,
        class_names: Sequence[str] | None = None,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        backend=None,
        precision: str = DEFAULT_PRECISION,
    ) -> None:
        super().__init__(model, layer, class_names, reshape_transform, backend, precision)
        if eigen_smooth and not self.eigen_smoothable:
            raise ValueError(f"eigen_smooth does not apply to {self.name}: its map is no sum")
        self.aug_smooth = bool(aug_smooth)
        self.eigen_smooth = bool(eigen_smooth)

    def weighted_activations(self, capture, x, step, targets) -> torch.Tensor:
        """(B, C, h, w) weighted activations whose sum over channels is the map."""
        raise NotImplementedError

    def grid_map(self, capture, x, step, targets) -> torch.Tensor:
        weighted = self.weighted_activations(capture, x, step, targets)
        return first_component(weighted) if self.eigen_smooth else weighted.sum(1)

    def _explain(self, capture, x: torch.Tensor, targets: torch.Tensor | None):
        if not self.aug_smooth:
            return self._explain_once(capture, x, targets)
        total, identity = 0.0, None
        for flip, factor in AUGMENTATIONS:
            variant = x.flip(3) if flip else x
            result = self._explain_once(capture, variant * factor, targets)
            maps = normalise_maps(result[0].float())
            total = total + (maps.flip(2) if flip else maps)
            if not flip and factor == 1.0:
                identity = result
        # Each variant picks its own top-1 when no class is given; the result names the
        # classes of the unchanged input.
        return total / len(AUGMENTATIONS), *identity[1:]

    def check_budget(self, x: torch.Tensor) -> None:
        cost = self.pass_cost(x)  # passes at the input's size: within the budget?
        if cost is not None:
            size = tuple(x.shape[2:])
            check_call(cost, [nominal_side(*size)], [size], batch=self.extra_batch)

    def _explain_once(self, capture, x: torch.Tensor, targets):
        self.check_budget(x)
        size = tuple(x.shape[2:])
        step, used = capture.run(x, target_or_top1(targets), size)
        low = self.grid_map(capture, x, step, used).clamp(min=0)
        # A token grid padded to whole patches spans more than the input (fusion.resize_grid).
        maps = resize_grid(low, size, getattr(step, "covered", None))
        row = scale_row(step.logits, step.score, step.present)
        records = scale_records([row], [min(size)], [size])
        return maps, used, records, probabilities_of(step.logits)
