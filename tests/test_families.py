"""Segmentation and detection families (core/families.py, models/tasks.py): the layer each
gets automatically, detectors run at the size they are given, and loading them by name.

Layer choice and resizing are checked on the real torchvision architectures built on the
``meta`` device (shapes only: free to build and to run); what needs values runs on the
CPU with small models of the same classes (``family_models.py``) and small images.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import pytorch_grad_cam as pgc  # a dev dependency: a missing one fails, never skips
import torch
import torch.nn.functional as F
import torchvision
from family_models import DETECTORS, SEGMENTERS, tiny, tiny_segformer
from helpers import assert_left_as_found, model_state
from oracle import oracle_resize, oracle_target_cameras
from pytorch_grad_cam.utils.model_targets import (
    FasterRCNNBoxScoreTarget,
    SemanticSegmentationTarget,
)
from torch import nn

import cameras
from cameras.core.capture import resolve_layer
from cameras.core.classes import CLASS_NAMES_ATTRIBUTE
from cameras.core.families import (
    DETECTION,
    SEGFORMER,
    SEGMENTATION,
    model_family,
    native_size,
    task_layer,
)
from cameras.models import ModelError, load_model
from cameras.targets import Box, Region

# name -> (family, automatic layer, its output's (h, w) for a 90 x 130 input at native size)
EXPECTED = {
    # Dilated ResNet: layer4 is at stride 8 (no stride-32 map exists in these models).
    "fcn_resnet50": (SEGMENTATION, "backbone.layer4", (12, 17)),
    "deeplabv3_resnet50": (SEGMENTATION, "backbone.layer4", (12, 17)),
    # Dilated MobileNetV3: the last stage is at stride 16.
    "deeplabv3_mobilenet_v3_large": (SEGMENTATION, "backbone.16", (6, 9)),
    "lraspp_mobilenet_v3_large": (SEGMENTATION, "backbone.16", (6, 9)),
    # Detection backbones are not dilated: the body's last stage is at stride 32.
    "fasterrcnn_resnet50_fpn": (DETECTION, "backbone.body.layer4", (3, 5)),
    "fasterrcnn_mobilenet_v3_large_fpn": (DETECTION, "backbone.body.16", (3, 5)),
    "retinanet_resnet50_fpn": (DETECTION, "backbone.body.layer4", (3, 5)),
    "fcos_resnet50_fpn": (DETECTION, "backbone.body.layer4", (3, 5)),
    # SSD has no top-down path: its first detection level, which all others build on.
    "ssdlite320_mobilenet_v3_large": (DETECTION, "backbone.features.0", (6, 9)),
    "ssd300_vgg16": (DETECTION, "backbone.features", (11, 16)),  # VGG's floor, floor, ceil pools
}
NAMED_DETECTORS = [name for name, (family, _, _) in EXPECTED.items() if family == DETECTION]


@functools.cache
def meta_model(name: str) -> torch.nn.Module:
    """The torchvision architecture, parameters on the meta device (no memory, no values)."""
    with torch.device("meta"):
        return torchvision.models.get_model(name, weights=None, weights_backbone=None).eval()


class _Reached(Exception):
    """Raised by a hook to end a forward pass once the module of interest has run."""


def shape_at(model, module_name: str, x: torch.Tensor, what: str = "output") -> tuple:
    """The shape of a module's output (or first input) when ``model(x)`` runs; the pass
    stops there."""
    seen = {}

    def hook(_module, inputs, output):
        seen["shape"] = tuple((output if what == "output" else inputs[0]).shape)
        raise _Reached

    handle = model.get_submodule(module_name).register_forward_hook(hook)
    try:
        model(x)
    except _Reached:
        pass
    finally:
        handle.remove()
    return seen["shape"]


def first_convolution(model) -> str:
    return next(n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d))


@pytest.mark.parametrize("name", list(EXPECTED))
def test_the_automatic_layer_is_the_documented_one(name):
    family, layer, grid = EXPECTED[name]
    model = meta_model(name)
    assert model_family(model) == family
    assert task_layer(model) == layer
    assert resolve_layer(model, None)[0] == layer  # what every method uses with layer=None
    with native_size(model):
        shape = shape_at(model, layer, torch.empty(1, 3, 90, 130, device="meta"))
    assert len(shape) == 4 and shape[2:] == grid


def test_segformer_gets_its_last_stage_as_a_map():
    model = tiny_segformer()
    assert model_family(model) == SEGFORMER
    assert resolve_layer(model, None)[0] == "segformer.stages.3"
    shape = shape_at(model, "segformer.stages.3", torch.zeros(1, 3, 90, 130))
    assert shape == (1, 32, 3, 5)  # (B, C, h, w) at stride 32


def test_segformer_whose_last_stage_is_tokens_gets_a_map_layer():
    model = tiny_segformer(reshape_last_stage=False)
    x = torch.zeros(1, 3, 90, 130)
    assert shape_at(model, "segformer.stages.3", x) == (1, 15, 32)  # tokens: no grid
    layer = "segformer.stages.3.blocks.0.mlp.dwconv.dwconv"
    assert task_layer(model) == layer
    assert shape_at(model, layer, x) == (1, 128, 3, 5)  # the last Mix-FFN's map


@pytest.mark.parametrize(
    ("level", "grid"),
    [
        ("backbone.fpn.layer_blocks.0", (12, 17)),  # P3, stride 8
        ("backbone.fpn.layer_blocks.2", (3, 5)),  # P5, stride 32
        ("backbone.fpn.extra_blocks.p6", (2, 3)),  # P6, stride 64
    ],
)
def test_fpn_levels_can_be_named(level, grid):
    model = meta_model("retinanet_resnet50_fpn")
    assert resolve_layer(model, level)[0] == level
    with native_size(model):
        shape = shape_at(model, level, torch.empty(1, 3, 90, 130, device="meta"))
    assert shape == (1, 256, *grid)


def test_other_models_are_left_to_the_probe():
    with torch.device("meta"):
        model = torchvision.models.resnet18()
    before = {name: dict(vars(m)) for name, m in model.named_modules()}
    assert model_family(model) is None and task_layer(model) is None
    with native_size(model):
        assert {name: dict(vars(m)) for name, m in model.named_modules()} == before


@pytest.mark.parametrize("name", NAMED_DETECTORS)
def test_a_detector_sees_each_input_at_its_own_size(name):
    model = meta_model(name)
    first = first_convolution(model)
    for size in [(90, 130), (75, 61)]:  # neither a multiple of 32
        x = torch.empty(2, 3, *size, device="meta")
        # On its own the detector resizes (shorter side 800, or SSD's fixed 320 x 320).
        assert shape_at(model, first, x, "input")[2:] != size
        with native_size(model):
            assert shape_at(model, first, x, "input") == (2, 3, *size)


def test_a_detector_at_native_size_gets_the_input_itself():
    model = tiny("fasterrcnn")
    x = torch.rand(1, 3, 70, 90)
    seen = {}

    def hook(_module, inputs, _output):
        seen["input"] = inputs[0].detach().clone()
        raise _Reached

    transform = model.transform
    mean = torch.tensor(transform.image_mean)[:, None, None]
    std = torch.tensor(transform.image_std)[:, None, None]
    handle = model.get_submodule(first_convolution(model)).register_forward_hook(hook)
    try:
        with native_size(model), pytest.raises(_Reached), torch.no_grad():
            model(x)
    finally:
        handle.remove()
    # Normalised by the model's own mean and std, and nothing else: no resampling, no pad.
    assert torch.allclose(seen["input"], (x - mean) / std, atol=1e-6)


@pytest.mark.parametrize("name", ["fasterrcnn_resnet50_fpn", "ssdlite320_mobilenet_v3_large"])
def test_native_size_puts_the_transform_back(name):
    transform = meta_model(name).transform
    before, resize = dict(vars(transform)), transform.resize
    with native_size(meta_model(name)):
        assert transform.size_divisible == 1 and transform.resize != resize
    assert dict(vars(transform)) == before and transform.resize == resize
    with pytest.raises(RuntimeError, match="boom"), native_size(meta_model(name)):
        assert transform.resize != resize
        raise RuntimeError("boom")
    assert dict(vars(transform)) == before and transform.resize == resize


# ----------------------------------------------------------------------------- loading


def test_a_segmentation_model_by_name_with_its_preprocessing_and_classes():
    model, prep, classes = load_model("lraspp_mobilenet_v3_large", pretrained=False)
    assert type(model).__name__ == "LRASPP" and not model.training
    assert prep.size == 520  # torchvision's own resize for these weights
    assert prep.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    assert prep.std.flatten().tolist() == pytest.approx([0.229, 0.224, 0.225])
    assert len(classes) == 21 and classes[:2] == ["__background__", "aeroplane"]
    assert getattr(model, CLASS_NAMES_ATTRIBUTE) == classes


def test_a_detector_by_name_takes_images_in_0_1():
    model, prep, classes = load_model("fasterrcnn_mobilenet_v3_large_320_fpn", pretrained=False)
    assert model_family(model) == DETECTION and not model.training
    # The detector normalises inside its transform: the preprocessing only scales to [0, 1].
    assert prep.size == 320  # the shorter side it resizes to itself (800 for most)
    assert prep.mean.flatten().tolist() == [0.0] * 3 and prep.std.flatten().tolist() == [1.0] * 3
    assert len(classes) == 91 and classes[1] == "person"


def test_a_local_state_dict_is_loaded(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.get_model(
        "lraspp_mobilenet_v3_large", weights=None, weights_backbone=None
    )
    path = tmp_path / "lraspp.pth"
    torch.save(reference.state_dict(), path)
    model, _, _ = load_model("lraspp_mobilenet_v3_large", weights=path)
    loaded = model.state_dict()
    assert loaded.keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded[key], value), key


def test_a_checkpoint_with_an_auxiliary_head_is_loaded(tmp_path):
    # torchvision's own FCN / DeepLabV3 checkpoints carry the auxiliary classifier.
    torch.manual_seed(2)
    reference = torchvision.models.get_model(
        "deeplabv3_mobilenet_v3_large", weights=None, weights_backbone=None, aux_loss=True
    )
    path = tmp_path / "deeplab.pth"
    torch.save(reference.state_dict(), path)
    model, _, _ = load_model("deeplabv3_mobilenet_v3_large", weights=path)
    key = "aux_classifier.4.weight"
    assert torch.equal(model.state_dict()[key], reference.state_dict()[key])


def test_loading_errors_are_one_line(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="unknown model 'fcn_resnet5'.*closest: fcn_resnet50"):
        load_model("fcn_resnet5")
    wrong = tmp_path / "wrong.pth"
    torch.save({"classifier.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(ModelError, match="do not fit the model") as error:
        load_model("lraspp_mobilenet_v3_large", weights=wrong)
    assert "\n" not in str(error.value)

    def offline(*_args, **_kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr("torch.hub.download_url_to_file", offline)
    with pytest.raises(ModelError, match=r"pretrained weights for 'lraspp.*weights=PATH"):
        load_model("lraspp_mobilenet_v3_large")


# ------------------------------------------------- end to end: the library vs a reference
#
# CAMERAS and Grad-CAM on every family, against ``oracle_target_cameras`` (tests/oracle.py:
# resize, forward, the target's score, gradient at the layer by a plain hook, the SPEC's
# accumulation) with the Region and Box scores written here from their definitions
# (SPEC.md "Targets beyond one class"), one image at a time. The reference runs a detector
# at each scale's size through the transform's own public settings (``AtOwnSize``), not
# through the library's ``native_size``.

TOLERANCE = 1e-4
# (images, (height, width)): one square image alone, a non-square pair batched; CAMERAS
# at the shorter side and 1.25 times it.
CASES = [(1, (64, 64)), (2, (64, 96))]


def scales_for(size: tuple[int, int]) -> list[int]:
    shorter = min(size)
    return [shorter, shorter + shorter // 4]


class AtOwnSize(nn.Module):
    """A detector run at the size of its input: the transform's shorter side (``min_size``)
    and longer side (``max_size``) set to the input's own, so its resampling factor is 1
    (an identity), no fixed size, no padding to a multiple of 32."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x):
        transform = self.detector.transform
        names = ("min_size", "max_size", "fixed_size", "size_divisible")
        saved = {name: getattr(transform, name) for name in names}
        height, width = x.shape[2:]
        own = {"min_size": (min(height, width),), "max_size": max(height, width)}
        try:
            for name, value in {**own, "fixed_size": None, "size_divisible": 1}.items():
                setattr(transform, name, value)
            return self.detector(x)
        finally:
            for name, value in saved.items():
                setattr(transform, name, value)


