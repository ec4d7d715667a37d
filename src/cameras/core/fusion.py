"""Multi-scale accumulation (docs/method.md, steps 3 and 4; algebra in section 4), exact
and memory-bounded.

The plain recipe upsamples every channel of every scale to full resolution: for
ResNet-50 that is a 2048 x H x W tensor (411 MB at 224 x 224) per scale, twice, and
then multiplies them. Here the same numbers come from small matrix products.

Bilinear resizing is separable: ``up(A) = R @ A @ L.T`` with R (H x h) and L (W x w)
interpolation matrices. Stack every scale's R side by side into ``R = [R_1 ... R_T]``
(H x S, S the sum of the layer's heights over scales, ~160 for ResNet-50) and let
``X_c = stack_t(A_tc @ L_t.T)`` (S x W), likewise ``Y_c`` for the gradients. Then

    map[i, j] = sum_c A_bar_c[i, j] * G_bar_c[i, j]
              = sum_{a, b} R[i, a] * R[i, b] * Z[j, a, b],   Z[j] = sum_c X_c[:, j] Y_c[:, j]^T

so channels are summed out early, in one batched product per chunk of channels
(W x S x S), and nothing of size C x H x W ever exists. This does about half the
arithmetic of upsampling channel chunks and multiplying them, and much less memory.
"""

from __future__ import annotations

import functools
import itertools

import torch
import torch.nn.functional as F

# Bytes allowed for each working tensor: Z (columns x S x S), a chunk of column-resized
# activations and gradients (columns x S x 2k). Small on the CPU, larger on a GPU.
_CHUNK_BYTES = {"cpu": 32 * 2**20, "cuda": 256 * 2**20}


@functools.lru_cache(maxsize=256)
def _interpolation_matrix_cpu(n_in: int, n_out: int) -> torch.Tensor:
    # Resizing an identity matrix gives exactly the weights PyTorch's own bilinear
    # kernel uses (align_corners=False); the other axis keeps its size, hence weight 1.
    eye = torch.eye(n_in)[None, None]
    return F.interpolate(eye, size=(n_out, n_in), mode="bilinear", align_corners=False)[0, 0]


@functools.lru_cache(maxsize=256)
def _covering_matrix_cpu(n_in: int, n_out: int, covered: float) -> torch.Tensor:
    # The grid spans ``covered * n_out`` output pixels: bilinear (align_corners=False) onto
    # that extent, then the first n_out pixels. Source position of output pixel i, in grid
    # cells: (i + 0.5) * ratio - 0.5, clamped to the grid's first and last cell.
    ratio = n_in / (covered * n_out)
    source = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * ratio - 0.5).clamp(0, n_in - 1)
    low = source.floor().long()
    high = (low + 1).clamp(max=n_in - 1)
    weight_high = source - low
    matrix = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    matrix.index_put_((rows, low), 1 - weight_high, accumulate=True)
    matrix.index_put_((rows, high), weight_high, accumulate=True)
    return matrix.float()


def interpolation_matrix(
    n_in: int, n_out: int, device: torch.device, covered: float | None = None
) -> torch.Tensor:
    """(n_out, n_in) matrix M with ``M @ v`` = 1-D bilinear resize of v (align_corners=False).

    covered: the part of the output that the n_in cells span (a token grid padded to whole
    patches spans more than the input, > 1; one that drops a remainder spans less, < 1).
    The grid is resized to that extent and cut to n_out pixels; pixels past the grid's
    last cell take its value. None (or 1) is the plain resize.
    """
    if covered is None or covered == 1:
        return _interpolation_matrix_cpu(n_in, n_out).to(device)
    return _covering_matrix_cpu(n_in, n_out, float(covered)).to(device)


