"""Segmentation and detection families (core/families.py, models/tasks.py): the layer each
gets automatically, detectors run at the size they are given, and loading them by name.

Layer choice and resizing are checked on the real torchvision architectures built on the
``meta`` device (shapes only: free to build and to run); what needs values runs on the
CPU with small models of the same classes (``family_models.py``) and small images.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision
from family_models import tiny, tiny_segformer

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
    "ssdlite320_mobilenet_v3_large": (DETECTION, "backbone.features.1", (3, 5)),
}
DETECTORS = [name for name, (family, _, _) in EXPECTED.items() if family == DETECTION]


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


@pytest.mark.parametrize("name", DETECTORS)
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
