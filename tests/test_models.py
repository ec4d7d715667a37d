"""The embedded default model, other model names, local weight files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import cameras
from cameras.models import ModelError, imagenet_classes, load_model
from cameras.models.lite import EfficientNetLite

ROOT = Path(__file__).resolve().parent.parent

CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_default_model_recognises_bundled_photos(lite0, coffee, chelsea):
    model, prep, classes = lite0
    assert len(classes) == 1000 and classes[967] == "espresso"
    with torch.no_grad():
        coffee_top1 = int(model(prep(coffee)[None]).argmax())
        cat_top1 = int(model(prep(chelsea)[None]).argmax())
    assert classes[coffee_top1] == "espresso"
    assert classes[cat_top1] == "Egyptian cat"


def test_preprocessing_keeps_the_whole_image_shorter_side_224(lite0, chelsea):
    _, prep, _ = lite0
    x = prep(chelsea)
    assert x.shape == (3, 224, 337)  # 451 x 300 -> 337 x 224, no crop
    # (x - 127) / 128 on 0-255 pixels: a white image maps to 1.0, black to -127/128.
    white = prep(Image.new("RGB", (10, 20), (255, 255, 255)))
    black = prep(Image.new("RGB", (10, 20), (0, 0, 0)))
    assert torch.allclose(white, torch.ones_like(white))
    assert torch.allclose(black, torch.full_like(black, -127 / 128))


def test_default_map_for_the_cat_peaks_on_the_cat(lite0, chelsea):
    model, prep, _ = lite0
    # The cat on a plain grey canvas, on the right: the map must peak on the cat.
    canvas = Image.new("RGB", (900, 300), (128, 128, 128))
    canvas.paste(chelsea, (449, 0))
    x = prep(canvas)[None]
    result = cameras.CAMERAS(model)(x)
    assert result.targets[0] in CAT_CLASSES
    saliency = result.maps[0]
    width = saliency.shape[1]
    cat_left = round(449 * width / 900)
    peak_column = int(saliency.argmax()) % width
    assert peak_column >= cat_left
    assert saliency[:, cat_left:].mean() > 3 * saliency[:, : cat_left - 10].mean()


def test_other_lite_models_load_offline():
    model, prep, classes = load_model("efficientnet_lite1")
    assert prep.size == 240 and classes[0] == "tench"
    assert sum(p.numel() for p in model.parameters()) > 4_000_000


def test_torchvision_name_with_local_weights(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model, prep, classes = load_model("resnet18", weights=path)
    assert not model.training and prep.size == 224 and len(classes) == 1000
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)
    assert cameras.CAMERAS(model, scales=[64]).layer_name == "layer4"


def test_missing_pretrained_weights_say_how_to_pass_a_file(monkeypatch, tmp_path):
    import torch.hub

    def offline(*_args, **_kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ModelError, match=r"pretrained weights for 'resnet18'.*weights=PATH"):
        load_model("resnet18")


def test_bad_names_and_files_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="unknown model 'resnet_18'.*closest: resnet18"):
        load_model("resnet_18")
    with pytest.raises(ModelError, match="does not exist"):
        load_model("resnet18", weights=tmp_path / "none.pth")
    junk = tmp_path / "junk.pth"
    junk.write_text("not weights")
    with pytest.raises(ModelError, match="is not a PyTorch state dict"):
        load_model("resnet18", weights=junk)
    wrong = tmp_path / "wrong.pth"
    torch.save(torchvision.models.resnet34().state_dict(), wrong)
    with pytest.raises(ModelError, match="do not fit the model"):
        load_model("resnet18", weights=wrong)


def test_random_weights_for_sanity_checks():
    model, _, _ = load_model("efficientnet_lite0", pretrained=False)
    default, _, _ = load_model()
    first = next(iter(default.state_dict()))
    assert not torch.equal(model.state_dict()[first], default.state_dict()[first])
    assert np.isfinite(model(torch.zeros(1, 3, 64, 64)).detach().numpy()).all()


def _outputs(model, x, layers):
    """Logits and the outputs of the named modules (copied: ReLU6 works in place)."""
    seen = {}

    def keep(name):
        return lambda _module, _inputs, output: seen.__setitem__(name, output.clone())

    handles = [model.get_submodule(n).register_forward_hook(keep(n)) for n in layers]
    try:
        with torch.no_grad():
            seen["logits"] = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"])
def test_our_lite_is_timms_tf_efficientnet_lite(name):
    timm = pytest.importorskip("timm")
    reference = timm.create_model("tf_" + name, pretrained=False).eval()  # random weights
    model = EfficientNetLite(name).eval()
    ours, theirs = model.state_dict(), reference.state_dict()
    assert [(k, v.shape) for k, v in ours.items()] == [(k, v.shape) for k, v in theirs.items()]
    assert [n for n, _ in model.named_modules()] == [n for n, _ in reference.named_modules()]
    model.load_state_dict(theirs)
    # An odd, non-square size: TF "SAME" padding puts the odd pixel bottom / right.
    for size in [(224, 224), (225, 301)]:
        x = torch.randn(1, 3, *size)
        got = _outputs(model, x, ["blocks.3", "bn2"])
        want = _outputs(reference, x, ["blocks.3", "bn2"])
        for key in ("blocks.3", "bn2", "logits"):
            assert (got[key] - want[key]).abs().max() <= 1e-5, (name, size, key)


def test_shipped_class_names_are_torchvisions():
    categories = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    assert imagenet_classes() == list(categories)


def test_default_model_imports_neither_timm_nor_torchvision():
    code = (
        "import sys, torch, cameras; "
        "model, prep, _ = cameras.load_model(); "
        "cameras.CAMERAS(model, scales=[64])(torch.zeros(1, 3, 64, 64)); "
        "loaded = [m for m in ('timm', 'torchvision', 'torch._dynamo') if m in sys.modules]; "
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
