"""The user's model comes back exactly as it was, for every method and every way a call
can fail (as Captum's hook-removal tests do): one check, ``helpers.assert_left_as_found``."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyNet, assert_left_as_found, model_state
from torch import nn

import cameras
from cameras.apps.attack import pgd

SCALES = [32, 48]


class Stoppable(nn.Module):
    """TinyNet whose part after the layer fails on demand: a RuntimeError (a bug in the
    model) or a KeyboardInterrupt (Ctrl-C in the middle of a batch)."""

    def __init__(self):
        super().__init__()
        self.body = TinyNet()
        self.fail_with: BaseException | None = None

    def forward(self, x):
        features = self.body.act(self.body.features(x))
        if self.fail_with is not None:
            raise self.fail_with
        return self.body.fc(self.body.pool(features).flatten(1))


def user_state_model() -> Stoppable:
    """A state a user could have: training mode, one part in eval, one part frozen."""
    model = Stoppable().train()
    model.body.features[1].eval()
    model.body.fc.weight.requires_grad_(False)
    return model


def build(name: str, model: nn.Module, layer="body.features"):
    extra = {"scales": SCALES} if name == "cameras" else {}
    return cameras.METHODS[name](model, layer=layer, **extra)


FAILURES = {
    "forward error": (RuntimeError("boom"), RuntimeError, "boom"),
    "interrupted batch": (KeyboardInterrupt("ctrl-c"), KeyboardInterrupt, "ctrl-c"),
}


@pytest.mark.parametrize("name", list(cameras.METHODS))
def test_a_successful_call(name):
    model = user_state_model()
    before = model_state(model)
    assert build(name, model)(torch.randn(2, 3, 32, 32)).maps.shape == (2, 32, 32)
    assert_left_as_found(model, before)


@pytest.mark.parametrize("failure", list(FAILURES))
@pytest.mark.parametrize("name", list(cameras.METHODS))
def test_a_failure_inside_the_forward_pass(name, failure):
    model = user_state_model()
    method = build(name, model)
    before = model_state(model)
    error, kind, message = FAILURES[failure]
    model.fail_with = error
    with pytest.raises(kind, match=message):
        method(torch.randn(2, 3, 32, 32))
    model.fail_with = None
    assert_left_as_found(model, before)
    assert method(torch.randn(1, 3, 32, 32)).maps.shape == (1, 32, 32)  # still usable


@pytest.mark.parametrize("name", list(cameras.METHODS))
def test_a_bad_class(name):
    model = user_state_model()
    method = build(name, model)
    before = model_state(model)
    # 9 passes the name-less check and fails once the scores show 5 classes.
    with pytest.raises(cameras.ClassError, match="class 9 is out of range: the model has 5"):
        method(torch.randn(2, 3, 32, 32), targets=[0, 9])
    with pytest.raises(cameras.ClassError, match="unknown class name 'cat'"):
        method(torch.randn(1, 3, 32, 32), targets="cat")
    assert_left_as_found(model, before)


@pytest.mark.parametrize("name", list(cameras.METHODS))
def test_a_bad_layer(name):
    model = user_state_model()
    before = model_state(model)
    with pytest.raises(ValueError, match="layer 'body.featurez' is not a module"):
        build(name, model, layer="body.featurez")
    if name == "fullgrad":  # it reads every bias layer, not the one named: no call error
        return
    # A layer that exists but has no spatial output fails inside the call, hooks attached.
    with pytest.raises(ValueError, match=r"layer 'body.fc' gives a \(1, 5\) output"):
        build(name, model, layer="body.fc")(torch.randn(1, 3, 32, 32))
    assert_left_as_found(model, before)


@pytest.mark.parametrize("failure", list(FAILURES))
def test_the_attack_after_a_failure(failure):
    model = user_state_model()
    before = model_state(model)
    pgd(model, torch.rand(1, 3, 32, 32), steps=2, stop_when_reached=False)
    assert_left_as_found(model, before)
    error, kind, message = FAILURES[failure]

    def fail(step, running):
        raise error

    with pytest.raises(kind, match=message):
        pgd(model, torch.rand(1, 3, 32, 32), steps=3, progress=fail)
    assert_left_as_found(model, before)
