"""Principal-component maps: Eigen-CAM, EigenGrad-CAM and KPCA-CAM.

Each one projects a layer's (B, C, h, w) tensor, seen as h * w points in C dimensions,
on its first principal component (``smoothing.first_component``), as pytorch-grad-cam
does; the sign of a principal component is arbitrary and is fixed here so that the
projection's largest magnitude is positive (see ``smoothing``). pytorch-grad-cam's
Eigen-CAM and EigenGrad-CAM keep their SVD's sign, which may negate the map; its
KPCA-CAM (scikit-learn's KernelPCA) applies the same rule as ours.
"""

from __future__ import annotations

import torch

from ..core.precision import DEFAULT_PRECISION
from .smoothing import SmoothableCAM, first_component, signed_projection

KERNELS = ("sigmoid", "rbf", "linear", "poly", "cosine")


class EigenCAM(SmoothableCAM):
    """Eigen-CAM (Muhammad & Yeasin 2020): the activations' first principal component.

    No class enters the map: it is the same for every target (the scores and the class
    still come from the model, for the result's records).
    """

    name = "eigencam"
    eigen_smoothable = False

    def grid_map(self, capture, x, step, targets):
        return first_component(step.activations)


class EigenGradCAM(SmoothableCAM):
    """EigenGrad-CAM: the first principal component of gradients times activations."""

    name = "eigengradcam"
    eigen_smoothable = False

    def grid_map(self, capture, x, step, targets):
        return first_component(step.gradients * step.activations)


class KPCACAM(SmoothableCAM):
    """KPCA-CAM (Karmani et al. 2024): the activations' first kernel principal component.

    kernel: one of ``KERNELS`` (scikit-learn's names and formulas; ``"sigmoid"``, the
        default, is tanh(gamma <a, b> + 1)); gamma: None for 1 / channels.

    Solved exactly, in float64 (a dense eigen-decomposition of the h*w x h*w kernel).
    scikit-learn, which pytorch-grad-cam calls, works in the activations' float32 (maps
    that differ by about 2e-4 after normalisation) and switches to a randomized solver
    above 200 locations.
    """

    name = "kpcacam"
    eigen_smoothable = False

    def __init__(
        self,
        model,
        layer=None,
        class_names=None,
        reshape_transform=None,
        aug_smooth=False,
        kernel: str = "sigmoid",
        gamma: float | None = None,
        backend=None,
        precision: str = DEFAULT_PRECISION,
    ):
        super().__init__(
            model,
            layer,
            class_names,
            reshape_transform,
            aug_smooth,
            backend=backend,
            precision=precision,
        )
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, not {kernel!r}")
        self.kernel, self.gamma = kernel, gamma

    def grid_map(self, capture, x, step, targets):
        activations = step.activations
        batch, channels, height, width = activations.shape
        points = activations.nan_to_num(0).double().flatten(2).transpose(1, 2)
        points = points - points.mean(1, keepdim=True)
        matrix = centred(kernel_matrix(points, self.kernel, self.gamma or 1.0 / channels))
        values, vectors = torch.linalg.eigh(matrix)  # ascending
        top = values[:, -1].clamp(min=0)
        projection = signed_projection(vectors[:, :, -1]) * top.sqrt()[:, None]
        return projection.float().view(batch, height, width)


def kernel_matrix(points: torch.Tensor, kernel: str, gamma: float) -> torch.Tensor:
    """(B, n, n) kernel of (B, n, C) points, as scikit-learn's pairwise kernels (coef0 1,
    degree 3)."""
    inner = points @ points.transpose(1, 2)
    if kernel == "linear":
        return inner
    if kernel == "sigmoid":
        return torch.tanh(gamma * inner + 1)
    if kernel == "poly":
        return (gamma * inner + 1) ** 3
    if kernel == "rbf":
        return torch.exp(-gamma * torch.cdist(points, points).pow(2))
    norms = points.norm(dim=2).clamp(min=1e-300)
    return inner / (norms[:, :, None] * norms[:, None, :])


def centred(matrix: torch.Tensor) -> torch.Tensor:
    """A kernel matrix centred in feature space (scikit-learn's KernelCenterer)."""
    rows = matrix.mean(1, keepdim=True)
    cols = matrix.mean(2, keepdim=True)
    return matrix - rows - cols + matrix.mean((1, 2), keepdim=True)
