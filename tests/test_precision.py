"""The precision option (fp32 / bf16 / fp16 autocast, fusion in float32) and the
channels_last layout kept end to end (cameras.core.precision, cameras.core.fusion)."""

from __future__ import annotations

import pickle

import pytest
import torch
from helpers import TinyNet, assert_left_as_found, model_state, photo_batch

from cameras.cli import build_parser
from cameras.cli.common import session_spec
from cameras.core import fusion
from cameras.core.precision import autocast_for, check_precision, is_channels_last, keep_layout
from cameras.methods import METHODS, build_method
from cameras.methods.cameras import resize_to_scale
from cameras.session import Session, SessionSpec

# bf16 against fp32 on the bundled photos (Lite0, the default scale rule, normalised
# maps). Measured at the default 8 scales (shorter side 224): max abs difference 0.041
# (chelsea) and 0.051 (coffee), correlation 0.9994 and 0.9989; at this test's size and
# scales: 0.012 and 0.018, 0.9999 and 0.9998 (docs/reliability.md, the Python API).
BF16_MAX_ABS = 0.06
BF16_MIN_CORRELATION = 0.998
PHOTO_SIZE, PHOTO_SCALES = (96, 144), [96, 144, 192]


def _kept(result):
    return [[record.kept for record in records] for records in result.scales]


def test_bf16_maps_are_close_to_fp32_with_the_same_targets_and_kept_scales(lite0):
    model = lite0[0]
    before = model_state(model)
    x = photo_batch(("chelsea", "coffee"), size=PHOTO_SIZE)
    exact, half = (
        build_method("cameras", model, scales=PHOTO_SCALES, precision=p)(x)
        for p in ("fp32", "bf16")
    )
    assert half.targets == exact.targets
    assert _kept(half) == _kept(exact)
    assert half.maps.dtype == torch.float32
    for ours, reference in zip(half.maps, exact.maps, strict=True):
        difference = (ours - reference).abs().max().item()
        correlation = torch.corrcoef(torch.stack([ours.flatten(), reference.flatten()]))[0, 1]
        assert 0 < difference <= BF16_MAX_ABS  # > 0: bf16 really ran
        assert correlation >= BF16_MIN_CORRELATION
    # The user's model is never converted: dtype, parameters, flags, hooks as they were.
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert_left_as_found(model, before)


def test_fp32_is_the_default_and_changes_nothing(lite0):
    model = lite0[0]
    x = photo_batch(("chelsea",), size=PHOTO_SIZE)
    default = METHODS["cameras"](model, scales=PHOTO_SCALES)
    assert default.precision == "fp32"
    explicit = build_method("cameras", model, scales=PHOTO_SCALES, precision="fp32")
    first, second = default(x), explicit(x)
    assert torch.equal(first.maps, second.maps)  # bit for bit
    assert first.targets == second.targets


def test_every_method_takes_the_precision_and_runs_the_model_in_it():
    torch.manual_seed(0)
    model = TinyNet().eval()
    x = torch.randn(2, 3, 32, 40)
    seen: list[torch.dtype] = []
    handle = model.features[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    try:
        for name in METHODS:
            seen.clear()
            method = build_method(name, model, layer="act", scales=[32, 48], precision="bf16")
            assert method.precision == "bf16"
            result = method(x)
            assert set(seen) == {torch.bfloat16}, name  # the convolutions ran in bf16
            assert result.maps.dtype == torch.float32 and torch.isfinite(result.maps).all()
    finally:
        handle.remove()


def test_fp16_runs_on_the_cpu():
    # PyTorch 2.14 has float16 autocast on the CPU, so fp16 is allowed there.
    torch.manual_seed(0)
    model = TinyNet().eval()
    result = build_method("cameras", model, layer="act", scales=[32, 48], precision="fp16")(
        torch.randn(1, 3, 32, 40)
    )
    assert torch.isfinite(result.maps).all() and result.maps.max() == 1


def test_unknown_precision_is_one_line_value_error():
    model = TinyNet().eval()
    with pytest.raises(ValueError, match=r"^precision must be one of fp32, bf16, fp16, not 'fp8'$"):
        build_method("cameras", model, layer="act", precision="fp8")
    with pytest.raises(ValueError, match="precision must be one of"):
        Session(model, prep=None, precision="half")
    with pytest.raises(ValueError, match="applies to PyTorch models only"):
        check_precision("bf16", "keras")
    with pytest.raises(ValueError, match="no autocast on"):
        autocast_for("bf16", torch.device("meta"))


def test_fusion_stays_float32_inside_autocast():
    torch.manual_seed(0)
    acts = [torch.randn(2, 16, h, w) for h, w in [(3, 4), (5, 7)]]
    grads = [torch.randn_like(a) for a in acts]
    weights = torch.full((2, 2), 0.5)
    plain = fusion.fuse_scales(acts, grads, weights, (20, 28))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = fusion.fuse_scales(acts, grads, weights, (20, 28))
    assert inside.dtype == torch.float32
    assert torch.equal(inside, plain)


def test_session_spec_and_cli_carry_the_precision(tmp_path):
    spec = SessionSpec(precision="bf16", scales=(64,))
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert spec.for_workers("cpu", "bn2").precision == "bf16"
    session = Session(TinyNet().eval(), prep=None, layer="act", precision="bf16")
    assert session.method("gradcam").precision == "bf16"
    assert session.method_factory("cameras")(TinyNet().eval()).precision == "bf16"
    parser = build_parser()
    for command in ("explain", "evaluate", "sanity", "attack", "compare"):
        args = parser.parse_args([command, "x", "--precision", "bf16"])
        assert session_spec(args, "efficientnet_lite0").precision == "bf16", command
        assert parser.parse_args([command, "x"]).precision == "fp32"
    with pytest.raises(SystemExit):
        parser.parse_args(["explain", "x", "--precision", "fp8"])


# ---------------------------------------------------------------- channels_last


def test_resize_keeps_channels_last():
    x = torch.randn(2, 3, 40, 60).contiguous(memory_format=torch.channels_last)
    assert is_channels_last(resize_to_scale(x, 56))
    assert not is_channels_last(resize_to_scale(x.contiguous(), 56))
    # keep_layout puts back a layout that a resize lost, and leaves NCHW alone.
    assert is_channels_last(keep_layout(x.contiguous(), x))
    assert keep_layout(x, x.contiguous()) is x


def test_channels_last_model_and_input_give_the_nchw_maps_in_that_layout(lite0):
    import copy

    model = lite0[0]
    x = photo_batch(("chelsea", "coffee"), size=(64, 96))
    reference = build_method("cameras", model, scales=[64, 96])(x)
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    stem = next(m for m in last.modules() if isinstance(m, torch.nn.Conv2d))
    layouts: list[bool] = []

    def record(_module, inputs):
        if inputs[0].shape[0] == 2:  # the two photos (not the probes' zero images)
            layouts.append(is_channels_last(inputs[0]))

    handle = stem.register_forward_pre_hook(record)
    try:
        x_last = x.contiguous(memory_format=torch.channels_last)
        result = build_method("cameras", last, scales=[64, 96])(x_last)
    finally:
        handle.remove()
    assert layouts == [True, True]  # every scale's input reached the model channels_last
    assert result.targets == reference.targets
    assert (result.maps - reference.maps).abs().max() <= 1e-5
