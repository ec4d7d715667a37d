"""CAMERAS against the plain oracle written from docs/method.md (tests/oracle.py)."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyNet, photo_batch, seeded
from oracle import oracle_cameras

import cameras
from cameras.methods.cameras import default_scales, resized_size

SCALES = [64, 96, 128, 160]  # the paper's rule in miniature, to keep the oracle fast
TOL = 1e-4


def assert_matches_oracle(model, layer, x, scales, targets=None, rule=None, oracle_scales=None):
    method = cameras.CAMERAS(model, layer=layer, scales=scales, rule=rule)
    result = method(x, targets)
    scales = oracle_scales or scales
    rule = method.rule_for(None if targets is None else torch.tensor(targets))
    layer_module = dict(model.named_modules())[layer]
    for b in range(x.shape[0]):
        target = None if targets is None else targets[b]
        expected, used, kept = oracle_cameras(
            model, layer_module, x[b : b + 1], scales, target, rule
        )
        assert result.targets[b] == used
        assert [s.scale for s in result.scales[b] if s.kept] == kept
        diff = (result.maps[b] - expected).abs().max().item()
        assert diff <= TOL, f"image {b}: max |diff| {diff:.2e}"
    return result


# (architecture, seed, layer): seeds whose top-1 flips across SCALES on these photos,
# so the top-1 rule drops scales and the test would catch a wrong rule.
FLIPPING = [("resnet18", 2, "layer4"), ("resnet18", 7, "layer4"), ("densenet121", 0, "features")]


@pytest.mark.parametrize(("arch", "seed", "layer"), FLIPPING)
def test_top1_rule_matches_oracle_and_drops_flipped_scales(arch, seed, layer):
    model = seeded(arch, seed)
    x = photo_batch(("chelsea",), size=(64, 96))  # non-square: aspect ratio must be kept
    result = assert_matches_oracle(model, layer, x, SCALES, rule="top1")
    assert any(not s.kept for s in result.scales[0]), "the rule should have dropped a scale"
    assert result.maps.shape == (1, 64, 96)


@pytest.mark.parametrize(("arch", "seed", "layer"), FLIPPING[:2])
def test_given_class_keeps_every_scale_and_matches_oracle(arch, seed, layer):
    model = seeded(arch, seed)
    x = photo_batch(("coffee",), size=(80, 64))  # portrait
    result = assert_matches_oracle(model, layer, x, SCALES, targets=[3])
    assert all(s.kept for s in result.scales[0])
    assert result.targets == [3]


def test_top1_rule_with_a_class_applies_the_rule():
    model = seeded("resnet18", 2)
    x = photo_batch(("chelsea",), size=(64, 96))
    top1 = int(model(x).argmax())
    result = assert_matches_oracle(model, "layer4", x, SCALES, targets=[top1], rule="top1")
    assert [s.kept for s in result.scales[0]] == [s.top1 == top1 for s in result.scales[0]]


def test_strict_is_the_older_spelling_of_the_top1_and_all_rules():
    model = seeded("resnet18", 2)
    assert cameras.CAMERAS(model, layer="layer4", strict=True).rule == "top1"
    assert cameras.CAMERAS(model, layer="layer4", strict=False).rule == "all"
    with pytest.raises(ValueError, match="not both"):
        cameras.CAMERAS(model, layer="layer4", strict=True, rule="top5")
    with pytest.raises(ValueError, match="rule must be one of top1, top5, all"):
        cameras.CAMERAS(model, layer="layer4", rule="top-1")


def test_default_rule_without_a_class_matches_oracle_and_keeps_top1_subset():
    # The default rule keeps every scale the paper's rule keeps, and more.
    model = seeded("resnet18", 7)
    x = photo_batch(("chelsea",), size=(64, 96))
    tolerant = assert_matches_oracle(model, "layer4", x, SCALES)
    paper = cameras.CAMERAS(model, layer="layer4", scales=SCALES, rule="top1")(x)
    kept_tolerant = [s.kept for s in tolerant.scales[0]]
    kept_paper = [s.kept for s in paper.scales[0]]
    assert all(t or not p for t, p in zip(kept_tolerant, kept_paper, strict=True))
    assert sum(kept_tolerant) > sum(kept_paper), "chose a model whose top-1 flips"


def test_default_scales_are_the_papers_and_match_oracle():
    assert default_scales(224) == [224, 324, 424, 524, 624, 724, 824, 924]
    assert default_scales(112) == [112, 162, 212, 262, 312, 362, 412, 462]
    torch.manual_seed(1)
    model = TinyNet().eval()
    x = photo_batch(("astronaut",), size=(224, 224))
    paper = [224, 324, 424, 524, 624, 724, 824, 924]  # written out: the oracle has no rule
    result = assert_matches_oracle(model, "features", x, None, oracle_scales=paper)
    assert [s.scale for s in result.scales[0]] == default_scales(224)
    assert result.scales[0][-1].size == (924, 924)


def test_resized_size_keeps_aspect_and_rounds_to_nearest():
    assert resized_size(224, 336, 324) == (324, 486)
    assert resized_size(300, 451, 224) == (224, 337)  # 336.75 -> 337
    assert resized_size(2, 3, 3) == (3, 5)  # 4.5 rounds up


def test_batch_equals_single_calls_with_per_image_targets_and_scales():
    model = seeded("resnet18", 7)
    x = photo_batch(("chelsea", "astronaut", "rocket"), size=(64, 96))
    method = cameras.CAMERAS(model, layer="layer4", scales=SCALES, rule="top1")
    batched = method(x)
    kept_patterns = set()
    for b in range(3):
        single = method(x[b : b + 1])
        assert batched.targets[b] == single.targets[0]
        for got, want in zip(batched.scales[b], single.scales[0], strict=True):
            assert (got.scale, got.size, got.top1, got.kept) == (
                want.scale,
                want.size,
                want.top1,
                want.kept,
            )
            assert got.probability == pytest.approx(want.probability, abs=1e-5)
        assert (batched.maps[b] - single.maps[0]).abs().max() <= TOL
        kept_patterns.add(tuple(s.kept for s in single.scales[0]))
    assert len(kept_patterns) > 1, "the photos should keep different scales"
    given = method(x, targets=[1, 4, 7])
    assert given.targets == [1, 4, 7]
    for b, target in enumerate([1, 4, 7]):
        single = method(x[b : b + 1], targets=target)
        assert (given.maps[b] - single.maps[0]).abs().max() <= TOL


def test_constant_map_is_zeros_not_nan():
    model = TinyNet().eval()
    with torch.no_grad():
        model.fc.weight.zero_()  # every gradient is zero, so the map is flat
    result = cameras.CAMERAS(model, scales=[32, 48])(torch.randn(2, 3, 32, 40))
    assert not torch.isnan(result.maps).any()
    assert torch.equal(result.maps, torch.zeros(2, 32, 40))


def test_maps_are_in_unit_range_float32_at_input_size():
    model = seeded("resnet18", 7)
    x = photo_batch(("rocket",), size=(72, 48))
    maps = cameras.CAMERAS(model, scales=[48, 72]).__call__(x).maps
    assert maps.dtype == torch.float32 and maps.shape == (1, 72, 48)
    assert maps.min() == 0 and maps.max() == 1


def test_default_model_matches_oracle_on_a_photo(lite0, chelsea):
    model, prep, _ = lite0
    x = prep(chelsea)[None]
    scales = [224, 324]
    result = cameras.CAMERAS(model, scales=scales)(x)
    expected, target, kept = oracle_cameras(model, model.bn2, x, scales)
    assert result.layer == "bn2" and result.targets == [target]
    assert (result.maps[0] - expected).abs().max() <= TOL
