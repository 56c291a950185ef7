"""The diffusion family's math: schedules, the forward process, parameterisations, guidance."""

from __future__ import annotations

import math

import pytest
import torch

from genpipe.errors import InputError
from genpipe.models.base import ImageSpec
from genpipe.models.distributions import discretized_gaussian_log_prob
from genpipe.models.diffusion.model import (
    DiffusionConfig,
    DiffusionSamplingConfig,
    GaussianDiffusion,
    build_diffusion,
    cosine_alphas_cumprod,
    eps_from_v,
    guided_prediction,
    linear_alphas_cumprod,
    min_snr_weight,
    static_clip,
    v_from_eps,
    x0_from_eps,
    x0_from_v,
)
from genpipe.samplers import SAMPLERS, Denoised

SPEC = ImageSpec((1, 8, 8), 10)
TINY = dict(channels=8, channel_mults=(1, 2), attention_levels=(1,), timesteps=20,
            sampling=DiffusionSamplingConfig(steps=5))


def model(**cfg):
    torch.manual_seed(0)
    return build_diffusion(DiffusionConfig(**{**TINY, **cfg}), SPEC)


@pytest.mark.parametrize("schedule", [linear_alphas_cumprod, cosine_alphas_cumprod])
@pytest.mark.parametrize("timesteps", [50, 1000])
def test_alpha_bar_decreases_from_one_to_near_zero(schedule, timesteps):
    abar = schedule(timesteps)
    assert abar.shape == (timesteps,) and abar.dtype == torch.float64
    assert (abar[1:] < abar[:-1]).all() and (abar > 0).all()
    assert abar[0] > 0.99 and abar[-1] < 1e-4


def test_schedule_golden_values():
    lin = linear_alphas_cumprod(1000)
    assert float(lin[0]) == pytest.approx(1 - 1e-4, rel=1e-12)  # beta_1 = 1e-4 (Ho et al. sec. 4)
    assert float(lin[-1]) == pytest.approx(4.0358e-5, rel=1e-3)
    cos = cosine_alphas_cumprod(1000)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert float(cos[499]) == pytest.approx(f(0.5) / f(0.0), rel=1e-9)  # abar(t) = f(t) / f(0), eq. 17
    assert float(cos[-1]) < 1e-8  # the last beta is clipped at 0.999


@pytest.mark.parametrize("schedule", [linear_alphas_cumprod, cosine_alphas_cumprod])
def test_closed_form_q_matches_iterating_the_forward_chain(schedule):
    process = GaussianDiffusion(schedule(200))
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([-1.0, -0.2, 0.5, 1.0]).repeat(50_000, 1)  # (N, 4), 4 pixel values
    x = x0.clone()
    checks = {0: None, 20: None, 100: None, 199: None}
    for t in range(200):  # x_t ~ q(x_t | x_{t-1}), eq. 2
        x = process.q_step(x, torch.full((len(x),), t), torch.randn(x.shape, generator=g))
        if t in checks:
            checks[t] = x.clone()
    for t, xt in checks.items():
        closed = process.q_sample(x0, torch.full((len(x0),), t), torch.randn(x0.shape, generator=g))  # eq. 4
        ab = float(process.alphas_cumprod[t])
        for sample in (xt, closed):
            torch.testing.assert_close(sample.mean(0), math.sqrt(ab) * x0[0], atol=0.015, rtol=0)
            torch.testing.assert_close(sample.var(0), torch.full((4,), 1 - ab), atol=0.015, rtol=0.02)


