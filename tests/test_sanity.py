"""The model-parameter randomisation test: blocks, copies, similarities, the command."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from helpers import TinyNet, assert_left_as_found, model_state
from torch import nn

from cameras import CAMERAS, GradCAM
from cameras.apps.metrics.sanity import (
    Step,
    hog_similarity,
    randomisation_steps,
    randomise_,
    randomised_models,
    sanity_check,
    similarities,
    spearman,
    ssim,
)
from cameras.cli import main


class Staged(nn.Module):
    """conv_stem + bn, a container of stage containers, a head: like timm's EfficientNet."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)  # defined first, runs last: order comes from execution
        self.stem = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.stages = nn.Sequential(
            nn.Sequential(nn.Conv2d(4, 8, 3), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 8, 3)),
        )

    def forward(self, x):
        x = self.stages(self.act(self.bn(self.stem(x))))
        return self.head(x.mean((2, 3)))


def test_steps_follow_execution_order_from_the_logits_down():
    labels = [s.label for s in randomisation_steps(Staged())]
    assert labels == ["head", "stages.1", "stages.0", "stem+bn"]
    assert randomisation_steps(Staged())[-1] == Step("stem+bn", ("stem", "bn"))


def test_steps_for_lite0_and_resnet(lite0):
    import torchvision

    model, _, _ = lite0
    assert [s.label for s in randomisation_steps(model)] == [
        "classifier",
        "conv_head+bn2",
        *[f"blocks.{k}" for k in range(6, -1, -1)],
        "conv_stem+bn1",
    ]
    resnet = torchvision.models.resnet18(num_classes=4)
    assert [s.label for s in randomisation_steps(resnet)] == [
        "fc",
        "layer4",
        "layer3",
        "layer2",
        "layer1",
        "conv1+bn1",
    ]


def test_randomise_keeps_scale_and_buffers():
    model = Staged()
    with torch.no_grad():
        model.bn.running_mean.fill_(0.25)
    weight = model.stages[0][0].weight.detach().clone()
    randomise_(model, ["stages.0", "bn"], torch.Generator().manual_seed(0))
    new = model.stages[0][0].weight
    assert not torch.equal(new, weight)
    assert new.mean().item() == pytest.approx(weight.mean().item(), abs=0.03)
    assert new.std().item() == pytest.approx(weight.std().item(), rel=0.15)
    assert torch.all(model.bn.running_mean == 0.25)  # buffers are kept
    with pytest.raises(ValueError, match="not a module"):
        randomise_(model, ["nope"], torch.Generator())


def test_cascading_accumulates_independent_resets_and_the_original_is_untouched():
    model = Staged().train()
    before = model_state(model)
    steps = randomisation_steps(model)
    head, stage1 = model.head.weight.detach().clone(), model.stages[1][0].weight.detach().clone()
    seen = [
        (k, m.head.weight.clone(), m.stages[1][0].weight.clone())
        for k, _, m in randomised_models(model, steps[:2], "cascading")
    ]
    assert not torch.equal(seen[1][1], head) and not torch.equal(seen[1][2], stage1)
    assert torch.equal(seen[0][1], seen[1][1])  # step 2 keeps step 1's randomisation
    independent = [
        (m.head.weight.clone(), m.stages[1][0].weight.clone())
        for _, _, m in randomised_models(model, steps[:2], "independent")
    ]
    assert torch.equal(independent[1][0], head)  # only stages.1 is random at step 2
    assert not torch.equal(independent[1][1], stage1)
    assert_left_as_found(model, before)
    with pytest.raises(ValueError, match="mode"):
        next(randomised_models(model, steps, "sideways"))


def test_similarities_by_hand():
    assert spearman(np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1])) == pytest.approx(-1.0)
    # Ranks (1, 2, 3, 4) against (3, 1, 2, 4): d^2 = 4 + 1 + 1 + 0 = 6, rho = 1 - 36/60.
    a, b = np.array([-3.0, -1.0, 2.0, 4.0]), np.array([3.0, 1.0, 2.0, 4.0])
    assert spearman(a, b) == pytest.approx(0.4)
    assert spearman(a, b, absolute=True) == pytest.approx(1.0)  # |a| ranks like b
    assert spearman(np.zeros(4), b) == 0.0
    rng = np.random.default_rng(0)
    x = rng.random((32, 32))
    assert ssim(x, x) == pytest.approx(1.0)
    assert hog_similarity(x, x) == pytest.approx(1.0)
    assert hog_similarity(x, np.zeros_like(x)) == 0.0
    assert ssim(x, rng.random((32, 32))) < 0.2
    values = similarities(x, x)
    assert set(values) == {"spearman", "spearman_abs", "ssim", "hog"}