def resize_grid(
    maps: torch.Tensor, size: tuple[int, int], covered: tuple[float, float] | None = None
) -> torch.Tensor:
    """Bilinear resize of (B, h, w) maps to ``size`` (H, W); ``covered`` as for
    ``interpolation_matrix``, per axis (None: the grid spans the output exactly)."""
    if covered is None:
        return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    rows = interpolation_matrix(maps.shape[1], size[0], maps.device, covered[0])
    cols = interpolation_matrix(maps.shape[2], size[1], maps.device, covered[1])
    return rows @ maps.to(rows.dtype) @ cols.T


def fuse_scales(
    activations: list[torch.Tensor],
    gradients: list[torch.Tensor],
    weights: torch.Tensor,
    size: tuple[int, int],
    covered: list[tuple[float, float] | None] | None = None,
) -> torch.Tensor:
    """``ReLU(sum_c A_bar * G_bar)`` at ``size``, with weighted means over scales.

    activations, gradients: one (B, C, h_t, w_t) tensor per scale t (sizes may differ).
    weights: (B, T), the weight of scale t for image b (1 / n_kept, or 0 if dropped).
    covered: per scale, the fraction of the input's height and width that the grid spans
        (token grids padded to whole patches, see ``interpolation_matrix``); None entries,
        or None for all, mean the grid spans the input exactly.
    Returns (B, H, W) float32, not normalised.
    """
    height, width = size
    covered = list(covered) if covered is not None else [None] * len(activations)
    if width < height:
        # The work grows with W * S^2: sum over the shorter side's source rows.
        swapped = [a.transpose(2, 3) for a in activations], [g.transpose(2, 3) for g in gradients]
        flipped = [c[::-1] if c is not None else None for c in covered]
        return fuse_scales(*swapped, weights, (width, height), flipped).transpose(1, 2)
    batch, channels = activations[0].shape[:2]
    device = activations[0].device
    row_cover = [c[0] if c is not None else None for c in covered]
    col_cover = [c[1] if c is not None else None for c in covered]
    rows = torch.cat(
        [
            interpolation_matrix(a.shape[2], height, device, c)
            for a, c in zip(activations, row_cover, strict=True)
        ],
        1,
    )
    cols = [
        interpolation_matrix(a.shape[3], width, device, c)
        for a, c in zip(activations, col_cover, strict=True)
    ]
    stacked_rows = rows.shape[1]
    budget = _CHUNK_BYTES.get(device.type, _CHUNK_BYTES["cuda"]) // 4  # in floats
    # Z grows with W * S^2, so large maps are done a block of columns at a time (no work
    # is repeated: each block needs only its own columns of the column step).
    block = max(1, min(width, budget // (stacked_rows * max(stacked_rows, height))))
    chunk = max(1, min(channels, budget // (2 * block * stacked_rows)))
    maps = torch.empty(batch, height, width, device=device)
    for b, first in itertools.product(range(batch), range(0, width, block)):
        last = min(first + block, width)
        pair_sums = torch.zeros(last - first, stacked_rows, stacked_rows, device=device)  # Z
        for start in range(0, channels, chunk):
            k = min(start + chunk, channels) - start
            # Column step per scale, laid out (columns, h_t, 2k): channels innermost.
            resized = []
            for t, (a, g, col) in enumerate(zip(activations, gradients, cols, strict=True)):
                h, w = a.shape[2:]
                both = torch.cat([a[b, start : start + k], g[b, start : start + k]])
                flat = both.permute(2, 1, 0).reshape(w, h * 2 * k)
                resized.append(
                    (col[first:last] @ flat).view(last - first, h, 2 * k) * weights[b, t]
                )
            stacked = torch.cat(resized, 1)  # (columns, S, 2k)
            pair_sums.baddbmm_(stacked[:, :, :k], stacked[:, :, k:].transpose(1, 2))
        # map[i, j] = sum_{a,b} R[i,a] Z[j,a,b] R[i,b]
        maps[b, :, first:last] = (torch.matmul(rows, pair_sums) * rows).sum(-1).T
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
