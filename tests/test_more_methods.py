"""The methods beyond the five gradient baselines against pytorch-grad-cam, on a CNN and a ViT.

Same protocol as test_baselines.py: the same random-weight network, layer, batch of two
images and two different classes for both tools; the maps must agree to 1e-4 after
min-max normalisation. Where the two tools make a different choice (documented in each
method's docstring), pytorch-grad-cam is run with our choice patched in, and a second
test shows that the unpatched choice does differ.
"""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import timm
import torch
import torchvision
from pytorch_grad_cam import (
    base_cam,
    eigen_cam,
    eigen_grad_cam,
    grad_cam_elementwise,
    hirescam,
    kpca_cam,
    layer_cam,
)
from pytorch_grad_cam.ablation_layer import AblationLayerVit
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import (
    get_2d_projection_kernel,
    get_2d_projection_with_sign_correction,
)

import cameras
from cameras.methods.fullgrad import FullGradCapture
from cameras.methods.more import (
    CAM,
    KPCACAM,
    AblationCAM,
    EigenCAM,
    EigenGradCAM,
    FullGrad,
    GradCAMElementWise,
    ScoreCAM,
)
from cameras.models.lite import EfficientNetLite

TOLERANCE = 1e-4
TARGETS = [3, 7]


class SmallCNN(torch.nn.Module):
    """Convolutions with biases, BatchNorm, in-place ReLUs, global pooling and a linear
    head: every structure the methods care about, at a size where one pass per channel
    (Score-CAM, Ablation-CAM) takes milliseconds."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(2)
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(inplace=True),
            torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
            torch.nn.BatchNorm2d(16),
            torch.nn.ReLU(inplace=True),
            torch.nn.Conv2d(16, 24, 3, stride=2, padding=1),
            torch.nn.ReLU(),
        )
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(24, 10)
        with torch.no_grad():  # BatchNorm statistics that are not the identity
            for module in self.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.running_mean.uniform_(-0.5, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.5, 0.5)
        self.eval()

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def _vit():
    torch.manual_seed(5)
    model = timm.models.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10
    )
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.out_features == 10:
            torch.nn.init.normal_(module.weight, std=0.5)
    return model.eval()


def _tokens_to_grid(tokens):
    return tokens[:, 1:].reshape(tokens.shape[0], 4, 4, tokens.shape[2]).permute(0, 3, 1, 2)


# name: (model, our layer, its module, input size, pytorch-grad-cam's reshape_transform)
MODELS = {
    "cnn": (SmallCNN, "features", lambda m: m.features, (40, 56), None),
    "vit": (_vit, "blocks.1.norm1", lambda m: m.blocks[1].norm1, (32, 32), _tokens_to_grid),
}


@pytest.fixture(scope="module")
def networks():
    built = {}
    return lambda name: built.setdefault(name, MODELS[name][0]())


def _batch(name):
    generator = torch.Generator().manual_seed(3)
    return torch.randn(2, 3, *MODELS[name][3], generator=generator)


def _minmax(maps):
    maps = maps - maps.amin((1, 2), keepdim=True)
    return maps / maps.amax((1, 2), keepdim=True).clamp(min=1e-12)


def _theirs(build, model, module, x, transform, **call):
    flags = [p.requires_grad for p in model.parameters()]
    try:
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        with build(model, [module], transform) as cam:
            targets = [ClassifierOutputTarget(t) for t in TARGETS]
            maps = cam(x.clone().requires_grad_(True), targets, **call)
    finally:
        for parameter, flag in zip(model.parameters(), flags, strict=True):
            parameter.requires_grad_(flag)
    return torch.from_numpy(np.asarray(maps, dtype=np.float32))


class _ZeroAblationVit(AblationLayerVit):
    """pytorch-grad-cam's ViT ablation with our ablation value, zero (see AblationCAM)."""

    def __call__(self, x):
        output = self.activations.transpose(1, 2)
        for i in range(output.size(0)):
            output[i, self.indices[i], :] = 0
        return output.transpose(2, 1)


def _score_cam(model, layers, transform):
    cam = pgc.ScoreCAM(model, layers, reshape_transform=transform)
    cam.batch_size = 64
    return cam


def _ablation_cam(model, layers, transform):
    layer = _ZeroAblationVit() if transform is not None else pgc.ablation_layer.AblationLayer()
    return pgc.AblationCAM(model, layers, transform, ablation_layer=layer, batch_size=64)


def _half_pixel_upsampling(size):
    return torch.nn.Upsample(size=size, mode="bilinear", align_corners=False)


