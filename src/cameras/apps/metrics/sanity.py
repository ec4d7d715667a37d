"""Model-parameter randomisation test (Adebayo et al., "Sanity Checks for Saliency Maps",
NeurIPS 2018).

A map that explains the model must change when the model's weights are destroyed. The
weights are randomised block by block from the logits down, on a deep copy of the model
(the caller's model is never touched), and each method's map after every step is
compared with its map on the trained model:

- ``cascading``: step k randomises blocks 1 .. k together (the paper's main test);
- ``independent``: step k randomises block k alone, the others stay trained.

Blocks are found generically (``randomisation_steps``): the model's top-level children
that hold parameters, in the order the forward pass runs them; a normalisation layer
joins the block before it (``conv_head`` + ``bn2``), and a top-level container whose
children are themselves containers (timm EfficientNet's ``blocks``, torchvision
EfficientNet's ``features``) is split into those children. For the default timm
EfficientNet-Lite0 this gives, from the logits down: classifier, conv_head+bn2,
blocks.6, ..., blocks.0, conv_stem+bn1. For a ResNet: fc, layer4, ..., layer1, conv1+bn1.

Randomising a parameter replaces its values by draws from a normal distribution with
that tensor's own mean and standard deviation: the activations keep their usual scale
(a fresh default initialisation can blow up or vanish through the untouched layers
below) while every learnt pattern is gone. Buffers (BatchNorm statistics) are kept.

Similarity to the original map, per step and method (all maps in [0, 1]):
- Spearman rank correlation of the pixel values, and of their absolute values (the
  paper's two variants; for non-negative maps, as every CAM-style map here, they agree);
- SSIM (``skimage.metrics.structural_similarity``, data range 1);
- HOG similarity: Pearson correlation of the two maps' HOG descriptors
  (``skimage.feature.hog``, 9 orientations, 8 x 8 cells, 3 x 3 blocks).
A constant map has no rank order or gradients: its Spearman and HOG similarity are 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

# The model side of the test (finding blocks, randomising copies) is the backend's; the
# PyTorch one's functions stay importable from here.
from ...backends import backend_for
from ...backends.torch import (
    RANDOMISATION_MODES,
    Step,
    randomisation_steps,
    randomise_,
    randomised_models,
)
from ...core.capture import autograd_enabled

MODES = RANDOMISATION_MODES
SIMILARITIES = ("spearman", "spearman_abs", "ssim", "hog")


def _constant(values: np.ndarray) -> bool:
    return values.size == 0 or float(values.max()) == float(values.min())


def spearman(a: np.ndarray, b: np.ndarray, absolute: bool = False) -> float:
    """Spearman rank correlation of two maps' pixel values (0 if either is constant)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if absolute:
        a, b = np.abs(a), np.abs(b)
    if _constant(a) or _constant(b):
        return 0.0
    return float(spearmanr(a, b).statistic)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two (H, W) maps in [0, 1]."""
    from skimage.metrics import structural_similarity

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    side = min(7, *(2 * ((s - 1) // 2) + 1 for s in a.shape))  # odd window that fits
    if side < 3:
        raise ValueError(f"maps of shape {a.shape} are too small for SSIM")
    return float(structural_similarity(a, b, data_range=1.0, win_size=side))


def hog_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of the HOG descriptors of two (H, W) maps (0 if one is flat)."""
    from skimage.feature import hog

    def describe(values: np.ndarray) -> np.ndarray:
        return hog(
            np.asarray(values, np.float64),
            orientations=9,
            pixels_per_cell=(8, 8),
            cells_per_block=(3, 3),
            feature_vector=True,
        )

    da, db = describe(a), describe(b)
    if _constant(da) or _constant(db):
        return 0.0
    return float(np.corrcoef(da, db)[0, 1])


