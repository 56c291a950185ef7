"""The contract every registered family must keep (diffusers' SchedulerCommonTest idea).

A family joins these tests by registering in ``genpipe.models.FAMILIES``.
"""

from __future__ import annotations

import math

import pytest
import torch

from genpipe.config import Config, resolve
from genpipe.errors import InputError
from genpipe.models import FAMILIES, GenerativeModel, ImageSpec
from genpipe.models.base import FittedModel, LatentModel, LogLikelihood, MomentModel

SPEC = ImageSpec(shape=(1, 8, 8), num_classes=10)
# tiny settings per family, on top of that family's defaults
TINY = {"vae": {"latent_dim": 4, "channels": [8, 16], "iwae_samples": 4, "prior": "vamp", "pseudo_inputs": 5}, "gmm": {"components": 2},
        "flow": {"steps_per_level": [2, 2], "hidden": 16},
        "gan": {"latent_dim": 4, "g_width": 8, "d_width": 8},
        "pixelcnn": {"hidden_channels": 8, "num_layers": 3, "first_slice": "separate", "fill_slices": 1},
        "diffusion": {"channels": 8, "channel_mults": [1, 2], "attention_levels": [1], "timesteps": 20,
                      "sampling": {"steps": 5}}}


def tiny_config(name: str, **extra) -> Config:
    return resolve({name: {**TINY.get(name, {}), **extra}, "profiles": {"quick": {}}})


def build(name: str, levels: tuple[int, int] = (0, 256), spec: ImageSpec = SPEC, **extra) -> torch.nn.Module:
    """A tiny model of the family, ready to sample (a fitted family is fitted on random images
    of pixel levels in [levels[0], levels[1]))."""
    torch.manual_seed(0)
    model = FAMILIES[name].build(tiny_config(name, **extra).family(name), spec)
    if FAMILIES[name].trainer == "fit":
        g = torch.Generator().manual_seed(2)
        images = torch.randint(*levels, (40, *spec.shape), generator=g, dtype=torch.uint8)
        model.fit(images, torch.arange(40) % spec.num_classes, 0)
    return model


def batch(n: int = 6, spec: ImageSpec = SPEC) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (n, *spec.shape), generator=g).float() / 127.5 - 1.0  # 8-bit grid
    return x, torch.randint(0, spec.num_classes, (n,), generator=g)


def assert_draws_match_moments(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, z: float = 5.0) -> None:
    """The empirical mean and covariance of n draws ``x`` (n, ...) agree with ``mean`` (D,) and
    ``cov`` (D, D) within ``z`` standard errors in every entry.

    Centred at the model's mean c = x - mean, S = c^T c / n is unbiased for cov. The standard
    error of mean_d is sqrt(cov_dd / n); that of S_ij is the standard deviation of c_i c_j over
    the draws (their fourth moments, so it holds for mixtures as for Gaussians) over sqrt(n).
    z = 5 over the D + D (D + 1) / 2 entries is a false alarm well under 1 % for n in the thousands.
    """
    c = x.double().flatten(1) - mean  # (n, D)
    n = c.shape[0]
    z_mean = (c.mean(0) / (cov.diagonal() / n).sqrt()).abs()  # (D,)
    s = c.T @ c / n  # (D, D)
    q = c * c
    se = ((q.T @ q / n - s * s).clamp(min=0.0) / n).sqrt()  # (D, D)
    z_cov = (s - cov).abs() / se.clamp(min=1e-300)
    assert float(z_mean.max()) <= z, f"mean off by {float(z_mean.max()):.1f} standard errors"
    assert float(z_cov.max()) <= z, (
        f"covariance off by {float(z_cov.max()):.1f} standard errors "
        f"(trace {float(s.trace()):.4g} drawn, {float(cov.trace()):.4g} the model's)"
    )


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
    if FAMILIES[family].trainer == "fit":
        assert groups == {} and isinstance(model, FittedModel)
        return
    assert groups, "at least one phase"
    ids = [id(p) for g in groups.values() for p in g.params]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}


def test_each_phase_gives_a_finite_loss_with_gradients(family):
    if FAMILIES[family].trainer == "fit":
        pytest.skip(f"{family} is fitted by fit(), see test_optimizer_groups_cover_every_parameter_once")
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


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 64, 64)], ids=["1x28", "3x32", "3x64"])
def test_every_family_at_the_sizes_users_bring(family, shape):
    """Build, a training step in every phase (or the fit), samples of the shape, and a finite
    per-image likelihood where the family has one: grey 28 px (MNIST's size) and colour 32/64 px."""
    spec = ImageSpec(shape=shape, num_classes=10)
    # the mixture on PCA components: a full covariance over all 12,288 pixels of a 3x64x64 image
    # (params.yaml's pca_components: 0) takes scikit-learn 7-8 minutes to fit on 40 images
    model = build(family, spec=spec, **({"pca_components": 16} if family == "gmm" else {}))
    x, y = batch(2, spec)
    for phase in model.optimizer_groups():
        model.zero_grad()
        loss = model.training_losses(x, y, phase)["loss"]
        assert torch.isfinite(loss), phase
        loss.backward()
    model.eval()
    with torch.no_grad():
        sample = model.sample(2, generator=torch.Generator().manual_seed(0))
        assert sample.shape == (2, *shape) and torch.isfinite(sample).all()
        ll = model.log_likelihood(x, None, torch.Generator().manual_seed(0))
    assert ll is None or (ll.nats.shape == (2,) and torch.isfinite(ll.nats).all())


