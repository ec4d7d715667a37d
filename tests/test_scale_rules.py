"""Which scales count: the rules by name, the default, and the warning when few count."""

from __future__ import annotations

import pytest

import cameras
from cameras.cli import main
from cameras.methods.base import ScaleRecord, few_scales_warning
from cameras.methods.cameras import DEFAULT_RULE, SCALE_RULES

# On scikit-learn's china photo Lite0's top-1 at 224 (bell cote) is no longer the top-1 at
# 324 and 424, so the paper's rule keeps only the base scale there
# (benchmarks/scale_rules.py prints this for every photo).
CHINA_SCALES = [224, 324, 424]


@pytest.fixture(scope="module")
def china():
    from PIL import Image
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("china.jpg"))


def records(kept: list[bool]) -> list[ScaleRecord]:
    return [ScaleRecord(224 + 100 * i, (1, 1), 0, 0.5, k) for i, k in enumerate(kept)]


def test_warning_only_when_fewer_than_half_of_the_scales_count():
    assert few_scales_warning(records([True, True, False, False])) is None  # half
    assert few_scales_warning(records([True])) is None  # single-scale methods
    line = few_scales_warning(records([True, False, False, True, False, False, False, False]))
    assert line.startswith("only 2 of 8 scales counted")
    assert "--class" in line and "--scales" in line and "\n" not in line


def test_default_rule_is_named_and_applies_only_without_a_class(lite0):
    model, _, _ = lite0
    method = cameras.CAMERAS(model)
    assert DEFAULT_RULE in SCALE_RULES and DEFAULT_RULE != "top1"
    assert method.rule_for(None) == DEFAULT_RULE
    assert method.rule_for([281]) == "all"
    assert cameras.CAMERAS(model, rule="top1").rule_for([281]) == "top1"


@pytest.fixture(scope="module")
def china_results(lite0, china):
    model, prep, _ = lite0
    x = prep(china)[None]
    return {rule: cameras.CAMERAS(model, scales=CHINA_SCALES, rule=rule)(x) for rule in SCALE_RULES}


def test_rules_on_a_real_photo_keep_nested_sets_and_report_each_scale(lite0, china_results):
    classes = lite0[2]
    kept = {r: [s.kept for s in res.scales[0]] for r, res in china_results.items()}
    assert kept["top1"] == [True, False, False]  # the paper's rule drops 324 and 424
    assert kept["all"] == [True, True, True]
    assert len({tuple(res.targets) for res in china_results.values()}) == 1  # same class
    target = china_results["top1"].targets[0]
    assert classes[target] == "bell cote"
    for record in china_results["top1"].scales[0]:
        assert record.kept == (record.top1 == target)
    assert kept["top5"][:2] == [True, True]  # bell cote is still in the top 5 at 324
    assert china_results["top1"].scale_warnings[0].startswith("only 1 of 3 scales counted")
    assert china_results["top5"].scale_warnings[0] is None
    assert china_results["all"].scale_warnings[0] is None
    # Different kept scales, different maps; the same class throughout.
    assert (china_results["top1"].maps - china_results["all"].maps).abs().max() > 0.05


def test_cli_reports_kept_scales_and_warns_in_one_line(capsys, tmp_path, china):
    china.save(tmp_path / "china.png")
    scales = ",".join(map(str, CHINA_SCALES))
    code = main(
        ["explain", str(tmp_path / "china.png"), "--out", str(tmp_path / "out"),
         "--scales", scales, "--rule", "top1"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0
    assert "scales kept [224]" in captured.out
    warnings = [line for line in captured.err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "only 1 of 3 scales counted" in warnings[0]
    with pytest.raises(SystemExit) as stopped:  # argparse's own usage error
        main(["explain", str(tmp_path / "china.png"), "--rule", "first"])
    assert stopped.value.code == 2
    assert "invalid choice: 'first'" in capsys.readouterr().err
