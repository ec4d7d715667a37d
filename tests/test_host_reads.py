"""No host round trips in the batched path (issue: a folder of photos at the speed of the
batched model): a call reads the device a fixed number of times, whatever its number of
scales and images. Scale records, targets and kept flags are gathered on the device and
read back once per call.

Two counts, both on the CPU (where CI runs): the profiler's synchronising reads
(``aten::item``, ``aten::_local_scalar_dense``, ``aten::is_nonzero``), and every explicit
read of a tensor's values into Python through ``__torch_function__`` (``tolist``, ``item``,
``cpu``, ``numpy``, ``bool()``, ``int()``, ``float()``), which on a GPU are the
device-to-host copies and stream synchronisations.
"""

from __future__ import annotations

import collections

import pytest
import torch
from helpers import TinyNet
from torch.overrides import TorchFunctionMode
from torch.profiler import ProfilerActivity, profile

from cameras.methods import build_method
from cameras.targets import Classes

SYNCING_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::is_nonzero")
READS = ("tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")
# What a call reads: the input's finiteness, the class range check, the records' table
# and the explained classes (one each), and the maps' normalisation has none.
MOST_READS_PER_CALL = 6


class CountReads(TorchFunctionMode):
    """Counts the tensor methods that copy values to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READS:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return TinyNet(num_classes=10).eval()


def _counts(model, name: str, batch: int, scales: list[int], targets):
    options = {"scales": scales} if name == "cameras" else {}
    method = build_method(name, model, layer="act", **options)
    x = torch.randn(batch, 3, 32, 40)
    method(x, targets)  # the first call probes the model's memory cost, once
    with CountReads() as reads:
        method(x, targets)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        method(x, targets)
    syncs = collections.Counter(e.name for e in profiler.events() if e.name in SYNCING_OPS)
    return dict(reads.counts), dict(syncs)


@pytest.mark.parametrize("name", ["cameras", "gradcam"])
@pytest.mark.parametrize("given", ["top1", "class", "set"])
def test_device_reads_do_not_grow_with_scales_or_images(model, name, given):
    one, four = {"top1": (None, None), "class": ([3], [3, 1, 4, 1])}.get(
        given, (Classes([2, 5]), Classes([2, 5]))
    )
    small = _counts(model, name, 1, [32, 48], one)
    large = _counts(model, name, 4, [32, 48, 64, 80, 96], four)
    assert small == large, f"reads grew: {small} -> {large}"
    reads, syncs = large
    assert sum(reads.values()) <= MOST_READS_PER_CALL, reads
    assert sum(syncs.values()) <= MOST_READS_PER_CALL, syncs


def test_the_counter_sees_a_read_per_scale_when_there_is_one(model, monkeypatch):
    # The check above could pass by counting nothing: a method that reads each scale's
    # records one by one (as before this change) must be caught.
    import cameras.methods.base as base

    original = base.scale_row

    def reading_row(logits, score, kept):
        kept.tolist()  # one read per scale
        return original(logits, score, kept)

    monkeypatch.setattr("cameras.methods.cameras.scale_row", reading_row)
    small = _counts(model, "cameras", 1, [32, 48], None)
    large = _counts(model, "cameras", 1, [32, 48, 64, 80], None)
    assert large[0]["tolist"] == small[0]["tolist"] + 2