def test_sample_shape_range_and_seed(family):
    model = build(family).eval()
    a = model.sample(5, generator=torch.Generator().manual_seed(7))
    b = model.sample(5, generator=torch.Generator().manual_seed(7))
    c = model.sample(5, generator=torch.Generator().manual_seed(8))
    assert a.shape == (5, *SPEC.shape)
    assert a.min() >= -1.0 and a.max() <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_log_likelihood_noise_comes_from_the_generator_alone(family):
    # the pipeline evaluates families in threads of one process: the global RNG is shared
    model = build(family).eval()
    x, _ = batch()
    torch.manual_seed(1)
    a = model.log_likelihood(x, None, torch.Generator().manual_seed(5))
    if a is None:
        pytest.skip(f"{family} has no likelihood")
    torch.manual_seed(2)
    b = model.log_likelihood(x, None, torch.Generator().manual_seed(5))
    assert torch.equal(a.nats, b.nats)
    if a.kind != "exact":  # an estimate: another generator seed, other noise, another number
        assert not torch.equal(model.log_likelihood(x, None, torch.Generator().manual_seed(6)).nats, a.nats)


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
    bpd = -ll.nats / (x[0].numel() * math.log(2))
    assert (bpd > 0).all()
    if FAMILIES[family].trainer != "fit":  # an untrained network sits near uniform (8 bits/dim)
        assert (bpd > 1).all() and (bpd < 40).all()


def test_conditional_models_take_labels_and_unconditional_ones_refuse_them(family):
    model = build(family).eval()
    with pytest.raises(InputError, match="unconditional"):
        model.sample(2, labels=torch.tensor([1, 2]), generator=torch.Generator().manual_seed(0))
    cond = build(family, conditional=True).eval()
    x, y = batch()
    if FAMILIES[family].trainer != "fit":
        for phase in cond.optimizer_groups():
            assert torch.isfinite(cond.training_losses(x, y, phase)["loss"])
    a = cond.sample(4, labels=torch.tensor([1, 1, 2, 2]), generator=torch.Generator().manual_seed(0))
    b = cond.sample(4, labels=torch.tensor([3, 3, 4, 4]), generator=torch.Generator().manual_seed(0))
    assert a.shape == (4, *SPEC.shape) and not torch.equal(a, b)  # the label changes the image
    assert cond.sample(3, generator=torch.Generator().manual_seed(0)).shape == (3, *SPEC.shape)
    # one check for every family (models.base.check_labels): wrong count, out of range, negative
    for bad in (torch.tensor([1, 2, 3]), torch.tensor([1, SPEC.num_classes]), torch.tensor([-1, 0])):
        with pytest.raises(InputError, match=rf"^labels: expected 2 class ids in \[0, {SPEC.num_classes}\)"):
            cond.sample(2, labels=bad, generator=torch.Generator().manual_seed(0))


def test_latent_models_decode_their_prior_draws(family):
    model = build(family).eval()
    if not isinstance(model, LatentModel):
        pytest.skip(f"{family} has no latent space")
    z = model.sample_latents(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(z, model.sample_latents(3, generator=torch.Generator().manual_seed(0)))
    images = model.decode_latents(z)
    assert images.shape == (3, *SPEC.shape) and images.min() >= -1 and images.max() <= 1


def test_state_dict_round_trip_gives_the_same_samples(family):
    model = build(family).eval()
    clone = FAMILIES[family].build(tiny_config(family).family(family), SPEC).eval()
    clone.load_state_dict(model.state_dict())  # buffers too: a fitted family is all buffers
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert torch.equal(model.sample(4, generator=g()), clone.sample(4, generator=g()))


def test_samples_have_the_models_own_mean_and_covariance(family):
    # sample() clamps to [-1, 1], moments() describe the draw before it: a fitted family is fitted
    # on mid-grey images (levels 96..159, i.e. [-0.25, 0.25]) so that no draw reaches the clamp
    # (checked below), and the comparison is with the model's full distribution
    model = build(family, levels=(96, 160)).eval()
    if not isinstance(model, MomentModel):
        pytest.skip(f"{family} has no closed-form moments (no moments()) and no test trains it to a "
                    "known distribution cheaply: its sample moments are not checked")
    cond = build(family, levels=(96, 160), conditional=True).eval()
    n = 20_000
    cases = [(model, None), (cond, None), (cond, torch.full((n,), 3)), (cond, torch.tensor([2, 7, 7, 7]).repeat(n // 4))]
    for i, (m, labels) in enumerate(cases):
        x = m.sample(n, labels=labels, generator=torch.Generator().manual_seed(10 + i))
        assert x.abs().max() < 1.0  # the clamp changed nothing
        assert_draws_match_moments(x, *m.moments(labels))
