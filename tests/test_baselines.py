"""The single-scale CAM baselines against pytorch-grad-cam, and their model-safety guarantees.

pytorch-grad-cam (``pip install grad-cam``) is the reference: for each method we feed both
tools the same random-weight network, the same batch of two images and two different
classes, and require the maps to agree to 1e-4 after min-max normalisation.

The two tools build the same map in different orders. pytorch-grad-cam takes the layer
map, clips it at zero, min-max normalises it at the layer's resolution, resizes it with
cv2 (INTER_LINEAR: half-pixel centres, which is PyTorch's bilinear with
align_corners=False), then normalises again. We clip, upsample with PyTorch's bilinear
kernel and normalise once. Bilinear resizing is affine in the values and min-max
normalisation removes any affine change, so after one more min-max on both sides the maps
must be equal up to float32 rounding.
"""

from __future__ import annotations

import pytest
import pytorch_grad_cam as pgc  # a dev dependency: a missing one fails, never skips
import torch
import torchvision
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import cameras
from cameras.methods import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM

OURS_TO_THEIRS = {
    GradCAM: pgc.GradCAM,
    GradCAMPlusPlus: pgc.GradCAMPlusPlus,
    XGradCAM: pgc.XGradCAM,
    LayerCAM: pgc.LayerCAM,
    HiResCAM: pgc.HiResCAM,
}
BASELINES = list(OURS_TO_THEIRS)
TARGETS = [3, 500]  # two different classes, one per image
TOLERANCE = 1e-4


def _resnet():
    torch.manual_seed(1)
    return torchvision.models.resnet18().eval()


def _vgg():
    # Seed chosen so that no class in TARGETS gives an all-negative (blank) map: a blank
    # map would make the comparison trivially true.
    torch.manual_seed(0)
    return torchvision.models.vgg11().eval()


# (our layer name, the same module in the model for pytorch-grad-cam).
# ResNet: ``layer4``, the last residual stage (our automatic choice).
# VGG: ``features``, the whole convolutional trunk, ending in MaxPool (our automatic
# choice). A later conv such as ``features.18`` cannot be compared: the in-place ReLU
# after it overwrites the conv output, and pytorch-grad-cam keeps a view of that storage,
# so it records post-ReLU activations with pre-ReLU gradients (max diff 0.78 here), while
# our capture hands the network a copy and keeps the conv's true output. The in-place ReLU
# ``features.19`` itself is a valid layer for both tools and is checked too (6 x 8 grid
# against 3 x 4 for ``features``, so a finer map).
ARCHITECTURES = {
    "resnet18": (_resnet, "layer4", lambda m: m.layer4),
    "vgg11": (_vgg, "features", lambda m: m.features),
    "vgg11-relu": (_vgg, "features.19", lambda m: m.features[19]),
}


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    # Non-square and small, for speed: the layer grids are 3 x 4 (ResNet, VGG features).
    generator = torch.Generator().manual_seed(3)
    return torch.randn(2, 3, 96, 128, generator=generator)


@pytest.fixture(scope="module")
def networks():
    """One random-weight instance per architecture, built once (each test must leave it
    exactly as it found it, which test_model_left_unchanged checks)."""
    built = {}
    return lambda name: built.setdefault(name, ARCHITECTURES[name][0]())


def _minmax(maps: torch.Tensor) -> torch.Tensor:
    maps = maps - maps.amin((1, 2), keepdim=True)
    return maps / maps.amax((1, 2), keepdim=True).clamp(min=1e-12)


def _reference(method_cls, model, module_of, x, targets) -> torch.Tensor:
    # The same instance (a deep copy of VGG's 133 M parameters is slow), with its
    # parameters frozen for the call and the input requiring grad instead: the gradient at
    # the layer is the same, and the backward pass skips every weight gradient (400 MB for
    # VGG's first linear layer) and leaves no .grad behind. pytorch-grad-cam also calls
    # model.eval(), which is already the case.
    assert not model.training
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        with OURS_TO_THEIRS[method_cls](model, [module_of(model)]) as cam:
            maps = cam(x.clone().requires_grad_(True), [ClassifierOutputTarget(t) for t in targets])
    finally:
        for parameter, flag in zip(model.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)
    return torch.from_numpy(maps)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("method_cls", BASELINES, ids=lambda c: c.name)
def test_matches_pytorch_grad_cam(method_cls, arch, networks, batch):
    _, layer, module_of = ARCHITECTURES[arch]
    model = networks(arch.removesuffix("-relu"))
    ours = method_cls(model, layer=layer)(batch, targets=TARGETS)
    theirs = _reference(method_cls, model, module_of, batch, TARGETS)
    assert ours.maps.shape == theirs.shape == (2, 96, 128)
    assert ours.targets == TARGETS
    # Not a trivial agreement of two blank maps: both images have a spread-out map.
    assert (ours.maps.amax((1, 2)) == 1).all() and (ours.maps.std((1, 2)) > 0.05).all()
    diff = (_minmax(ours.maps) - _minmax(theirs)).abs().max().item()
    print(f"{method_cls.name} {arch}: max |diff| {diff:.1e}")  # shown with pytest -s
    assert diff <= TOLERANCE, f"{method_cls.name} on {arch}: max |diff| {diff:.2e}"


