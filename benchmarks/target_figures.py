"""The figures of docs/targets.md: a region of a segmentation output, one box of a detector
(CAMERAS beside Grad-CAM), and a multi-label pair.

No pretrained segmentation or detection weights can be had offline, so the figures use
models built on the embedded, pretrained EfficientNet-Lite0: its linear classifier applied
at every pixel of the last feature map (a 1x1 convolution, as FCN turned classifiers into
segmenters) gives per-pixel class scores, and a detector that proposes one box per cell of
that map with the cell's best class and probability. Their maps are meaningful because the
weights are; the torchvision families themselves are proven against the reference on
random weights (tests/test_families.py).

    python benchmarks/target_figures.py --out docs
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from skimage import data
from torch import nn

import cameras
from cameras.apps.viz import Panel, comparison_figure
from cameras.targets import Box, Class, Classes, Region


class DenseLite(nn.Module):
    """Lite0 as a segmenter: per-pixel class scores, at the input's size."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.net = classifier

    def features(self, x):
        net = self.net
        return net.bn2(net.conv_head(net.blocks(net.bn1(net.conv_stem(x)))))

    def forward(self, x):
        weight = self.net.classifier.weight
        scores = torch.einsum("bchw,kc->bkhw", self.features(x), weight)
        scores = scores + self.net.classifier.bias[:, None, None]
        return {"out": F.interpolate(scores, size=x.shape[-2:], mode="bilinear")}


class GridDetector(DenseLite):
    """Lite0 as a detector: per cell of the stride-32 map a box centred on it, 40 % of the
    input wide and 50 % high (so the same box exists at every scale), labelled with the
    cell's best class and scored by its softmax probability."""

    def forward(self, x):
        net = self.net
        scores = F.conv2d(
            self.features(x), net.classifier.weight[:, :, None, None], net.classifier.bias
        )
        rows, cols = scores.shape[2:]
        step_y, step_x = x.shape[2] / rows, x.shape[3] / cols
        ys, xs = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
        centre_x, centre_y = (xs + 0.5) * step_x, (ys + 0.5) * step_y
        half_x, half_y = 0.2 * x.shape[3], 0.25 * x.shape[2]
        corners = [centre_x - half_x, centre_y - half_y, centre_x + half_x, centre_y + half_y]
        boxes = torch.stack(corners, -1).reshape(-1, 4).float()
        probabilities, labels = scores.softmax(1).flatten(2).max(1)
        return [
            {"boxes": boxes, "labels": labels[b], "scores": probabilities[b]}
            for b in range(x.shape[0])
        ]


def _input(prep, photo: Image.Image) -> torch.Tensor:
    return prep(photo)[None]


def _outline(photo: Image.Image, box, colour=(255, 255, 255)) -> Image.Image:
    framed = photo.copy()
    ImageDraw.Draw(framed).rectangle(box, outline=colour, width=3)
    return framed


def region_figure(lite, prep, names, out: Path) -> None:
    photo = Image.fromarray(data.chelsea())
    x = _input(prep, photo)
    height, width = x.shape[2:]
    # The cat's head, in the model input's pixels (the photo is resized to 224 high).
    box = (int(width * 0.42), int(height * 0.08), int(width * 0.85), int(height * 0.62))
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[box[1] : box[3], box[0] : box[2]] = True
    segmenter = DenseLite(lite).eval()
    cat = names.index("Egyptian cat")
    explainer = cameras.METHODS["cameras"](segmenter, layer="net.bn2")
    region = explainer(x, targets=Region(cat, mask))
    whole = explainer(x, targets=Region(cat, torch.ones(height, width, dtype=torch.bool)))
    kept = sum(r.kept for r in region.scales[0])
    scale = photo.height / height
    framed = _outline(photo, tuple(int(v * scale) for v in box))
    rows = [
        [
            Panel(whole.maps[0], "Region: Egyptian cat,\nwhole photo"),
            Panel(region.maps[0], f"Region: Egyptian cat,\nthe box ({kept} of 8 scales)"),
        ]
    ]
    comparison_figure(framed, rows, title="Segmentation: one class in one region").savefig(
        out / "targets_region.png"
    )


def box_figure(lite, prep, names, out: Path) -> None:
    photo = Image.fromarray(data.chelsea())
    x = _input(prep, photo)
    detector = GridDetector(lite).eval()
    with torch.no_grad():
        found = detector(x)[0]
    # The most confident detection of a cat class: the box to explain.
    cats = torch.tensor([names.index(n) for n in ("tabby", "tiger cat", "Egyptian cat")])
    is_cat = (found["labels"][:, None] == cats).any(1)
    best = int(torch.where(is_cat, found["scores"], torch.zeros_like(found["scores"])).argmax())
    box = [float(v) for v in found["boxes"][best]]
    label = int(found["labels"][best])
    target = Box(box, label)
    maps = []
    for name in ("cameras", "gradcam"):
        result = cameras.METHODS[name](detector, layer="net.bn2")(x, targets=target)
        kept = sum(r.kept for r in result.scales[0])
        maps.append((name, result.maps[0], kept, len(result.scales[0])))
    scale = photo.height / x.shape[2]
    framed = _outline(photo, tuple(int(v * scale) for v in box))
    rows = [
        [
            Panel(map_, f"{name}: box, {names[label]}\n({kept} of {count} scales matched)")
            for name, map_, kept, count in maps
        ]
    ]
    comparison_figure(framed, rows, title="Detection: the best cat detection's box").savefig(
        out / "targets_box.png"
    )


def multilabel_figure(lite, prep, names, out: Path) -> None:
    cat, cup = Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())
    cup = cup.resize((round(cup.width * cat.height / cup.height), cat.height))
    photo = Image.new("RGB", (cat.width + cup.width, cat.height))
    photo.paste(cat, (0, 0))
    photo.paste(cup, (cat.width, 0))
    x = _input(prep, photo)
    explainer = cameras.METHODS["cameras"](lite)
    labels = ["Egyptian cat", "espresso"]
    rows = [
        [
            Panel(explainer(x, targets=Class(labels[0])).maps[0], labels[0]),
            Panel(explainer(x, targets=Class(labels[1])).maps[0], labels[1]),
            Panel(explainer(x, targets=Classes(labels)).maps[0], "Classes: both"),
        ]
    ]
    comparison_figure(photo, rows, title="Multi-label: two classes and their set").savefig(
        out / "targets_classes.png"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    np.random.seed(0)
    lite, prep, names = cameras.load_model()
    region_figure(lite, prep, names, args.out)
    box_figure(lite, prep, names, args.out)
    multilabel_figure(lite, prep, names, args.out)
    print(f"wrote {args.out}/targets_region.png, targets_box.png, targets_classes.png")


if __name__ == "__main__":
    main()
