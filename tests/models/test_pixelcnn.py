"""The Gated PixelCNN's guarantees: causal masks without a blind spot, an exact likelihood,
a sampler that follows the model's own conditionals, deterministic under a seed."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from genpipe.errors import InputError
from genpipe.models.base import ImageSpec
from genpipe.models.nets.masked import channel_groups
from genpipe.models.pixelcnn.model import (
    LEVEL_VALUES, PixelCNNConfig, PixelCNNSamplingConfig, build_pixelcnn, inverse_cdf_draw, logistic_mixture_log_prob,
    to_levels,
)
from tests.models.training_steps import first_and_last_loss


def pixelcnn(shape=(1, 8, 8), perturb: bool = True, **cfg) -> torch.nn.Module:
    """A tiny model; ``perturb`` moves every weight off its initialisation (zero-initialised
    label embeddings included) so that a zero gradient is never an accident of init."""
    torch.manual_seed(0)
    cfg = {"hidden_channels": 12, "num_layers": 3, "output": "categorical", "ordering": "raster", **cfg}
    model = build_pixelcnn(PixelCNNConfig(**cfg), ImageSpec(shape, 10))
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def images(n: int, shape: tuple[int, int, int], seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g).float() / 127.5 - 1.0  # the 8-bit grid


@pytest.mark.parametrize("shape,output,dilations", [
    ((1, 5, 5), "categorical", (1,)), ((3, 4, 4), "categorical", (1,)), ((3, 4, 4), "logistic_mixture", (1,)),
    ((1, 7, 7), "logistic_mixture", (2, 3)),  # dilated type-B layers: still causal, still no blind spot
])
def test_each_logit_depends_on_exactly_the_earlier_subpixels(shape, output, dilations):
    """Exhaustive: d logits[c, i] / d x is nonzero exactly at pixels < i (raster order) and at
    channels < c of pixel i. "Nonzero" shows there is no blind spot, "zero" that it is causal."""
    c, h, w = shape
    model = pixelcnn(shape, hidden_channels=24, output=output, first_kernel_size=5, num_layers=4, dilations=dilations)
    assert model.reach >= max(h, w)  # every earlier pixel is in reach, so every one must be seen
    x = images(4, shape).requires_grad_(True)  # 4 images: a dead ReLU in one is not a missing edge
    proj = torch.randn(model.per_channel, generator=torch.Generator().manual_seed(2))
    for i in range(h * w):
        for ch in range(c):
            out = model.outputs(x, None)[:, ch, :, i // w, i % w]  # (4, P)
            (grad,) = torch.autograd.grad((out * proj).sum(), x)
            depends = (grad != 0).any(0).view(c, h * w)  # (C, H*W)
            allowed = torch.zeros(c, h * w, dtype=torch.bool)
            allowed[:, :i] = True
            allowed[:ch, i] = True
            assert torch.equal(depends, allowed), f"pixel {i}, channel {ch}"


@pytest.mark.parametrize("c", [1, 3])
def test_first_layer_type_a_mask_excludes_the_current_subpixel(c):
    model = pixelcnn((c, 8, 8), perturb=False)
    first, second = model.layers[0], model.layers[1]
    assert (first.vertical.mask[:, :, -1, :] == 0).all()  # vertical stack: not even the current row
    centre = first.horizontal.mask[:, :, 0, -1]  # (2n, C): what each gate reads at the current pixel
    out_groups = channel_groups(12, c).repeat(2)
    for o, g in enumerate(out_groups.tolist()):
        assert centre[o].tolist() == [1.0 if k < g else 0.0 for k in range(c)]  # channels < g only
    assert (centre == 0).all() == (c == 1)
    assert (first.horizontal.mask[:, :, 0, :-1] == 1).all()  # the pixels to the left are all seen
    # type B (later layers) reads its own group at the current pixel
    hidden = channel_groups(12, c)
    centre_b = second.horizontal.mask[:, :, 0, -1]
    assert all(centre_b[o, k] == (1.0 if hidden[k] <= g else 0.0) for o, g in enumerate(out_groups) for k in range(12))


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 4, 4)])
def test_all_zero_logits_give_exactly_8_bits_per_dim(shape):
    model = pixelcnn(shape)
    last = model.head[-1].conv
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    x = images(5, shape)
    ll = model.log_likelihood(x)
    assert ll.kind == "exact" and ll.estimator == "autoregressive"
    dims = math.prod(shape)
    bpd = -ll.nats / (dims * math.log(2))
    assert torch.allclose(bpd, torch.full_like(bpd, 8.0), rtol=0, atol=1e-5)
    assert float(model.training_losses(x, None, "model")["bpd"]) == pytest.approx(8.0, abs=1e-5)


def test_the_logistic_mixture_is_a_distribution_over_the_256_levels():
    """Per sub-pixel, exp(log P) over every level sums to 1 (the edge bins take the tails), and
    the likelihood of an image is the sum of the per-level terms at its own levels."""
    g = torch.Generator().manual_seed(0)
    params = torch.randn(3, 2, 3 * 4, 5, 5, generator=g) * torch.tensor([1.0] * 4 + [0.7] * 4 + [1.5] * 4).view(1, 1, 12, 1, 1)
    grid = LEVEL_VALUES.view(1, 1, 256, 1, 1).expand(3, 2, 256, 5, 5)
    log_p = logistic_mixture_log_prob(params, grid)  # (3, 2, 256, 5, 5)
    assert torch.allclose(log_p.logsumexp(2), torch.zeros(3, 2, 5, 5), atol=1e-4)
    model = pixelcnn(output="logistic_mixture", mixtures=4)
    x = images(2, (1, 8, 8))
    out = model.outputs(x, None)
    every = model.level_logits(out)  # (2, 1, 256, 8, 8)
    # the sampler's levels (CDF differences, float64) and the likelihood's (per-bin, with the
    # PixelCNN++ density fallback for bins under 1e-5) are one distribution
    full = logistic_mixture_log_prob(out, LEVEL_VALUES.view(1, 1, 256, 1, 1).expand(2, 1, 256, 8, 8)).double()
    assert torch.allclose(every.exp(), full.exp(), atol=1e-5)
    picked = every.gather(2, to_levels(x).unsqueeze(2)).squeeze(2)
    assert torch.allclose(model.log_prob(out, x).double(), picked, atol=1e-3)
    assert torch.allclose(model.log_likelihood(x).nats.double(), full.gather(2, to_levels(x).unsqueeze(2)).flatten(1).sum(1),
                          atol=1e-3)


def test_a_sharp_single_logistic_puts_its_mass_on_the_nearest_level():
    """One component, mean on level 100's value, tiny scale: P(100) ~ 1; the tails go to the edges."""
    mean = float(LEVEL_VALUES[100])
    params = torch.tensor([0.0, mean, -7.0]).view(1, 1, 3, 1, 1)
    log_p = logistic_mixture_log_prob(params, LEVEL_VALUES.view(1, 1, 256, 1, 1)).flatten()
    half = (1 / 255) / math.exp(-7.0)  # the bin's half-width in scales
    expected = 1 / (1 + math.exp(-half)) - 1 / (1 + math.exp(half))  # ~0.973
    assert log_p.argmax() == 100 and float(log_p[100].exp()) == pytest.approx(expected, rel=1e-4)
    wide = logistic_mixture_log_prob(torch.tensor([0.0, 0.0, 3.0]).view(1, 1, 3, 1, 1), LEVEL_VALUES.view(1, 1, 256, 1, 1))
    assert wide.flatten()[0] > wide.flatten()[1]  # the edge bin takes the whole left tail


