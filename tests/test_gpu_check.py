"""benchmarks/gpu_check.py's core, in its CPU mode on a tiny model: every figure is
measured (positive) and the ratios are the figures' ratios."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from helpers import TinyNet

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check  # noqa: E402

import cameras.methods.cameras as cameras_module  # noqa: E402


@pytest.mark.parametrize(("precision", "channels_last"), [("fp32", False), ("bf16", True)])
def test_rows_are_measured_and_ratios_computed_from_them(precision, channels_last):
    torch.manual_seed(0)
    model = TinyNet().eval()
    original = cameras_module.fuse_scales
    row = gpu_check.measure(
        "tiny", model, torch.randn(2, 3, 32, 40), [32, 48], precision, channels_last, repeats=1
    )
    assert cameras_module.fuse_scales is original  # the fusion timer was taken off
    assert not model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert (row.batch, row.precision) == (2, precision)
    assert row.layout == ("channels_last" if channels_last else "NCHW")
    for value in (row.call_s, row.floor_s, row.fusion_s, row.fused_call_s, row.peak_mib):
        assert value > 0
    assert row.fusion_s < row.fused_call_s  # the fusion is a part of the call
    assert row.ms_per_image == pytest.approx(1000 * row.call_s / 2)
    assert row.floor_ms_per_image == pytest.approx(1000 * row.floor_s / 2)
    assert row.ratio == pytest.approx(row.call_s / row.floor_s)
    assert row.fusion_share == pytest.approx(row.fusion_s / row.fused_call_s)
    table = gpu_check.model_table([row])
    assert f"| {row.ratio:.2f}x | {row.fusion_share:.1%} |" in table
    assert table.count("\n") == 2  # header, rule, one row


def test_folder_figures():
    row = gpu_check.FolderRow(photos=5, startup_s=3.0, cli_s=2.0, api_s=1.0)
    # The CLI's figure leaves out the start-up run's photo: 2 s for 4 photos.
    assert row.cli_ms_per_image == pytest.approx(500)
    assert row.api_ms_per_image == pytest.approx(200)
    assert row.throughput_ratio == pytest.approx(0.4)
    assert "| 5 | 3.0 | 500.0 | 200.0 | 0.40x |" in gpu_check.folder_table(row)