@pytest.fixture
def our_choices(monkeypatch):
    """pytorch-grad-cam with our documented choices: half-pixel bilinear Score-CAM masks, a
    principal component's sign fixed by its largest magnitude, kernel PCA in float64."""
    monkeypatch.setattr(torch.nn, "UpsamplingBilinear2d", _half_pixel_upsampling)
    for module in (base_cam, eigen_cam, eigen_grad_cam, grad_cam_elementwise, hirescam, layer_cam):
        monkeypatch.setattr(module, "get_2d_projection", get_2d_projection_with_sign_correction)
    monkeypatch.setattr(kpca_cam, "get_2d_projection_kernel", _kernel_projection_in_float64)


def _kernel_projection_in_float64(activations, kernel="sigmoid", gamma=None):
    # Our documented choice: kernel PCA in float64 (scikit-learn keeps float32 input so).
    return get_2d_projection_kernel(activations.astype(np.float64), kernel, gamma)


# ours: (our class and options, pytorch-grad-cam's builder, its call options)
CASES = {
    "scorecam": (lambda m, layer: ScoreCAM(m, layer=layer, batch_size=64), _score_cam, {}),
    "ablationcam": (lambda m, layer: AblationCAM(m, layer=layer, batch_size=5), _ablation_cam, {}),
    "eigencam": (lambda m, layer: EigenCAM(m, layer=layer), pgc.EigenCAM, {}),
    "eigengradcam": (lambda m, layer: EigenGradCAM(m, layer=layer), pgc.EigenGradCAM, {}),
    "gradcam-elementwise": (
        lambda m, layer: GradCAMElementWise(m, layer=layer),
        pgc.GradCAMElementWise,
        {},
    ),
    "gradcam-elementwise-eigen": (
        lambda m, layer: GradCAMElementWise(m, layer=layer, eigen_smooth=True),
        pgc.GradCAMElementWise,
        {"eigen_smooth": True},
    ),
    "gradcam-elementwise-aug": (
        lambda m, layer: GradCAMElementWise(m, layer=layer, aug_smooth=True),
        pgc.GradCAMElementWise,
        {"aug_smooth": True},
    ),
    "scorecam-eigen": (
        lambda m, layer: ScoreCAM(m, layer=layer, eigen_smooth=True),
        _score_cam,
        {"eigen_smooth": True},
    ),
    # The smoothing options of the five gradient baselines.
    **{
        f"{cls.name}-{option}": (
            lambda m, layer, cls=cls, option=option: cls(m, layer=layer, **{option: True}),
            lambda m, layers, t, theirs=theirs: theirs(m, layers, t),
            {option: True},
        )
        for cls, theirs in [
            (cameras.GradCAM, pgc.GradCAM),
            (cameras.GradCAMPlusPlus, pgc.GradCAMPlusPlus),
            (cameras.XGradCAM, pgc.XGradCAM),
            (cameras.LayerCAM, pgc.LayerCAM),
            (cameras.HiResCAM, pgc.HiResCAM),
        ]
        for option in ("eigen_smooth", "aug_smooth")
    },
    "kpcacam": (lambda m, layer: KPCACAM(m, layer=layer), pgc.KPCA_CAM, {}),
    "kpcacam-rbf": (
        lambda m, layer: KPCACAM(m, layer=layer, kernel="rbf", gamma=0.01),
        lambda m, layers, t: pgc.KPCA_CAM(m, layers, t, kernel="rbf", gamma=0.01),
        {},
    ),
    # FullGrad reads every bias layer (the ViT's patch embedding): no token reshaping.
    "fullgrad": (
        lambda m, layer: FullGrad(m, layer=layer),
        lambda m, _layers, _transform: pgc.FullGrad(m, []),
        {},
    ),
}


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("case", list(CASES))
def test_matches_pytorch_grad_cam(case, arch, networks, our_choices, capsys):
    ours_of, theirs_of, call = CASES[case]
    model = networks(arch)
    _, layer, module_of, size, transform = MODELS[arch]
    x = _batch(arch)
    ours = ours_of(model, layer)(x, targets=TARGETS)
    theirs = _theirs(theirs_of, model, module_of(model), x, transform, **call)
    assert ours.maps.shape == theirs.shape == (2, *size)
    assert (ours.maps.std((1, 2)) > 0.05).all()  # not two blank maps agreeing
    diff = (_minmax(ours.maps) - _minmax(theirs)).abs().max().item()
    with capsys.disabled():
        print(f"\n{case} {arch}: max |diff| {diff:.1e}")
    assert diff <= TOLERANCE, f"{case} on {arch}: max |diff| {diff:.2e}"


