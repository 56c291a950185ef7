"""Gaussian mixture on pixels, optionally after PCA: the classical baseline.

Fitted by EM (Dempster et al. 1977) with scikit-learn's ``GaussianMixture``; the fitted
parameters are kept as buffers, and the density is evaluated in torch (matching
``score_samples``) so checkpoints, evaluation and sampling work as for every family.

With PCA to K dimensions the model is a proper density on all D pixels: the K principal
coordinates z = W (x - mu) follow the mixture, and the D - K orthogonal residual dimensions
an isotropic Gaussian N(0, sigma^2) (probabilistic-PCA style), so, W being orthonormal,

    log p(x) = log sum_m pi_m N(z; mu_m, Sigma_m) + log N(x - mu - W^T z; 0, sigma^2 I_{D-K}).

Pixels are discrete (256 levels, bin width Delta = 2/255 in [-1, 1]), so the model is fitted
to uniformly dequantised data and the code length uses E_u[log p(x + u)] + D log Delta,
a lower bound on log P(x) (Theis et al. 2016, https://arxiv.org/abs/1511.01844).
With ``conditional``, one mixture per class shares the PCA: p(x | y).

scikit-learn keeps each component's precision factor P = L^-T (``precisions_cholesky_``; upper
triangular for ``full``, with Sigma = L L^T and Sigma^-1 = P P^T; 1 / sqrt(diag Sigma) for
``diag``): the density uses ||P^T (z - mu)||^2 and log det P, a draw is z = mu + P^-T eps.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from genpipe.errors import InputError
from genpipe.models.base import ImageSpec, LogLikelihood, OptimizerGroup, check_labels, cpu_randn
from genpipe.models.gmm.config import GMMConfig

BIN = 2.0 / 255.0  # width of one pixel level in [-1, 1]


class GaussianMixtureModel(nn.Module):
    def __init__(self, cfg: GMMConfig, spec: ImageSpec):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        d = math.prod(spec.shape)
        k = cfg.pca_components or d
        if k > d:
            raise InputError(f"gmm.pca_components: {k} exceeds the {d} pixels of an image")
        y, m = (spec.num_classes if cfg.conditional else 1), cfg.components
        chol = (y, m, k, k) if cfg.covariance == "full" else (y, m, k)
        self.register_buffer("pca_mean", torch.zeros(d, dtype=torch.float64))  # (D,)
        self.register_buffer("pca_basis", torch.eye(k, d, dtype=torch.float64))  # (K, D) orthonormal rows
        self.register_buffer("residual_var", torch.ones((), dtype=torch.float64))  # sigma^2
        self.register_buffer("class_log_prior", torch.full((y,), -math.log(y), dtype=torch.float64))
        self.register_buffer("log_weights", torch.full((y, m), -math.log(m), dtype=torch.float64))
        self.register_buffer("means", torch.zeros(y, m, k, dtype=torch.float64))
        self.register_buffer("prec_chol", torch.ones(chol, dtype=torch.float64) if cfg.covariance == "diag"
                             else torch.eye(k, dtype=torch.float64).expand(chol).clone())

    # -- fitting ----------------------------------------------------------------------
    def optimizer_groups(self) -> dict[str, OptimizerGroup]:
        return {}  # fitted by EM, not by gradient steps

    def training_losses(self, x, labels, phase):  # pragma: no cover - never called: no phases
        raise RuntimeError("the Gaussian mixture is fitted with fit(), not trained by steps")

    def fit(self, images: torch.Tensor, labels: torch.Tensor, seed: int) -> dict[str, float]:
        """EM on dequantised pixels (after PCA); returns the mean train log-likelihood."""
        # one BLAS thread: BLAS threads spinning beside the concurrent trainings starve EM
        with threadpool_limits(limits=1):
            return self._fit(images, labels, seed)

    def _fit(self, images: torch.Tensor, labels: torch.Tensor, seed: int) -> dict[str, float]:
        # deferred: the registry imports every family, and scikit-learn takes a second to import
        from sklearn.decomposition import PCA
        from sklearn.mixture import GaussianMixture

        c = self.cfg
        seed %= 2**31  # scikit-learn's range
        noise = torch.Generator().manual_seed(seed)  # not the global RNG other threads draw from
        v = self._dequantise(images.double().div(127.5).sub(1.0).flatten(1), noise).numpy()  # (N, D)
        d, k = v.shape[1], self.pca_basis.shape[0]
        if k < d:
            pca = PCA(n_components=k, random_state=seed).fit(v)
            mean, basis = pca.mean_, pca.components_
            residual = max(float(v.var(axis=0, ddof=1).sum() - pca.explained_variance_.sum()), 1e-12)
            self.residual_var.fill_(residual / (d - k))
        else:
            mean, basis = v.mean(0), np.eye(d)
        self.pca_mean.copy_(torch.from_numpy(mean))
        self.pca_basis.copy_(torch.from_numpy(basis))
        z = (v - mean) @ basis.T  # (N, K)
        groups = labels.numpy() if c.conditional else np.zeros(len(v), dtype=np.int64)
        for y in range(self.means.shape[0]):
            gm = GaussianMixture(c.components, covariance_type=c.covariance, reg_covar=c.reg_covar,
                                 max_iter=c.max_iter, random_state=seed).fit(z[groups == y])
            self.set_mixture(y, gm)
        counts = np.bincount(groups, minlength=self.means.shape[0])
        self.class_log_prior.copy_(torch.from_numpy(np.log(counts / counts.sum())))
        train_ll = self.log_density(torch.from_numpy(v), torch.from_numpy(groups) if c.conditional else None)
        return {"train_log_density": float(train_ll.mean()), "residual_var": float(self.residual_var)}

    def set_mixture(self, y: int, gm) -> None:
        """Copy a fitted sklearn ``GaussianMixture`` into the buffers of class ``y``."""
        self.log_weights[y] = torch.from_numpy(np.log(gm.weights_))
        self.means[y] = torch.from_numpy(gm.means_)
        self.prec_chol[y] = torch.from_numpy(gm.precisions_cholesky_)

    def _dequantise(self, v: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return v + (torch.rand(v.shape, generator=generator, dtype=v.dtype) - 0.5) * BIN

    # -- density ------------------------------------------------------------------------
    def component_log_density(self, z: torch.Tensor, y: int) -> torch.Tensor:
        """log pi_m + log N(z; mu_m, Sigma_m) for every component m of class y: (B, M)."""
        diff = z[:, None, :] - self.means[y][None]  # (B, M, K)
        if self.cfg.covariance == "full":
            sol = torch.einsum("bmk,mkj->bmj", diff, self.prec_chol[y])  # (B, M, K)
            log_det = torch.diagonal(self.prec_chol[y], dim1=-2, dim2=-1).log().sum(-1)  # (M,)
        else:
            sol = diff * self.prec_chol[y][None]
            log_det = self.prec_chol[y].log().sum(-1)
        k = z.shape[1]
        return self.log_weights[y] - 0.5 * (k * math.log(2 * math.pi) + sol.pow(2).sum(-1)) + log_det

    def log_density(self, v: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """log p(v) (or log p(v | y)) of flattened continuous pixels v (B, D), float64."""
        centred = v - self.pca_mean
        z = centred @ self.pca_basis.T  # (B, K)
        if labels is None and self.means.shape[0] > 1:  # marginal over classes
            per_class = torch.stack([self.component_log_density(z, y).logsumexp(-1) for y in range(self.means.shape[0])], -1)
            ll = (per_class + self.class_log_prior).logsumexp(-1)
        elif labels is None:
            ll = self.component_log_density(z, 0).logsumexp(-1)
        else:
            ll = torch.stack([self.component_log_density(z[i : i + 1], int(y)).logsumexp(-1)[0] for i, y in enumerate(labels)])
        d, k = v.shape[1], z.shape[1]
        if k < d:
            r2 = (centred - z @ self.pca_basis).pow(2).sum(-1)
            ll = ll - 0.5 * ((d - k) * torch.log(2 * math.pi * self.residual_var) + r2 / self.residual_var)
        return ll

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> LogLikelihood:
        v = x.double().flatten(1).cpu()
        labels = labels.cpu() if (labels is not None and self.cfg.conditional) else None
        s = self.cfg.dequantization_samples
        ll = torch.stack([self.log_density(self._dequantise(v, generator), labels) for _ in range(s)]).mean(0)
        nats = ll + v.shape[1] * math.log(BIN)
        return LogLikelihood(nats=nats.to(x.device, torch.float32), kind="lower_bound", estimator=f"dequantised-density-{s}")

    # -- sampling -------------------------------------------------------------------------
    def nfe(self, options=None) -> int:
        """No network: a sample is a component draw and one Gaussian draw."""
        return 0

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None, options=None) -> torch.Tensor:
        ys = self._sample_labels(n, labels)  # (n,)
        k = self.means.shape[-1]
        comp = torch.multinomial(self.log_weights[ys].exp(), 1, generator=generator)[:, 0]  # (n,)
        eps = cpu_randn((n, k), generator, torch.device("cpu")).double()  # (n, K)
        z = self.means[ys, comp].clone()  # (n, K)
        if self.cfg.covariance == "full":
            # sklearn's factor P is upper triangular with Sigma^-1 = P P^T, so Sigma = P^-T P^-1 and
            # z = mu + P^-T eps has covariance Sigma; as rows (n, K): eps P^-1, the X of X P = eps
            key = ys * self.means.shape[1] + comp  # (n,) index of (class, component)
            for i in torch.unique(key).tolist():
                rows = key == i
                p = self.prec_chol.flatten(0, 1)[i]  # (K, K)
                z[rows] += torch.linalg.solve_triangular(p, eps[rows], upper=True, left=False)
        else:  # P = 1 / sqrt(diag Sigma)
            z += eps / self.prec_chol[ys, comp]
        v = self.pca_mean + z @ self.pca_basis  # (n, D)
        if k < v.shape[1]:  # the isotropic residual, in the orthogonal complement of the PCA basis
            e = cpu_randn(v.shape, generator, torch.device("cpu")).double()
            v = v + self.residual_var.sqrt() * (e - (e @ self.pca_basis.T) @ self.pca_basis)
        return v.float().view(n, *self.spec.shape).clamp(-1.0, 1.0).to(self.means.device)

    def _sample_labels(self, n: int, labels: torch.Tensor | None) -> torch.Tensor:
        """The class of each draw (n,) on the CPU: ``labels``, or the classes in turn (conditional), or 0."""
        ys = check_labels(labels, n, num_classes=self.means.shape[0], conditional=self.cfg.conditional,
                          family="gmm", device="cpu")
        return ys if ys is not None else torch.zeros(n, dtype=torch.long)

    # -- moments ------------------------------------------------------------------------
    def component_covariances(self) -> torch.Tensor:
        """Sigma of every class and component (Y, M, K, K), float64: (P P^T)^-1 of sklearn's upper
        triangular precision factor P (full), diag(1 / P^2) (diag)."""
        p = self.prec_chol
        if self.cfg.covariance == "diag":
            return torch.diag_embed(p.pow(-2))
        eye = torch.eye(p.shape[-1], dtype=p.dtype, device=p.device).expand_as(p)
        p_inv = torch.linalg.solve_triangular(p, eye, upper=True)  # P^-1, (Y, M, K, K)
        return p_inv.transpose(-1, -2) @ p_inv

    @torch.no_grad()
    def moments(self, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (D,) and covariance (D, D), float64, of one flattened draw of ``sample(n, labels)``
        before its clamp to [-1, 1]: the mixture over the classes of ``labels`` (n,) in their
        proportions (None: the classes ``sample`` cycles through, uniformly; class 0 if unconditional)
        and over their components w with weights pi_w, mapped through the PCA basis W (K, D):

            E[z] = sum_w pi_w mu_w,       Cov[z] = sum_w pi_w (Sigma_w + mu_w mu_w^T) - E[z] E[z]^T
            E[v] = mu + W^T E[z],         Cov[v] = W^T Cov[z] W + sigma^2 (I_D - W^T W)  (K < D)
        """
        y = self.means.shape[0]
        ys = self._sample_labels(y if labels is None else len(labels), labels)  # without labels: each class once
        class_w = (torch.bincount(ys, minlength=y).double() / len(ys)).to(self.means.device)  # (Y,)
        w = (class_w[:, None] * self.log_weights.exp()).flatten()  # (Y * M,)
        mu = self.means.flatten(0, 1)  # (Y * M, K)
        sigma = self.component_covariances().flatten(0, 1)  # (Y * M, K, K)
        mean_z = w @ mu  # (K,)
        cov_z = torch.einsum("w,wij->ij", w, sigma + mu[:, :, None] * mu[:, None, :]) - torch.outer(mean_z, mean_z)
        basis = self.pca_basis  # (K, D)
        mean, cov = self.pca_mean + mean_z @ basis, basis.T @ cov_z @ basis  # (D,), (D, D)
        k, d = basis.shape
        if k < d:
            cov = cov + self.residual_var * (torch.eye(d, dtype=cov.dtype, device=cov.device) - basis.T @ basis)
        return mean, cov


def build_gmm(cfg: GMMConfig, spec: ImageSpec) -> GaussianMixtureModel:
    return GaussianMixtureModel(cfg, spec)
