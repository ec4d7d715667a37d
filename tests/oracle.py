"""A plain, slow implementation of docs/method.md: the reference the fast code must match.

One image at a time, a full backward pass through the whole network, every channel
upsampled to full resolution. Written from docs/method.md, sharing no code with src/.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def oracle_resize(image: torch.Tensor, scale: int) -> torch.Tensor:
    """docs/method.md step 1: bicubic, shorter side = scale, each side rounded to nearest."""
    height, width = image.shape[-2:]
    shorter = min(height, width)
    if scale == shorter:
        return image
    new_h = math.floor(height * scale / shorter + 0.5)
    new_w = math.floor(width * scale / shorter + 0.5)
    return F.interpolate(image, size=(new_h, new_w), mode="bicubic", align_corners=False)


def forward_recording(model, layer, scaled):
    """The model's output for ``scaled`` and ``{"a": the layer's output}`` (with its graph:
    gradients are taken with respect to it)."""
    store = {}

    def hook(_module, _inputs, output):
        store["a"] = output
        return output.clone()  # keep the recorded tensor safe from in-place ops

    handle = layer.register_forward_hook(hook)
    try:
        return model(scaled), store
    finally:
        handle.remove()


def oracle_cameras(model, layer, image, scales, target=None, rule=None):
    """CAMERAS map for one image (1, 3, H, W) -> ((H, W) map in [0, 1], target, kept scales).

    rule: "top1" keeps a scale whose own top-1 is the target (the paper's rule), "top5" one
    whose top 5 holds it, "all" every scale; None is the paper's: top1 without a target.
    """
    height, width = image.shape[-2:]
    if rule is None:
        rule = "top1" if target is None else "all"
    up_acts, up_grads, kept = [], [], []
    for scale in scales:
        scaled = oracle_resize(image, scale).detach().requires_grad_(True)
        logits, store = forward_recording(model, layer, scaled)
        logits = getattr(logits, "logits", logits)
        if target is None:
            target = int(logits[0].argmax())
        (grad,) = torch.autograd.grad(logits[0, target], store["a"])
        ranked = logits[0].argsort(descending=True).tolist()
        if rule == "top1" and ranked[0] != target:
            continue
        if rule == "top5" and target not in ranked[:5]:
            continue
        kept.append(scale)
        act = store["a"].detach()
        up_acts.append(
            F.interpolate(act, size=(height, width), mode="bilinear", align_corners=False)
        )
        up_grads.append(
            F.interpolate(grad, size=(height, width), mode="bilinear", align_corners=False)
        )
    mean_act = torch.stack(up_acts).mean(0)
    mean_grad = torch.stack(up_grads).mean(0)
    saliency = torch.relu((mean_act * mean_grad).sum(1))[0]
    low, high = saliency.min(), saliency.max()
    if high > low:
        saliency = (saliency - low) / (high - low)
    else:
        saliency = torch.zeros_like(saliency)
    return saliency, target, kept


def oracle_token_grid(output, prefix, grid_rule, scaled_size, patch):
    """SPEC "Token models": a layer's output at one scale -> (C, h, w) grid, (1, C, h, w).

    output: (1, N, C) tokens or (1, h, w, C) channel-last. grid_rule: "ceil" when the model
    pads the input to whole patches, "floor" when it drops the remainder.
    """
    if output.dim() == 4:
        return output.permute(0, 3, 1, 2)
    height, width = scaled_size
    round_ = math.ceil if grid_rule == "ceil" else math.floor
    rows, cols = round_(height / patch), round_(width / patch)
    patches = output[:, prefix:]
    assert patches.shape[1] == rows * cols
    return patches.reshape(1, rows, cols, output.shape[2]).permute(0, 3, 1, 2)


def oracle_upsample_tokens(grid, out_size, scaled_size, patch):
    """Token (i, j) covers pixels [i*p, (i+1)*p) of the scaled input: upsample the grid to the
    extent it covers at the output's resolution, then crop to the output (or, when the model
    dropped a remainder, hold the last token's value over the pixels no token covers)."""
    height, width = out_size
    rows, cols = grid.shape[2:]
    if rows * patch == scaled_size[0] and cols * patch == scaled_size[1]:
        return F.interpolate(grid, size=out_size, mode="bilinear", align_corners=False)
    factor = (patch * height / scaled_size[0], patch * width / scaled_size[1])
    up = F.interpolate(
        grid,
        scale_factor=factor,
        mode="bilinear",
        align_corners=False,
        recompute_scale_factor=False,
    )
    up = up[:, :, :height, :width]
    short_h, short_w = height - up.shape[2], width - up.shape[3]
    return F.pad(up, (0, short_w, 0, short_h), mode="replicate")


def oracle_token_cameras(
    model, layer, image, scales, patch, prefix=0, grid_rule="ceil", target=None, strict=None
):
    """CAMERAS for one image (1, 3, H, W) of a token model; the model must already accept
    every scale. -> ((H, W) map in [0, 1], target, kept scales)."""
    height, width = image.shape[-2:]
    if strict is None:
        strict = target is None
    up_acts, up_grads, kept = [], [], []
    for scale in scales:
        scaled = oracle_resize(image, scale).detach().requires_grad_(True)
        logits, store = forward_recording(model, layer, scaled)
        logits = getattr(logits, "logits", logits)
        if target is None:
            target = int(logits[0].argmax())
        (grad,) = torch.autograd.grad(logits[0, target], store["a"])
        if strict and int(logits[0].argmax()) != target:
            continue
        kept.append(scale)
        size = tuple(scaled.shape[-2:])
        act = oracle_token_grid(store["a"].detach(), prefix, grid_rule, size, patch)
        grad = oracle_token_grid(grad, prefix, grid_rule, size, patch)
        up_acts.append(oracle_upsample_tokens(act, (height, width), size, patch))
        up_grads.append(oracle_upsample_tokens(grad, (height, width), size, patch))
    saliency = torch.relu((torch.stack(up_acts).mean(0) * torch.stack(up_grads).mean(0)).sum(1))[0]
    low, high = saliency.min(), saliency.max()
    if high > low:
        return (saliency - low) / (high - low), target, kept
    return torch.zeros_like(saliency), target, kept


def oracle_target_cameras(model, layer, image, scales, score_of, single_scale_gradcam=False):
    """CAMERAS for one image (1, 3, H, W) and any target, written from the definitions.

    score_of(output, scaled_size, input_size) -> (score: 0-d tensor, present: bool) reads
    the model's output at one scale. A scale counts where the target is present.
    Returns ((H, W) map in [0, 1], kept scales, per-scale scores).
    With ``single_scale_gradcam`` the map is instead Grad-CAM at the input's own size:
    channels weighted by their mean gradient, summed, ReLU, bilinear upsampling.
    """
    height, width = image.shape[-2:]
    up_acts, up_grads, kept, scores = [], [], [], []
    for scale in scales:
        scaled = oracle_resize(image, scale).detach().requires_grad_(True)
        output, store = forward_recording(model, layer, scaled)
        score, present = score_of(output, tuple(scaled.shape[-2:]), (height, width))
        scores.append(float(score.detach()))
        if not present:
            continue
        (grad,) = torch.autograd.grad(score, store["a"])
        kept.append(scale)
        act = store["a"].detach()
        if single_scale_gradcam:
            low = torch.relu((grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True))
            up = F.interpolate(low, size=(height, width), mode="bilinear", align_corners=False)
            return _normalised(up[0, 0]), kept, scores
        up_acts.append(
            F.interpolate(act, size=(height, width), mode="bilinear", align_corners=False)
        )
        up_grads.append(
            F.interpolate(grad, size=(height, width), mode="bilinear", align_corners=False)
        )
    if not kept:
        return torch.zeros(height, width), kept, scores
    saliency = torch.relu((torch.stack(up_acts).mean(0) * torch.stack(up_grads).mean(0)).sum(1))[0]
    return _normalised(saliency), kept, scores


def _normalised(saliency):
    low, high = saliency.min(), saliency.max()
    return (saliency - low) / (high - low) if high > low else torch.zeros_like(saliency)
