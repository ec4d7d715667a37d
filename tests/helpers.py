"""Small models and inputs shared by the core tests."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn


def photo_batch(names=("chelsea",), size=(64, 96)) -> torch.Tensor:
    """Real photos from scikit-image, resized to ``size`` and ImageNet-normalised: (B, 3, h, w)."""
    from skimage import data

    batch = []
    for name in names:
        pixels = torch.from_numpy(np.ascontiguousarray(getattr(data, name)())).float() / 255
        image = pixels.permute(2, 0, 1)[None]
        image = F.interpolate(image, size=size, mode="bilinear", antialias=True)
        batch.append((image - 0.45) / 0.225)
    return torch.cat(batch)


def seeded(arch: str, seed: int, num_classes: int = 10) -> nn.Module:
    """A torchvision architecture with seeded random weights, in eval mode."""
    torch.manual_seed(seed)
    return getattr(torchvision.models, arch)(num_classes=num_classes).eval()


class TinyNet(nn.Module):
    """A small CNN cheap enough to run the oracle at the paper's default scales."""

    def __init__(self, num_classes: int = 5, inplace: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
        )
        self.act = nn.ReLU(inplace=inplace)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.fc(self.pool(self.act(self.features(x))).flatten(1))


def hook_count(model: nn.Module) -> int:
    """Every forward, pre-forward and backward hook on every module of the model."""
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )


def model_state(model: nn.Module) -> dict:
    """Everything about a model that explaining it must not change."""
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [p.grad is None for p in model.parameters()],
        "tensors": {k: v.clone() for k, v in model.state_dict().items()},
        "hooks": hook_count(model),
        "attributes": [sorted(vars(m)) for m in model.modules()],
    }


def assert_left_as_found(model: nn.Module, before: dict) -> None:
    """The one "model left as found" check: flags, requires_grad, no gradient written,
    every parameter and buffer (BatchNorm statistics), no hook, no attribute added."""
    after = model_state(model)
    assert after["training"] == before["training"], "training flags changed"
    assert after["requires_grad"] == before["requires_grad"], "requires_grad changed"
    assert after["grads"] == before["grads"], "parameter gradients were written"
    assert after["tensors"].keys() == before["tensors"].keys()
    for key, value in before["tensors"].items():
        assert torch.equal(after["tensors"][key], value), f"{key} changed"
    assert after["hooks"] == before["hooks"], "a hook survived"
    assert after["attributes"] == before["attributes"], "a module attribute was added or removed"
    assert torch.is_grad_enabled(), "grad mode was not restored"


# The memory tests' bound on the largest process (README, "Reliability").
PEAK_LIMIT_BYTES = 3 * 2**30

# Python lines for a child script: print "PEAK_KB <n>", the largest resident set of this
# process image (VmHWM) and of the children it has waited for. Not getrusage's
# RUSAGE_SELF: that keeps, across exec, the peak of the process it was forked from
# (pytest, GBs in a full run).
PRINT_PEAK = """
import resource
with open("/proc/self/status") as status:
    own = max(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print("PEAK_KB", max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
"""


def _features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
    )


class TinySegmenter(nn.Module):
    """Per-pixel class scores at the input's size, as torchvision returns them."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.features = _features()
        self.act = nn.ReLU()
        self.head = nn.Conv2d(16, classes, 1)

    def forward(self, x):
        low = self.head(self.act(self.features(x)))
        return {"out": F.interpolate(low, size=x.shape[-2:], mode="bilinear", align_corners=False)}


class TinyDetector(nn.Module):
    """One detection per cell of the stride-4 grid: the cell's 2x2-cell box in this input's
    pixels, its best label and that label's sigmoid score (no threshold, no NMS)."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.features = _features()
        self.act = nn.ReLU()
        self.head = nn.Conv2d(16, classes, 1)

    def forward(self, x):
        logits = self.head(self.act(self.features(x)))
        rows, cols = logits.shape[2:]
        step_y, step_x = x.shape[2] / rows, x.shape[3] / cols
        ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        corners = [xs * step_x, ys * step_y, (xs + 2) * step_x, (ys + 2) * step_y]
        boxes = torch.stack(corners, -1).reshape(-1, 4).float()
        scores, labels = torch.sigmoid(logits).flatten(2).max(1)
        return [{"boxes": boxes, "labels": labels[b], "scores": scores[b]} for b in range(len(x))]
