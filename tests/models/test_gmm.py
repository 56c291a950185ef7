"""The Gaussian-mixture baseline: its density is scikit-learn's, its bits/dim are right, its draws
have the fitted means and covariances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.mixture import GaussianMixture

from genpipe.models.gmm.config import GMMConfig
from genpipe.errors import InputError
from genpipe.models import ImageSpec
from genpipe.models.gmm.model import BIN, build_gmm
from tests.models.test_contract import assert_draws_match_moments

SPEC = ImageSpec((1, 2, 3), num_classes=2)  # D = 6


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_log_density_matches_sklearn_score_samples(covariance):
    rng = np.random.default_rng(0)
    data = np.concatenate([rng.normal(-0.5, 0.2, (200, 6)), rng.normal(0.4, 0.1, (200, 6))])
    gm = GaussianMixture(3, covariance_type=covariance, random_state=0).fit(data)
    model = build_gmm(GMMConfig(components=3, covariance=covariance), SPEC)
    model.pca_mean.zero_()
    model.set_mixture(0, gm)
    points = rng.normal(0.0, 0.5, (50, 6))
    ours = model.log_density(torch.from_numpy(points), None).numpy()
    assert np.allclose(ours, gm.score_samples(points), atol=1e-8)


def test_pca_residual_makes_a_density_on_all_pixels():
    """With K < D, log p adds an isotropic Gaussian on the orthogonal complement."""
    model = build_gmm(GMMConfig(components=1, pca_components=2), SPEC)
    basis = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))[0][:, :2].T  # (2, 6) orthonormal
    model.pca_basis.copy_(basis)
    model.residual_var.fill_(0.3)
    v = torch.randn(5, 6, dtype=torch.float64)
    z = v @ basis.T
    full_cov = basis.T @ basis + 0.3 * (torch.eye(6, dtype=torch.float64) - basis.T @ basis)  # N(0, I) on z
    expected = torch.distributions.MultivariateNormal(torch.zeros(6, dtype=torch.float64), full_cov).log_prob(v)
    assert torch.allclose(model.log_density(v, None), expected, atol=1e-8)
    assert z.shape == (5, 2)


def test_bits_per_dim_on_a_known_gaussian():
    """One component N(0, s^2 I): E_u[log p(x + u)] + D log(bin) has a closed form."""
    s2 = 0.09
    model = build_gmm(GMMConfig(components=1, covariance="diag", dequantization_samples=4000), SPEC)
    model.prec_chol.fill_(1 / math.sqrt(s2))
    x = (torch.randint(0, 256, (3, *SPEC.shape)).float() / 127.5 - 1.0)
    torch.manual_seed(0)
    got = model.log_likelihood(x).nats.double()
    v = x.double().flatten(1)
    d = v.shape[1]
    expected = -0.5 * d * math.log(2 * math.pi * s2) - (v.pow(2) + BIN**2 / 12).sum(1) / (2 * s2) + d * math.log(BIN)
    assert torch.allclose(got, expected, atol=2e-2)
    bpd = -got / (d * math.log(2))
    assert torch.allclose(bpd, -expected / (d * math.log(2)), atol=5e-3)


def test_fit_sample_and_conditional_mixtures():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (120, *SPEC.shape), generator=g, dtype=torch.uint8)
    labels = torch.arange(120) % 2
    images[labels == 1] = images[labels == 1] // 4  # class 1 is dark
    model = build_gmm(GMMConfig(components=2, conditional=True), SPEC)
    summary = model.fit(images, labels, 0)
    assert math.isfinite(summary["train_log_density"])
    dark = model.sample(200, labels=torch.ones(200, dtype=torch.long), generator=torch.Generator().manual_seed(1))
    bright = model.sample(200, labels=torch.zeros(200, dtype=torch.long), generator=torch.Generator().manual_seed(1))
    assert dark.mean() < bright.mean() - 0.3
    x = images[:8].float() / 127.5 - 1
    assert (model.log_likelihood(x, labels[:8]).nats != model.log_likelihood(x, 1 - labels[:8]).nats).all()
    with pytest.raises(InputError, match="pca_components"):
        build_gmm(GMMConfig(pca_components=7), SPEC)


def test_fit_depends_on_its_seed_not_on_the_global_rng():
    # the pipeline fits the mixture in a thread beside others that draw from the global RNG
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (60, *SPEC.shape), generator=g, dtype=torch.uint8)
    labels = torch.zeros(60, dtype=torch.long)
    fitted = []
    for seed, global_seed in ((0, 1), (0, 2), (1, 1)):
        torch.manual_seed(global_seed)
        model = build_gmm(GMMConfig(components=2), SPEC)
        model.fit(images, labels, seed)
        fitted.append(model.state_dict())
    assert all(torch.equal(fitted[0][k], fitted[1][k]) for k in fitted[0])
    assert not all(torch.equal(fitted[0][k], fitted[2][k]) for k in fitted[0])  # the seed matters


def correlated_clusters(n: int, seed: int = 0) -> np.ndarray:
    """(n, 6) points of two correlated Gaussian clusters around -0.15 and +0.15, 8+ standard
    deviations inside [-1, 1] (so the sampler's clamp never bites)."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0, 0.04, (6, 6)), rng.normal(0, 0.03, (6, 6))
    return np.concatenate([rng.normal(size=(n // 2, 6)) @ a - 0.15, rng.normal(size=(n - n // 2, 6)) @ b + 0.15])


def images_of(points: np.ndarray) -> torch.Tensor:
    """Points in [-1, 1] as uint8 images (N, 1, 2, 3)."""
    return torch.from_numpy(np.round((points + 1) * 127.5)).to(torch.uint8).view(-1, *SPEC.shape)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_each_components_draws_have_sklearns_mean_and_covariance(covariance):
    # the draws of component m must be N(mu_m, Sigma_m) with sklearn's own means_ and covariances_
    # (the old sampler read only the diagonal of the precision factor: trace 1-2 % of the fitted one)
    gm = GaussianMixture(3, covariance_type=covariance, random_state=0).fit(correlated_clusters(600))
    model = build_gmm(GMMConfig(components=3, covariance=covariance), SPEC)
    model.set_mixture(0, gm)  # pca_mean 0, basis I: the draws are z itself
    sigmas = gm.covariances_ if covariance == "full" else np.stack([np.diag(c) for c in gm.covariances_])
    torch.testing.assert_close(model.component_covariances()[0], torch.from_numpy(sigmas), rtol=1e-9, atol=1e-12)
    for m in range(3):
        model.log_weights[0] = torch.where(torch.arange(3) == m, 0.0, -math.inf)  # component m only
        x = model.sample(10_000, generator=torch.Generator().manual_seed(m))
        assert x.abs().max() < 1.0  # nothing clamped
        assert_draws_match_moments(x, torch.from_numpy(gm.means_[m]), torch.from_numpy(sigmas[m]))


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_the_mixtures_draws_and_sklearns_have_its_closed_form_moments(covariance):
    gm = GaussianMixture(3, covariance_type=covariance, random_state=0).fit(correlated_clusters(600))
    model = build_gmm(GMMConfig(components=3, covariance=covariance), SPEC)
    model.set_mixture(0, gm)
    mean, cov = model.moments()
    x = model.sample(20_000, generator=torch.Generator().manual_seed(0))
    assert_draws_match_moments(x, mean, cov)
    # scikit-learn's own sampler of the same mixture agrees with the same closed form
    assert_draws_match_moments(torch.from_numpy(gm.sample(20_000)[0]), mean, cov)
    assert float(torch.trace(cov)) > 0.1  # the clusters' spread, not the components' diagonals alone


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_pca_and_conditional_draws_have_the_closed_form_moments(covariance):
    # with PCA to K = 3 of the D = 6 pixels the draws add the isotropic residual (sigma^2 on the
    # orthogonal complement); conditional mixtures mix over the requested labels
    points = correlated_clusters(400, seed=1)
    labels = torch.arange(400) // 200  # class 0 is the cluster at -0.15, class 1 the one at +0.15
    model = build_gmm(GMMConfig(components=2, covariance=covariance, pca_components=3, conditional=True), SPEC)
    model.fit(images_of(points), labels, 0)
    assert 0.0 < float(model.residual_var) < 1e-2
    n = 20_000
    cases = {"none (classes in turn)": None, "all class 1": torch.ones(n, dtype=torch.long),
             "one 0 in four": (torch.arange(n) % 4 != 0).long()}
    for i, (what, y) in enumerate(cases.items()):
        x = model.sample(n, labels=y, generator=torch.Generator().manual_seed(i))
        assert x.abs().max() < 1.0, what
        mean, cov = model.moments(y)
        assert torch.linalg.matrix_rank(cov) == 6, what  # the residual fills the complement
        assert_draws_match_moments(x, mean, cov)