def test_loss_is_the_per_dimension_negative_log_likelihood():
    model = pixelcnn()
    x = images(6, (1, 8, 8))
    losses = model.training_losses(x, torch.zeros(6, dtype=torch.long), "model")
    ll = model.log_likelihood(x)
    loss = float(losses["loss"].detach())
    assert loss == pytest.approx(float(-ll.nats.mean()) / 64, rel=1e-5)
    assert float(losses["bpd"]) == pytest.approx(loss / math.log(2), rel=1e-6)
    assert torch.equal(to_levels(x).float() / 127.5 - 1.0, x)  # levels round-trip the 8-bit grid


def test_inverse_cdf_draw_golden_values_and_temperature():
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.7]])).expand(4, 3)
    u = torch.tensor([0.05, 0.25, 0.31, 0.95])
    assert inverse_cdf_draw(logits, u, 1.0).tolist() == [0, 1, 2, 2]
    assert inverse_cdf_draw(logits, u, 0.01).tolist() == [2, 2, 2, 2]  # T -> 0: the mode
    # T = 2: p proportional to sqrt(p): (0.195, 0.276, 0.529) -> CDF 0.195, 0.471
    assert inverse_cdf_draw(logits, u, 2.0).tolist() == [0, 1, 1, 2]


@pytest.mark.parametrize("dilations,reach", [((1,), 3), ((2,), 5)])
def test_the_samplers_row_by_row_pass_gives_the_full_networks_logits(dilations, reach):
    """The sampler runs the vertical stack once per row on the rows within ``reach`` above it,
    then the horizontal stack on that row alone; both shortcuts must be exact."""
    model = pixelcnn((1, 10, 6), first_kernel_size=3, kernel_size=3, num_layers=3, dilations=dilations)
    assert model.reach == reach  # 1 (type A) + 2 type-B layers of 1 x dilation each
    x = images(2, (1, 10, 6))
    full = model.outputs(x, None)  # (2, 1, 256, 10, 6)
    for i in range(10):
        row = model.horizontal_outputs(x[:, :, i : i + 1], model.row_links(x, i, None), None, i)
        assert torch.allclose(row[:, :, :, 0], full[:, :, :, i], atol=1e-5), f"row {i}"
    short = [link[:, :, -1:] for link in model.vertical_links(x[:, :, 10 - model.reach :], None, 10 - model.reach)]
    row = model.horizontal_outputs(x[:, :, 9:], short, None, 9)  # one row too few above: reach is tight
    assert not torch.allclose(row[:, :, :, 0], full[:, :, :, 9], atol=1e-3)
    # and per pixel, the horizontal stack on the `reach` columns to its left alone
    i = 7
    links = model.row_links(x, i, None)
    for j in range(6):
        left = max(0, j - model.reach)
        cut = model.horizontal_outputs(x[:, :, i : i + 1, left : j + 1], [k[..., left : j + 1] for k in links], None, i, left)
        assert torch.allclose(cut[..., 0, -1], full[..., i, j], atol=1e-5), f"column {j}"
    j, left = 5, 5 - min(model.reach, 5) + 1  # one column too few on the left: reach is tight here too
    cut = model.horizontal_outputs(x[:, :, i : i + 1, left : j + 1], [k[..., left : j + 1] for k in links], None, i, left)
    assert not torch.allclose(cut[..., 0, -1], full[..., i, j], atol=1e-3)