def test_v_and_epsilon_parameterisations_agree():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 1, 4, 4, generator=g).clamp(-1, 1), torch.randn(6, 1, 4, 4, generator=g)
    abar = torch.rand(6, 1, 1, 1, generator=g).double().clamp(1e-3, 1 - 1e-3).float()
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    v = v_from_eps(x0, eps, abar)
    torch.testing.assert_close(eps_from_v(x_t, v, abar), eps)
    torch.testing.assert_close(x0_from_eps(x_t, eps, abar), x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(x0_from_v(x_t, v, abar), x0)  # x0 = alpha x_t - sigma v
    # golden: at abar = 1/2, v = (eps - x0) / sqrt(2)
    half = torch.tensor(0.5)
    assert float(v_from_eps(torch.tensor(0.2), torch.tensor(1.0), half)) == pytest.approx(0.8 / math.sqrt(2))


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_the_perfect_network_has_zero_loss_and_its_output_is_the_noise(prediction):
    process = GaussianDiffusion(cosine_alphas_cumprod(100), prediction)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(5, 1, 4, 4, generator=g) * 2 - 1, torch.randn(5, 1, 4, 4, generator=g)
    t = torch.tensor([0, 10, 50, 90, 99])
    ab = process.abar(t, x0)
    target = noise if prediction == "epsilon" else v_from_eps(x0, noise, ab)
    oracle = lambda x_t, tt, y: target  # noqa: E731
    assert float(process.training_losses(oracle, x0, t, None, noise)["mse"].abs().max()) < 1e-10
    x_t = process.q_sample(x0, t, noise)
    pred = process.denoise(target, x_t, t)
    torch.testing.assert_close(pred.eps, noise, atol=1e-5, rtol=1e-5)
    if prediction == "v":  # eps gives x0 only through x_t's float32 rounding times 1 / sqrt(abar)
        torch.testing.assert_close(pred.x0, x0, atol=1e-5, rtol=1e-5)
    wrong = lambda x_t, tt, y: target + 0.1  # noqa: E731
    torch.testing.assert_close(process.training_losses(wrong, x0, t, None, noise)["mse"], torch.full((5,), 0.01))


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_min_snr_weighting_is_min_snr_times_the_x0_error(prediction):
    process = GaussianDiffusion(linear_alphas_cumprod(1000), prediction, "min_snr")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(4, 1, 4, 4, generator=g) * 2 - 1, torch.randn(4, 1, 4, 4, generator=g)
    t = torch.tensor([5, 150, 400, 900])  # SNR from ~2000 (clipped at 5) to ~1e-4
    out = torch.randn(4, 1, 4, 4, generator=g)  # any prediction
    x_t, ab = process.q_sample(x0, t, noise), process.abar(t, x0)
    x0_err = (process.denoise(out, x_t, t).x0 - x0).pow(2).flatten(1).mean(1)
    snr = (ab / (1 - ab)).flatten()
    loss = process.training_losses(lambda *_: out, x0, t, None, noise)["loss"]
    torch.testing.assert_close(loss, snr.clamp(max=5.0) * x0_err, rtol=1e-4, atol=1e-6)
    assert float(min_snr_weight(torch.tensor(0.5), "v")) == pytest.approx(0.5)  # SNR 1: 1 / 2
    assert float(min_snr_weight(torch.tensor(0.9), "epsilon")) == pytest.approx(5 / 9)  # SNR 9: 5 / 9


def test_static_clipping_clamps_the_x0_prediction():
    x_t, eps, ab = torch.tensor([0.9, 0.0]), torch.tensor([-2.0, 0.1]), torch.tensor(0.25, dtype=torch.float64)
    pred = Denoised(x0_from_eps(x_t, eps, ab.float()), eps)  # x0 = [3.8, -0.1]
    clipped = static_clip(pred, x_t, ab)
    torch.testing.assert_close(clipped.x0, pred.x0.clamp(-1, 1))
    torch.testing.assert_close(x0_from_eps(x_t, clipped.eps, ab.float()), clipped.x0)  # still a consistent pair
    assert float(clipped.x0[0]) == 1.0 and float(clipped.eps[0]) == pytest.approx((0.9 - 0.5) / math.sqrt(0.75))
    assert torch.equal(clipped.x0[1], pred.x0[1]) and torch.equal(clipped.eps[1], eps[1])  # in range: unchanged


def test_guidance_scale_one_is_the_conditional_prediction():
    c, u = Denoised(torch.randn(3, 4), torch.randn(3, 4)), Denoised(torch.randn(3, 4), torch.randn(3, 4))
    torch.testing.assert_close(guided_prediction(c, u, 1.0), c)
    torch.testing.assert_close(guided_prediction(c, u, 0.0), u)
    torch.testing.assert_close(guided_prediction(c, u, 3.0).eps, u.eps + 3 * (c.eps - u.eps))
    torch.testing.assert_close(guided_prediction(c, u, 3.0).x0, u.x0 + 3 * (c.x0 - u.x0))

    m = model(conditional=True).eval()
    for p in m.parameters():  # a non-trivial net: the zero-initialised output layer would hide the labels
        p.data.normal_(0, 0.2, generator=torch.Generator().manual_seed(1))
    x, t, y = torch.randn(4, *SPEC.shape), torch.tensor([1, 5, 9, 19]), torch.tensor([0, 3, 7, 9])
    null = torch.full_like(y, SPEC.num_classes)
    with torch.no_grad():
        p_c = m.process.denoise(m.net(x, t, y), x, t)
        p_u = m.process.denoise(m.net(x, t, null), x, t)
        plain = DiffusionSamplingConfig(clip_denoised="none")
        torch.testing.assert_close(m.denoiser(y, plain)(x, t), p_c)
        guided = DiffusionSamplingConfig(clip_denoised="none", guidance_scale=3.0)
        got = m.denoiser(y, guided)(x, t)
        torch.testing.assert_close(got.eps, p_u.eps + 3.0 * (p_c.eps - p_u.eps), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.x0, p_u.x0 + 3.0 * (p_c.x0 - p_u.x0), atol=1e-5, rtol=1e-5)
        ab = m.process.abar(t, x)  # the guided pair is still a consistent one
        torch.testing.assert_close(ab.sqrt() * got.x0 + (1 - ab).sqrt() * got.eps, x, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(p_c.eps, p_u.eps)


def test_label_dropout_sends_labels_to_the_null_class():
    x, y = torch.rand(8, *SPEC.shape) * 2 - 1, torch.arange(8)
    m = model(conditional=True, p_uncond=1.0)
    for p in m.parameters():
        p.data.normal_(0, 0.2, generator=torch.Generator().manual_seed(1))

    def loss(labels):
        torch.manual_seed(5)
        return float(m.training_losses(x, labels, "model")["loss"].detach())

    assert loss(y) == loss(torch.zeros_like(y))  # every label dropped
    m.cfg = m.cfg.model_copy(update={"p_uncond": 0.0})
    assert loss(y) != loss(torch.zeros_like(y))  # none dropped: the labels matter


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm_solver++"])
@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_every_sampler_gives_images_in_range_and_is_seeded(sampler, prediction):
    m = model(prediction=prediction).eval()
    o = DiffusionSamplingConfig(sampler=sampler, steps=4, eta=0.5, spacing="quadratic")
    a = m.sample(3, generator=torch.Generator().manual_seed(0), options=o)
    b = m.sample(3, generator=torch.Generator().manual_seed(0), options=o)
    assert a.shape == (3, *SPEC.shape) and torch.equal(a, b)


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 16, 16)])
def test_the_unet_handles_colour_and_other_sizes(shape):
    torch.manual_seed(0)
    m = build_diffusion(DiffusionConfig(channels=8, channel_mults=(1, 2, 2, 2), attention_levels=(2, 3),
                                        num_res_blocks=2, conditional=True), ImageSpec(shape, 10))
    x, t = torch.randn(2, *shape), torch.tensor([0, 999])
    assert m.net(x, t, torch.tensor([3, 10])).shape == (2, *shape)
    loss = m.training_losses(x.clamp(-1, 1), torch.tensor([1, 2]), "model")["loss"]
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())


