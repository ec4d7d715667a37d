"""Saliency-focused PGD: exact steps against a NumPy oracle, pixel bounds, the model left
as it was, the real Lite0 model reaching its target, and the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import assert_left_as_found, model_state
from PIL import Image
from torch import nn

import cameras
from cameras.apps.attack import DEFAULT_STEP_SIZE, pgd
from cameras.cli import main


# ---------------------------------------------------------------- tiny models, exact values
def linear_model(seed: int = 0) -> nn.Module:
    """Scores = W x + b on a flattened (3, 4, 4) image: the CE gradient has a closed form."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))


def reference_pgd(model, x, target, keep, beta, step, steps, norm, penalty="gradient"):
    """Plain NumPy PGD on CE(Wx + b) + beta * ||p * keep||_2 (float64), from the SPEC's loss.

    penalty "proximal": the step follows the cross-entropy alone, then every value is
    scaled by max(0, 1 - t * keep / ||p * keep||), t = beta times the step per unit gradient.
    """
    weight = model[1].weight.detach().double().numpy()
    bias = model[1].bias.detach().double().numpy()
    clean = x.double().numpy()[0]
    keep = np.broadcast_to(keep.double().numpy()[0], clean.shape)
    p = np.zeros_like(clean)
    onehot = np.eye(weight.shape[0])[target]
    for _ in range(steps):
        z = weight @ (clean + p).ravel() + bias
        soft = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        grad = (weight.T @ (soft - onehot)).reshape(clean.shape)
        if penalty == "gradient":
            outside = np.sqrt(((p * keep) ** 2).sum() + 1e-12)
            grad = grad + beta * keep**2 * p / outside
        if norm == "l2":
            rate = step / np.linalg.norm(grad)
            p = p - rate * grad
        else:
            rate = step
            p = p - step * np.sign(grad)
        if penalty == "proximal":
            outside = max(np.sqrt(((p * keep) ** 2).sum()), 1e-12)
            p = p * np.maximum(0.0, 1.0 - rate * beta * keep / outside)
        p = np.clip(clean + p, 0.0, 1.0) - clean
    return p


@pytest.mark.parametrize(
    ("norm", "beta", "penalty"),
    [
        ("l2", 0.0, "gradient"),
        ("l2", 3.0, "gradient"),
        ("linf", 0.0, "gradient"),
        ("l2", 0.5, "proximal"),
        ("linf", 20.0, "proximal"),
    ],
)
def test_steps_match_a_numpy_oracle(norm, beta, penalty):
    model = linear_model()
    x = torch.rand(1, 3, 4, 4) * 0.6 + 0.2
    psi = torch.rand(1, 4, 4)
    step = 0.05 if norm == "l2" else 0.02
    result = pgd(
        model, x, target=2, saliency=psi, beta=beta, steps=4, step_size=step, norm=norm,
        stop_when_reached=False, penalty=penalty,
    )  # fmt: skip
    expected = reference_pgd(model, x, 2, (1 - psi)[:, None], beta, step, 4, norm, penalty)
    if penalty == "proximal" and beta:
        assert np.abs(expected).max() > 0 and (expected == 0).any(), "the shrink must act"
    np.testing.assert_allclose(result.perturbation[0].numpy(), expected, atol=2e-6)
    assert result.steps == [4]
    # The reported figures are those of the perturbation and the model's output.
    p = result.perturbation[0]
    assert result.l2[0].item() == pytest.approx(p.norm().item(), rel=1e-5)
    assert result.linf[0].item() == pytest.approx(p.abs().max().item(), rel=1e-5)
    probabilities = model(result.adversarial).softmax(1)[0]
    assert result.confidence[0].item() == pytest.approx(probabilities[2].item(), rel=1e-4)
    assert result.reached == [int(probabilities.argmax()) == 2]


def test_first_step_is_the_sign_of_the_cross_entropy_gradient():
    # Worked by hand: scores = W x with W = +1 on class 0's red pixels, -1 on class 1's.
    model = nn.Sequential(nn.Flatten(), nn.Linear(3, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 1.0]]))
    x = torch.tensor([0.5, 0.5, 0.5]).reshape(1, 3, 1, 1)
    result = pgd(model, x, target=1, steps=1, step_size=0.1, norm="linf", stop_when_reached=False)
    # Scores (0.5, 0), softmax s = (0.622, 0.378); d CE(class 1) / dx = W^T (s - e_1)
    # = (s0 + (1 - s1), 0, -(1 - s1)) = (1.244, 0, -0.622): signs +, 0, - -> steps -, 0, +.
    assert result.perturbation.flatten().tolist() == pytest.approx([-0.1, 0.0, 0.1])


