"""Multi-scale accumulation (SPEC steps 3 and 4), exact and memory-bounded.

The plain recipe upsamples every channel of every scale to full resolution: for
ResNet-50 that is a 2048 x H x W tensor (411 MB at 224 x 224) per scale, twice.
Here the same numbers come from small matrix products instead. Bilinear resizing
is separable, ``up(A) = R @ A @ L.T``, with R (H x h) and L (W x w) interpolation
matrices, so the mean over scales of a chunk of channels is

    A_bar = [R_1 ... R_T] @ stack_t(A_t @ L_t.T) / n

one batched matrix product whose inner size is the sum of the layer's heights over
scales (~160 for ResNet-50). Only a chunk of channels is ever at full resolution, so
memory stays bounded whatever the channel count.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

# Bytes allowed for the chunk of full-resolution maps (activations and gradients
# together). Small on the CPU to stay in cache; larger on a GPU to fill it.
_CHUNK_BYTES = {"cpu": 16 * 2**20, "cuda": 512 * 2**20}


@functools.lru_cache(maxsize=256)
def _interpolation_matrix_cpu(n_in: int, n_out: int) -> torch.Tensor:
    # Resizing an identity matrix gives exactly the weights PyTorch's own bilinear
    # kernel uses (align_corners=False); the other axis keeps its size, hence weight 1.
    eye = torch.eye(n_in)[None, None]
    return F.interpolate(eye, size=(n_out, n_in), mode="bilinear", align_corners=False)[0, 0]


def interpolation_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """(n_out, n_in) matrix M with ``M @ v`` = 1-D bilinear resize of v (align_corners=False)."""
    return _interpolation_matrix_cpu(n_in, n_out).to(device)


def fuse_scales(
    activations: list[torch.Tensor],
    gradients: list[torch.Tensor],
    weights: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """``ReLU(sum_c A_bar * G_bar)`` at ``size``, with weighted means over scales.

    activations, gradients: one (B, C, h_t, w_t) tensor per scale t (sizes may differ).
    weights: (B, T), the weight of scale t for image b (1 / n_kept, or 0 if dropped).
    Returns (B, H, W) float32, not normalised.
    """
    height, width = size
    batch, channels = activations[0].shape[:2]
    device = activations[0].device
    rows = torch.cat([interpolation_matrix(a.shape[2], height, device) for a in activations], 1)
    cols_t = [interpolation_matrix(a.shape[3], width, device).T for a in activations]
    budget = _CHUNK_BYTES.get(device.type, _CHUNK_BYTES["cuda"])
    chunk = max(1, min(channels, budget // (2 * height * width * 4)))
    maps = torch.zeros(batch, height, width, device=device)
    for b in range(batch):
        for start in range(0, channels, chunk):
            stop = min(start + chunk, channels)
            # Column step per scale: (2k, h_t, w_t) @ (w_t, W) -> (2k, h_t, W), weighted.
            per_scale = [
                torch.cat([a[b, start:stop], g[b, start:stop]]) @ cols * weights[b, t]
                for t, (a, g, cols) in enumerate(zip(activations, gradients, cols_t, strict=True))
            ]
            # Row step for all scales at once: (H, sum h_t) @ (2k, sum h_t, W) -> (2k, H, W).
            both = rows @ torch.cat(per_scale, 1)
            k = stop - start
            maps[b] += torch.einsum("chw,chw->hw", both[:k], both[k:])
    return maps.clamp_(min=0)


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each (H, W) map of a (B, H, W) batch to [0, 1].

    A constant map (all zero, say) becomes all zeros, never NaN.
    """
    flat = maps.flatten(1)
    low = flat.min(1, keepdim=True).values
    span = flat.max(1, keepdim=True).values - low
    safe_span = torch.where(span > 0, span, torch.ones_like(span))
    out = torch.where(span > 0, (flat - low) / safe_span, torch.zeros_like(flat))
    return out.view_as(maps)
