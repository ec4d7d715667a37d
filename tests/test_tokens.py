"""Vision transformers and modern backbones, no glue: every family against the token oracle.

Tiny random-weight models (embedding 32, 1-2 blocks, 32-64 px inputs, patch 8 or 4) built
once per module. Each is checked against ``oracle_token_cameras`` (SPEC "Token models":
tokens on each scale's patch grid, padded extent cropped), the baselines against
pytorch-grad-cam with its documented ViT / Swin reshape, the size adapters against the
model families' own dynamic-size modes, and the model's state after success and error.
"""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_grad_cam as pgc
import timm
import torch
import torchvision
from oracle import oracle_cameras, oracle_token_cameras
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import cameras
from cameras.core.capture import LayerCapture
from cameras.core.tokens import any_input_size, token_family
from cameras.methods import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM

TOLERANCE = 1e-4
CLASSES = 5


def _random_head(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere, including the classifier (torchvision ViT zeroes its head,
    which would make every gradient zero and every comparison trivial)."""
    torch.manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and module.out_features == CLASSES:
            torch.nn.init.normal_(module.weight, std=0.5)
    return model.eval()


def _hf_vit():
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(7)
    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=CLASSES,
    )
    return ViTForImageClassification(config)


VIT = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=CLASSES)
SWIN = dict(patch_size=4, embed_dim=16, num_heads=(1, 2), num_classes=CLASSES)

# name: (builder, oracle settings: patch/stride of the explained layer, prefix tokens and
# how the grid follows a size that is not whole patches: "ceil" = the model pads, "floor" =
# it drops the remainder; None = a CNN, checked with the plain oracle).
FAMILIES = {
    "timm-vit": (lambda: timm.models.VisionTransformer(**VIT), (8, 1, "ceil")),
    "deit-distilled": (
        lambda: timm.models.deit.VisionTransformerDistilled(**VIT),
        (8, 2, "ceil"),
    ),
    "vit-registers": (
        lambda: timm.models.VisionTransformer(**VIT, reg_tokens=4, no_embed_class=True),
        (8, 5, "ceil"),
    ),
    "eva": (lambda: timm.models.Eva(**VIT, use_rot_pos_emb=True), (8, 1, "ceil")),
    "timm-swin": (
        lambda: timm.models.SwinTransformer(img_size=32, window_size=4, depths=(1, 1), **SWIN),
        (8, 0, "ceil"),
    ),
    "torchvision-swin": (
        lambda: torchvision.models.SwinTransformer(
            patch_size=[4, 4],
            embed_dim=16,
            depths=[1, 1],
            num_heads=[1, 2],
            window_size=[4, 4],
            num_classes=CLASSES,
        ),
        (8, 0, "ceil"),
    ),
    "torchvision-vit": (
        lambda: torchvision.models.VisionTransformer(
            image_size=32,
            patch_size=8,
            num_layers=2,
            num_heads=2,
            hidden_dim=32,
            mlp_dim=64,
            num_classes=CLASSES,
        ),
        (8, 1, "floor"),
    ),
    "hf-vit": (_hf_vit, (8, 1, "floor")),
    "convnext": (
        lambda: timm.models.ConvNeXt(
            depths=(1, 1, 1, 1), dims=(8, 16, 16, 32), num_classes=CLASSES, ls_init_value=1.0
        ),
        None,
    ),
}

AUTO_LAYERS = {
    "timm-vit": "blocks.1.norm1",
    "deit-distilled": "blocks.1.norm1",
    "vit-registers": "blocks.1.norm1",
    "eva": "blocks.1",  # average pooled: the last block's patch tokens reach the head
    "timm-swin": "norm",
    "torchvision-swin": "norm",
    "torchvision-vit": "encoder.layers.encoder_layer_1.ln_1",
    "hf-vit": "vit.layers.1.layernorm_before",  # transformers 5 (4: vit.encoder.layer.1...)
    "convnext": "norm_pre",  # the CNN rule, unchanged
}


@pytest.fixture(scope="module")
def models():
    built = {}

    def get(name):
        if name not in built:
            torch.manual_seed(sum(map(ord, name)))
            built[name] = _random_head(FAMILIES[name][0](), seed=len(name))
        return built[name]

    return get


def _photo(height: int, width: int, batch: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(height * 1000 + width)
    smooth = torch.randn(batch, 3, 6, 6, generator=generator)
    return torch.nn.functional.interpolate(smooth, size=(height, width), mode="bicubic")


# Square and whole patches; non-square and not whole patches (timm pads to 48 x 40 at the
# first scale, torchvision and Hugging Face ViT drop to 32 x 40, Swin pads its stages).
# ConvNeXt (total stride 32) needs larger inputs to give more than a 1 x 1 grid.
SIZES = {"square": (32, 32), "odd": (36, 44)}
CNN_SIZES = {"square": (64, 64), "odd": (68, 76)}


def _scales(size: tuple[int, int]) -> list[int]:
    shorter = min(size)
    return [shorter, shorter + 12, shorter + 28]


@pytest.mark.parametrize("targets", [None, [1, 3]], ids=["top1", "given"])
@pytest.mark.parametrize("size", list(SIZES), ids=str)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_matches_token_oracle(family, size, targets, models):
    model = models(family)
    settings = FAMILIES[family][1]
    height, width = (CNN_SIZES if settings is None else SIZES)[size]
    x = _photo(height, width)
    scales = _scales((height, width))
    # The paper's top-1 rule without a class (the oracle's), so a scale can be dropped.
    rule = "top1" if targets is None else None
    result = cameras.CAMERAS(model, scales=scales, rule=rule)(x, targets=targets)
    assert result.layer == AUTO_LAYERS[family]
    assert result.maps.shape == (2, height, width)
    layer = dict(model.named_modules())[result.layer]
    worst = 0.0
    for i in range(2):
        target = None if targets is None else targets[i]
        image = x[i : i + 1]
        if settings is None:
            expected, used, kept = oracle_cameras(model, layer, image, scales, target)
        else:
            patch, prefix, rule = settings
            with any_input_size(model):
                expected, used, kept = oracle_token_cameras(
                    model, layer, image, scales, patch, prefix, rule, target
                )
        assert result.targets[i] == used
        assert [r.scale for r in result.scales[i] if r.kept] == kept
        # Not a trivial agreement of two blank maps.
        assert expected.max() == 1 and expected.std() > 0.05
        worst = max(worst, (result.maps[i] - expected).abs().max().item())
    print(f"{family} {size} {targets}: max |diff| {worst:.1e}")  # shown with pytest -s
    assert worst <= TOLERANCE


def test_padded_grid_is_cropped_not_stretched(models):
    # A 36 x 44 input to a patch-8 ViT that pads: the 5 x 6 grid covers 40 x 48 pixels.
    # Its cell (i, j) lies over pixels [8i, 8i + 8): a map peaking on the last row of tokens
    # peaks in the input's last 4 rows (36 - 32), not stretched over the whole height.
    model = models("timm-vit")
    x = _photo(36, 44, batch=1)
    with LayerCapture(model, "blocks.1.norm1") as capture:
        step, _ = capture.run(x, torch.tensor([0]))
    assert step.activations.shape[2:] == (5, 6)
    assert step.covered == pytest.approx((40 / 36, 48 / 44))
    from cameras.core.fusion import resize_grid

    grid = torch.zeros(1, 5, 6)
    grid[0, 4] = 1.0
    up = resize_grid(grid, (36, 44), step.covered)
    assert up[0, :28].max() < 1e-6  # rows above pixel 28 (token 3's centre) see none of it
    assert up[0, 35].min() > 0.3  # the last input row is mostly the padded row's token


def test_token_layout_for_channel_last_and_prefix(models):
    # DeiT distilled has class + distillation tokens; registers add 4 more: all dropped.
    for name, prefix in (("deit-distilled", 2), ("vit-registers", 5), ("hf-vit", 1)):
        assert token_family(models(name)).prefix_tokens() == prefix
    family = token_family(models("timm-swin"))
    grid, covered = family.to_grid(torch.arange(24.0).reshape(1, 2, 3, 4), (16, 24), "x")
    assert grid.shape == (1, 4, 2, 3) and covered is None
    assert grid[0, :, 1, 2].tolist() == [20.0, 21.0, 22.0, 23.0]  # (B, h, w, C) permuted
    assert token_family(models("convnext")) is None


def test_reshape_transform_still_overrides(models):
    model = models("timm-vit")
    x = _photo(32, 32)

    def only_patches(tokens):
        return tokens[:, 1:].reshape(tokens.shape[0], 4, 4, -1).permute(0, 3, 1, 2)

    ours = cameras.CAMERAS(model, scales=[32])(x, targets=[1, 3])
    given = cameras.CAMERAS(model, scales=[32], reshape_transform=only_patches)(x, targets=[1, 3])
    torch.testing.assert_close(ours.maps, given.maps, atol=1e-6, rtol=0)

    def with_class_token(tokens):  # wrong on purpose: the class token kept, the last dropped
        return tokens[:, :16].reshape(tokens.shape[0], 4, 4, -1).permute(0, 3, 1, 2)

    # A transform is used as given, not second-guessed.
    wrong = cameras.CAMERAS(model, scales=[32], reshape_transform=with_class_token)(x, [1, 3])
    assert (wrong.maps - ours.maps).abs().max() > 0.1


# --- the size adapters against each family's own dynamic-size mode ---------------------


def test_timm_adapter_equals_timm_dynamic_size(models):
    for name, cls, extra in (
        ("timm-vit", timm.models.VisionTransformer, {}),
        ("eva", timm.models.Eva, {"use_rot_pos_emb": True}),
    ):
        model = models(name)
        twin = cls(**VIT, **extra, dynamic_img_size=True, dynamic_img_pad=True).eval()
        twin.load_state_dict(model.state_dict())
        x = _photo(36, 44)
        with any_input_size(model), torch.no_grad():
            ours = model(x)
        with torch.no_grad():
            torch.testing.assert_close(ours, twin(x), atol=1e-5, rtol=0)
    swin = models("timm-swin")
    twin = timm.models.SwinTransformer(
        img_size=32, window_size=4, depths=(1, 1), strict_img_size=False, **SWIN
    ).eval()
    twin.patch_embed.dynamic_img_pad = True
    twin.load_state_dict(swin.state_dict())
    x = _photo(44, 52)
    with any_input_size(swin), torch.no_grad():
        torch.testing.assert_close(swin(x), twin(x), atol=1e-5, rtol=0)


def test_torchvision_vit_adapter_equals_torchvision_resized_checkpoint(models):
    from torchvision.models.vision_transformer import interpolate_embeddings

    model = models("torchvision-vit")
    twin = torchvision.models.VisionTransformer(
        image_size=48,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=CLASSES,
    ).eval()
    twin.load_state_dict(interpolate_embeddings(48, 8, model.state_dict()))
    x = _photo(48, 48)
    with any_input_size(model), torch.no_grad():
        torch.testing.assert_close(model(x), twin(x), atol=1e-5, rtol=0)


def test_hugging_face_adapter_equals_interpolate_pos_encoding(models):
    model = models("hf-vit")
    x = _photo(40, 56)
    with torch.no_grad():
        expected = model(x, interpolate_pos_encoding=True).logits
        with any_input_size(model):
            ours = model(x).logits
    torch.testing.assert_close(ours, expected, atol=0, rtol=0)


# --- models left as found ---------------------------------------------------------------


def _everything(model: torch.nn.Module):
    """Every module's instance attributes (values that are not modules or tensors), its
    training flag and hooks, and every parameter and buffer (values, requires_grad)."""
    modules = []
    for module in model.modules():
        plain = {
            k: v
            for k, v in vars(module).items()
            if not k.startswith("_") or k in ("_process_input", "forward", "_use_cached_embed")
        }
        hooks = (
            len(module._forward_hooks),
            len(module._forward_pre_hooks),
            len(module._backward_hooks),
            len(module._forward_pre_hooks_with_kwargs),
        )
        modules.append((sorted(plain), repr(plain), module.training, hooks))
    tensors = {k: v.clone() for k, v in model.state_dict(keep_vars=False).items()}
    flags = [p.requires_grad for p in model.parameters()]
    return modules, tensors, flags


def _assert_same(before, after):
    assert before[0] == after[0]
    assert before[2] == after[2]
    assert before[1].keys() == after[1].keys()
    for name, value in before[1].items():
        assert torch.equal(value, after[1][name]), name


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "convnext"])
def test_model_left_as_found_after_success_and_error(family, models):
    model = models(family)
    model.train()  # a state a user could leave it in
    try:
        before = _everything(model)
        cameras.CAMERAS(model, scales=[36, 44])(_photo(36, 44), targets=[1, 3])
        _assert_same(before, _everything(model))
        with pytest.raises(ValueError, match="out of range"):
            cameras.CAMERAS(model, scales=[36, 44])(_photo(36, 44), targets=[1, 99])
        _assert_same(before, _everything(model))
        with pytest.raises(ValueError, match="out of range"):
            GradCAM(model)(_photo(36, 44), targets=[1, 99])
        _assert_same(before, _everything(model))
    finally:
        model.eval()


def test_scale_a_model_cannot_run_names_the_sizes_it_took():
    class FixedGrid(torch.nn.Module):
        # A model that only accepts multiples of 16, like a window size it cannot pad.
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4, CLASSES)

        def forward(self, x):
            if x.shape[2] % 16 or x.shape[3] % 16:
                raise RuntimeError(f"input {tuple(x.shape[2:])} is not a multiple of 16")
            return self.fc(self.conv(x).mean((2, 3)))

    model = FixedGrid().eval()
    with pytest.raises(ValueError, match=r"cannot run at input size 40x40 .* it ran at 32x32"):
        cameras.CAMERAS(model, layer="conv", scales=[32, 40])(_photo(32, 32))


# --- baselines against pytorch-grad-cam with its documented reshape -----------------------


def _vit_reshape(rows: int, cols: int):
    def reshape(tensor):
        result = tensor[:, 1:, :].reshape(tensor.size(0), rows, cols, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    return reshape


def _swin_reshape(rows: int, cols: int):
    def reshape(tensor):
        result = tensor.reshape(tensor.size(0), rows, cols, tensor.size(-1))
        return result.transpose(2, 3).transpose(1, 2)

    return reshape


def _minmax(maps):
    maps = maps - maps.amin((1, 2), keepdim=True)
    return maps / maps.amax((1, 2), keepdim=True).clamp(min=1e-12)


OURS_TO_THEIRS = {
    GradCAM: pgc.GradCAM,
    GradCAMPlusPlus: pgc.GradCAMPlusPlus,
    XGradCAM: pgc.XGradCAM,
    LayerCAM: pgc.LayerCAM,
    HiResCAM: pgc.HiResCAM,
}


@pytest.mark.parametrize("family", ["timm-vit", "timm-swin"])
@pytest.mark.parametrize("method_cls", list(OURS_TO_THEIRS), ids=lambda c: c.name)
def test_baselines_match_pytorch_grad_cam(method_cls, family, models):
    model = models(family)
    x = _photo(32, 48)
    targets = [1, 3]
    ours = method_cls(model)(x, targets=targets)
    layer = dict(model.named_modules())[ours.layer]
    reshape = _vit_reshape(4, 6) if family == "timm-vit" else _swin_reshape(4, 6)
    with any_input_size(model), OURS_TO_THEIRS[method_cls](model, [layer], reshape) as cam:
        theirs = cam(x.clone().requires_grad_(True), [ClassifierOutputTarget(t) for t in targets])
    for p in model.parameters():
        p.grad = None
    theirs = torch.from_numpy(theirs)
    assert (ours.maps.std((1, 2)) > 0.05).all()
    diff = (_minmax(ours.maps) - _minmax(theirs)).abs().max().item()
    print(f"{method_cls.name} {family}: max |diff| {diff:.1e}")
    assert diff <= TOLERANCE


# --- loading transformers by name with local weights --------------------------------------


def test_cli_explains_a_timm_vit_from_a_safetensors_file(tmp_path, capsys, chelsea):
    from safetensors.torch import save_file

    from cameras.cli import main

    torch.manual_seed(5)
    source = timm.create_model("vit_small_patch16_224", pretrained=False)
    save_file(source.state_dict(), tmp_path / "vit_s.safetensors")
    model, prep, classes = cameras.load_model(
        "vit_small_patch16_224", weights=tmp_path / "vit_s.safetensors"
    )
    for name, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert (prep.size, prep.mean.flatten().tolist()) == (224, [0.5, 0.5, 0.5])  # timm's config
    image = chelsea.resize((150, 100))
    image.save(tmp_path / "cat.png")
    code = main(
        [
            "explain",
            str(tmp_path / "cat.png"),
            "--model",
            "vit_small_patch16_224",
            "--weights",
            str(tmp_path / "vit_s.safetensors"),
            "--scales",
            "224,260",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0, capsys.readouterr().err
    saliency = np.load(tmp_path / "out" / "cat_cameras.npy")
    assert saliency.shape == (100, 150) and saliency.std() > 0.05
    # The class explained is the model's top-1 for the file's weights.
    with any_input_size(model), torch.no_grad():  # 224 x 336: not the size it was built for
        top1 = int(model(prep(image)[None]).argmax())
    assert f"cameras map for {classes[top1]} ({top1})" in capsys.readouterr().out


def test_torchvision_transformer_with_a_state_dict_file(tmp_path):
    torch.manual_seed(6)
    source = torchvision.models.swin_t()
    torch.save(source.state_dict(), tmp_path / "swin_t.pth")
    model, prep, classes = cameras.load_model("swin_t", weights=tmp_path / "swin_t.pth")
    assert torch.equal(model.head.weight, source.head.weight) and len(classes) == 1000
    assert prep.size == 224  # from torchvision's weight metadata, no download
    assert cameras.CAMERAS(model).layer_name == "norm"


def test_transformer_download_error_says_how_to_pass_a_file(monkeypatch):
    def offline(*_args, **_kwargs):
        raise OSError("no network")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(cameras.ModelError, match=r"weights=PATH \(CLI: --weights FILE\)"):
        cameras.load_model("vit_small_patch16_224")


def test_bad_safetensors_file_is_a_clear_error(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(cameras.ModelError, match="junk.safetensors is not a safetensors file"):
        cameras.load_model("vit_small_patch16_224", weights=junk)
