"""The diffusion samplers against a data distribution whose exact answers are known.

For data x_0 ~ N(mu, s^2 I), x_t ~ N(sqrt(abar) mu, (abar s^2 + 1 - abar) I) and the optimal
predictions are E[eps | x_t] = sqrt(1 - abar) (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar) and
E[x_0 | x_t] = mu + sqrt(abar) s^2 (x_t - sqrt(abar) mu) / (abar s^2 + 1 - abar).
The probability-flow ODE then maps x_T affinely onto the data: it keeps the standardised
value (x_t - m_t) / sqrt(v_t) of every pixel, so its exact endpoint is closed-form.
"""

from __future__ import annotations

import math

import pytest
import torch

from genpipe.models.diffusion.model import cosine_alphas_cumprod, linear_alphas_cumprod
from genpipe.samplers import SAMPLERS, Denoised, run_sampler, sampler_timesteps, timestep_sequence
from genpipe.samplers.ddim import ddim_sample
from genpipe.samplers.ddpm import ddpm_sample
from genpipe.samplers.dpm_solver import dpm_solver_pp_sample

MU, S = 0.3, 0.5  # the data distribution N(MU, S^2) per pixel


def gaussian_denoiser(alphas_cumprod: torch.Tensor, mu: float = MU, s: float = S, calls: list | None = None):
    """The exact (E[x_0 | x_t], E[eps | x_t]) for N(mu, s^2 I) data, each in closed form."""

    def denoise(x: torch.Tensor, t: torch.Tensor) -> Denoised:
        if calls is not None:
            calls.append(int(t[0]))
        ab = alphas_cumprod[t].view(-1, *([1] * (x.dim() - 1)))  # float64
        r = (x.double() - ab.sqrt() * mu) / (ab * s * s + 1 - ab)
        return Denoised((mu + ab.sqrt() * s * s * r).to(x.dtype), ((1 - ab).sqrt() * r).to(x.dtype))

    return denoise


def exact_ode_endpoint(x_T: torch.Tensor, abar_T: float, mu: float = MU, s: float = S) -> torch.Tensor:
    """Where the probability-flow ODE takes x_T: mu + s * standardised(x_T)."""
    return mu + s * (x_T - math.sqrt(abar_T) * mu) / math.sqrt(abar_T * s * s + 1 - abar_T)


def noise(n: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(seed))


SCHEDULES = {"linear": linear_alphas_cumprod(1000), "cosine": cosine_alphas_cumprod(1000)}


def test_the_registry_names_each_algorithm_once():
    assert SAMPLERS == {"ddpm": ddpm_sample, "ddim": ddim_sample, "dpm_solver++": dpm_solver_pp_sample}


def test_timestep_sequences_golden_values():
    assert timestep_sequence(1000, 5, "uniform") == [999, 749, 500, 250, 0]
    assert timestep_sequence(1000, 5, "quadratic") == [999, 562, 250, 62, 0]
    assert timestep_sequence(1000, 1, "uniform") == [999]
    for spacing in ("uniform", "quadratic"):  # as many steps as timesteps: every one, once
        assert timestep_sequence(50, 50, spacing) == list(range(49, -1, -1))
    q = timestep_sequence(1000, 200, "quadratic")  # bumped near 0, still distinct
    assert len(set(q)) == 200 and q == sorted(q, reverse=True) and q[0] == 999 and q[-1] == 0
    with pytest.raises(ValueError):
        timestep_sequence(10, 11, "uniform")


