"""The contract every registered family must keep (diffusers' SchedulerCommonTest idea).

A family joins these tests by registering in ``genpipe.models.FAMILIES``.
"""

from __future__ import annotations

import math

import pytest
import torch

from genpipe.config import Config, resolve
from genpipe.models import FAMILIES, GenerativeModel, ImageSpec
from genpipe.models.base import LogLikelihood

SPEC = ImageSpec(shape=(1, 8, 8), num_classes=10)
# tiny settings per family, on top of that family's defaults
TINY = {"vae": {"latent_dim": 4, "channels": [8, 16]}}


def tiny_config(name: str) -> Config:
    return resolve({name: TINY.get(name, {}), "profiles": {"quick": {}}})


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return FAMILIES[name].build(tiny_config(name).family(name), SPEC)


def batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, *SPEC.shape), generator=g).float() / 127.5 - 1.0  # 8-bit grid
    return x, torch.randint(0, SPEC.num_classes, (n,), generator=g)


@pytest.fixture(params=sorted(FAMILIES))
def family(request) -> str:
    return request.param


def test_implements_the_protocol_and_names_itself(family):
    model = build(family)
    assert isinstance(model, GenerativeModel) and isinstance(model, torch.nn.Module)
    assert FAMILIES[family].name == family
    assert isinstance(tiny_config(family).family(family), FAMILIES[family].config_type)


def test_optimizer_groups_cover_every_parameter_once(family):
    model = build(family)
    groups = model.optimizer_groups()
    assert groups, "at least one phase"
    ids = [id(p) for g in groups.values() for p in g.params]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}


def test_each_phase_gives_a_finite_loss_with_gradients(family):
    model = build(family)
    x, y = batch()
    for phase, group in model.optimizer_groups().items():
        model.zero_grad()
        losses = model.training_losses(x, y, phase)
        assert losses["loss"].dim() == 0 and torch.isfinite(losses["loss"])
        assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
        losses["loss"].backward()
        grads = [p.grad for p in group.params if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads)


def test_sample_shape_range_and_seed(family):
    model = build(family).eval()
    a = model.sample(5, generator=torch.Generator().manual_seed(7))
    b = model.sample(5, generator=torch.Generator().manual_seed(7))
    c = model.sample(5, generator=torch.Generator().manual_seed(8))
    assert a.shape == (5, *SPEC.shape)
    assert a.min() >= -1.0 and a.max() <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_log_likelihood_is_per_image_and_says_what_it_is(family):
    model = build(family).eval()
    x, y = batch()
    ll = model.log_likelihood(x, None)
    if ll is None:
        pytest.skip(f"{family} has no likelihood")
    assert isinstance(ll, LogLikelihood)
    assert ll.nats.shape == (x.shape[0],) and torch.isfinite(ll.nats).all()
    assert ll.kind in ("exact", "lower_bound") and ll.estimator
    # a discrete model over 256 levels per pixel cannot beat probability 1 per image
    assert (ll.nats <= 0).all()
    # an untrained model should be in the neighbourhood of uniform (8 bits/dim), not absurd
    bpd = -ll.nats / (x[0].numel() * math.log(2))
    assert (bpd > 1).all() and (bpd < 40).all()


def test_state_dict_round_trip_gives_the_same_samples(family):
    model = build(family).eval()
    clone = FAMILIES[family].build(tiny_config(family).family(family), SPEC).eval()
    clone.load_state_dict(model.state_dict())
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(model.sample(4, generator=g()), clone.sample(4, generator=g()))