@pytest.mark.parametrize("output", ["categorical", "logistic_mixture"])
def test_sampling_is_deterministic_for_a_seed_and_follows_the_temperature(output):
    model = pixelcnn((3, 4, 4), output=output)
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    cold = PixelCNNSamplingConfig(temperature=0.7)
    a, b = model.sample(6, generator=g(3), options=cold), model.sample(6, generator=g(3), options=cold)
    assert a.shape == (6, 3, 4, 4) and torch.equal(a, b)
    assert torch.equal(to_levels(a).float() / 127.5 - 1.0, a)  # samples lie on the 8-bit grid
    assert not torch.equal(a, model.sample(6, generator=g(4), options=cold))
    assert not torch.equal(a, model.sample(6, generator=g(3)))  # the config's T = 1 differs


@pytest.mark.parametrize("output", ["categorical", "logistic_mixture"])
def test_colder_samples_are_more_likely_under_the_model(output):
    model = pixelcnn((1, 6, 6), output=output)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    cold = model.sample(32, generator=g(), options=PixelCNNSamplingConfig(temperature=0.3))
    warm = model.sample(32, generator=g(), options=PixelCNNSamplingConfig(temperature=1.0))
    assert model.log_likelihood(cold).nats.mean() > model.log_likelihood(warm).nats.mean()


CONDITIONAL_CASES = [("categorical", "raster", "shared"), ("logistic_mixture", "raster", "shared"),
                     ("logistic_mixture", "subscale", "shared"), ("logistic_mixture", "subscale", "separate")]


@pytest.mark.parametrize("output,ordering,first_slice", CONDITIONAL_CASES)
def test_conditional_logits_change_with_the_label(output, ordering, first_slice):
    model = pixelcnn(conditional=True, output=output, ordering=ordering, context_channels=8, first_slice=first_slice)
    x = images(2, (1, 8, 8))
    three = model.slice_outputs(x, torch.tensor([3, 3]))[0]
    seven = model.slice_outputs(x, torch.tensor([7, 7]))[0]
    assert not torch.allclose(three, seven, atol=1e-3)
    assert torch.equal(three, model.slice_outputs(x, torch.tensor([3, 3]))[0])
    # p(x) without labels: the exact marginal under a uniform class prior
    assert model.log_likelihood(x, torch.tensor([3, 3])).estimator == "autoregressive-given-label"
    per_class = torch.stack([model.log_likelihood(x, torch.full((2,), y)).nats for y in range(10)])
    marginal = model.log_likelihood(x)
    assert marginal.kind == "exact"
    assert torch.allclose(marginal.nats, torch.logsumexp(per_class, 0) - math.log(10), atol=1e-4)