def test_least_likely_class_is_the_default_target():
    model = linear_model(1)
    x = torch.rand(3, 3, 4, 4)
    result = pgd(model, x, steps=0)
    assert result.targets == model(x).argmin(1).tolist()
    assert result.original == model(x).argmax(1).tolist()
    assert result.reached == [False, False, False] and result.steps == [0, 0, 0]
    assert result.l2.tolist() == [0.0, 0.0, 0.0]


class SmallNet(nn.Module):
    """Conv, BatchNorm, Dropout: modules whose training flag matters."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5)
        )
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


@pytest.mark.parametrize(("norm", "eps"), [("linf", 3 / 255), ("l2", 0.2)])
def test_pixels_stay_valid_and_inside_the_eps_ball(norm, eps):
    model = SmallNet().eval()
    x = torch.rand(2, 3, 8, 8)
    x[:, :, :2] = 1.0  # saturated pixels: a step would push them out of [0, 1]
    x[:, :, 2:4] = 0.0
    step = 2 / 255 if norm == "linf" else 0.1
    result = pgd(
        model, x, target=[0, 3], steps=6, step_size=step, eps=eps, norm=norm,
        stop_when_reached=False,
    )  # fmt: skip
    assert result.pixels.min() >= 0.0 and result.pixels.max() <= 1.0
    torch.testing.assert_close(result.perturbation, result.pixels - x)
    if norm == "linf":
        assert result.linf.max() <= eps + 1e-6
    else:
        assert result.l2.max() <= eps + 1e-5
    assert result.targets == [0, 3]


def test_normalised_input_is_attacked_in_pixel_space():
    prep = cameras.Preprocess(8, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    model = SmallNet().eval()
    pixels = torch.rand(1, 3, 8, 8)
    x = prep.normalise(pixels)
    result = pgd(model, x, steps=3, step_size=4 / 255, prep=prep, stop_when_reached=False)
    torch.testing.assert_close(result.adversarial, prep.normalise(result.pixels))
    torch.testing.assert_close(result.perturbation, result.pixels - pixels, atol=1e-6, rtol=0)
    assert 0 < result.linf.item() <= 3 * 4 / 255 + 1e-5
    with pytest.raises(ValueError, match="outside bounds"):
        pgd(model, x, steps=1)  # normalised input without prep


def test_bad_arguments_give_clear_errors():
    model, x = SmallNet(), torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="saliency has shape"):
        pgd(model, x, saliency=torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        pgd(model, x, saliency=torch.full((2, 8, 8), 2.0))
    with pytest.raises(ValueError, match="out of range"):
        pgd(model, x, target=9)
    with pytest.raises(ValueError, match="2 images"):
        pgd(model, x, target=[1])
    with pytest.raises(ValueError, match="norm"):
        pgd(model, x, norm="l1")
    with pytest.raises(ValueError, match="no class names"):
        pgd(model, x, target="tabby")


def test_early_stop_freezes_each_image_separately():
    model = linear_model(2)
    x = torch.rand(2, 3, 4, 4)
    logits = model(x)
    # Image 0's target is already its top-1: it must take no step; image 1 keeps going.
    targets = [int(logits[0].argmax()), int(logits[1].argmin())]
    result = pgd(model, x, target=targets, steps=5, step_size=0.01, norm="linf")
    assert result.steps[0] == 0 and result.l2[0].item() == 0.0
    assert result.steps[1] > 0 and result.reached[0]


# ---------------------------------------------------------------- real model, real photo
@pytest.fixture(scope="module")
def coffee_attacks(lite0, coffee):
    """Plain and Grad-CAM-focused PGD on the espresso photo, same settings (the defaults)."""
    model, prep, _ = lite0
    x = prep(coffee)[None]
    saliency = cameras.GradCAM(model)(x).maps
    before = model_state(model)
    plain = pgd(model, x, prep=prep, steps=30)
    focused = pgd(model, x, saliency=saliency, beta=50.0, prep=prep, steps=30)
    return x, saliency, plain, focused, before


def test_lite0_reaches_the_least_likely_class(lite0, coffee_attacks):
    model, prep, classes = lite0
    x, _, plain, focused, _ = coffee_attacks
    least = int(model(x).argmin(1))
    for result in (plain, focused):
        assert result.targets == [least] and result.reached == [True]
        assert 0 < result.steps[0] <= 30
        with torch.no_grad():
            scores = model(result.adversarial)
        assert int(scores.argmax(1)) == least
        assert result.confidence[0].item() == pytest.approx(
            scores.softmax(1)[0, least].item(), rel=1e-3
        )
        assert result.pixels.min() >= 0 and result.pixels.max() <= 1
        # Sign steps of 2/255 keep the image on the 8-bit grid: a PNG holds it exactly.
        levels = result.pixels * 255
        assert (levels - levels.round()).abs().max() < 1e-3
    assert plain.target_names == [classes[least]]


def test_focused_perturbation_stays_in_the_salient_region(coffee_attacks):
    _, saliency, plain, focused, _ = coffee_attacks
    keep = (1 - saliency)[:, None]
    outside_plain = (plain.perturbation * keep).norm().item()
    outside_focused = (focused.perturbation * keep).norm().item()
    # Measured on the CPU: 3.06 against 5.29 (sign steps leave outside pixels flipping
    # between 0 and +-2/255, so the outside mass does not vanish).
    assert outside_focused < 0.8 * outside_plain
    assert focused.l2[0] < plain.l2[0]  # and the whole perturbation is smaller too


def test_lite0_is_unchanged_by_the_attack(lite0, coffee_attacks):
    assert_left_as_found(lite0[0], coffee_attacks[-1])


# ---------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, coffee):
    folder = tmp_path_factory.mktemp("attack-in")
    coffee.save(folder / "coffee.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path_factory.mktemp("attack-out")
    argv = ["attack", str(folder / "coffee.png"), str(folder / "broken.jpg")]
    argv += ["--method", "gradcam", "--steps", "30", "--out", str(out)]
    return out, argv


def test_cli_writes_files_and_json(cli_run, lite0, coffee, capsys):
    out, argv = cli_run
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 1  # the broken file failed; the photo was still written
    assert "broken.jpg" in captured.err and captured.err.count("error:") == 1
    model, prep, classes = lite0
    lines = (out / "attack.jsonl").read_text().splitlines()
    assert len(lines) == 1
    row = json.loads(lines[0])
    least = int(model(prep(coffee)[None]).argmin(1))
    assert row["target"] == {"index": least, "name": classes[least]}
    assert row["original"]["name"] == "espresso"
    assert row["reached"] is True and row["png_reached"] is True
    assert isinstance(row["confidence"], float) and 0 < row["confidence"] <= 1
    assert row["l2"] > 0 and row["linf"] > 0 and 0 < row["steps"] <= 30
    assert row["step_size"] == pytest.approx(DEFAULT_STEP_SIZE["linf"])
    assert row["plain"]["reached"] is True
    assert row["l2_reduction_percent"] == pytest.approx(
        100 * (1 - row["l2"] / row["plain"]["l2"]), abs=0.01
    )
    adversarial = Image.open(out / row["png"])
    assert adversarial.format == "PNG" and adversarial.mode == "RGB"
    assert adversarial.size == (336, 224)  # the model's input, not the photo's 600 x 400
    # The PNG is the adversarial image: the model sees the target in it.
    pixels = torch.from_numpy(np.asarray(adversarial, dtype=np.float32) / 255).permute(2, 0, 1)
    assert int(model(prep.normalise(pixels)[None]).argmax(1)) == least
    assert (out / row["picture"]).stat().st_size > 0
    summary = json.loads((out / "attack_summary.json").read_text())
    assert summary["images"] == 1 and summary["plain"]["fooling_rate_percent"] == 100.0
    assert "fooling rate" in captured.out and "56.5 %" in captured.out


def test_cli_refuses_an_input_folder_as_output(tmp_path, coffee, capsys):
    coffee.save(tmp_path / "coffee.png")
    assert main(["attack", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "input folder" in capsys.readouterr().err
    assert main(["attack", str(tmp_path), "--steps", "-1", "--out", str(tmp_path / "o")]) == 2
    with pytest.raises(SystemExit) as stop:  # argparse rejects an unreadable amount
        main(["attack", str(tmp_path), "--eps", "1/0"])
    assert stop.value.code == 2
    assert "expected a number" in capsys.readouterr().err


def test_plain_and_focused_share_settings_and_summaries_average_per_image():
    from cameras.apps.attack import compare_outcomes, plain_and_focused, summarise_attacks

    model = linear_model(3)
    x = torch.rand(1, 3, 4, 4)
    saliency = torch.zeros(4, 4)
    saliency[1:3, 1:3] = 1.0
    both = plain_and_focused(model, x, saliency, beta=5.0, steps=4, stop_when_reached=False)
    plain = pgd(model, x, steps=4, stop_when_reached=False)
    focused = pgd(model, x, saliency=saliency, beta=5.0, steps=4, stop_when_reached=False)
    torch.testing.assert_close(both.perturbation[0], plain.perturbation[0])
    torch.testing.assert_close(both.perturbation[1], focused.perturbation[0])
    row = compare_outcomes(both)
    assert row["l2"] == pytest.approx(float(focused.l2[0]), abs=1e-6)
    assert row["plain"]["l2"] == pytest.approx(float(plain.l2[0]), abs=1e-6)
    expected = 100 * (1 - row["l2"] / row["plain"]["l2"])
    assert row["l2_reduction_percent"] == pytest.approx(expected, abs=1e-3)
    rows = [
        {
            "reached": True,
            "l2": 1.0,
            "linf": 0.1,
            "l2_reduction_percent": 50.0,
            "linf_reduction_percent": -10.0,
            "plain": {"reached": True, "l2": 2.0, "linf": 0.05},
        },
        {
            "reached": False,
            "l2": 3.0,
            "linf": 0.3,
            "l2_reduction_percent": 25.0,
            "linf_reduction_percent": None,
            "plain": {"reached": True, "l2": 4.0, "linf": 0.1},
        },
    ]
    summary = summarise_attacks(rows, "cameras", {"norm": "linf"})
    assert summary["images"] == 2 and summary["settings"] == {"norm": "linf"}
    assert summary["cameras"] == {"fooling_rate_percent": 50.0, "mean_l2": 2.0, "mean_linf": 0.2}
    assert summary["plain"] == {"fooling_rate_percent": 100.0, "mean_l2": 3.0, "mean_linf": 0.075}
    assert summary["l2_reduction_percent"] == 37.5
    assert summary["linf_reduction_percent"] == -10.0  # an undefined reduction is left out
    plain_only = summarise_attacks([r["plain"] for r in rows], None, {})
    assert set(plain_only) == {"images", "settings", "plain"}


def test_proximal_penalty_holds_the_outside_at_exactly_zero():
    # A 0/1 map: the proximal map is exact group soft-thresholding, and a large beta keeps
    # every value outside the salient half at zero while the inside moves.
    model = linear_model(1)
    x = torch.rand(1, 3, 4, 4) * 0.6 + 0.2
    psi = torch.zeros(1, 4, 4)
    psi[:, :, :2] = 1.0
    result = pgd(
        model, x, target=3, saliency=psi, beta=100.0, steps=5, step_size=0.05, norm="l2",
        penalty="proximal", stop_when_reached=False,
    )  # fmt: skip
    p = result.perturbation[0]
    assert (p[:, :, 2:] == 0).all()
    assert p[:, :, :2].abs().max() > 0
    gradient_rule = pgd(
        model, x, target=3, saliency=psi, beta=100.0, steps=5, step_size=0.05, norm="l2",
        stop_when_reached=False,
    )  # fmt: skip
    assert (gradient_rule.perturbation[0][:, :, 2:] != 0).any()  # the subgradient oscillates


def test_beta_schedule_halves_beta_until_the_target_is_reached():
    # Psi = 0 everywhere: the whole image is outside, so a large fixed beta holds the
    # perturbation at zero and the target is never reached; halving beta gets there.
    model = linear_model(2)
    x = torch.rand(1, 3, 4, 4) * 0.6 + 0.2
    psi = torch.zeros(1, 4, 4)
    common = dict(
        target=4, saliency=psi, beta=1000.0, steps=60, step_size=0.2, norm="l2",
        penalty="proximal",
    )  # fmt: skip
    fixed = pgd(model, x, **common)
    assert fixed.reached == [False] and fixed.l2[0] == 0
    scheduled = pgd(model, x, beta_patience=2, **common)
    assert scheduled.reached == [True] and scheduled.steps[0] < 60
    # Every two steps beta halves: it got there only once beta * rate fell below the pull.
    assert scheduled.steps[0] > 2
    with pytest.raises(ValueError, match="beta_patience must be a positive int"):
        pgd(model, x, beta_patience=0, **common)
    with pytest.raises(ValueError, match="penalty must be one of gradient, proximal"):
        pgd(model, x, target=4, penalty="prox")


def test_cli_runs_the_proximal_focused_attack(tmp_path, coffee, capsys):
    coffee.save(tmp_path / "coffee.png")
    out = tmp_path / "out"
    argv = ["attack", str(tmp_path / "coffee.png"), "--out", str(out), "--scales", "224,324"]
    argv += ["--norm", "l2", "--step-size", "0.1", "--penalty", "proximal"]
    code = main([*argv, "--beta-patience", "10", "--steps", "150"])
    assert code == 0, capsys.readouterr().err
    row = json.loads((out / "attack.jsonl").read_text().splitlines()[0])
    assert row["reached"] is True and row["steps"] <= 150
    assert main([*argv, "--beta-patience", "0"]) == 2
    assert "--beta-patience 0: must be 1 or more" in capsys.readouterr().err
