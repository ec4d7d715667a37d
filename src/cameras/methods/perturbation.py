"""Perturbation methods: Score-CAM and Ablation-CAM, one extra forward pass per channel.

Both weigh the layer's channels by what the class score does when the input (Score-CAM)
or the layer (Ablation-CAM) is changed one channel at a time, so an image costs one
forward and backward pass plus C forward passes (C channels: 1280 for EfficientNet-Lite0's
``bn2``); Ablation-CAM runs the layers before the explained one once per batch of passes.
The passes are batched (``batch_size`` per forward), checked against the memory budget
for that batch (``cameras.core.budget``), shown with a progress bar on a terminal when there
are many (``progress``), and a KeyboardInterrupt stops the call with the model as it was
(the capture's with-block puts hooks and flags back).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from ..core.capture import LayerSpec
from ..core.fusion import resize_grid
from ..core.precision import DEFAULT_PRECISION
from .smoothing import SmoothableCAM

# Forward passes from which the progress bar shows (on a terminal; never in a pipe).
PROGRESS_FROM = 256


class _PerturbationCAM(SmoothableCAM):
    def __init__(
        self,
        model,
        layer: LayerSpec = None,
        class_names: Sequence[str] | None = None,
        reshape_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        aug_smooth: bool = False,
        eigen_smooth: bool = False,
        batch_size: int = 32,
        progress: bool | None = None,
        backend=None,
        precision: str = DEFAULT_PRECISION,
    ) -> None:
        super().__init__(
            model,
            layer,
            class_names,
            reshape_transform,
            aug_smooth,
            eigen_smooth,
            backend,
            precision,
        )
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.progress = progress  # None: a bar on a terminal for long runs; False: never

    @property
    def extra_batch(self) -> int:
        return self.batch_size

    def _chunks(self, images: int, channels: int) -> Iterator[tuple[int, int, int]]:
        """(image, first channel, last channel) per batch of passes, with a progress bar."""
        steps = [
            (b, first, min(first + self.batch_size, channels))
            for b in range(images)
            for first in range(0, channels, self.batch_size)
        ]
        show = self.progress if self.progress is not None else images * channels >= PROGRESS_FROM
        if not show:
            yield from steps
            return
        from tqdm.auto import tqdm

        # disable=None: no bar when stderr is not a terminal (logs, tests), unless asked.
        bar = tqdm(
            total=images * channels,
            desc=self.name,
            unit="pass",
            leave=False,
            disable=None if self.progress is None else False,
        )
        try:
            for step in steps:
                yield step
                bar.update(step[2] - step[1])
        finally:
            bar.close()


class ScoreCAM(_PerturbationCAM):
    """Score-CAM (Wang et al. 2020): channel weights from the softmax, over channels, of
    the class score of the input masked by each channel's min-max normalised map.

    Masks are upsampled like every map here (bilinear, half-pixel centres; token grids
    by the part of the input they cover); pytorch-grad-cam upsamples them with
    ``UpsamplingBilinear2d`` (corner-aligned), which gives slightly different masks.
    """

    name = "scorecam"

    def weighted_activations(self, capture, x, step, targets):
        activations = step.activations
        batch, channels = activations.shape[:2]
        size = tuple(x.shape[2:])
        covered = getattr(step, "covered", None)
        scores = torch.empty(batch, channels)
        for b, first, last in self._chunks(batch, channels):
            masks = resize_grid(activations[b, first:last], size, covered)
            low = masks.flatten(1).amin(1)[:, None, None]
            high = masks.flatten(1).amax(1)[:, None, None]
            masks = (masks - low) / (high - low + 1e-8)
            one = targets.for_image(b, last - first)
            scores[b, first:last] = capture.target_scores(x[b] * masks[:, None], one, size).cpu()
        weights = torch.softmax(scores, 1).to(activations.device)
        return weights[:, :, None, None] * activations


class AblationCAM(_PerturbationCAM):
    """Ablation-CAM (Desai & Ramaswamy 2020): a channel's weight is the relative drop of the
    class score when that channel of the layer is set to zero, (y - y_k) / y.

    pytorch-grad-cam sets the channel to zero only when the layer's smallest value is 0
    (a ReLU output); otherwise it sets it to that value minus 1e7. Here it is always zero,
    the paper's ablation, so the two agree on ReLU layers and differ on others (a ViT's
    norm layer).
    """

    name = "ablationcam"

    def weighted_activations(self, capture, x, step, targets):
        activations = step.activations
        batch, channels = activations.shape[:2]
        original = step.score.cpu()
        ablated = torch.empty(batch, channels)
        for b, first, last in self._chunks(batch, channels):
            count = last - first
            mask = torch.ones(count, channels)
            mask[torch.arange(count), torch.arange(first, last)] = 0
            one = targets.for_image(b, count)
            ablated[b, first:last] = self._ablated_scores(capture, x[b : b + 1], mask, one).cpu()
        weights = (original[:, None] - ablated) / original[:, None]
        return weights.to(activations.device)[:, :, None, None] * activations

    @staticmethod
    def _ablated_scores(capture, image: torch.Tensor, mask: torch.Tensor, target) -> torch.Tensor:
        """(count,) target scores of one image with the mask's rows applied at the layer.

        The layers before the explained one see the same image in every pass, so they run
        once: the (1, C, h, w) output times the (count, C) mask is the batch the rest of the
        network gets. A model that cannot widen its batch there (a tensor of the first
        batch size crossing the layer, say) gets the image repeated instead.
        """
        count, size = mask.shape[0], tuple(image.shape[2:])
        try:
            scores = capture.target_scores(image, target, size, mask)
            if scores.shape[0] == count:
                return scores
        except RuntimeError:
            pass
        return capture.target_scores(image.expand(count, -1, -1, -1), target, size, mask)
