"""Targets beyond one class (cameras.targets): each target type against a plain per-scale
reference written from its definition (tests/oracle.py's ``oracle_target_cameras``),
single and batched, square and non-square, for CAMERAS and Grad-CAM; every method takes
them; the scale rule reads presence; the records carry each scale's score; errors are
one line and leave the model as found. Real segmentation and detection families are in
tests/test_families.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    TinyDetector,
    TinyNet,
    TinySegmenter,
    assert_left_as_found,
    model_state,
)
from oracle import oracle_target_cameras
from torch import nn

import cameras
from cameras.core.targets import as_target
from cameras.methods import METHODS, build_method
from cameras.targets import Box, Class, Classes, Region, Similarity

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return {
        "classes": TinyNet(num_classes=10).eval(),
        "region": TinySegmenter().eval(),
        "box": TinyDetector().eval(),
        "similarity": TinyNet(num_classes=12).eval(),
    }


def _image(seed: int, size: tuple[int, int]) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    smooth = torch.rand(1, 3, size[0] // 8, size[1] // 8, generator=generator)
    return F.interpolate(smooth, size=size, mode="bilinear") * 2 - 1


# ------------------------------------------------- the definitions, written plainly


def plain_classes(classes):
    def score_of(output, size, input_size):
        return sum(output[0, c] for c in classes), True

    return score_of


def plain_region(class_, mask):
    def score_of(output, size, input_size):
        logits = output["out"][0]
        grid = F.interpolate(mask[None, None].float(), size=logits.shape[1:], mode="nearest")[0, 0]
        pixels = grid.sum()
        score = (logits[class_] * grid).sum() / pixels
        share = ((logits.argmax(0) == class_).float() * grid).sum() / pixels
        return score, bool(share >= 0.5)

    return score_of


def _iou(a, b):
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    overlap = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap
    return overlap / union


def plain_box(box, label):
    def score_of(output, size, input_size):
        found = output[0]
        sx, sy = input_size[1] / size[1], input_size[0] / size[0]
        best, best_overlap = None, -1.0
        for i, corners in enumerate(found["boxes"].tolist()):
            mapped = [corners[0] * sx, corners[1] * sy, corners[2] * sx, corners[3] * sy]
            overlap = _iou(mapped, box)
            if label is not None and int(found["labels"][i]) != label:
                continue
            if overlap >= 0.5 and overlap > best_overlap:
                best, best_overlap = i, overlap
        if best is None:
            return torch.zeros(()), False
        return found["scores"][best], True

    return score_of


def plain_similarity(reference):
    def score_of(output, size, input_size):
        return F.cosine_similarity(output[0], reference, dim=0), True

    return score_of


# ------------------------------------------------- one target per kind, per image


def _mask(size, image):
    """A rectangle covering a different part of each image."""
    mask = torch.zeros(size, dtype=torch.bool)
    height, width = size
    top, left = (image * height // 4) % (height // 2), (image * width // 3) % (width // 2)
    mask[top : top + height // 2, left : left + width // 2] = True
    return mask


def _region_class(model, image, mask):
    # The class that holds most of the mask at the input's size: present there.
    with torch.no_grad():
        winners = model(image)["out"][0].argmax(0)[mask]
    return int(winners.mode().values)


def _detected_box(model, image):
    # The box of the input-size detection with the highest score, and its label.
    with torch.no_grad():
        found = model(image)[0]
    best = int(found["scores"].argmax())
    return [float(v) for v in found["boxes"][best]], int(found["labels"][best])


def target_pair(kind, model, image, index):
    """(library target, plain reference score function) for one image."""
    if kind == "classes":
        classes = [1 + index, 4]
        return Classes(classes), plain_classes(classes)
    if kind == "region":
        mask = _mask(tuple(image.shape[2:]), index)
        class_ = _region_class(model, image, mask)
        return Region(class_, mask), plain_region(class_, mask)
    if kind == "box":
        box, label = _detected_box(model, image)
        return Box(box, label), plain_box(box, label)
    reference = torch.randn(12, generator=torch.Generator().manual_seed(index))
    return Similarity(reference), plain_similarity(reference)


LAYERS = {"classes": "act", "region": "act", "box": "act", "similarity": "act"}


def _scales(size):
    shorter = min(size)
    return [shorter, shorter * 3 // 2, shorter * 2]


@pytest.mark.parametrize("method", ["cameras", "gradcam"])
@pytest.mark.parametrize("kind", ["classes", "region", "box", "similarity"])
@pytest.mark.parametrize("sizes", [[(64, 64)], [(48, 80), (48, 80)]], ids=["single", "batch"])
def test_each_target_matches_the_plain_reference(models, kind, method, sizes):
    model = models[kind]
    images = [_image(i, size) for i, size in enumerate(sizes)]
    pairs = [target_pair(kind, model, image, i) for i, image in enumerate(images)]
    scales = _scales(sizes[0])
    options = {"scales": scales} if method == "cameras" else {}
    explainer = build_method(method, model, layer=LAYERS[kind], **options)
    batch = torch.cat(images)
    targets = pairs[0][0] if len(pairs) == 1 else [target for target, _ in pairs]
    result = explainer(batch, targets=targets)
    layer = dict(model.named_modules())[LAYERS[kind]]
    for i, (image, (_, reference)) in enumerate(zip(images, pairs, strict=True)):
        expected, kept, scores = oracle_target_cameras(
            model,
            layer,
            image,
            scales if method == "cameras" else [min(sizes[0])],
            reference,
            single_scale_gradcam=method == "gradcam",
        )
        assert kept, "the reference kept no scale: the test would compare zero maps"
        assert (result.maps[i] - expected).abs().max() <= TOLERANCE
        records = result.scales[i]
        assert [r.scale for r in records if r.kept] == kept
        assert [r.score for r in records] == pytest.approx(scores, abs=1e-5)


def test_a_box_no_detection_matches_at_a_scale_is_reported_absent_there(models):
    model = models["box"]
    image = _image(3, (64, 64))
    # The 2x2-cell box of cell (0, 0) at 64 px (stride 4): [0, 0, 8, 8]. At 96 and 128 px
    # the cells' boxes map back to 5.3 and 4 px squares, which overlap it by less than half.
    box = [0.0, 0.0, 8.0, 8.0]
    explainer = build_method("cameras", model, layer="act", scales=[64, 96, 128])
    result = explainer(image, targets=Box(box))
    expected, kept, scores = oracle_target_cameras(
        model, model.act, image, [64, 96, 128], plain_box(box, None)
    )
    assert [r.kept for r in result.scales[0]] == [s in kept for s in (64, 96, 128)]
    assert kept == [64], "the box should match at the input's size only"
    assert (result.maps[0] - expected).abs().max() <= TOLERANCE
    absent = [r for r in result.scales[0] if not r.kept]
    assert all(r.score == 0 for r in absent)
    assert result.scale_warnings[0].startswith("the target was present at only 1 of 3 scales")
    # A box far larger than every detection (8 px at most): absent everywhere, said so.
    nowhere = explainer(image, targets=Box([10.0, 10.0, 50.0, 50.0])).scale_warnings[0]
    assert nowhere.startswith("the target is absent at every scale")


def test_a_region_whose_class_is_elsewhere_drops_the_scales_where_it_is_absent(models):
    model = models["region"]
    image = _image(4, (64, 64))
    mask = _mask((64, 64), 0)
    with torch.no_grad():
        winners = model(image)["out"][0].argmax(0)[mask]
    absent_class = next(c for c in range(4) if (winners == c).float().mean() < 0.5)
    explainer = build_method("cameras", model, layer="act", scales=[64, 96])
    result = explainer(image, targets=Region(absent_class, mask))
    _, kept, _ = oracle_target_cameras(
        model, model.act, image, [64, 96], plain_region(absent_class, mask)
    )
    assert [r.kept for r in result.scales[0]] == [s in kept for s in (64, 96)]
    assert len(kept) < 2


def test_classes_rank_every_class_of_the_set_under_the_top1_rule(models):
    model = models["classes"]
    image = _image(5, (64, 64))
    with torch.no_grad():
        order = model(image)[0].argsort(descending=True).tolist()
    scales = [64, 96]
    top_two = build_method("cameras", model, layer="act", scales=scales, rule="top1")
    kept = [r.kept for r in top_two(image, targets=Classes(order[:2])).scales[0]]
    outside = [r.kept for r in top_two(image, targets=Classes([order[0], order[-1]])).scales[0]]
    assert kept[0] is True  # both classes are the two best at the input's size
    assert outside == [False, False]  # the last class is never within the top 2


def test_a_class_index_stays_the_shorthand_for_a_class_target(models):
    model = models["classes"]
    image = torch.cat([_image(6, (64, 64)), _image(7, (64, 64))])
    explainer = build_method("cameras", model, layer="act", scales=[64, 96])
    shorthand = explainer(image, targets=[3, 7])
    explicit = explainer(image, targets=[Class(3), Class(7)])
    assert shorthand.targets == explicit.targets == [3, 7]
    assert torch.equal(shorthand.maps, explicit.maps)


def test_a_callable_target_is_used_as_written(models):
    model = models["classes"]
    image = _image(8, (64, 64))

    def margin(output, size, input_size):  # class 2 against class 5
        return output[:, 2] - output[:, 5]

    explainer = build_method("cameras", model, layer="act", scales=[64, 96])
    result = explainer(image, targets=margin)

    def plain(output, size, input_size):
        return output[0, 2] - output[0, 5], True

    expected, _, scores = oracle_target_cameras(model, model.act, image, [64, 96], plain)
    assert (result.maps[0] - expected).abs().max() <= TOLERANCE
    assert [r.score for r in result.scales[0]] == pytest.approx(scores, abs=1e-5)
    assert result.target_labels == ["margin"]


@pytest.mark.parametrize("name", sorted(set(METHODS) - {"cam"}))
def test_every_method_explains_a_region(models, name):
    model = models["region"]
    image = _image(9, (48, 64))
    options = {"scales": [48, 64]} if name == "cameras" else {}
    if name in ("scorecam", "ablationcam"):
        options["batch_size"] = 16
    explainer = build_method(name, model, layer="act", **options)
    mask = _mask((48, 64), 0)
    present = _region_class(model, image, mask)
    if name == "cameras":  # the class must be present: another mask, its own class
        other = _mask((48, 64), 1)
        regions = [Region(present, mask), Region(_region_class(model, image, other), other)]
    else:  # Grad-CAM's pooled weights hardly see where the mask is: another class
        regions = [Region(present, mask), Region((present + 1) % 4, mask)]
    maps = [explainer(image, targets=region).maps[0] for region in regions]
    for one in maps:
        assert one.shape == (48, 64) and one.min() == 0 and one.max() == 1
    if name not in ("eigencam", "kpcacam"):  # these two ignore the target by definition
        assert (maps[0] - maps[1]).abs().max() > 1e-3, "the target made no difference"


def test_cam_refuses_a_target_that_is_not_one_class():
    model = TinyNet(num_classes=10).eval()
    explainer = build_method("cam", model, layer="act")
    with pytest.raises(ValueError, match="cam explains one class per image"):
        explainer(_image(0, (32, 32)), targets=Classes([1, 2]))


def test_bad_targets_are_one_line_errors_that_leave_the_model_as_found(models):
    segmenter, detector = models["region"], models["box"]
    explainer = build_method("cameras", segmenter, layer="act", scales=[32, 48])
    image = _image(0, (32, 32))
    before = model_state(segmenter)
    cases = [
        (Region(1, torch.ones(20, 20, dtype=torch.bool)), "mask is 20x20 but the input is 32x32"),
        (Region(9, torch.ones(32, 32, dtype=torch.bool)), "class 9 is out of range"),
        (Box([0, 0, 10, 10]), "Box needs a detector's output"),
        (Similarity(torch.ones(3)), "Similarity needs an embedding"),
        (None, "pass a target from cameras.targets"),
    ]
    for target, message in cases:
        with pytest.raises((ValueError, TypeError)) as caught:
            explainer(image, targets=target)
        assert message in str(caught.value) and "\n" not in str(caught.value)
        assert_left_as_found(segmenter, before)
    with pytest.raises(ValueError, match="mask has no pixel set"):
        Region(1, torch.zeros(32, 32, dtype=torch.bool))
    with pytest.raises(ValueError, match="needs x1 < x2"):
        Box([10, 0, 5, 10])
    with pytest.raises(ValueError, match="got 3 targets for a batch of 1"):
        build_method("gradcam", detector, layer="act")(image, targets=[Box([0, 0, 9, 9])] * 3)


def test_a_target_object_is_not_changed_by_a_call_and_can_be_reused(models):
    model = models["classes"]
    target = Class(None)
    explainer = build_method("cameras", model, layer="act", scales=[64])
    first = explainer(_image(1, (64, 64)), targets=target)
    second = explainer(_image(2, (64, 64)), targets=target)
    assert target.indices is None  # each call binds its own copy
    assert first.targets != second.targets or torch.equal(first.maps, first.maps)


def test_as_target_reads_every_spelling():
    assert as_target(None, 2) is None
    assert as_target(3, 2).indices.tolist() == [3, 3]
    assert as_target(["b", "a"], 2, ["a", "b"]).indices.tolist() == [1, 0]
    assert as_target(torch.tensor([1, 2]), 2).indices.tolist() == [1, 2]
    mixed = as_target([1, Classes([0, 2])], 2)
    assert mixed.class_of(0) == 1 and mixed.targets[1].indices.tolist() == [0, 2]
    with pytest.raises(cameras.ClassError, match="a class must be an index or a name, not float"):
        as_target([1.5, 2], 2)


def test_a_session_explains_any_target(models):
    model = models["region"]
    session = cameras.Session(model, cameras.Preprocess(48, (0, 0, 0), (1, 1, 1)), layer="act")
    mask = _mask((48, 64), 2)
    result = session.explain(_image(0, (48, 64)), targets=Region(1, mask), scales=[48, 64])
    assert result.targets[0].class_of(0) == 1
    assert result.target_labels == ["region of class 1"]
    assert result.probabilities is None
    assert result.scales[0][0].top1 is None


def test_an_embedding_model_is_explained_with_no_glue():
    # A torchvision ResNet-18 whose head is removed returns (B, 512) embeddings: the layer
    # is found on its own (layer4) and Similarity explains it, as the reference does.
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    model.fc = nn.Identity()
    image = _image(11, (64, 80))
    with torch.no_grad():
        reference = model(_image(12, (64, 80)))[0]
    explainer = build_method("cameras", model, scales=[64, 96])
    assert explainer.layer_name == "layer4"
    result = explainer(image, targets=Similarity(reference))
    expected, kept, scores = oracle_target_cameras(
        model, model.layer4, image, [64, 96], plain_similarity(reference)
    )
    assert kept == [64, 96]
    assert (result.maps[0] - expected).abs().max() <= TOLERANCE
    assert [r.score for r in result.scales[0]] == pytest.approx(scores, abs=1e-5)