@pytest.mark.parametrize("arch", list(MODELS))
def test_score_cam_upsampling_differs_from_pytorch_grad_cam(arch, networks):
    # The documented difference is real: corner-aligned masks give another map.
    model = networks(arch)
    _, layer, module_of, _, transform = MODELS[arch]
    x = _batch(arch)
    ours = ScoreCAM(model, layer=layer)(x, targets=TARGETS).maps
    theirs = _theirs(_score_cam, model, module_of(model), x, transform)
    assert (_minmax(ours) - _minmax(theirs)).abs().max() > TOLERANCE


def test_kernel_pca_in_float32_differs_slightly(networks):
    # The documented difference: scikit-learn in float32 is within 1e-3, not within 1e-4.
    model = networks("cnn")
    x = _batch("cnn")
    ours = KPCACAM(model, layer="features")(x, targets=TARGETS).maps
    theirs = _theirs(pgc.KPCA_CAM, model, model.features, x, None)
    assert 1e-5 < (_minmax(ours) - _minmax(theirs)).abs().max() < 1e-3


def test_ablation_value_differs_on_a_vit(networks):
    # pytorch-grad-cam's own ViT ablation (min - 1e7 on a layer with negative values) is
    # another map than zeroing the channel.
    model = networks("vit")
    _, layer, module_of, _, transform = MODELS["vit"]
    x = _batch("vit")
    ours = AblationCAM(model, layer=layer)(x, targets=TARGETS).maps

    def theirs_of(m, layers, t):
        return pgc.AblationCAM(m, layers, t, ablation_layer=AblationLayerVit(), batch_size=64)

    theirs = _theirs(theirs_of, model, module_of(model), x, transform)
    assert (_minmax(ours) - _minmax(theirs)).abs().max() > 1e-3


@pytest.mark.parametrize("arch", list(MODELS))
@pytest.mark.parametrize("case", ["scorecam", "ablationcam", "eigengradcam", "kpcacam", "fullgrad"])
def test_batch_equals_single_images(case, arch, networks):
    model = networks(arch)
    method = CASES[case][0](model, MODELS[arch][1])
    x = _batch(arch)
    together = method(x, targets=TARGETS)
    for i, target in enumerate(TARGETS):
        alone = method(x[i : i + 1], targets=target)
        torch.testing.assert_close(alone.maps[0], together.maps[i], atol=1e-4, rtol=0)


def test_cam_equals_gradcam_on_a_pooled_linear_head(networks):
    # With global average pooling and one linear layer, the gradient at every cell is
    # W[class] / (h * w): Grad-CAM's weights are CAM's up to a positive factor.
    model = networks("cnn")
    x = _batch("cnn")
    cam = CAM(model, layer="features")(x, targets=TARGETS).maps
    grad = cameras.GradCAM(model, layer="features")(x, targets=TARGETS).maps
    assert (cam.std((1, 2)) > 0.05).all()
    torch.testing.assert_close(cam, grad, atol=1e-5, rtol=0)


def test_cam_finds_the_heads_of_known_models():
    from cameras.methods.cam import linear_head

    assert linear_head(torchvision.models.resnet18()) is not None  # fc
    lite = EfficientNetLite(num_classes=10)
    assert linear_head(lite) is lite.classifier
    vit = _vit()
    assert linear_head(vit) is vit.head
    with pytest.raises(ValueError, match="cam needs a model ending in global pooling"):
        CAM(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten()))


def test_fullgrad_counts_batchnorm_with_activation():
    # EfficientNet-Lite's BatchNorm + ReLU6 modules hold its only biases (its convolutions
    # have none): each one is a bias layer, and its gradient is taken before the ReLU6.
    model = EfficientNetLite(num_classes=10).eval()
    capture = FullGradCapture(model)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(capture.layers) == len(norms) > 10
    seen = []
    with capture:
        model(torch.randn(1, 3, 32, 32))
        seen = list(capture.outputs)
    assert len(seen) == len(norms)
    assert any((output < 0).any() for output in seen)  # pre-activation values kept
    assert all(len(m._forward_pre_hooks) == 0 for m in model.modules())  # hooks removed


def test_fullgrad_refuses_a_model_that_is_not_torch():
    with pytest.raises(TypeError, match="fullgrad .* PyTorch models only"):
        FullGrad(object())