@pytest.mark.parametrize(("name", "nfe"), [("ddpm", 1000), ("ddim", 25), ("dpm_solver++", 25)])
def test_one_network_evaluation_per_timestep(name, nfe):
    abar = SCHEDULES["linear"]
    calls: list[int] = []
    run_sampler(name, gaussian_denoiser(abar, calls=calls), noise(4), abar, steps=25, generator=torch.Generator())
    assert calls == sampler_timesteps(name, 1000, 25, "uniform") and len(calls) == nfe


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_ddim_and_dpm_solver_land_on_the_probability_flow_solution(schedule):
    abar = SCHEDULES[schedule]
    x_T = noise()
    exact = exact_ode_endpoint(x_T, float(abar[-1]))
    eps = gaussian_denoiser(abar)
    ddim = ddim_sample(eps, x_T, abar, timestep_sequence(1000, 1000, "uniform"))  # every timestep
    dpm = dpm_solver_pp_sample(eps, x_T, abar, timestep_sequence(1000, 100, "quadratic"))
    assert (ddim - exact).abs().max() < 1e-2  # first order: ~6e-3 (linear), ~3e-3 (cosine)
    assert (dpm - exact).abs().max() < 1e-3
    assert (ddim - dpm).abs().max() < 1e-2
    # and the result really is the data distribution's shape, not a collapsed point
    assert float((exact - MU).std()) == pytest.approx(S, rel=0.15)


def test_dpm_solver_is_second_order_and_ddim_first_order():
    abar = SCHEDULES["linear"]
    x_T = noise()
    exact = exact_ode_endpoint(x_T, float(abar[-1]))
    eps = gaussian_denoiser(abar)

    def err(sampler, steps: int) -> float:
        return float((sampler(eps, x_T, abar, timestep_sequence(1000, steps, "quadratic")) - exact).abs().max())

    dpm_ratio = err(dpm_solver_pp_sample, 40) / err(dpm_solver_pp_sample, 80)
    ddim_ratio = err(ddim_sample, 40) / err(ddim_sample, 80)
    assert 3.0 < dpm_ratio < 8.0  # halving the steps' size divides the error by ~2^2 (here 5.5)
    assert 1.7 < ddim_ratio < 2.3  # ... and by ~2 for the first-order DDIM
    assert err(dpm_solver_pp_sample, 20) < 0.5 * err(ddim_sample, 20)


def test_dpm_solver_with_two_steps_is_ddim():
    # its first step is first order (DDIM) and its last goes to sigma = 0, like DDIM's
    abar = SCHEDULES["cosine"]
    eps = gaussian_denoiser(abar)
    seq = timestep_sequence(1000, 2, "uniform")
    torch.testing.assert_close(dpm_solver_pp_sample(eps, noise(), abar, seq), ddim_sample(eps, noise(), abar, seq))


def test_ddim_with_eta_zero_is_deterministic_and_ignores_the_generator():
    abar = SCHEDULES["cosine"]
    eps = gaussian_denoiser(abar)
    seq = timestep_sequence(1000, 20, "quadratic")
    a = ddim_sample(eps, noise(), abar, seq, eta=0.0, generator=torch.Generator().manual_seed(1))
    b = ddim_sample(eps, noise(), abar, seq, eta=0.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    c = ddim_sample(eps, noise(), abar, seq, eta=1.0, generator=torch.Generator().manual_seed(1))
    d = ddim_sample(eps, noise(), abar, seq, eta=1.0, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(c, d)  # eta > 0 does draw from the generator


def test_ddim_with_eta_one_on_every_timestep_is_ddpm():
    abar = linear_alphas_cumprod(50)
    eps = gaussian_denoiser(abar)
    a = ddpm_sample(eps, noise(), abar, generator=torch.Generator().manual_seed(3))
    b = ddim_sample(eps, noise(), abar, list(range(49, -1, -1)), eta=1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_ddpm_reproduces_the_data_distribution():
    # ancestral sampling draws from p(x_0) itself: mean MU, std S per pixel
    abar = cosine_alphas_cumprod(1000)
    x_T = torch.randn(20000, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    x0 = ddpm_sample(gaussian_denoiser(abar), x_T, abar, generator=torch.Generator().manual_seed(1))
    assert float(x0.mean()) == pytest.approx(MU, abs=0.01)
    assert float(x0.std()) == pytest.approx(S, rel=0.02)  # sigma^2 = beta_tilde: ~0.499 at T = 1000
