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

R[i, a] is non-zero for two source rows a per scale only, so a band of output rows
needs Z only over the source rows it touches: on the CPU the rows are cut into bands
(``_row_bands``), which cuts Z's products by more than half. Each image's scale weights
are folded into its R, and the batch into the products' batch: no loop over images.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .precision import full_precision

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
    return _matrix_cpu(n_in, n_out, covered).to(device)


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

    activations, gradients: one (B, C, h_t, w_t) tensor per scale t (sizes may differ;
        any memory layout, channels_last included).
    weights: (B, T), the weight of scale t for image b (1 / n_kept, or 0 if dropped).
    covered: per scale, the fraction of the input's height and width that the grid spans
        (token grids padded to whole patches, see ``interpolation_matrix``); None entries,
        or None for all, mean the grid spans the input exactly.
    Returns (B, H, W) float32, not normalised. Runs in float32 even inside an autocast
    block (a method's ``precision``): the products are sums over thousands of channels.
    """
    height, width = size
    covered = list(covered) if covered is not None else [None] * len(activations)
    if width < height:
        # The work grows with W * S^2: sum over the shorter side's source rows.
        swapped = [a.transpose(2, 3) for a in activations], [g.transpose(2, 3) for g in gradients]
        flipped = [c[::-1] if c is not None else None for c in covered]
        return fuse_scales(*swapped, weights, (width, height), flipped).transpose(1, 2)
    with full_precision(activations[0].device):
        return _fuse_wide(activations, gradients, weights.float(), height, width, covered)


def _fuse_wide(activations, gradients, weights, height, width, covered) -> torch.Tensor:
    """``fuse_scales`` for width >= height. The batch is folded into the matrix products'
    batch (no loop over images), each image's scale weights are folded into its row
    matrix (the big column-resized tensors are never rescaled), and on the CPU the output
    rows are cut into bands that each read only the source rows they touch (about half
    the arithmetic of one band of all rows; on a GPU one band keeps the launches few)."""
    batch, channels = activations[0].shape[:2]
    device = activations[0].device
    rows = [
        _matrix_cpu(a.shape[2], height, c[0] if c else None)
        for a, c in zip(activations, covered, strict=True)
    ]
    cols = [
        interpolation_matrix(a.shape[3], width, device, c[1] if c else None)
        for a, c in zip(activations, covered, strict=True)
    ]
    all_rows = torch.cat(rows, 1)  # (H, S) on the CPU
    stacked_rows = all_rows.shape[1]
    # Each stacked source row's scale, so that per image R_b[:, a] = R[:, a] * w[b, t(a)].
    scale_of_row = torch.cat([torch.full((r.shape[1],), t) for t, r in enumerate(rows)])
    weighted_rows = all_rows.to(device)[None] * weights[:, scale_of_row.to(device)][:, None]
    grids = tuple(
        (a.shape[2], c[0] if c else None) for a, c in zip(activations, covered, strict=True)
    )
    bands = [
        replace(band, index=band.index.to(device))
        for band in _row_bands(grids, height, device.type == "cpu")
    ]
    widest = max(band.count for band in bands)
    budget = _CHUNK_BYTES.get(device.type, _CHUNK_BYTES["cuda"]) // 4  # in floats
    # Per image and output column: every band's Z, and one band's final product.
    per_column = sum(band.count**2 for band in bands)
    per_column += max(band.count * (band.last - band.first) for band in bands)
    columns_fit = max(1, budget // per_column)
    # Images share a product only on a GPU (fewer launches); on the CPU that would only
    # shrink the chunk of channels, and with it the products' efficiency.
    images = max(1, min(batch, columns_fit // width)) if device.type != "cpu" else 1
    block = min(width, columns_fit)
    # A chunk's column step (S rows) and one band's gathered rows, 2k channels each.
    chunk = max(1, min(channels, budget // (2 * images * block * (stacked_rows + widest))))
    maps = torch.empty(batch, height, width, device=device)
    for first_image in range(0, batch, images):
        pictures = slice(first_image, min(first_image + images, batch))
        for first in range(0, width, block):
            columns = slice(first, min(first + block, width))
            maps[pictures, :, columns] = _fuse_block(
                activations, gradients, cols, weighted_rows, bands, pictures, columns, chunk
            )
    return maps.clamp_(min=0)


def _fuse_block(activations, gradients, cols, weighted_rows, bands, pictures, columns, chunk):
    """The maps (n, H, columns) of the images ``pictures`` over the output ``columns``."""
    n_images = pictures.stop - pictures.start
    n_columns = columns.stop - columns.start
    channels = activations[0].shape[1]
    device = activations[0].device
    # Z per band, laid out (columns x images, S_band, S_band): one batched product each.
    pair_sums = [
        torch.zeros(n_columns * n_images, band.count, band.count, device=device) for band in bands
    ]
    for start in range(0, channels, chunk):
        k = min(start + chunk, channels) - start
        # Column step per scale for every image at once, activations and gradients apart,
        # laid out (columns, images, h_t, k): channels innermost, so that a band's rows of
        # every scale, gathered, are contiguous matrices for bmm.
        resized = [
            [_resize_columns(t[pictures, start : start + k], col[columns]) for t in (a, g)]
            for a, g, col in zip(activations, gradients, cols, strict=True)
        ]
        for pair_sum, band in zip(pair_sums, bands, strict=True):
            x, y = (
                torch.cat(
                    [
                        r[side][:, :, low:high]
                        for r, (low, high) in zip(resized, band.ranges, strict=True)
                    ],
                    2,
                ).flatten(0, 1)
                for side in (0, 1)
            )
            pair_sum.baddbmm_(x, y.transpose(1, 2))
    maps = torch.empty(n_images, weighted_rows.shape[1], n_columns, device=device)
    for pair_sum, band in zip(pair_sums, bands, strict=True):
        rows = weighted_rows[pictures, band.first : band.last].index_select(2, band.index)
        pair_sum = pair_sum.view(n_columns, n_images, band.count, band.count)
        # map[b, i, j] = sum_{a,c} R_b[i,a] Z[j,b,a,c] R_b[i,c]
        product = (torch.matmul(rows, pair_sum) * rows).sum(-1)  # (columns, n, band rows)
        maps[:, band.first : band.last] = product.permute(1, 2, 0)
    return maps


def _resize_columns(grids: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """(n, k, h, w) grids resized along w by the (columns, w) matrix: (columns, n, h, k)."""
    n, k, h, w = grids.shape
    flat = grids.permute(3, 0, 2, 1).reshape(w, n * h * k)  # a copy of the small grids
    return (columns @ flat).view(columns.shape[0], n, h, k)


@dataclass(frozen=True)
class _Band:
    """Output rows ``first:last``, the source rows (low, high) of each scale they read,
    and those rows' places in the stacked row matrix (``index``)."""

    first: int
    last: int
    ranges: tuple[tuple[int, int], ...]
    index: torch.Tensor

    @property
    def count(self) -> int:
        return sum(high - low for low, high in self.ranges)


# Band heights tried on the CPU; the cheapest by ``S_band * (S_band + _COPY_COST)`` summed
# over bands is taken: Z's products, plus the copy that gathers a band's rows, which costs
# about as much per row as 64 rows of products (measured on the CPU, one thread: at
# 224 x 224 bands of 32-64 rows took ~0.75x the time of one band, bands of 8 ~1.5x).
_BAND_HEIGHTS = (8, 12, 16, 24, 32, 48, 64, 96)
_COPY_COST = 64


@functools.lru_cache(maxsize=256)
def _row_bands(
    grids: tuple[tuple[int, float | None], ...], height: int, split: bool
) -> tuple[_Band, ...]:
    """The ``height`` output rows cut into bands for the fusion (on the CPU; one band
    unless ``split``). grids: per scale, its rows h_t and the part of the output they
    cover (``interpolation_matrix``); a band reads the source rows with a weight in one of
    its rows.

    Z costs S_band^2 per column and channel: bands of ~40 rows read ~40 of S ~ 140 source
    rows (bilinear weights reach two rows per scale), under half the arithmetic of one
    band. On a GPU the arithmetic is cheap and every band is more kernel launches."""
    rows = [_matrix_cpu(n_in, height, covered) for n_in, covered in grids]
    whole = (_band(rows, 0, height),)
    if not split:
        return whole
    best, best_cost = whole, whole[0].count * (whole[0].count + _COPY_COST)
    for band_height in _BAND_HEIGHTS:
        if band_height >= height:
            break
        bands = tuple(
            _band(rows, first, min(first + band_height, height))
            for first in range(0, height, band_height)
        )
        cost = sum(band.count * (band.count + _COPY_COST) for band in bands)
        if cost < best_cost:
            best, best_cost = bands, cost
    return best


def _band(rows: list[torch.Tensor], first: int, last: int) -> _Band:
    """The band of output rows ``first:last``: per scale, the first and last source row
    with a weight there (bilinear weights touch a contiguous run of rows)."""
    ranges, index, offset = [], [], 0
    for matrix in rows:
        touched = (matrix[first:last] != 0).any(0).nonzero()[:, 0]
        low, high = (int(touched[0]), int(touched[-1]) + 1) if len(touched) else (0, 0)
        ranges.append((low, high))
        index.append(torch.arange(low, high) + offset)
        offset += matrix.shape[1]
    return _Band(first, last, tuple(ranges), torch.cat(index))


def _matrix_cpu(n_in: int, n_out: int, covered: float | None) -> torch.Tensor:
    """``interpolation_matrix`` on the CPU, from the cache."""
    if covered is None or covered == 1:
        return _interpolation_matrix_cpu(n_in, n_out)
    return _covering_matrix_cpu(n_in, n_out, float(covered))


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
