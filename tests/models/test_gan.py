"""The GAN's math: each objective's sign and optimum, the gradient penalty, spectral norm,
the two training phases, conditional and truncated sampling."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genpipe.errors import InputError
from genpipe.models.base import ImageSpec, LatentModel
from genpipe.models.gan.config import GANConfig, GANSamplingConfig
from genpipe.models.gan.model import build_gan, truncated_normal
from genpipe.models.gan.losses import (
    G_LOSSES,
    gradient_penalty,
    hinge_d_loss,
    non_saturating_d_loss,
    non_saturating_g_loss,
    wasserstein_d_loss,
)

SPEC = ImageSpec((1, 8, 8), 10)


def gan(spec: ImageSpec = SPEC, **cfg) -> nn.Module:
    torch.manual_seed(0)
    return build_gan(GANConfig(**{"latent_dim": 8, "g_width": 8, "d_width": 8, **cfg}), spec)


def full(value: float, n: int = 4) -> torch.Tensor:
    return torch.full((n,), value)


# ----------------------------------------------------------------------------- losses
def test_non_saturating_d_loss_is_2log2_when_d_cannot_tell_and_falls_as_d_separates():
    # sigma(0) = 1/2 everywhere: the value at the game's optimum p_g = p_data
    assert float(non_saturating_d_loss(full(0.0), full(0.0))) == pytest.approx(2 * math.log(2))
    gaps = [0.0, 1.0, 3.0, 10.0, 30.0]  # real logits +g, fake logits -g: D(x) -> 1, D(G(z)) -> 0
    values = [float(non_saturating_d_loss(full(g), full(-g))) for g in gaps]
    assert all(a > b for a, b in zip(values, values[1:]))
    assert values[-1] == pytest.approx(0.0, abs=1e-9)
    # getting it the wrong way round costs more than not knowing
    assert float(non_saturating_d_loss(full(-3.0), full(3.0))) > 2 * math.log(2)


def test_non_saturating_d_loss_golden_value():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sig = torch.sigmoid
    expected = -(sig(real).log().mean() + (1 - sig(fake)).log().mean())  # eq. 1, negated
    assert float(non_saturating_d_loss(real, fake)) == pytest.approx(float(expected), rel=1e-6)


def test_hinge_d_loss_is_zero_beyond_the_margins_and_linear_inside():
    assert float(hinge_d_loss(full(1.0), full(-1.0))) == 0.0
    assert float(hinge_d_loss(torch.tensor([1.0, 5.0]), torch.tensor([-1.0, -7.0]))) == 0.0
    assert float(hinge_d_loss(full(0.0), full(0.0))) == pytest.approx(2.0)
    assert float(hinge_d_loss(torch.tensor([0.5, 3.0]), full(-2.0, 2))) == pytest.approx(0.25)


def test_wasserstein_critic_loss_is_mean_fake_minus_mean_real():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(16, generator=g), torch.randn(16, generator=g)
    assert float(wasserstein_d_loss(real, fake)) == pytest.approx(float(fake.mean() - real.mean()), rel=1e-6)


@pytest.mark.parametrize("kind", ["non_saturating", "hinge", "wgan_gp"])
def test_generator_losses_fall_as_d_of_fakes_rises(kind):
    values = [float(G_LOSSES[kind](full(v))) for v in (-5.0, -1.0, 0.0, 1.0, 5.0)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_non_saturating_g_loss_keeps_its_gradient_when_d_wins():
    # early on D(G(z)) -> 0; log(1 - D) has a vanishing gradient there, -log D does not (sec. 3)
    fake = torch.full((4,), -10.0, requires_grad=True)
    (grad,) = torch.autograd.grad(non_saturating_g_loss(fake), fake)
    minimax = torch.full((4,), -10.0, requires_grad=True)
    (grad_minimax,) = torch.autograd.grad(torch.log1p(-torch.sigmoid(minimax)).mean(), minimax)
    assert grad.abs().min() > 0.2 and grad_minimax.abs().max() < 1e-4


# ----------------------------------------------------------------------------- gradient penalty
@pytest.mark.parametrize(("norm", "expected"), [(1.0, 0.0), (2.0, 10.0 * (2.0 - 1.0) ** 2), (0.5, 10.0 * 0.25)])
def test_gradient_penalty_on_a_linear_critic(norm, expected):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(1, 3, 4, 4, generator=g)
    w = (norm * w / w.norm()).requires_grad_(True)  # f(x) = <w, x>, Lipschitz constant ||w||
    real, fake = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    gp = gradient_penalty(lambda x: (x * w).flatten(1).sum(1), real, fake, torch.rand(5, generator=g), weight=10.0)
    assert float(gp.detach()) == pytest.approx(expected, abs=1e-5)
    (dw,) = torch.autograd.grad(gp, w)  # differentiable w.r.t. the critic (create_graph)
    assert (dw.abs().sum() > 0) == (norm != 1.0)


def test_wgan_gp_needs_a_critic_without_batch_norm():
    with pytest.raises(ValueError, match="d_norm batch"):
        GANConfig(loss="wgan_gp", d_norm="batch")
    model = gan(loss="wgan_gp", d_norm="layer")
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    torch.manual_seed(3)
    losses = model.training_losses(x, None, "discriminator")
    # the estimate is E[D(x)] - E[D(G(z))], recomputed here from the same z and the critic itself
    torch.manual_seed(3)
    z = torch.randn(4, model.cfg.latent_dim)
    with torch.no_grad():
        fake = model.generator(z, None, batch_stats=True)
        estimate = model.discriminator(x, None).mean() - model.discriminator(fake, None).mean()
    assert float(losses["wasserstein_estimate"]) == pytest.approx(float(estimate), rel=1e-5, abs=1e-6)
    assert float(losses["gradient_penalty"]) > 0  # a random critic is not 1-Lipschitz
    assert float(losses["loss"].detach()) == pytest.approx(float((losses["adversarial"] + losses["gradient_penalty"]).detach()), rel=1e-5)


# ----------------------------------------------------------------------------- spectral norm
def _layer_norms(d: nn.Module) -> list[float]:
    mods = [m for m in d.modules() if isinstance(m, (nn.Conv2d, nn.Linear, nn.Embedding))]
    return [float(torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)) for m in mods]


def test_spectral_norm_bounds_every_discriminator_layer():
    spec, kw = ImageSpec((1, 16, 16), 10), {"d_norm": "none", "conditional": True}
    plain, sn = gan(spec, **kw).discriminator, gan(spec, **kw, spectral_norm=True).discriminator
    with torch.no_grad():  # large weights: without the normalisation their norms are far above 1
        for p in plain.parameters():
            p.mul_(50.0)
        for name, p in sn.named_parameters():
            if name.endswith("original"):
                p.copy_(torch.randn_like(p) * 5.0)
    assert max(_layer_norms(plain)) > 2.0
    sn.train()
    for _ in range(30):  # power iterations run on each forward in training mode
        sn(torch.randn(4, 1, 16, 16), torch.arange(4))
    norms = _layer_norms(sn.eval())  # two convs, the head and the projection embedding
    assert len(norms) == 4 and all(n == pytest.approx(1.0, abs=0.02) for n in norms)


# ----------------------------------------------------------------------------- phases
def test_optimizer_groups_are_disjoint_and_cover_g_and_d():
    model = gan(lr=1e-3, lr_d=4e-4)
    groups = model.optimizer_groups()
    assert list(groups) == ["discriminator", "generator"]  # D steps first
    d_ids, g_ids = ({id(p) for p in groups[k].params} for k in ("discriminator", "generator"))
    assert not d_ids & g_ids
    assert d_ids == {id(p) for p in model.discriminator.parameters()}
    assert g_ids == {id(p) for p in model.generator.parameters()}
    assert (groups["discriminator"].lr, groups["generator"].lr) == (4e-4, 1e-3)
    assert groups["generator"].betas == (0.5, 0.999)


def test_the_discriminator_phase_does_not_reach_the_generator():
    model = gan()
    model.training_losses(torch.rand(4, 1, 8, 8) * 2 - 1, None, "discriminator")["loss"].backward()
    assert all(p.grad is None for p in model.generator.parameters())
    assert all(p.grad is not None for p in model.discriminator.parameters())


def test_a_few_discriminator_steps_tell_data_from_fakes():
    model = gan()
    x = (torch.rand(16, 1, 8, 8) > 0.7).float() * 2 - 1
    opt = torch.optim.Adam(model.discriminator.parameters(), lr=5e-3, betas=(0.5, 0.999))
    for _ in range(30):
        losses = model.training_losses(x, None, "discriminator")
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    assert losses["d_real"] - losses["d_fake"] > 0.5 and losses["loss"] < 0.5 * 2 * math.log(2)


# ----------------------------------------------------------------------------- sampling
def test_samples_come_from_the_latents_and_do_not_depend_on_the_batch():
    model = gan()
    assert isinstance(model, LatentModel)
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    a = model.sample(6, generator=g())
    assert torch.equal(a, model.decode_latents(model.sample_latents(6, g())))
    assert torch.allclose(a[:2], model.sample(2, generator=g()))  # running statistics, not the batch's
    stats = [b.clone() for b in model.generator.buffers()]
    model.train().sample(6, generator=g())
    assert all(torch.equal(s, b) for s, b in zip(stats, model.generator.buffers()))


def test_conditional_sampling_follows_the_labels():
    model = gan(conditional=True)
    z = model.sample_latents(10, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in model.generator.parameters():  # make the class gains matter at initialisation
            if p.dim() == 2 and p.shape[0] == SPEC.num_classes:
                p.normal_(1.0, 0.5)
    balanced = model.decode_latents(z)  # labels None -> i % num_classes
    assert torch.equal(balanced, model.decode_latents(z, torch.arange(10)))
    assert not torch.allclose(balanced, model.decode_latents(z, torch.zeros(10, dtype=torch.long)))
    with pytest.raises(InputError, match="labels"):
        model.sample(3, labels=torch.tensor([0, 1, 10]))
    with pytest.raises(InputError, match="unconditional"):
        gan().sample(2, labels=torch.tensor([1, 2]))
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    losses = model.training_losses(x, torch.tensor([0, 1, 2, 3]), "discriminator")
    assert torch.isfinite(losses["loss"])


def test_truncated_latents_stay_inside_the_threshold_with_the_right_spread():
    z = truncated_normal((200_000,), 1.0, torch.Generator().manual_seed(0), torch.device("cpu"))
    phi, big_phi = math.exp(-0.5) / math.sqrt(2 * math.pi), 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    var = 1 - 2 * phi / (2 * big_phi - 1)  # variance of N(0, 1) truncated to [-1, 1]
    assert float(z.abs().max()) <= 1.0 and float(z.var()) == pytest.approx(var, rel=0.02)
    model = gan()
    truncated = model.sample(4, generator=torch.Generator().manual_seed(1), options=GANSamplingConfig(truncation=0.5))
    z = truncated_normal((4, model.cfg.latent_dim), 0.5, torch.Generator().manual_seed(1), torch.device("cpu"))
    assert torch.equal(truncated, model.decode_latents(z))  # sample() decodes the truncated latents
    assert not torch.equal(truncated, model.sample(4, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("shape", [(3, 16, 16), (1, 32, 32), (1, 28, 28), (3, 24, 24), (3, 64, 64)])
def test_other_image_sizes_and_channels(shape):
    model = gan(ImageSpec(shape, 10))
    assert model.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, *shape)
    for phase in model.optimizer_groups():
        assert torch.isfinite(model.training_losses(torch.rand(2, *shape) * 2 - 1, None, phase)["loss"])


@pytest.mark.parametrize(("shape", "says"), [((1, 27, 27), "data.resolution: 28 would work"),
                                             ((1, 100, 100), "data.resolution: 96 would work"),
                                             ((1, 4, 4), "data.resolution: 8 would work"),
                                             ((1, 16, 8), "must be square")])
def test_bad_geometry_is_an_input_error_naming_a_size_that_works(shape, says):
    with pytest.raises(InputError, match=says):
        gan(ImageSpec(shape, 10))


@pytest.mark.parametrize(("side", "base"), [(8, 4), (16, 4), (28, 7), (32, 4), (48, 6), (64, 4)])
def test_the_coarsest_map_is_the_side_over_its_doublings(side, base):
    """DCGAN's 4x4 start at powers of two (the same network as before at 8-64 px); 7x7 at 28 px."""
    model = gan(ImageSpec((1, side, side), 10))
    assert model.generator.base == base
    assert model.generator.project.out_features == model.generator.widths[0] * base**2


def test_no_likelihood():
    assert gan().log_likelihood(torch.zeros(2, 1, 8, 8)) is None
