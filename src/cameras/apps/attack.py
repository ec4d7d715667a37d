"""Saliency-focused adversarial attack (CAMERAS paper, section 6).

Targeted PGD (Madry et al. 2018) that pushes an image towards a class, by default its
least-likely one, while a penalty keeps the perturbation out of the regions a
saliency map marks as unimportant. Per image it minimises

    CE(f(x + p), target) + beta * || p * (1 - Psi) ||_2

with Psi the (H, W) map in [0, 1], broadcast over the colour channels. With no map,
or beta = 0, this is plain targeted PGD. The paper reports, for ResNet-50 on ImageNet
val with CAMERAS maps and beta = 50, the same fooling rate (99.99 %) as plain PGD with
a perturbation whose norm is 56.5 % smaller.

Everything happens in [0, 1] RGB pixel space: the perturbation, its norms, the step
sizes and the clipping that keeps pixels valid. ``prep`` (a ``Preprocess``) converts
between pixels and the model's input, so the user keeps passing what ``prep(image)``
gives. The model is never changed: it runs in eval mode (every module's flag is put
back afterwards), no hook is registered, and gradients are taken with respect to the
perturbation only (``torch.autograd.grad``), so parameters get no ``.grad`` and their
``requires_grad`` flags are never touched.

Defaults (measured on the seven bundled photos with EfficientNet-Lite0; docs/benchmarks.md's
attack section has the figures):

- ``norm="linf"``: sign steps (Madry's PGD) of ``step_size=2/255`` per pixel, no eps bound,
  at most ``DEFAULT_STEPS = 100`` steps. With beta = 50 these reached the least-likely
  class on 6 of 7 photos with either CAMERAS or Grad-CAM maps (plain PGD: 7 of 7, in
  3 to 5 steps). Steps of a whole number of 8-bit levels keep the adversarial image
  exactly representable as an 8-bit PNG.
- ``norm="l2"``: steps of L2 length ``step_size=0.5`` (pixel units, over the whole
  3 x H x W image), normalised gradient. The penalty's gradient has a constant length
  (up to beta) however small the perturbation outside the salient region is, so with
  normalised steps it takes most of each step at beta = 50 and the target is rarely
  reached; beta = 10 works with L2 steps.
- How the penalty acts with sign steps: its gradient at a pixel is 0 where the
  perturbation is 0 and otherwise, outside the salient region, usually larger than the
  cross-entropy's. Pixels there flip between 0 and one step, while pixels where Psi is
  near 1 keep moving: the perturbation piles up around the map's peak (smaller L2 norm,
  larger Linf norm than plain PGD).
- Zero start (no random start): results are deterministic, and plain and focused runs
  start from the same point.
- Early stop per image (``stop_when_reached=True``): an image stops changing at the
  first step where the target is its top-1 class. The norms then measure the
  perturbation each variant *needs* rather than the step budget, and both variants get
  the same budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.capture import (
    autograd_enabled,
    check_batch,
    dtype_errors,
    eval_mode,
    model_device,
    model_input,
)
from ..core.classes import class_indices, class_names_for
from ..core.targets import logits_of
from .metrics._forward import PixelTransform

DEFAULT_STEPS = 100
DEFAULT_BETA = 50.0
DEFAULT_NORM = "linf"
DEFAULT_STEP_SIZE = {"l2": 0.5, "linf": 2.0 / 255.0}
NORMS = ("l2", "linf")
PENALTIES = ("gradient", "proximal")

# A norm's gradient is undefined at zero; the tiny offset makes it 0 there instead of NaN.
_NORM_FLOOR = 1e-12


@dataclass
class AttackResult:
    """The outcome of ``pgd`` for a batch of B images of size H x W.

    adversarial: (B, 3, H, W) model input of the adversarial images (the same space as
        the ``x`` given: normalised if ``prep`` was passed).
    pixels: (B, 3, H, W) adversarial images in [0, 1] RGB (within ``bounds``).
    perturbation: (B, 3, H, W) ``pixels`` minus the clean pixels, in pixel units.
    targets: the class attacked, per image.
    original: the clean image's top-1 class, per image.
    reached: per image, whether the target is the top-1 class of the adversarial image.
    confidence: (B,) softmax probability of the target for the adversarial image.
    l2, linf: (B,) norms of ``perturbation`` over all 3 x H x W values.
    steps: per image, the gradient steps taken (fewer than asked when stopped early).
    """

    adversarial: torch.Tensor
    pixels: torch.Tensor
    perturbation: torch.Tensor
    targets: list[int]
    original: list[int]
    reached: list[bool]
    confidence: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    steps: list[int]
    class_names: list[str] | None = None

    @property
    def fooling_rate(self) -> float:
        """Fraction of the batch whose target was reached, in [0, 1]."""
        return sum(self.reached) / len(self.reached)

    @property
    def target_names(self) -> list[str] | None:
        if self.class_names is None:
            return None
        return [self.class_names[t] for t in self.targets]


@autograd_enabled()
def pgd(
    model: nn.Module,
    x: torch.Tensor,
    target: None | int | str | Sequence[int | str] | torch.Tensor = None,
    saliency: torch.Tensor | None = None,
    beta: float = DEFAULT_BETA,
    steps: int = DEFAULT_STEPS,
    step_size: float | None = None,
    eps: float | None = None,
    norm: str = DEFAULT_NORM,
    prep: PixelTransform | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    stop_when_reached: bool = True,
    class_names: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    penalty: str = "gradient",
    beta_patience: int | None = None,
) -> AttackResult:
    """Targeted PGD on a batch, optionally focused by a saliency map.

    model: a classifier returning (B, K) scores (or an object with ``.logits``).
    x: (B, 3, H, W) or (3, H, W) model input. With ``prep`` it is what ``prep(image)``
        gives (normalised); without, it must already be pixels within ``bounds``.
    target: None (each image's least-likely class), an int or class name for all
        images, or one per image.
    saliency: (B, H, W) or (H, W) map in [0, 1] (an ``Explanation``'s ``.maps``), at
        the input's height and width; None for plain PGD.
    beta: weight of ``||p * (1 - Psi)||_2`` (pixel units); 0 gives plain PGD.
    steps: the most gradient steps per image.
    step_size: L2 length of a step (``norm="l2"``) or the per-pixel change of a step
        (``"linf"``), in [0, 1] pixel units; None takes ``DEFAULT_STEP_SIZE[norm]``.
    eps: radius of the ball the perturbation is projected onto (same norm, pixel
        units); None for no bound.
    prep: converts pixels to model input and back (``normalise`` / ``denormalise``).
    bounds: the valid pixel range; adversarial pixels are clipped to it.
    stop_when_reached: freeze an image at the first step where its target is top-1.
    class_names: names for string targets and ``target_names`` (default: the names
        ``load_model`` attached to the model, if any).
    progress: called as ``progress(step, still_running)`` after each gradient step
        (a progress bar, for instance).
    penalty: how the penalty acts. ``"gradient"``: its gradient joins the cross-entropy's
        in each step (the paper's formulation). ``"proximal"``: each step follows the
        cross-entropy alone, then applies the penalty's proximal map, a soft threshold on
        the perturbation outside the salient region (see ``_shrink``): a region whose
        cross-entropy pull is weaker than beta is held at exactly zero.
    beta_patience: halve an image's beta after every ``beta_patience`` steps that did not
        reach its target, so every image is eventually fooled (the attack tends to plain
        PGD); None keeps beta fixed.

    Works inside ``torch.no_grad()`` and ``torch.inference_mode()`` (gradients are on for
    the call, the caller's modes come back after it). A float16 / bfloat16 model gets its
    input in its own dtype; the perturbation and the scores stay float32. NaN or infinite
    values in ``x`` are a ValueError.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    settings = _Settings.checked(
        beta, steps, step_size, eps, norm, bounds, stop_when_reached, penalty, beta_patience
    )
    x = check_batch(x).detach()
    if class_names is None:
        class_names = class_names_for(model)
    names = list(class_names) if class_names is not None else None
    device = model_device(model)
    clean = _clean_pixels(x.to(device), prep, settings.bounds)
    keep = _check_saliency(saliency, clean.shape, device) if beta > 0 else None
    to_input = prep.normalise if prep is not None else (lambda pixels: pixels)

    def scores(pixels: torch.Tensor) -> torch.Tensor:
        return logits_of(model(model_input(to_input(pixels), model))).float()

    with eval_mode(model), torch.enable_grad(), dtype_errors(model):
        with torch.no_grad():
            clean_logits = scores(clean)
        targets = _resolve_targets(target, clean_logits, names, clean_logits.shape[1])
        state = _AttackState.start(clean, clean_logits, float(beta))
        _run_steps(scores, state, targets, keep, settings, progress)
    return _result(state, targets, to_input if prep is not None else None, x, names)


@dataclass(frozen=True)
class _Settings:
    """``pgd``'s step settings, checked."""

    steps: int
    step_size: float
    eps: float | None
    norm: str
    bounds: tuple[float, float]
    stop_when_reached: bool
    penalty: str
    beta_patience: int | None

    @classmethod
    def checked(
        cls, beta, steps, step_size, eps, norm, bounds, stop_when_reached, penalty, patience
    ) -> _Settings:
        """The settings, or a ValueError naming the argument that is out of range."""
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, not {norm!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative int, got {steps!r}")
        step_size = DEFAULT_STEP_SIZE[norm] if step_size is None else float(step_size)
        if not step_size > 0:
            raise ValueError(f"step_size must be positive, got {step_size}")
        if eps is not None and not eps > 0:
            raise ValueError(f"eps must be positive or None, got {eps}")
        if not beta >= 0:
            raise ValueError(f"beta must be non-negative, got {beta}")
        if penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {', '.join(PENALTIES)}, not {penalty!r}")
        if patience is not None and (
            isinstance(patience, bool) or not isinstance(patience, int) or patience < 1
        ):
            raise ValueError(f"beta_patience must be a positive int or None, got {patience!r}")
        low, high = float(bounds[0]), float(bounds[1])
        if not low < high:
            raise ValueError(f"bounds must be (low, high) with low < high, got {bounds}")
        return cls(steps, step_size, eps, norm, (low, high), stop_when_reached, penalty, patience)


def _clean_pixels(
    x: torch.Tensor, prep: PixelTransform | None, bounds: tuple[float, float]
) -> torch.Tensor:
    """The clean images in [0, 1] pixel space, float32, clipped to ``bounds``; a ValueError
    when they lie outside (normalised input passed without ``prep``)."""
    low, high = bounds
    with torch.no_grad():
        clean = (prep.denormalise(x) if prep is not None else x).float()
    # Tolerance for the float round trip normalise -> denormalise of 8-bit pixels.
    if clean.min() < low - 1e-4 or clean.max() > high + 1e-4:
        where = "after prep.denormalise" if prep is not None else "(no prep given)"
        raise ValueError(
            f"x {where} has pixels in [{clean.min():.3g}, {clean.max():.3g}], outside "
            f"bounds [{low}, {high}]; pass prep= for normalised input"
        )
    return clean.clamp(low, high)


@dataclass
class _AttackState:
    """Per image: the perturbation so far, its last scores, the steps taken, whether it
    still moves, and its current beta."""

    clean: torch.Tensor
    clean_logits: torch.Tensor
    perturbation: torch.Tensor
    final_logits: torch.Tensor
    taken: torch.Tensor
    active: torch.Tensor
    betas: torch.Tensor

    @classmethod
    def start(cls, clean: torch.Tensor, clean_logits: torch.Tensor, beta: float) -> _AttackState:
        batch, device = clean.shape[0], clean.device
        return cls(
            clean=clean,
            clean_logits=clean_logits,
            perturbation=torch.zeros_like(clean),
            final_logits=clean_logits.clone(),
            taken=torch.zeros(batch, dtype=torch.long, device=device),
            active=torch.ones(batch, dtype=torch.bool, device=device),
            betas=torch.full((batch,), beta, device=device),
        )


def _run_steps(scores, state: _AttackState, targets, keep, settings: _Settings, progress):
    """The PGD loop: up to ``settings.steps`` steps of the images still moving."""
    for step in range(settings.steps + 1):
        index = state.active.nonzero().flatten()
        if index.numel() == 0:
            break
        delta = state.perturbation[index].requires_grad_(True)
        logits = scores(state.clean[index] + delta)
        state.final_logits[index] = logits.detach()
        if settings.stop_when_reached:
            done = logits.detach().argmax(1) == targets[index]
            state.active[index[done]] = False
            if done.all():
                break
        if step == settings.steps:
            break
        # Per-image sums, so that an image's step never depends on the others.
        loss = F.cross_entropy(logits, targets[index], reduction="sum")
        if keep is not None and settings.penalty == "gradient":
            outside = (delta * keep[index]).flatten(1)
            norms = (outside.square().sum(1) + _NORM_FLOOR).sqrt()
            loss = loss + (state.betas[index] * norms).sum()
        (gradient,) = torch.autograd.grad(loss, delta)
        rows = _take_step(state, index, delta.detach(), gradient, keep, settings)
        if progress is not None:
            progress(step + 1, int(rows.numel()))


def _take_step(state: _AttackState, index, delta, gradient, keep, settings: _Settings):
    """Move the images of ``index`` still active by one step; returns the rows moved."""
    moving = state.active[index]  # images frozen at this step keep their perturbation
    rows = index[moving]
    updated, rate = _descend(delta[moving], gradient[moving], settings.step_size, settings.norm)
    if keep is not None and settings.penalty == "proximal":
        updated = _shrink(updated, keep[rows], rate * state.betas[rows])
    updated = _project(updated, settings.eps, settings.norm)
    # Clip in pixel space: the adversarial image must be a valid image.
    low, high = settings.bounds
    clean = state.clean[rows]
    state.perturbation[rows] = (clean + updated).clamp(low, high) - clean
    state.taken[rows] += 1
    if settings.beta_patience is not None:
        # Images still short of their target after every ``beta_patience`` steps halve
        # their penalty: the attack tends to plain PGD, which gets there.
        halve = state.taken[rows] % settings.beta_patience == 0
        state.betas[rows[halve]] *= 0.5
    return rows


def _result(state: _AttackState, targets, to_input, x: torch.Tensor, names) -> AttackResult:
    """The ``AttackResult``, its tensors on ``x``'s device (``to_input``: None when ``x``
    was pixels already)."""
    source = x.device
    with torch.no_grad():
        pixels = state.clean + state.perturbation
        adversarial = (to_input(pixels) if to_input is not None else pixels).to(x.dtype)
        confidence = state.final_logits.softmax(1).gather(1, targets[:, None])[:, 0]
        flat = state.perturbation.flatten(1)
    return AttackResult(
        adversarial=adversarial.to(source),
        pixels=pixels.to(source),
        perturbation=state.perturbation.to(source),
        targets=targets.tolist(),
        original=state.clean_logits.argmax(1).tolist(),
        reached=(state.final_logits.argmax(1) == targets).tolist(),
        confidence=confidence.to(source),
        l2=flat.norm(dim=1).to(source),
        linf=flat.abs().amax(dim=1).to(source),
        steps=state.taken.tolist(),
        class_names=names,
    )


def _descend(
    delta: torch.Tensor, gradient: torch.Tensor, size: float, norm: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """One descent step on (n, 3, H, W) perturbations.

    Returns the moved perturbations and, per image, the step's length per unit of
    gradient (the proximal map's scale): ``size / ||gradient||`` for L2 steps along the
    normalised gradient, ``size`` for sign steps.
    """
    if norm == "linf":
        return delta - size * gradient.sign(), torch.full_like(delta[:, 0, 0, 0], size)
    length = gradient.flatten(1).norm(dim=1).clamp_min(_NORM_FLOOR)
    rate = size / length
    return delta - rate[:, None, None, None] * gradient, rate


def _project(delta: torch.Tensor, eps: float | None, norm: str) -> torch.Tensor:
    """Project (n, 3, H, W) perturbations onto the eps ball of the norm (None: no bound)."""
    if eps is None:
        return delta
    if norm == "linf":
        return delta.clamp(-eps, eps)
    l2 = delta.flatten(1).norm(dim=1).clamp_min(_NORM_FLOOR)[:, None, None, None]
    return delta * (eps / l2).clamp(max=1.0)


def _shrink(delta: torch.Tensor, keep: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """The penalty's proximal map: ``delta * max(0, 1 - t * w / ||w * delta||_2)`` per image.

    delta: (n, 3, H, W); keep: (n, 1, H, W) weights w = 1 - Psi; threshold: (n,) t = step
    length x beta. Where w is 0 or 1 this is exactly the proximal map of
    ``t * ||w * delta||_2`` (group soft-thresholding of the part outside the salient
    region: it becomes zero when its norm is below t, else shrinks by t); in between,
    each value shrinks in proportion to its weight.
    """
    outside = (delta * keep).flatten(1).norm(dim=1).clamp_min(_NORM_FLOOR)
    factor = 1.0 - threshold[:, None, None, None] * keep / outside[:, None, None, None]
    return delta * factor.clamp_min(0.0)


def _check_saliency(
    saliency: torch.Tensor | None, shape: torch.Size, device: torch.device
) -> torch.Tensor | None:
    """(B, 1, H, W) weights ``1 - Psi`` of the penalty, or None for plain PGD."""
    if saliency is None:
        return None
    if hasattr(saliency, "maps"):  # an Explanation
        saliency = saliency.maps
    if not isinstance(saliency, torch.Tensor):
        raise TypeError(f"saliency must be a tensor, not {type(saliency).__name__}")
    batch, _, height, width = shape
    if saliency.dim() == 2:
        saliency = saliency[None].expand(batch, -1, -1)
    if tuple(saliency.shape) != (batch, height, width):
        raise ValueError(
            f"saliency has shape {tuple(saliency.shape)}; expected ({batch}, {height}, {width}) "
            "like the input"
        )
    saliency = saliency.detach().to(device, torch.float32)
    if not torch.isfinite(saliency).all() or saliency.min() < 0 or saliency.max() > 1:
        raise ValueError("saliency must be finite and in [0, 1]")
    return (1.0 - saliency)[:, None]


def _resolve_targets(
    target, logits: torch.Tensor, names: list[str] | None, num_classes: int
) -> torch.Tensor:
    """(B,) class indices: the least-likely class when None, else the given class(es)."""
    if target is None:
        return logits.argmin(1)
    indices = class_indices(target, logits.shape[0], names, num_classes)
    return indices.to(logits.device)


# --------------------------------------------------------------------------------------
# Plain against focused, per image and in sum (what ``cameras attack`` reports)
# --------------------------------------------------------------------------------------

PAPER_REDUCTION = 56.5  # % smaller perturbation norm, ResNet-50 on ImageNet val, beta = 50


def plain_and_focused(
    model: nn.Module,
    x: torch.Tensor,
    saliency: torch.Tensor | None,
    beta: float = DEFAULT_BETA,
    **options,
) -> AttackResult:
    """Plain PGD and, with a map, saliency-focused PGD on one image, in one batch.

    x: (1, 3, H, W) or (3, H, W); saliency: (H, W) map in [0, 1] or None (plain only).
    With a map, row 0 is plain PGD (Psi = 1 everywhere makes the penalty exactly 0) and
    row 1 the focused attack, so both get identical settings and one pass per step.
    options: the other arguments of ``pgd`` (target, steps, step_size, eps, norm, prep...).
    """
    x = check_batch(x)
    if saliency is None:
        return pgd(model, x, saliency=None, beta=0.0, **options)
    maps = torch.stack([torch.ones_like(saliency), saliency])
    return pgd(model, x.expand(2, -1, -1, -1), saliency=maps, beta=beta, **options)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8, rounded to the nearest level."""
    return (pixels.clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()


def reaches_when_saved(model: nn.Module, prep: PixelTransform, image: np.ndarray, target: int):
    """Whether an (H, W, 3) uint8 adversarial image, as written to a PNG, still has
    ``target`` as its top-1 class."""
    pixels = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255.0
    with eval_mode(model), torch.no_grad():
        logits = logits_of(model(model_input(prep.normalise(pixels), model)))
    return int(logits.argmax(1)[0]) == target


def outcome(result: AttackResult, i: int) -> dict:
    """Row ``i`` of a result as plain numbers: reached, confidence, l2, linf, steps."""
    return {
        "reached": bool(result.reached[i]),
        "confidence": round(float(result.confidence[i]), 6),
        "l2": round(float(result.l2[i]), 6),
        "linf": round(float(result.linf[i]), 6),
        "steps": int(result.steps[i]),
    }


def norm_reduction(focused: float, plain: float) -> float | None:
    """How much smaller the focused norm is, in % of the plain one (None if plain is 0)."""
    return None if plain == 0 else round(100.0 * (1.0 - focused / plain), 3)


def compare_outcomes(result: AttackResult) -> dict:
    """The focused row's outcome (row 1, or row 0 when plain only); with a focused row,
    also the plain one under ``"plain"`` and the norm reductions in %."""
    if len(result.reached) == 1:
        return outcome(result, 0)
    focused, plain = outcome(result, 1), outcome(result, 0)
    return {
        **focused,
        "plain": plain,
        "l2_reduction_percent": norm_reduction(focused["l2"], plain["l2"]),
        "linf_reduction_percent": norm_reduction(focused["linf"], plain["linf"]),
    }


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return round(float(np.mean(kept)), 3) if kept else None


def summarise_attacks(rows: Sequence[dict], method: str | None, settings: dict) -> dict:
    """Fooling rates and mean norms of both attacks over images; the norm reductions
    averaged per image. rows: one ``compare_outcomes`` dict per image."""
    summary: dict = {"images": len(rows), "settings": dict(settings)}
    if not rows:
        return summary
    attacks = {"plain": [r.get("plain", r) for r in rows]}
    if method is not None:
        attacks[method] = list(rows)
    for key, records in attacks.items():
        summary[key] = {
            "fooling_rate_percent": round(100.0 * np.mean([r["reached"] for r in records]), 3),
            "mean_l2": _mean([r["l2"] for r in records]),
            "mean_linf": _mean([r["linf"] for r in records]),
        }
    if method is not None:
        summary["l2_reduction_percent"] = _mean([r["l2_reduction_percent"] for r in rows])
        summary["linf_reduction_percent"] = _mean([r["linf_reduction_percent"] for r in rows])
    return summary
