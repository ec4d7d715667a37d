"""Which scales count: the rules by name, the default, and the warning when few count."""

from __future__ import annotations

import pytest

import cameras
from cameras.cli import main
from cameras.methods.base import ScaleRecord, few_scales_warning
from cameras.methods.cameras import DEFAULT_RULE, SCALE_RULES

# On scikit-image's coffee photo Lite0's top-1 at 224 is espresso (p 0.51), which falls out
# of the top-1 at 324 and 424: the paper's rule keeps only the base scale there.
COFFEE_SCALES = [224, 324, 424]


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
def coffee_results(lite0, coffee):
    model, prep, _ = lite0
    x = prep(coffee)[None]
    return {
        rule: cameras.CAMERAS(model, scales=COFFEE_SCALES, rule=rule)(x) for rule in SCALE_RULES
    }


def test_rules_on_a_real_photo_keep_nested_sets_and_report_each_scale(coffee_results):
    kept = {r: [s.kept for s in res.scales[0]] for r, res in coffee_results.items()}
    assert kept["top1"] == [True, False, False]  # the paper's rule drops 324 and 424
    assert kept["all"] == [True, True, True]
    # top5 keeps what top1 keeps and whatever keeps espresso in its top 5.
    for record, keep in zip(coffee_results["top5"].scales[0], kept["top5"], strict=True):
        assert record.kept == keep
    assert all(t5 or not t1 for t1, t5 in zip(kept["top1"], kept["top5"], strict=True))
    assert len({tuple(res.targets) for res in coffee_results.values()}) == 1  # same class
    assert [s.top1 for s in coffee_results["top1"].scales[0]][0] == 967  # espresso
    assert coffee_results["top1"].scale_warnings[0].startswith("only 1 of 3 scales counted")
    assert coffee_results["all"].scale_warnings[0] is None


def test_cli_reports_kept_scales_and_warns_in_one_line(capsys, tmp_path, coffee):
    coffee.save(tmp_path / "coffee.png")
    scales = ",".join(map(str, COFFEE_SCALES))
    code = main(
        ["explain", str(tmp_path / "coffee.png"), "--out", str(tmp_path / "out"),
         "--scales", scales, "--rule", "top1"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0
    assert "scales kept [224]" in captured.out
    warnings = [line for line in captured.err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "only 1 of 3 scales counted" in warnings[0]
    code = main(["explain", str(tmp_path / "coffee.png"), "--rule", "first"])
    assert code == 2