def test_conditional_sampling_defaults_to_a_balanced_mix_of_classes():
    m = model(conditional=True).eval()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    o = DiffusionSamplingConfig(steps=3, guidance_scale=2.0)
    assert torch.equal(m.sample(12, generator=g(), options=o), m.sample(12, torch.arange(12) % 10, g(), o))


def test_bad_requests_are_input_errors():
    with pytest.raises(InputError, match="unconditional"):
        model().sample(2, labels=torch.tensor([1, 2]))
    with pytest.raises(InputError, match="guidance_scale"):
        model().sample(2, options=DiffusionSamplingConfig(steps=5, guidance_scale=2.0))
    with pytest.raises(InputError, match="p_uncond"):
        model(conditional=True, p_uncond=0.0).sample(2, options=DiffusionSamplingConfig(steps=5, guidance_scale=2.0))
    with pytest.raises(InputError, match="sampling.steps"):
        model().sample(2, options=DiffusionSamplingConfig(steps=21))
    with pytest.raises(InputError, match="labels"):
        model(conditional=True).sample(2, labels=torch.tensor([1, 10]))
    with pytest.raises(InputError, match="channel_mults"):
        model(channel_mults=(1, 1, 1, 1, 1))  # 4 halvings of 8x8
    with pytest.raises(InputError, match="attention_levels"):
        model(attention_levels=(2,))
    with pytest.raises(ValueError, match="sampling.steps"):  # caught when the config is loaded
        DiffusionConfig(timesteps=20, sampling=DiffusionSamplingConfig(steps=50))


