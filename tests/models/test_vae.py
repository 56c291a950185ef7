"""The VAE's math: the discretised-logistic likelihood, the closed-form KL, the ELBO, the VampPrior."""

from __future__ import annotations

import math

import pytest
import torch

from genpipe.config import resolve
from genpipe.errors import InputError
from genpipe.models import FAMILIES, ImageSpec
from genpipe.models.distributions import discretized_logistic_log_prob, gaussian_log_prob
from tests.models.training_steps import first_and_last_loss

LEVELS = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0  # the 256 pixel values in [-1, 1]


@pytest.mark.parametrize(("mean", "log_scale"), [(0.0, -2.0), (0.3, -7.0), (-1.2, 0.5), (0.95, -4.0), (3.0, -1.0)])
def test_discretized_logistic_is_a_distribution_over_256_levels(mean, log_scale):
    p = discretized_logistic_log_prob(LEVELS, torch.tensor(mean, dtype=torch.float64), torch.tensor(log_scale, dtype=torch.float64)).exp()
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-6)
    assert int(p.argmax()) == int(torch.argmin((LEVELS - min(max(mean, -1), 1)).abs()))


def test_discretized_logistic_golden_value():
    # mass of the bin [x - 1/255, x + 1/255] under Logistic(0, s): sigmoid(b/s) - sigmoid(a/s)
    s = math.exp(-2.0)
    x = LEVELS[128]
    expected = 1 / (1 + math.exp(-(float(x) + 1 / 255) / s)) - 1 / (1 + math.exp(-(float(x) - 1 / 255) / s))
    got = discretized_logistic_log_prob(x, torch.tensor(0.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64))
    assert float(got) == pytest.approx(math.log(expected), rel=1e-9)


def test_gaussian_log_prob_matches_torch_distributions():
    z, mean, log_std = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3) * 0.5
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(z)
    assert torch.allclose(gaussian_log_prob(z, mean, log_std), expected, atol=1e-6)


def vae(**cfg):
    torch.manual_seed(0)
    c = resolve({"vae": {"latent_dim": 4, "channels": [8, 16], "prior": "vamp", **cfg}, "profiles": {"quick": {}}}).vae
    return FAMILIES["vae"].build(c, ImageSpec((1, 8, 8), 10))


def test_closed_form_kl_matches_monte_carlo():
    model = vae(prior="standard")
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    mu, logvar = model.encode(x)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    z = q.sample((20000,))
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)
    _, kl = model.elbo_terms(x, torch.zeros_like(mu))
    assert torch.allclose(kl, mc, rtol=0.05, atol=0.02)


def test_loss_is_negative_elbo_per_dimension():
    model = vae()
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    torch.manual_seed(5)
    losses = model.training_losses(x, None, "model")
    torch.manual_seed(5)
    log_px_z, kl = model.elbo_terms(x, torch.randn(4, 4))
    elbo = (log_px_z - kl).mean().detach()
    assert float(losses["loss"].detach()) == pytest.approx(float(-elbo) / 64, rel=1e-5)
    assert float(losses["elbo_bpd"]) == pytest.approx(float(-elbo) / (64 * math.log(2)), rel=1e-5)


@pytest.mark.parametrize("prior", ["standard", "vamp"])
def test_iwae_bound_tightens_with_k(prior):
    """IWAE-k >= ELBO in expectation, and grows with k (Burda et al. 2016, theorem 1)."""
    x = torch.rand(16, 1, 8, 8).mul(255).round().div(127.5).sub(1)
    means = {}
    for k in (1, 8, 64):
        model = vae(iwae_samples=k, prior=prior)
        torch.manual_seed(1)
        ll = model.log_likelihood(x)
        assert ll.estimator == ("elbo" if k == 1 else f"iwae-{k}") and ll.kind == "lower_bound"
        means[k] = float(ll.nats.mean())
    assert means[1] < means[8] < means[64]


@pytest.mark.parametrize("prior", ["standard", "vamp"])
def test_prior_density_integrates_to_one(prior):
    """log p(z) is a normalised density: integrated over a 1-d latent on a fine grid."""
    model = vae(latent_dim=1, prior=prior, pseudo_inputs=5)
    with torch.no_grad():  # spread the pseudo-inputs so the mixture has distinct components
        if prior == "vamp":
            model.pseudo_inputs.copy_(torch.rand(5, 1, 8, 8) * 2 - 1)
        z = torch.linspace(-40, 40, 200001).unsqueeze(1)
        density = model.prior_log_prob(z, model.prior_components()).exp()
    assert float(torch.trapezoid(density, z.squeeze(1))) == pytest.approx(1.0, abs=1e-4)


def test_vamp_prior_is_the_mean_of_the_pseudo_input_posteriors():
    """p(z) = 1/K sum_k q(z | u_k) (Tomczak & Welling 2018, eq. 9), against torch.distributions."""
    model = vae(pseudo_inputs=7)
    with torch.no_grad():
        model.pseudo_inputs.copy_(torch.rand(7, 1, 8, 8) * 2 - 1)
        mu, logvar = model.encode(model.pseudo_inputs)
        mixture = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(torch.ones(7)),
            torch.distributions.Independent(torch.distributions.Normal(mu, (0.5 * logvar).exp()), 1),
        )
        z = torch.randn(50, 4) * 2
        assert torch.allclose(model.prior_log_prob(z, model.prior_components()), mixture.log_prob(z), atol=1e-5)


def test_vamp_latents_are_drawn_from_the_pseudo_input_posteriors():
    """With one pseudo-input, z ~ q(z | u_1): its mean and spread, from 20,000 draws; a seed repeats them."""
    model = vae(pseudo_inputs=1)
    mu, logvar = (t[0].detach() for t in model.prior_components())
    z = model.sample_latents(20000, torch.Generator().manual_seed(3))
    assert torch.allclose(z.mean(0), mu, atol=0.05 * float((0.5 * logvar).exp().max()) + 1e-3)
    assert torch.allclose(z.std(0), (0.5 * logvar).exp(), rtol=0.03)
    again = model.sample_latents(20000, torch.Generator().manual_seed(3))
    assert torch.equal(z, again)


def test_conditional_vae_uses_the_label():
    model = vae(conditional=True)
    z = torch.randn(2, 4)
    a = model.decode_latents(z, torch.tensor([0, 0]))
    b = model.decode_latents(z, torch.tensor([5, 5]))
    assert not torch.allclose(a, b)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    assert model.log_likelihood(x, torch.tensor([1, 2, 3])).nats.shape == (3,)


def test_a_few_steps_learn_something():
    model = vae()
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(32, 1, 8, 8, generator=g) > 0.7).float() * 2 - 1  # sparse binary images
    first, last = first_and_last_loss(model, x, lr=3e-3, steps=60)
    assert last < 0.5 * first


def test_a_checkpoint_config_without_prior_is_the_standard_normal_prior():
    """Configs written before `prior` existed build the N(0, I) model they were trained as."""
    c = resolve({"vae": {"latent_dim": 4, "channels": [8, 16]}, "profiles": {"quick": {}}}).vae
    model = FAMILIES["vae"].build(c, ImageSpec((1, 8, 8), 10))
    assert c.prior == "standard" and model.prior_components() is None
    assert not any("pseudo" in k for k in model.state_dict())


def test_labels_and_bad_geometry_are_input_errors():
    with pytest.raises(InputError, match="unconditional"):
        vae().sample(2, labels=torch.tensor([1, 2]))
    with pytest.raises(InputError, match="vae.channels"):
        vae(channels=[8, 8, 8, 8])  # 4 halvings of 8x8
