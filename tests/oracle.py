"""A plain, slow implementation of the SPEC equations: the reference the fast code must match.

One image at a time, a full backward pass through the whole network, every channel
upsampled to full resolution. Written from SPEC.md, sharing no code with src/.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def oracle_resize(image: torch.Tensor, scale: int) -> torch.Tensor:
    """SPEC step 1: bicubic, shorter side = scale, each side rounded to the nearest pixel."""
    height, width = image.shape[-2:]
    shorter = min(height, width)
    if scale == shorter:
        return image
    new_h = math.floor(height * scale / shorter + 0.5)
    new_w = math.floor(width * scale / shorter + 0.5)
    return F.interpolate(image, size=(new_h, new_w), mode="bicubic", align_corners=False)


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
        store = {}

        def hook(_module, _inputs, output, store=store):
            store["a"] = output
            return output.clone()  # keep the recorded tensor safe from in-place ops

        handle = layer.register_forward_hook(hook)
        try:
            logits = model(scaled)
        finally:
            handle.remove()
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