@pytest.mark.parametrize("prediction", ["epsilon", "v"])
def test_a_few_steps_learn_something(prediction):
    m = model(prediction=prediction)
    g = torch.Generator().manual_seed(0)
    x = ((torch.rand(1, *SPEC.shape, generator=g) > 0.7).float() * 2 - 1).repeat(16, 1, 1, 1)  # one binary image
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    torch.manual_seed(0)
    losses = []
    for _ in range(40):
        loss = m.training_losses(x, None, "model")["loss"]
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert sum(losses[-8:]) < 0.7 * sum(losses[:8])  # the MSE starts near 1
    m.eval()
    torch.manual_seed(0)
    trained = m.log_likelihood(x[:4]).nats.mean()
    torch.manual_seed(0)
    untrained = model(prediction=prediction).eval().log_likelihood(x[:4]).nats.mean()
    assert trained > untrained  # training tightens the bound on the image it saw


# ----------------------------------------------------------------------------- the variational bound


@pytest.mark.parametrize("mean, log_scale", [(0.0, -6.0), (0.3, -2.0), (-0.9, 0.0), (1.5, -1.0), (0.0, 3.0)])
def test_discretised_gaussian_sums_to_one_over_the_256_levels(mean, log_scale):
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0
    log_p = discretized_gaussian_log_prob(levels, torch.tensor(mean), torch.tensor(log_scale))
    assert torch.isfinite(log_p).all()  # far bins: tiny but never log 0
    assert float(log_p.exp().sum()) == pytest.approx(1.0, abs=1e-9)


def test_discretised_gaussian_is_finite_far_in_the_tails():
    x = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64)
    lp = discretized_gaussian_log_prob(x, torch.tensor(-1.0, dtype=torch.float64), torch.tensor(-7.0, dtype=torch.float64))
    assert torch.isfinite(lp).all()
    assert lp[0] > -1e-4 and lp[2] < lp[1] < -100  # the mass sits on -1; +1 is further out than 0


def point_mass_oracle(process: GaussianDiffusion, x_star: torch.Tensor):
    """The Bayes-optimal prediction (x0, eps) when the data is the single image x_star."""
    def denoise(x_t, t):
        ab = process.abar(t, x_t)
        return Denoised(x_star.expand_as(x_t), (x_t - ab.sqrt() * x_star) / (1 - ab).sqrt())
    return denoise


def test_the_bound_of_the_ideal_denoiser_on_a_point_mass_is_the_prior_and_decoder_terms():
    process = GaussianDiffusion(cosine_alphas_cumprod(50))
    g = torch.Generator().manual_seed(0)
    x = ((torch.rand(1, 1, 4, 4, generator=g) > 0.5).double() * 2 - 1)
    eps = point_mass_oracle(process, x)
    for t in range(1, 50):  # every KL term vanishes: the predicted x0 is the true one
        kl = process.vlb_term(eps, x, torch.tensor([t]), torch.randn(x.shape, generator=g, dtype=torch.float64))
        assert float(kl) == pytest.approx(0.0, abs=1e-6)
    sigma = math.sqrt(float(process.betas()[0]))
    decoder = -float(discretized_gaussian_log_prob(x, x, torch.tensor(math.log(sigma))).sum())
    nll = process.nll_bound(eps, x, timesteps=10, generator=g)
    assert float(nll) == pytest.approx(float(process.prior_kl(x)) + decoder, rel=1e-6)


def test_a_worse_denoiser_has_a_looser_bound():
    process = GaussianDiffusion(cosine_alphas_cumprod(50))
    x = torch.ones(2, 1, 4, 4, dtype=torch.float64)
    ideal = point_mass_oracle(process, x)
    off = point_mass_oracle(process, x * 0.5)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert (process.nll_bound(off, x, 49, g()) > process.nll_bound(ideal, x, 49, g()) + 1.0).all()


def test_the_stratified_estimate_is_unbiased_for_the_full_sum():
    """Mean over many stratified draws of 5 timesteps = the exact sum over all 49 (a biased
    estimator, e.g. the strata's midpoints, misses it by far more than the tolerance)."""
    process = GaussianDiffusion(linear_alphas_cumprod(50))
    x = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    eps = point_mass_oracle(process, x * 0.2)  # deterministic in (x_t, t)
    exact = torch.stack([process.nll_bound(eps, x, 49, torch.Generator().manual_seed(s)) for s in range(200)]).mean()
    est = torch.stack([process.nll_bound(eps, x, 5, torch.Generator().manual_seed(s)) for s in range(2000)]).mean()
    assert float(est) == pytest.approx(float(exact), rel=0.02)