def test_classes_change_the_map(networks, batch):
    # The cross-check would be weak if the class did not matter: it does, for VGG.
    model = networks("vgg11")
    one = GradCAM(model, layer="features")(batch, targets=[3, 3]).maps
    other = GradCAM(model, layer="features")(batch, targets=[500, 500]).maps
    assert (one - other).abs().amax((1, 2)).min() > 0.05


@pytest.mark.parametrize("method_cls", BASELINES, ids=lambda c: c.name)
def test_batch_equals_single_images(method_cls, networks, batch):
    model = networks("vgg11")
    method = method_cls(model, layer="features.19")
    together = method(batch, targets=TARGETS)
    for i, target in enumerate(TARGETS):
        alone = method(batch[i : i + 1], targets=target)
        assert alone.targets == [target]
        # Batched convolutions sum in another order: float32 rounding, nothing more.
        torch.testing.assert_close(alone.maps[0], together.maps[i], atol=1e-4, rtol=0)
        torch.testing.assert_close(
            alone.probabilities[0], together.probabilities[i], atol=1e-6, rtol=1e-5
        )


def _state(model: torch.nn.Module):
    modules = list(model.modules())
    return (
        [m.training for m in modules],
        [p.requires_grad for p in model.parameters()],
        [p.grad for p in model.parameters()],
        [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
            for m in modules
        ],
        {k: v.clone() for k, v in model.state_dict().items()},
    )


@pytest.mark.parametrize("method_cls", BASELINES, ids=lambda c: c.name)
def test_model_left_unchanged(method_cls, batch):
    torch.manual_seed(4)
    model = torchvision.models.resnet18()
    # A state a user could have: training mode with one part in eval, one part frozen.
    model.train()
    model.layer2.eval()
    for p in model.layer1.parameters():
        p.requires_grad_(False)
    before = _state(model)
    result = method_cls(model, layer="layer4")(batch, targets=TARGETS)
    after = _state(model)
    assert before[:4] == after[:4]
    for name, value in before[4].items():
        assert torch.equal(value, after[4][name]), f"{name} changed (BatchNorm statistics?)"
    # Eval mode inside the call: the same image alone gives the same map (no batch statistics).
    alone = method_cls(model, layer="layer4")(batch[:1], targets=TARGETS[0])
    torch.testing.assert_close(alone.maps[0], result.maps[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("method_cls", BASELINES, ids=lambda c: c.name)
def test_maps_on_input_device_in_unit_range(method_cls, networks, batch):
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        model = networks("resnet18").to(device)
        result = method_cls(model, layer="layer4")(batch.to(device))
        maps = result.maps
        assert maps.device.type == device and result.probabilities.device.type == device
        assert maps.dtype == torch.float32 and maps.shape == (2, 96, 128)
        assert maps.min() >= 0 and maps.max() <= 1
        assert torch.isfinite(maps).all()
        # No class given: each image's own top-1 class.
        assert result.targets == result.probabilities.argmax(1).tolist()
        networks("resnet18").to("cpu")


def test_names_and_registry():
    names = {cls.name for cls in BASELINES}
    assert names == {"gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"}
    for cls in BASELINES:
        assert cameras.METHODS[cls.name] is cls
        assert getattr(cameras, cls.__name__) is cls


def test_gradcam_by_hand():
    """Grad-CAM on a two-channel toy model, computed by hand.

    The model is the identity up to the layer, then global average pooling and a linear
    layer. For class c the gradient at every cell is W[c, k] / (h * w), so the Grad-CAM
    weight of channel k is W[c, k] / (h * w), and the map is ReLU(sum_k weight_k * A_k).
    """

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Identity()
            self.head = torch.nn.Linear(2, 2, bias=False)
            with torch.no_grad():
                self.head.weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 2.0]]))

        def forward(self, x):
            return self.head(self.body(x[:, :2]).mean((2, 3)))

    x = torch.zeros(1, 3, 2, 2)
    x[0, 0] = torch.tensor([[4.0, 0.0], [0.0, 0.0]])  # channel 0 lights the top left
    x[0, 1] = torch.tensor([[0.0, 0.0], [0.0, 2.0]])  # channel 1 lights the bottom right
    result = GradCAM(Toy(), layer="body", class_names=["a", "b"])(x, targets=0)
    # Class 0: weights (1/4, -1/4) -> map (1, 0, 0, -0.5) -> ReLU -> (1, 0, 0, 0).
    assert result.maps[0].tolist() == [[1.0, 0.0], [0.0, 0.0]]
    assert result.target_names == ["a"]
    result = GradCAM(Toy(), layer="body", class_names=["a", "b"])(x, targets="b")
    # Class 1: weights (0, 1/2) -> map (0, 0, 0, 1).
    assert result.maps[0].tolist() == [[0.0, 0.0], [0.0, 1.0]]