def test_sanity_check_on_a_tiny_model():
    torch.manual_seed(0)
    model = TinyNet(num_classes=4).train()
    before = model_state(model)
    x = torch.rand(2, 3, 32, 48)
    methods = {
        "gradcam": lambda m: GradCAM(m, layer="features"),
        "cameras": lambda m: CAMERAS(m, layer="features", scales=[32, 48]),
    }
    result = sanity_check(model, x, methods, mode="independent")
    steps = randomisation_steps(model)
    assert result.labels == ["original"] + [s.label for s in steps]
    assert result.maps["gradcam"].shape == (len(steps) + 1, 2, 32, 48)
    assert len(result.rows) == len(steps) * 2 * 2
    original = GradCAM(model, layer="features")(x, targets=result.targets).maps.numpy()
    np.testing.assert_allclose(result.maps["gradcam"][0], original, atol=1e-6)
    assert_left_as_found(model, before)


def test_randomising_lite0s_classifier_changes_its_map_and_not_the_model(lite0, chelsea):
    model, prep, _ = lite0
    before = model_state(model)
    x = prep(chelsea.resize((225, 150)))[None]
    steps = randomisation_steps(model)[:1]
    result = sanity_check(model, x, {"gradcam": lambda m: GradCAM(m)}, steps=steps)
    (row,) = result.rows
    assert row["label"] == "classifier" and row["spearman"] < 0.8
    assert_left_as_found(model, before)


def test_sanity_command(tmp_path, chelsea, capsys):
    photo = tmp_path / "chelsea.jpg"
    chelsea.save(photo)
    out = tmp_path / "out"
    code = main(
        [
            "sanity",
            str(photo),
            str(tmp_path / "missing.jpg"),
            "--methods",
            "gradcam,cameras",
            "--scales",
            "224,324",
            "--blocks",
            "2",
            "--out",
            str(out),
        ]
    )
    captured = capsys.readouterr()
    assert code == 1  # the missing file; the photo still ran
    assert "missing.jpg" in captured.err
    with open(out / "sanity.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["method"], r["step"], r["label"]) for r in rows] == [
        ("gradcam", "1", "classifier"),
        ("cameras", "1", "classifier"),
        ("gradcam", "2", "conv_head+bn2"),
        ("cameras", "2", "conv_head+bn2"),
    ]
    assert all(-1 <= float(r["spearman"]) <= 1 and r["mode"] == "cascading" for r in rows)
    assert (out / "chelsea_sanity.png").stat().st_size > 5000
    assert (out / "sanity_similarity.png").exists()
    assert "| 1. classifier |" in captured.out
    assert (out / "sanity_summary.md").read_text().strip() == captured.out.strip()


def test_mean_similarities_average_over_images_per_step():
    from cameras.apps.metrics.sanity import SIMILARITIES, mean_similarities, similarity_markdown

    def row(image, method, step, value):
        return {"image": image, "method": method, "step": step} | dict.fromkeys(SIMILARITIES, value)

    rows = [row("a", "cameras", 1, 0.2), row("b", "cameras", 1, 0.4), row("a", "cameras", 2, 0.0)]
    rows += [row("a", "gradcam", 1, 1.0), row("a", "gradcam", 2, 0.5)]
    means = mean_similarities(rows, ["cameras", "gradcam"], 2)
    assert list(means) == list(SIMILARITIES)
    assert means["ssim"]["cameras"] == pytest.approx([0.3, 0.0])
    assert means["ssim"]["gradcam"] == [1.0, 0.5]
    table = similarity_markdown(means, ["classifier", "head"], "cascading", 2)
    assert "mean over 2 images" in table
    assert "| 1. classifier | 0.300 | 1.000 |" in table and "| 2. head | 0.000 | 0.500 |" in table