def test_the_model_reports_a_lower_bound_in_nats_per_image():
    m = model(vlb_timesteps=4).eval()
    x = torch.randint(0, 256, (3, *SPEC.shape), generator=torch.Generator().manual_seed(0)).float() / 127.5 - 1.0
    ll = m.log_likelihood(x)
    assert ll.kind == "lower_bound" and ll.estimator == "vlb-stratified-4"
    assert ll.nats.shape == (3,) and (ll.nats < 0).all()
    assert model(vlb_timesteps=19).eval().log_likelihood(x).estimator == "vlb"  # T - 1 = 19 terms: all of them


# ----------------------------------------------------------------------------- precision of x0_hat

PRECISE = dict(timesteps=1000, schedule="cosine")  # sqrt(abar_{T-1}) ~ 5e-5: eq. 4 solved for x0 is ill conditioned


def reference_x0(m, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0_hat of the (random-initialised) net's output at (x_t, t), every operation in float64."""
    out, x = m.net(x_t, t, None).double(), x_t.double()
    ab = m.process.alphas_cumprod[t].view(-1, 1, 1, 1)
    return ab.sqrt() * x - (1 - ab).sqrt() * out if m.cfg.prediction == "v" else (x - (1 - ab).sqrt() * out) / ab.sqrt()


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver++"])
def test_a_one_step_sample_of_a_v_net_is_its_float64_x0_at_t_T_minus_1(sampler):
    # one step from x_T at t = T-1 returns the x0_hat the sampler computed there, clamped
    m = model(prediction="v", **PRECISE).eval()
    o = DiffusionSamplingConfig(sampler=sampler, steps=1, clip_denoised="none")
    got = m.sample(16, generator=torch.Generator().manual_seed(0), options=o)
    x_T = torch.randn((16, *SPEC.shape), generator=torch.Generator().manual_seed(0))  # sample()'s draw
    with torch.no_grad():
        ref = reference_x0(m, x_T, torch.full((16,), 999)).clamp(-1, 1)
    assert float((ref.abs() < 1).float().mean()) > 0.9  # the clamp hides (almost) nothing
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=0)  # float32 x0 from float32 (x_T, v): ~1e-7


def test_the_x0_the_samplers_use_is_the_float64_one_at_every_t():
    m = model(prediction="v", **PRECISE).eval()
    denoise = m.denoiser(None, DiffusionSamplingConfig(clip_denoised="none"))
    x_t = torch.randn((1000, *SPEC.shape), generator=torch.Generator().manual_seed(0))
    t = torch.arange(1000)  # one row per timestep
    with torch.no_grad():
        torch.testing.assert_close(denoise(x_t, t).x0.double(), reference_x0(m, x_t, t), rtol=1e-5, atol=0)
        # each sampler steps with that x0_hat: from a single timestep t it returns x0_hat(x_t, t) itself
        for name, sampler in SAMPLERS.items():
            for t1 in (999, 998, 500, 0):
                x = x_t[:2]
                got = sampler(denoise, x, m.process.alphas_cumprod, [t1], generator=torch.Generator())
                torch.testing.assert_close(got.double(), reference_x0(m, x, torch.full((2,), t1)), rtol=1e-5, atol=0,
                                           msg=lambda s: f"{name} at t = {t1}: {s}")  # noqa: B023


def test_the_bounds_x0_is_the_float64_one_at_t_T_minus_1():
    # L_{T-1} compares the posterior means of x0 and x0_hat: an x0_hat error of 1e-3 moves it by ~1e-3
    m = model(prediction="v", **PRECISE).eval()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 256, (4, *SPEC.shape), generator=g).float() / 127.5 - 1.0
    noise, t = torch.randn(x0.shape, generator=g), torch.full((4,), 999)
    with torch.no_grad():
        got = m.process.vlb_term(lambda x_t, tt: m.process.denoise(m.net(x_t, tt, None), x_t, tt), x0, t, noise)
        x_t = m.process.q_sample(x0, t, noise)
        mean_q, var = m.process.posterior(x0, x_t, t)
        mean_p, _ = m.process.posterior(reference_x0(m, x_t, t).clamp(-1, 1), x_t, t)
    torch.testing.assert_close(got, ((mean_q - mean_p).pow(2) / (2 * var)).flatten(1).sum(1), rtol=1e-5, atol=0)