class SegmentationScores(nn.Module):
    """The (B, K, h, w) scores of a segmentation model (torchvision's "out", SegFormer's
    .logits): what pytorch-grad-cam's SemanticSegmentationTarget reads."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        return _segmentation_scores(self.model(x))


def _segmentation_scores(output) -> torch.Tensor:
    # A Hugging Face output is a dict too: read .logits first.
    return output.logits if hasattr(output, "logits") else output["out"]


def region_score(class_: int, mask: torch.Tensor):
    """Region from its definition: the mean of the class's scores over the mask resized
    (nearest) to the output grid; present where the class wins half the mask's pixels."""

    def score_of(output, _size, _input_size):
        scores = _segmentation_scores(output)
        grid = F.interpolate(mask[None, None].float(), size=scores.shape[2:], mode="nearest")
        inside = grid[0, 0] > 0.5
        present = (scores[0].argmax(0)[inside] == class_).float().mean() >= 0.5
        return scores[0, class_][inside].mean(), bool(present)

    return score_of


def box_score(box: torch.Tensor, label: int):
    """Box from its definition: the detections mapped back to the input's coordinates; the
    score of the label's detection with the largest IoU (torchvision's box_iou) if >= 0.5."""

    def score_of(output, size, input_size):
        detections = output[0]
        back = torch.tensor([input_size[1] / size[1], input_size[0] / size[0]] * 2)
        boxes = detections["boxes"].detach() * back
        overlap = torchvision.ops.box_iou(boxes, box[None])[:, 0]
        overlap[detections["labels"] != label] = -1
        if len(overlap) == 0 or overlap.max() < 0.5:
            return torch.zeros(()), False
        return detections["scores"][overlap.argmax()], True

    return score_of


