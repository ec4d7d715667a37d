"""cameras.core.fusion: the memory-bounded multi-scale accumulation (docs/method.md, section 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cameras.core import fusion


def test_fusion_by_column_blocks_equals_plain_upsampling(monkeypatch):
    torch.manual_seed(0)
    acts = [torch.randn(2, 6, h, w) for h, w in [(3, 4), (5, 7), (6, 9)]]
    grads = [torch.randn_like(a) for a in acts]
    weights = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.0, 0.5]])
    size = (13, 17)
    mean = [
        sum(
            w * torch.nn.functional.interpolate(t, size=size, mode="bilinear")
            for w, t in zip(ws, ts, strict=True)
        )
        for ws, ts in [
            (weights.T[:, :, None, None, None], acts),
            (weights.T[:, :, None, None, None], grads),
        ]
    ]
    expected = torch.relu((mean[0] * mean[1]).sum(1))
    monkeypatch.setitem(fusion._CHUNK_BYTES, "cpu", 4 * 600)  # forces blocks and chunks
    got = fusion.fuse_scales(acts, grads, weights, size)
    assert torch.allclose(got, expected, atol=1e-5)
    tall = fusion.fuse_scales(
        [a.transpose(2, 3) for a in acts], [g.transpose(2, 3) for g in grads], weights, (17, 13)
    )
    assert torch.allclose(tall, expected.transpose(1, 2), atol=1e-5)


def test_interpolation_matrix_is_pytorchs_bilinear_resize():
    v = torch.randn(7)
    matrix = fusion.interpolation_matrix(7, 12, torch.device("cpu"))
    expected = F.interpolate(v[None, None, None], size=(1, 12), mode="bilinear")[0, 0, 0]
    torch.testing.assert_close(matrix @ v, expected, atol=1e-6, rtol=0)


def test_normalise_maps_spans_unit_range_and_keeps_flat_maps_at_zero():
    maps = torch.stack([torch.arange(6.0).view(2, 3) + 4, torch.full((2, 3), 3.0)])
    out = fusion.normalise_maps(maps)
    torch.testing.assert_close(out[0], torch.arange(6.0).view(2, 3) / 5)
    assert torch.equal(out[1], torch.zeros(2, 3))