@pytest.mark.parametrize("output,ordering,first_slice", CONDITIONAL_CASES)
def test_conditional_sampling_uses_the_labels(output, ordering, first_slice):
    model = pixelcnn((1, 4, 4), conditional=True, output=output, ordering=ordering, context_channels=8,
                     first_slice=first_slice)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    balanced = model.sample(10, generator=g())  # labels None: i % 10
    assert torch.equal(balanced, model.sample(10, labels=torch.arange(10), generator=g()))
    assert not torch.equal(balanced, model.sample(10, labels=torch.full((10,), 3), generator=g()))
    with pytest.raises(InputError, match="labels"):
        model.sample(2, labels=torch.tensor([1, 10]))


def test_unconditional_model_refuses_labels_but_ignores_them_in_training():
    model = pixelcnn()
    with pytest.raises(InputError, match="unconditional"):
        model.sample(2, labels=torch.tensor([1, 2]))
    x = images(3, (1, 8, 8))
    a = model.training_losses(x, torch.tensor([0, 1, 2]), "model")["loss"].detach()
    ll = model.log_likelihood(x, torch.tensor([5, 5, 5]))  # labels ignored
    assert float(a) == pytest.approx(float(-ll.nats.mean()) / 64, rel=1e-5)


def test_bad_settings_are_refused():
    with pytest.raises(ValidationError, match="odd"):
        PixelCNNConfig(kernel_size=4)
    with pytest.raises(InputError, match="pixelcnn.hidden_channels"):
        build_pixelcnn(PixelCNNConfig(hidden_channels=2), ImageSpec((3, 8, 8), 10))


@pytest.mark.parametrize("output", ["categorical", "logistic_mixture"])
def test_a_few_steps_learn_something(output):
    model = pixelcnn(perturb=False, output=output).train()
    x = (images(32, (1, 8, 8)) > 0.4).float() * 2 - 1  # sparse binary images: two levels used
    first, last = first_and_last_loss(model, x, lr=5e-3, steps=40)
    assert last < 0.5 * first


