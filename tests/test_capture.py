"""The layer capture: the layer chosen, what it records, in-place layers, frozen models,
models with odd outputs (the model-safety checks live in test_model_safety.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyNet, hook_count, seeded
from torch import nn

import cameras
from cameras.core.capture import auto_layer_name

SCALES = [32, 48]


def test_inplace_relu_after_the_layer_gives_the_same_map():
    torch.manual_seed(3)
    plain = TinyNet(inplace=False).eval()
    inplace = TinyNet(inplace=True).eval()
    inplace.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 40, 48)
    a = cameras.CAMERAS(plain, layer="features", scales=[40, 60])(x)
    b = cameras.CAMERAS(inplace, layer="features", scales=[40, 60])(x)
    assert torch.allclose(a.maps, b.maps, atol=1e-6)
    assert a.maps.max() == 1


def test_frozen_model_gives_the_same_map_and_stays_frozen():
    model = seeded("resnet18", 2)
    x = torch.randn(1, 3, 64, 64)
    unfrozen = cameras.CAMERAS(model, scales=[64, 96])(x)
    for p in model.parameters():
        p.requires_grad_(False)
    frozen = cameras.CAMERAS(model, scales=[64, 96])(x)
    assert torch.allclose(unfrozen.maps, frozen.maps, atol=1e-6)
    assert not any(p.requires_grad for p in model.parameters())


class HuggingFaceStyle(nn.Module):
    """Returns an object with ``.logits``, as Hugging Face models do."""

    class Output:
        def __init__(self, logits):
            self.logits = logits

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, pixel_values):
        return self.Output(self.inner(pixel_values))


def test_model_returning_an_object_with_logits():
    inner = seeded("resnet18", 7)
    x = torch.randn(2, 3, 64, 80)
    plain = cameras.GradCAM(inner, layer="layer4")(x)
    wrapped = cameras.GradCAM(HuggingFaceStyle(inner), layer="inner.layer4")(x)
    assert torch.allclose(plain.maps, wrapped.maps, atol=1e-6)
    assert plain.targets == wrapped.targets


def test_layer_by_name_module_or_auto():
    model = seeded("resnet18", 2)
    x = torch.randn(1, 3, 64, 64)
    by_name = cameras.CAMERAS(model, layer="layer4", scales=[64])(x)
    by_module = cameras.CAMERAS(model, layer=model.layer4, scales=[64])(x)
    auto = cameras.CAMERAS(model, scales=[64])(x)
    assert by_name.layer == by_module.layer == auto.layer == "layer4"
    assert torch.equal(by_name.maps, by_module.maps) and torch.equal(by_name.maps, auto.maps)


@pytest.mark.parametrize(
    ("arch", "expected"),
    [("resnet18", "layer4"), ("densenet121", "features"), ("vgg11", "features")],
)
def test_auto_layer_rule(arch, expected):
    model = seeded(arch, 0)
    assert auto_layer_name(model) == expected
    assert hook_count(model) == 0


def test_auto_layer_of_default_model(lite0):
    assert auto_layer_name(lite0[0]) == "bn2"


def test_unknown_layer_lists_closest_names():
    model = seeded("resnet18", 0)
    with pytest.raises(ValueError, match=r"layer 'layer5' is not a module.*closest: .*layer4"):
        cameras.CAMERAS(model, layer="layer5")
    with pytest.raises(ValueError, match="not part of the model"):
        cameras.CAMERAS(model, layer=nn.Conv2d(3, 3, 1))


def test_layer_that_runs_twice_is_refused():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(self.conv(self.conv(x)).mean((2, 3)))

    model = Twice()
    with pytest.raises(RuntimeError, match="ran 2 times"):
        cameras.GradCAM(model, layer="conv")(torch.randn(1, 3, 8, 8))
    assert hook_count(model) == 0


def test_targets_by_name_index_list_and_errors(lite0, coffee):
    model, prep, classes = lite0
    x = prep(coffee)[None].repeat(2, 1, 1, 1)
    method = cameras.GradCAM(model)
    assert method(x, targets="espresso").targets == [967, 967]
    assert method(x, targets="Espresso").targets == [967, 967]
    assert method(x, targets=["espresso", 504]).targets == [967, 504]
    assert method(x, targets=torch.tensor([1, 2])).targets == [1, 2]
    result = method(x)
    assert result.targets == [967, 967] and result.target_names == ["espresso", "espresso"]
    with pytest.raises(ValueError, match="class 5000 is out of range: the model has 1000"):
        method(x, targets=5000)
    with pytest.raises(ValueError, match="unknown class name 'expresso'.*espresso"):
        method(x, targets="expresso")
    with pytest.raises(ValueError, match="got 3 classes for a batch of 2"):
        method(x, targets=[1, 2, 3])


def test_bad_arguments_are_clear_errors():
    model = TinyNet()
    with pytest.raises(TypeError, match="torch.nn.Module"):
        cameras.CAMERAS("resnet")
    with pytest.raises(ValueError, match="strictly ascending"):
        cameras.CAMERAS(model, scales=[64, 32])
    with pytest.raises(ValueError, match=r"shape \(B, C, H, W\)"):
        cameras.CAMERAS(model)(torch.randn(3, 32))
    with pytest.raises(TypeError, match="float tensor"):
        cameras.CAMERAS(model)(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
