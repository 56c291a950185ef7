"""The flow's math: exact inverses, log-determinants against autograd, the mean image path,
actnorm's data-dependent initialisation, and the dequantised likelihood bound."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from genpipe.errors import InputError
from genpipe.models.base import ImageSpec, LatentModel, LogLikelihood
from genpipe.models.flow.config import FlowConfig, FlowSamplingConfig
from genpipe.models.flow.model import build_flow
from genpipe.models.flow.layers import (
    ActNorm, Coupling, FlowStep, InvConv1x1, LogitTransform, squeeze, unsqueeze,
)
from genpipe.training.ema import make_ema

SPEC = ImageSpec((1, 8, 8), 10)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def flow(spec: ImageSpec = SPEC, **cfg) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_flow(FlowConfig(**{"steps_per_level": (2, 2), "hidden": 16, **cfg}), spec)


@torch.no_grad()
def perturb(module: torch.nn.Module, scale: float = 0.1, seed: int = 1) -> torch.nn.Module:
    """Random, non-trivial weights: every coupling and prior stops being the identity."""
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g))
    return module


def images(n: int = 6, spec: ImageSpec = SPEC, seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *spec.shape), generator=g).float() / 127.5 - 1.0  # 8-bit grid


# -- single layers -------------------------------------------------------------------


def layers() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "actnorm": perturb(ActNorm(4)).eval(),
        "invconv": perturb(InvConv1x1(4)),
        "affine": perturb(Coupling(4, 8, "affine"), scale=0.3),
        "additive": perturb(Coupling(4, 8, "additive"), scale=0.3),
        "step": perturb(FlowStep(4, 8, "affine"), scale=0.3).eval(),
        "logit": LogitTransform(0.05),
    }


@pytest.mark.parametrize("name", list(layers()))
def test_each_layer_inverts_exactly(name):
    layer = layers()[name]
    x = torch.rand(3, 4, 4, 4) * 2 - 1
    y, logdet = layer(x)
    assert y.shape == x.shape and logdet.shape == (3,)
    assert not torch.allclose(y, x, atol=1e-3), "a layer that is the identity tests nothing"
    assert torch.allclose(layer.inverse(y), x, atol=1e-5)


@pytest.mark.parametrize("name", list(layers()))
def test_each_layer_log_det_matches_autograd(name):
    layer = layers()[name].double()
    x = (torch.rand(2, 4, 2, 2, dtype=torch.float64) * 2 - 1) * 0.9
    _, logdet = layer(x)
    for i in range(x.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: layer(v[None])[0][0], x[i])  # (4,2,2,4,2,2)
        expected = torch.linalg.slogdet(jac.reshape(16, 16))[1]
        assert float(logdet[i].detach()) == pytest.approx(float(expected), abs=1e-6)


def test_class_conditional_coupling_depends_on_the_label_and_inverts():
    torch.manual_seed(0)
    layer = perturb(Coupling(4, 8, "affine", num_classes=3), scale=0.3)
    x, labels = torch.rand(3, 4, 4, 4) * 2 - 1, torch.tensor([0, 1, 2])
    y, _ = layer(x, labels)
    assert torch.allclose(layer.inverse(y, labels), x, atol=1e-5)
    y_other, _ = layer(x, torch.tensor([1, 2, 0]))
    assert not torch.allclose(y, y_other, atol=1e-3)


def test_squeeze_is_a_permutation_with_an_inverse():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    s = squeeze(x)
    assert s.shape == (2, 12, 2, 3)
    assert torch.equal(unsqueeze(s), x)
    assert torch.equal(s[0, :4, 0, 0], torch.tensor([0.0, 1.0, 6.0, 7.0]))  # one 2x2 patch -> 4 channels


def test_invconv_is_lu_parameterised_and_starts_as_a_rotation():
    torch.manual_seed(0)
    conv = InvConv1x1(6)
    w = conv.weight().detach()
    assert torch.allclose(w @ w.T, torch.eye(6), atol=1e-5)
    assert float(conv.log_s.sum().detach()) == pytest.approx(float(torch.linalg.slogdet(w)[1]), abs=1e-5)


# -- actnorm's data-dependent initialisation -------------------------------------------


def test_actnorm_initialises_on_the_first_training_batch_only():
    norm = ActNorm(3)
    x = torch.randn(64, 3, 4, 4) * torch.tensor([0.5, 2.0, 4.0]).view(1, 3, 1, 1) + 3.0
    y, _ = norm(x)
    assert float(norm.initialized) == 1.0
    assert torch.allclose(y.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(y.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-3)
    before = norm.bias.detach().clone()
    norm(x * 10)  # a second batch does not re-initialise
    assert torch.equal(norm.bias.detach(), before)


def test_actnorm_does_not_initialise_in_eval_mode_or_after_a_reload():
    fresh = ActNorm(3).eval()
    fresh(torch.randn(8, 3, 2, 2) + 5)
    assert float(fresh.initialized) == 0.0 and float(fresh.bias.detach().abs().sum()) == 0.0
    trained = ActNorm(3)
    trained(torch.randn(8, 3, 2, 2) + 5)
    reloaded = ActNorm(3)
    reloaded.load_state_dict(trained.state_dict())
    reloaded(torch.randn(8, 3, 2, 2) - 5)  # training mode, but already initialised
    assert torch.equal(reloaded.bias, trained.bias)


def test_ema_copy_carries_the_initialisation():
    model = flow()
    ema = make_ema(model, 0.999)
    model.training_losses(images(), torch.zeros(6, dtype=torch.long), "model")
    ema.update_parameters(model)
    flags = [float(b) for n, b in ema.module.named_buffers() if n.endswith("initialized")]
    assert flags and all(f == 1.0 for f in flags)
    ema.update_parameters(model)  # the EMA lerps the float flag: stays exactly 1
    assert all(float(b) == 1.0 for n, b in ema.module.named_buffers() if n.endswith("initialized"))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(ema.module.eval().sample(3, generator=g()), model.eval().sample(3, generator=g()))


# -- the whole flow ------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [{}, {"coupling": "additive"}, {"input_transform": "identity"}, {"conditional": True}])
def test_flow_inverts_exactly_with_random_weights(cfg):
    model = perturb(flow(**cfg)).eval()
    x = images().clamp(-0.99, 0.99)
    labels = torch.arange(6) % 10
    prior_labels = labels if cfg.get("conditional") else torch.zeros(6, dtype=torch.long)
    eps = model.encode_latents(x, prior_labels)  # (6, 64)
    assert eps.shape == (6, 64)
    x_back = model.decode(eps, prior_labels, temperature=1.0)
    assert torch.allclose(x_back, x, atol=1e-4)
    opts = FlowSamplingConfig(temperature=1.0)
    assert torch.allclose(model.decode_latents(eps, labels if cfg.get("conditional") else None, opts), x, atol=1e-4)


def test_flow_log_det_matches_autograd_per_sample():
    spec = ImageSpec((1, 4, 4), 10)
    model = perturb(flow(spec), scale=0.2).double().eval()
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64) * 1.8 - 0.9

    def latents(v: torch.Tensor) -> torch.Tensor:  # (1, 4, 4) -> all z, flattened (16,)
        zs, _, _ = model.encode(v[None], torch.zeros(1, dtype=torch.long))
        return torch.cat([z.flatten(1) for z in zs], 1)[0]

    with torch.no_grad():
        _, _, logdet = model.encode(x, torch.zeros(2, dtype=torch.long))
    for i in range(2):
        jac = torch.autograd.functional.jacobian(latents, x[i]).reshape(16, 16)
        assert float(logdet[i]) == pytest.approx(float(torch.linalg.slogdet(jac)[1]), abs=1e-3)


def test_temperature_zero_is_the_mean_image_path():
    model = perturb(flow()).eval()
    cold = FlowSamplingConfig(temperature=0.0)
    a = model.sample(4, generator=torch.Generator().manual_seed(1), options=cold)
    b = model.sample(4, generator=torch.Generator().manual_seed(2), options=cold)
    mean_path = model.decode_latents(torch.zeros(4, model.latent_dim), options=cold)
    assert torch.equal(a, b) and torch.equal(a, mean_path)
    assert torch.allclose(a, model.decode_latents(torch.zeros(4, model.latent_dim), options=FlowSamplingConfig(temperature=1.0)))
    warm = model.sample(4, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(warm, a)


def test_sample_is_decode_of_sample_latents():
    model = perturb(flow()).eval()
    assert isinstance(model, LatentModel)
    z = model.sample_latents(5, generator=torch.Generator().manual_seed(3))
    assert z.shape == (5, 64)
    assert torch.equal(model.decode_latents(z), model.sample(5, generator=torch.Generator().manual_seed(3)))


def test_log_likelihood_is_a_finite_per_image_lower_bound():
    model = perturb(flow()).eval()
    x = images()
    ll = model.log_likelihood(x, None, torch.Generator().manual_seed(0))
    assert isinstance(ll, LogLikelihood) and ll.kind == "lower_bound"
    assert ll.estimator == "dequantised-change-of-variables-4"
    assert ll.nats.shape == (6,) and torch.isfinite(ll.nats).all() and (ll.nats <= 0).all()
    other = model.log_likelihood(x, None, torch.Generator().manual_seed(1)).nats
    assert not torch.equal(other, ll.nats)  # a different dequantisation draw: an estimate


def test_one_noise_draw_gives_the_training_objective():
    model = perturb(flow(eval_dequant_samples=1)).eval()
    x = images()
    torch.manual_seed(4)
    ll = model.log_likelihood(x)
    torch.manual_seed(4)
    u = (torch.rand(x.shape) * 2 - 1) / 255
    expected = model.log_density(x + u, None) + x[0].numel() * math.log(2 / 255)
    assert torch.allclose(ll.nats, expected, atol=1e-3)


def test_conditional_marginal_is_the_mixture_of_the_class_conditionals():
    model = perturb(flow(conditional=True, eval_dequant_samples=1)).eval()
    x = images(3)
    torch.manual_seed(5)
    marginal = model.log_likelihood(x).nats
    per_class = []
    for k in range(10):
        torch.manual_seed(5)
        per_class.append(model.log_likelihood(x, torch.full((3,), k)).nats)
    expected = torch.logsumexp(torch.stack(per_class), 0) - math.log(10)
    assert torch.allclose(marginal, expected, atol=1e-3)
    assert not torch.allclose(per_class[0], per_class[1])  # the class prior matters


def test_training_loss_stays_float32_under_bf16_autocast():
    model = flow()
    x, y = images(4), torch.zeros(4, dtype=torch.long)
    torch.manual_seed(0)
    plain = model.training_losses(x, y, "model")["loss"]
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model.training_losses(x, y, "model")["loss"]
    assert mixed.dtype == torch.float32 and torch.allclose(mixed, plain, atol=1e-6)


def test_a_few_steps_learn_something():
    model = flow(steps_per_level=(1, 1), hidden=8)
    x, y = images(16), torch.zeros(16, dtype=torch.long)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = float(model.training_losses(x, y, "model")["loss"].detach())
    for _ in range(25):
        loss = model.training_losses(x, y, "model")["loss"]
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first - 0.3  # nats/dim


def test_conditional_sampling_labels():
    model = perturb(flow(conditional=True)).eval()
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    mixed = model.sample(12, generator=g())
    assert torch.equal(mixed, model.sample(12, labels=torch.arange(12) % 10, generator=g()))
    assert not torch.equal(mixed, model.sample(12, labels=torch.zeros(12, dtype=torch.long), generator=g()))
    with pytest.raises(InputError, match="labels"):
        model.sample(2, labels=torch.tensor([0, 10]))


def test_labels_latents_and_bad_geometry_are_input_errors():
    with pytest.raises(InputError, match="unconditional"):
        flow().sample(2, labels=torch.tensor([1, 2]))
    with pytest.raises(InputError, match="latents"):
        flow().decode_latents(torch.zeros(2, 10))
    with pytest.raises(InputError, match="cannot be squeezed .*data.resolution: 28 would work"):
        flow(ImageSpec((1, 27, 27), 10))


@pytest.mark.parametrize(("shape", "levels"), [((1, 8, 8), (1, 1, 2)), ((1, 28, 28), (1, 3)),
                                               ((3, 32, 32), (1, 1, 1, 1)), ((3, 12, 12), (1, 3))])
def test_the_levels_are_what_the_size_takes_and_the_flow_inverts_in_colour(shape, levels):
    """4 configured levels: as many squeezes as the side divides by 2, the rest of the steps on
    the last level kept; at every size, grey or colour, the flow inverts exactly."""
    spec = ImageSpec(shape, 10)
    model = perturb(flow(spec, steps_per_level=(1, 1, 1, 1))).eval().double()  # exactness, not float32's
    assert model.steps_per_level == levels
    x = images(3, spec).clamp(-0.99, 0.99).double()
    zeros = torch.zeros(3, dtype=torch.long)
    eps = model.encode_latents(x, zeros)
    assert eps.shape == (3, math.prod(shape))
    assert torch.allclose(model.decode(eps, zeros, temperature=1.0), x, atol=1e-9)
    with pytest.raises(ValidationError, match="steps_per_level"):
        FlowConfig(steps_per_level=(2, 0))