def test_registered_in_methods():
    names = [
        "scorecam",
        "ablationcam",
        "eigencam",
        "eigengradcam",
        "gradcam-elementwise",
        "kpcacam",
        "fullgrad",
        "cam",
    ]
    for name in names:
        assert cameras.METHODS[name].name == name
    assert set(names) <= set(cameras.METHODS)


def test_eigen_smooth_refused_where_it_does_not_apply(networks):
    with pytest.raises(ValueError, match="eigen_smooth does not apply to eigencam"):
        cameras.METHODS["eigencam"](networks("cnn"), eigen_smooth=True)


def _state(model):
    modules = list(model.modules())
    return (
        [m.training for m in modules],
        [p.requires_grad for p in model.parameters()],
        [p.grad for p in model.parameters()],
        [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in modules],
        {k: v.clone() for k, v in model.state_dict().items()},
    )


@pytest.mark.parametrize("cls", [ScoreCAM, AblationCAM])
def test_keyboard_interrupt_leaves_the_model_as_it_was(cls):
    model = SmallCNN()
    model.train()
    calls = {"n": 0}

    def interrupt_on_fourth(_module, _inputs):
        calls["n"] += 1
        if calls["n"] == 4:  # one capture pass, then two batches of masked passes
            raise KeyboardInterrupt

    user_hook = model.fc.register_forward_pre_hook(interrupt_on_fourth)
    before = _state(model)
    with pytest.raises(KeyboardInterrupt):
        cls(model, layer="features", batch_size=4)(_batch("cnn"), targets=TARGETS)
    after = _state(model)
    assert calls["n"] == 4
    assert before[:4] == after[:4]
    for name, value in before[4].items():
        assert torch.equal(value, after[4][name])
    user_hook.remove()


def test_perturbation_passes_are_batched(networks):
    # 24 channels, batch_size 10: 3 masked forwards per image, each of at most 10 inputs
    # (after the memory probe's one image and the capture's pass of the batch).
    model = networks("cnn")
    sizes = []
    handle = model.fc.register_forward_pre_hook(lambda _m, inputs: sizes.append(len(inputs[0])))
    try:
        ScoreCAM(model, layer="features", batch_size=10)(_batch("cnn"), targets=TARGETS)
    finally:
        handle.remove()
    assert sizes == [1, 2, 10, 10, 4, 10, 10, 4]


def test_perturbation_refuses_a_batch_over_the_memory_budget(networks, monkeypatch):
    from cameras.core.budget import BUDGET_VARIABLE, MemoryBudgetError

    monkeypatch.setenv(BUDGET_VARIABLE, "0.0001")
    with pytest.raises(MemoryBudgetError):
        ScoreCAM(networks("cnn"), layer="features", batch_size=4096)(_batch("cnn"))


def test_progress_bar_only_when_asked(networks, capsys):
    x = _batch("cnn")[:1]
    ScoreCAM(networks("cnn"), layer="features", progress=False)(x, targets=3)
    assert "scorecam" not in capsys.readouterr().err
    ScoreCAM(networks("cnn"), layer="features", progress=True)(x, targets=3)
    assert "scorecam" in capsys.readouterr().err


def test_ablation_runs_the_layers_before_the_explained_one_once_per_batch(networks):
    # The masks widen the batch at the layer: the first convolution sees one image per
    # batch of passes, the head sees the whole batch, and the map is the same as with the
    # image repeated (the fallback).
    model = networks("cnn")
    front, head = [], []
    handles = [
        model.features[0].register_forward_pre_hook(lambda _m, i: front.append(len(i[0]))),
        model.fc.register_forward_pre_hook(lambda _m, i: head.append(len(i[0]))),
    ]
    method = AblationCAM(model, layer="features.5", batch_size=10)
    x = _batch("cnn")[:1]
    try:
        widened = method(x, targets=3).maps
    finally:
        for handle in handles:
            handle.remove()
    assert front == [1, 1, 1, 1] and head == [1, 1, 10, 6]  # probe, capture, 16 channels
    repeated = AblationCAM(model, layer="features.5", batch_size=10)
    repeated._ablated_scores = lambda capture, image, mask, target: capture.target_scores(
        image.expand(mask.shape[0], -1, -1, -1), target, tuple(image.shape[2:]), mask
    )
    torch.testing.assert_close(widened, repeated(x, targets=3).maps, atol=1e-5, rtol=0)


def test_compare_lists_the_new_methods(capsys):
    from cameras.cli import main

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    listed = " ".join(capsys.readouterr().out.split())
    for name in ["scorecam", "ablationcam", "eigencam", "eigengradcam", "gradcam-elementwise"]:
        assert name in listed
    assert "kpcacam, fullgrad, cam" in listed