def photos(size: tuple[int, int], count: int, detector: bool) -> torch.Tensor:
    """scikit-image photos resized to ``size``: [0, 1] for a detector (it normalises
    itself), ImageNet-normalised for a segmentation model."""
    from skimage import data

    images = []
    for name in ("chelsea", "coffee")[:count]:
        pixels = torch.from_numpy(getattr(data, name)().copy()).permute(2, 0, 1)[None] / 255
        images.append(F.interpolate(pixels.float(), size=size, mode="bilinear", antialias=True))
    batch = torch.cat(images)
    if detector:
        return batch
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    return (batch - mean) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]


def reference_model(name: str) -> nn.Module:
    return AtOwnSize(tiny(name)) if name in DETECTORS else tiny(name)


@functools.cache
def target_for(name: str, size: tuple[int, int], count: int, index: int):
    """(the library's target, the reference's score, pytorch-grad-cam's target) for one
    image: for a segmentation model, its most frequent class at the input's size inside
    the left two thirds of the image; for a detector, its first detection at that size
    whose Grad-CAM is not blank (with random weights a detection's map can be all
    negative, which any two tools would agree on trivially), trying first those detected
    again at the larger scale (so that CAMERAS fuses two scales).

    For image ``index`` of ``photos(size, count)``; computed once and shared by the tests
    (a target is never changed by a call)."""
    image = photos(size, count, name in DETECTORS)[index : index + 1]
    with torch.no_grad():
        output = reference_model(name)(image)
    height, width = image.shape[2:]
    if name in SEGMENTERS:
        winners = SegmentationScores(tiny(name))(image)[0].argmax(0)
        class_ = int(winners.flatten().mode().values)
        on_grid = (winners == class_).float()[None, None]
        mask = F.interpolate(on_grid, size=(height, width), mode="nearest")[0, 0] > 0.5
        mask[:, (2 * width) // 3 :] = False
        assert mask.any()
        grid = F.interpolate(mask[None, None].float(), size=winners.shape, mode="nearest")[0, 0]
        theirs = SemanticSegmentationTarget(class_, grid.numpy())
        return Region(class_, mask), region_score(class_, mask), theirs
    detections = output[0]
    layer = tiny(name).get_submodule(task_layer(tiny(name)))
    scaled = oracle_resize(image, scales_for((height, width))[1])
    with torch.no_grad():
        larger = reference_model(name)(scaled)
    candidates = []
    for rank in range(len(detections["scores"])):
        box, label = detections["boxes"][rank].detach(), int(detections["labels"][rank])
        if bool((box[2:] - box[:2] >= 1).all()):  # not squashed flat against the border
            candidates.append((box, label, box_score(box, label)))
    # Those detected again at the larger scale first, each group in the model's order.
    larger_size = tuple(scaled.shape[2:])
    candidates.sort(key=lambda c: not c[2](larger, larger_size, (height, width))[1])
    for box, label, score_of in candidates[:20]:
        gradcam, _, _ = oracle_target_cameras(
            reference_model(name), layer, image, [min(height, width)], score_of, True
        )
        if spread(gradcam):
            theirs = FasterRCNNBoxScoreTarget([label], [box.numpy()])
            return Box(box.tolist(), label), score_of, theirs
    raise AssertionError(f"no detection of {name} with a non-blank Grad-CAM")


def spread(single_map: torch.Tensor) -> bool:
    """Not a blank or constant map (a trivial agreement)."""
    return bool(single_map.max() == 1) and float(single_map.std()) > 0.01


WORST: dict[tuple[str, str], float] = {}  # (family, method) -> worst difference seen


@pytest.mark.parametrize("name", SEGMENTERS + DETECTORS)
@pytest.mark.parametrize("method", ["cameras", "gradcam"])
def test_the_library_matches_the_reference(method, name):
    model = tiny(name)
    module = model.get_submodule(task_layer(model))
    for count, size in CASES:
        scales = scales_for(size) if method == "cameras" else [min(size)]
        kwargs = {"scales": scales} if method == "cameras" else {}
        explainer = cameras.METHODS[method](model, **kwargs)  # layer=None: the family's
        assert explainer.layer_name == task_layer(model)
        batch = photos(size, count, name in DETECTORS)
        targets = [target_for(name, size, count, i) for i in range(count)]
        before = model_state(model)
        ours = explainer(
            batch, targets=[t[0] for t in targets] if len(batch) > 1 else targets[0][0]
        )
        assert_left_as_found(model, before)
        for i, (_, score_of, _) in enumerate(targets):
            reference, kept, scores = oracle_target_cameras(
                reference_model(name),
                module,
                batch[i : i + 1],
                scales,
                score_of,
                single_scale_gradcam=method == "gradcam",
            )
            assert spread(reference) and kept and kept[0] == scales[0]
            records = ours.scales[i]
            assert [r.scale for r in records if r.kept] == kept
            assert [r.score for r in records] == pytest.approx(scores, rel=1e-4, abs=1e-6)
            diff = float((ours.maps[i] - reference).abs().max())
            key = (name, method)
            WORST[key] = max(WORST.get(key, 0.0), diff)
            print(f"{name} {method} {tuple(batch.shape)} image {i}: kept {kept}, diff {diff:.1e}")
            assert diff <= TOLERANCE


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    maps = maps - maps.amin((1, 2), keepdim=True)
    return maps / maps.amax((1, 2), keepdim=True).clamp(min=1e-12)


# Box regressions detached for pytorch-grad-cam: its box score is IoU + the detection's
# score, ours the score alone; with the boxes held fixed the IoU has no gradient and the
# two scores back-propagate the same gradient ("where they define the same score").
BOX_REGRESSION = {
    "fasterrcnn": ("roi_heads.box_predictor", 1),  # (class scores, box deltas)
    "retinanet": ("head.regression_head", None),
    "fcos": ("head.regression_head", 0),  # (box regression, centreness)
    "ssdlite": ("head.regression_head", None),
}


def _boxes_held_fixed(name: str):
    path, index = BOX_REGRESSION[name]

    def detach(_module, _inputs, output):
        if index is None:
            return output.detach()
        return tuple(o.detach() if i == index else o for i, o in enumerate(output))

    return tiny(name).get_submodule(path).register_forward_hook(detach)


@pytest.mark.parametrize("name", SEGMENTERS + DETECTORS)
def test_gradcam_matches_pytorch_grad_cam(name):
    model = tiny(name)
    count, size = CASES[1]
    pair = photos(size, count, name in DETECTORS)
    targets = [target_for(name, size, count, i) for i in range(count)]
    ours = cameras.GradCAM(model)(pair, targets=[t[0] for t in targets]).maps
    wrapped = reference_model(name) if name in DETECTORS else SegmentationScores(model)
    module = model.get_submodule(task_layer(model))
    flags = [p.requires_grad for p in model.parameters()]
    hook = _boxes_held_fixed(name) if name in DETECTORS else None
    try:  # frozen weights, input requiring grad: the same gradient, no .grad written
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        with pgc.GradCAM(wrapped, [module]) as cam:
            theirs = cam(pair.clone().requires_grad_(True), [t[2] for t in targets])
    finally:
        for parameter, flag in zip(model.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)
        if hook is not None:
            hook.remove()
    theirs = torch.from_numpy(theirs)
    assert all(spread(m) for m in ours)
    diff = float((_minmax(ours) - _minmax(theirs)).abs().max())
    WORST[(name, "pytorch-grad-cam")] = diff
    print(f"{name} Grad-CAM vs pytorch-grad-cam: diff {diff:.1e}")
    assert diff <= TOLERANCE


@pytest.mark.parametrize("name", SEGMENTERS + DETECTORS)
def test_every_family_is_left_as_found_by_a_call_and_by_a_failing_one(name):
    # A state a user could have: training mode (a detector then refuses to run without
    # ground truth, so the call must switch to eval), one parameter frozen.
    model = tiny(name)
    first = next(model.parameters())
    transform = getattr(model, "transform", None)

    def broken(output, size, input_size):
        raise RuntimeError("boom")

    x = photos((64, 96), 2, name in DETECTORS)[:1]
    target = target_for(name, (64, 96), 2, 0)[0]
    try:
        model.train()
        first.requires_grad_(False)
        before = model_state(model)
        settings = dict(vars(transform)) if transform is not None else None
        assert cameras.GradCAM(model)(x, targets=target).scales[0][0].kept
        assert_left_as_found(model, before)
        with pytest.raises(RuntimeError, match="boom"):  # after the forward pass, hooks on
            cameras.CAMERAS(model, scales=[64, 80])(x, targets=broken)
        assert_left_as_found(model, before)
        if transform is not None:  # the resizing back on, with the user's values
            assert dict(vars(transform)) == settings
    finally:
        model.eval()
        first.requires_grad_(True)


def test_fpn_levels_are_explained_by_name():
    # Level N's output convolution (layer_blocks.N) feeds only the detections made on
    # level N: the map is blank for a detection made elsewhere, exact in every case.
    model = tiny("retinanet")
    image = photos((64, 96), 2, True)[:1]
    target, score_of, _ = target_for("retinanet", (64, 96), 2, 0)
    blank = []
    for level in ["backbone.fpn.layer_blocks.0", "backbone.fpn.layer_blocks.1"]:
        ours = cameras.CAMERAS(model, layer=level, scales=[64, 80])(image, targets=target)
        assert ours.layer == level
        reference, kept, _ = oracle_target_cameras(
            reference_model("retinanet"), model.get_submodule(level), image, [64, 80], score_of
        )
        assert [r.scale for r in ours.scales[0] if r.kept] == kept
        assert float((ours.maps[0] - reference).abs().max()) <= TOLERANCE
        blank.append(not spread(reference))
    assert not all(blank)


def test_ssdlite_stride_32_block_misses_detections_of_the_first_level():
    # Why SSDlite's automatic layer is features.0: a detection made on the stride-16 level
    # gives features.1 no gradient at all.
    model = tiny("ssdlite")
    image = photos((64, 64), 1, True)
    seen = {}

    def keep(name):
        return lambda _m, _i, output: seen.__setitem__(name, output)

    names = ["backbone.features.0", "backbone.features.1"]
    handles = [model.get_submodule(n).register_forward_hook(keep(n)) for n in names]
    try:
        detections = reference_model("ssdlite")(image)[0]
    finally:
        for handle in handles:
            handle.remove()
    gradients = torch.autograd.grad(detections["scores"][0], [seen[n] for n in names])
    assert float(gradients[0].abs().max()) > 0 and float(gradients[1].abs().max()) == 0


def _pixels(photo, size: tuple[int, int]) -> torch.Tensor:
    """A PIL photo at (height, width) as [0, 1] RGB (3, h, w)."""
    resized = photo.resize((size[1], size[0]))
    return torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255).permute(2, 0, 1)