def subscale_order(shape: tuple[int, int, int]) -> torch.Tensor:
    """(C, H, W): each sub-pixel's position in the subscale order (slice, row, column, channel)."""
    c, h, w = shape
    order = torch.empty(shape, dtype=torch.long)
    for r in range(h):
        for col in range(w):
            k = (r % 2) * 2 + col % 2  # the slice: offset in its 2 x 2 block
            for ch in range(c):
                order[ch, r, col] = ((k * (h // 2) + r // 2) * (w // 2) + col // 2) * c + ch
    return order


@pytest.mark.parametrize("shape,first_slice", [((1, 6, 6), "shared"), ((3, 4, 6), "shared"), ((3, 4, 6), "separate")])
def test_subscale_outputs_depend_on_exactly_the_earlier_subpixels_in_subscale_order(shape, first_slice):
    """Slices of a 2 x 2 unshuffle in turn, each raster-ordered: d logits / d x is nonzero
    exactly at the sub-pixels before it in that order (the earlier slices through the context
    network, whose 3 convolutions see the whole 3 x 3 slice here; the current slice through
    the masks); zero at every later one. A separate first-slice network changes none of it."""
    c, h, w = shape
    model = pixelcnn(shape, hidden_channels=24, first_kernel_size=5, num_layers=3, ordering="subscale",
                     context_channels=8, first_slice=first_slice)
    x = images(4, shape).requires_grad_(True)
    out, _ = model.slice_outputs(x, None)  # (K * 4, C, P, h/2, w/2)
    out = out.view(4, 4, c, -1, h // 2, w // 2)  # (K, B, C, P, h, w)
    order = subscale_order(shape)
    proj = torch.randn(out.shape[3], generator=torch.Generator().manual_seed(2))
    for r in range(h):
        for col in range(w):
            k, i, j = (r % 2) * 2 + col % 2, r // 2, col // 2
            for ch in range(c):
                (grad,) = torch.autograd.grad((out[k, :, ch, :, i, j] * proj).sum(), x, retain_graph=True)
                depends = (grad != 0).any(0)  # (C, H, W)
                assert torch.equal(depends, order < order[ch, r, col]), f"slice {k}, row {i}, column {j}, channel {ch}"


@pytest.mark.parametrize("ordering,first_slice", [("raster", "shared"), ("subscale", "shared"), ("subscale", "separate")])
def test_cold_samples_take_the_mode_of_the_parallel_passs_conditionals(ordering, first_slice):
    """The sampler follows the same conditionals as the likelihood, in the same order: at
    T -> 0 every sub-pixel drawn is the most likely level given the sub-pixels before it, as
    the teacher-forced pass over the finished sample computes it."""
    model = pixelcnn((3, 4, 6), output="logistic_mixture", ordering=ordering, context_channels=8,
                     first_slice=first_slice)
    x = model.sample(5, generator=torch.Generator().manual_seed(0), options=PixelCNNSamplingConfig(temperature=1e-5))
    out, target = model.slice_outputs(x, None)
    log_p = model.level_logits(out)  # (K * 5, C, 256, h, w)
    drawn = log_p.gather(2, to_levels(target).unsqueeze(2)).squeeze(2)
    # a mode, up to float rounding between the sampler's cut passes and the full one
    assert (drawn >= log_p.max(2).values - 1e-4).all()
    assert (log_p.max(2).values - log_p.median(2).values).min() > 1.0  # the test has modes to miss
    assert not torch.equal(x, model.sample(5, generator=torch.Generator().manual_seed(0)))  # T = 1 differs


def test_subscale_likelihood_sums_every_slice_and_refuses_odd_sides():
    """The likelihood is the sum of all four slices' sub-pixel terms (the first slice alone would
    be a quarter of them), NFE counts each slice's passes and its context pass, and an odd image
    side is one clear error."""
    model = pixelcnn((1, 4, 4), ordering="subscale", context_channels=8)
    x = images(3, (1, 4, 4))
    lp = model.subpixel_log_probs(x, None)  # (B, K, C, h, w)
    assert lp.shape == (3, 4, 1, 2, 2)
    assert torch.allclose(model.log_likelihood(x).nats, lp.flatten(1).sum(1))
    assert model.nfe() == 4 * 2 * (1 + 2) + 4
    # first_slice: separate: slice 0 (even rows and columns) is the separate raster network's
    # image, no context pass for it
    sep = pixelcnn((1, 4, 4), ordering="subscale", context_channels=8, first_slice="separate")
    lp = sep.subpixel_log_probs(x, None)
    assert torch.allclose(lp[:, 0].flatten(1).sum(1), sep.first.log_likelihood(x[:, :, ::2, ::2]).nats)
    assert torch.allclose(sep.log_likelihood(x).nats, lp.flatten(1).sum(1))
    assert sep.nfe() == 4 * 2 * (1 + 2) + 3
    # teacher forcing takes (image, slice) pairs in any order: each output stays with its pair
    sl, rows, index = sep.to_slices(x), torch.arange(3).repeat(4), torch.arange(4).repeat_interleave(3)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(sep.teacher_forced(sl, rows[perm], index[perm], None)[0],
                          sep.teacher_forced(sl, rows, index, None)[0][perm], atol=1e-6)
    with pytest.raises(InputError, match=r"pixelcnn.ordering: subscale needs an even image side, got 5x4"):
        build_pixelcnn(PixelCNNConfig(ordering="subscale"), ImageSpec((1, 5, 4), 10))


@pytest.mark.parametrize("labels,first_slice", [(None, "shared"), (torch.tensor([3]), "shared"), (None, "separate")])
def test_fill_slices_loss_is_an_unbiased_draw_of_the_exact_loss(labels, first_slice):
    """With ``fill_slices: 1`` each training loss is, for one image, the first slice's terms plus
    three times one later slice's; over the three possible draws it averages to the exact loss
    (so the gradient is unbiased), and all three draws happen. ``fill_slices: 3`` is the exact loss."""
    shape = (1, 4, 4)
    kw = {"ordering": "subscale", "context_channels": 8, "conditional": labels is not None, "first_slice": first_slice}
    model = pixelcnn(shape, fill_slices=1, **kw)
    x = images(1, shape)
    per_slice = model.subpixel_log_probs(x, labels)[0].flatten(1).sum(1)  # (K,) nats
    dims = x[0].numel()
    candidates = torch.stack([-(per_slice[0] + 3 * per_slice[j]) / dims for j in (1, 2, 3)])
    exact = -per_slice.sum() / dims
    assert torch.allclose(candidates.mean(), exact)
    torch.manual_seed(0)
    drawn = set()
    for _ in range(40):
        loss = model.training_losses(x, labels, "model")["loss"]
        hit = torch.isclose(candidates, loss, rtol=0, atol=1e-5).nonzero().flatten().tolist()
        assert len(hit) == 1, (loss, candidates)  # one of the three, nothing else
        drawn.add(hit[0])
    assert drawn == {0, 1, 2}
    exact_model = pixelcnn(shape, **kw)
    assert torch.allclose(exact_model.training_losses(x, labels, "model")["loss"], exact)
    with pytest.raises(ValidationError, match="fill_slices"):
        PixelCNNConfig(fill_slices=4)