def similarities(original: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """All four similarities of ``other`` to ``original`` ((H, W) maps in [0, 1])."""
    return {
        "spearman": spearman(original, other),
        "spearman_abs": spearman(original, other, absolute=True),
        "ssim": ssim(original, other),
        "hog": hog_similarity(original, other),
    }


@dataclass
class SanityResult:
    """Maps and similarities of one randomisation run.

    labels: ["original", step 1 label, ...]; maps[method]: (S + 1, B, H, W) float32 in
    [0, 1] (index 0 the trained model's); rows: one dict per (image, method, step >= 1)
    with keys image, method, step, label and the four similarities.
    """

    mode: str
    labels: list[str]
    maps: dict[str, np.ndarray]
    rows: list[dict]
    targets: list[int]


MethodFactory = Callable[[nn.Module], Callable[..., object]]


@autograd_enabled()
def sanity_check(
    model: nn.Module,
    x,
    methods: dict[str, MethodFactory],
    targets: Sequence[int] | None = None,
    mode: str = "cascading",
    steps: Sequence[Step] | None = None,
    seed: int = 0,
    progress: Callable[[], None] | None = None,
    backend=None,
) -> SanityResult:
    """Run the randomisation test on one batch of same-size images.

    x: (B, 3, H, W) model input. methods: name -> factory ``model -> method`` (a method
    is called as ``method(x, targets=...)`` and returns an object with ``.maps`` (B, H, W)
    and ``.targets``). targets: the classes explained, fixed for every step; None uses
    the trained model's top-1 classes. steps: default ``randomisation_steps(model)``.
    progress: called once per (step, method) evaluation. Works inside
    ``torch.no_grad()`` and ``torch.inference_mode()``: the randomised copies are made
    outside inference mode, so the methods can take gradients through them.
    backend: the model's (``cameras.backends``; None: picked from its type), which finds
    the blocks and makes the randomised copies.
    """
    if not methods:
        raise ValueError("sanity_check needs at least one method")
    backend = backend if backend is not None else backend_for(model)
    steps = list(steps) if steps is not None else backend.randomisation_steps()
    maps: dict[str, list[np.ndarray]] = {}
    chosen = list(targets) if targets is not None else None
    for name, factory in methods.items():
        result = factory(model)(x, targets=chosen)
        if chosen is None:
            chosen = list(result.targets)
        maps[name] = [_numpy(result.maps)]
        if progress:
            progress()
    rows: list[dict] = []
    for k, step, randomised in backend.randomised_models(steps, mode, seed):
        for name, factory in methods.items():
            result = factory(randomised)(x, targets=chosen)
            current = _numpy(result.maps)
            maps[name].append(current)
            for b in range(current.shape[0]):
                rows.append(
                    {"image": b, "method": name, "step": k, "label": step.label}
                    | similarities(maps[name][0][b], current[b])
                )
            if progress:
                progress()
    return SanityResult(
        mode=mode,
        labels=["original"] + [s.label for s in steps],
        maps={name: np.stack(stack) for name, stack in maps.items()},
        rows=rows,
        targets=[int(t) for t in chosen],
    )


def _numpy(maps) -> np.ndarray:
    """(B, H, W) maps (torch, or NumPy from a Keras model's array input) as float32 NumPy."""
    if hasattr(maps, "detach"):
        maps = maps.detach().float().cpu().numpy()
    return np.asarray(maps, dtype=np.float32)


__all__ = [
    "MODES",
    "SIMILARITIES",
    "SanityResult",
    "Step",
    "mean_similarities",
    "randomisation_steps",
    "randomise_",
    "randomised_models",
    "sanity_check",
    "similarities",
    "similarity_markdown",
]


# --------------------------------------------------------------------------------------
# Averages over images
# --------------------------------------------------------------------------------------


def mean_similarities(
    rows: Sequence[dict], methods: Sequence[str], steps: int
) -> dict[str, dict[str, list[float]]]:
    """measure -> method -> the mean over images of each step's similarity (steps 1..S).

    rows: ``SanityResult.rows`` of one or more images (keys method, step and each of
    ``SIMILARITIES``).
    """
    out: dict[str, dict[str, list[float]]] = {}
    for measure in SIMILARITIES:
        out[measure] = {}
        for method in methods:
            out[measure][method] = [
                float(
                    np.mean([r[measure] for r in rows if r["method"] == method and r["step"] == k])
                )
                for k in range(1, steps + 1)
            ]
    return out


def similarity_markdown(
    means: dict[str, dict[str, list[float]]], labels: Sequence[str], mode: str, images: int
) -> str:
    """Markdown: one table per measure, a row per step, a column per method."""
    parts = [
        f"Similarity to the trained model's map ({mode} randomisation, mean over "
        f"{images} image{'s' if images != 1 else ''}; 1 = unchanged, 0 = unrelated):"
    ]
    for measure, per_method in means.items():
        methods = list(per_method)
        parts.append("")
        parts.append(f"| {measure} | " + " | ".join(methods) + " |")
        parts.append("|---|" + "---|" * len(methods))
        for k, label in enumerate(labels):
            cells = " | ".join(f"{per_method[m][k]:.3f}" for m in methods)
            parts.append(f"| {k + 1}. {label} | {cells} |")
    return "\n".join(parts)