def test_a_segmentation_model_by_name_is_explained_with_no_glue(chelsea):
    # load_model's preprocessing and class names, the automatic layer, a class by name.
    model, prep, classes = load_model("lraspp_mobilenet_v3_large", pretrained=False)
    x = prep.normalise(_pixels(chelsea, (64, 96)))[None]  # its mean and std, at 64 x 96
    mask = torch.zeros(64, 96, dtype=torch.bool)
    mask[16:48, 24:72] = True
    before = model_state(model)
    result = cameras.CAMERAS(model, scales=[64, 80])(x, targets=Region("cat", mask))
    assert_left_as_found(model, before)
    assert result.layer == "backbone.16" and result.target_labels == ["region of cat (8)"]
    assert classes[8] == "cat" and result.maps.shape == (1, 64, 96)
    assert [r.score is not None for r in result.scales[0]] == [True, True]


def test_a_detector_by_name_is_explained_with_no_glue(chelsea):
    model, prep, _ = load_model("fasterrcnn_mobilenet_v3_large_320_fpn", pretrained=False)
    model.roi_heads.score_thresh = 0.0  # random weights: keep every detection (documented)
    x = prep.normalise(_pixels(chelsea, (64, 96)))[None]
    assert 0 <= float(x.min()) and float(x.max()) <= 1  # [0, 1]: the detector normalises
    with torch.no_grad(), native_size(model):
        detection = model(x)[0]
    box = detection["boxes"][0].tolist()
    before = model_state(model)
    result = cameras.GradCAM(model)(x, targets=Box(box))
    assert_left_as_found(model, before)
    assert result.layer == "backbone.body.16"
    assert result.scales[0][0].kept  # the model's own detection, found again at its size
    assert result.scales[0][0].score == pytest.approx(float(detection["scores"][0]), rel=1e-5)
