"""Sample-quality metrics over precomputed features: pure functions, no model or I/O.

Every function takes feature tensors of shape (N, D) (or class probabilities (N, K)) that a
feature extractor computed once per sample set, and returns plain Python numbers. "real" is
the reference data, "fake" the generated samples.

- :func:`frechet_distance`: FID (Heusel et al. 2017, https://arxiv.org/abs/1706.08500),
  computed by ``torchmetrics``' ``FrechetInceptionDistance``.
- :func:`kernel_inception_distance`: KID (Binkowski et al. 2018,
  https://arxiv.org/abs/1801.01401), computed by ``torchmetrics``' ``KernelInceptionDistance``.
- :func:`precision_recall`: improved precision and recall (Kynkaanniemi et al. 2019,
  https://arxiv.org/abs/1904.06991).
- :func:`density_coverage`: density and coverage (Naeem et al. 2020,
  https://arxiv.org/abs/2002.09797).
- :func:`inception_score`: IS (Salimans et al. 2016, https://arxiv.org/abs/1606.03498).
- :func:`class_histogram`: predicted-class counts and their KL to the label distribution.
- :func:`memorisation`: nearest-neighbour distances to the training set, generated vs held out.

The real side of each is the same for every sample set scored against one reference, so each
function also takes it precomputed (``real_stats`` of :func:`feature_gaussian`, ``real_radii``
of :func:`knn_radii`, ``heldout_to_train`` of :func:`nearest_train_distances`): the features
stage computes them once (:mod:`genpipe.evaluation.reference`), with the very operations these
functions would run, so the numbers are the same either way.

Pairwise distances are computed with ``torch.cdist`` in float64, one block of rows at a time
(at most ``_CHUNK_ELEMENTS`` distances per block), so 10k x 10k sets never materialise an
N x M x D tensor. Both sets are first shifted by one common vector (distances do not change),
which keeps the matrix-product form of ``cdist`` accurate.

Errors: a sample count or ``k`` the config can fix raises :class:`InputError` naming the
config key; a misuse by the caller (wrong shapes, probabilities that do not sum to one) raises
``ValueError``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from typing import Any, Literal, NamedTuple

import numpy as np
import scipy.linalg
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from genpipe.errors import InputError
from genpipe.runtime import isolated_rng


__all__ = [
    "FeatureGaussian",
    "class_histogram",
    "density_coverage",
    "feature_gaussian",
    "frechet_distance",
    "frechet_distance_from_stats",
    "inception_score",
    "kernel_inception_distance",
    "knn_radii",
    "memorisation",
    "memorisation_ratio",
    "nearest_train_distances",
    "precision_recall",
    "train_scale",
]

_CHUNK_ELEMENTS = 1 << 24  # distances per cdist block: 16M float64 = 128 MiB
_LABEL_EPS = 1e-12  # floor of a label-distribution class probability in the KL


# ----------------------------------------------------------------------------- helpers


def _features(x: torch.Tensor | np.ndarray, name: str, flatten: bool = False) -> torch.Tensor:
    """``x`` as a float64 tensor (N, D); rejects wrong shapes and non-finite values."""
    t = torch.as_tensor(x)
    if flatten and t.ndim >= 2:
        t = t.reshape(t.shape[0], -1)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty (N, D) tensor, got shape {tuple(t.shape)}")
    t = t.detach().to(torch.float64)
    bad = int((~torch.isfinite(t)).any(dim=1).sum())
    if bad:
        raise InputError(f"{name}: {bad} of {t.shape[0]} rows contain NaN or inf (a diverged model?)")
    return t


def _pair(
    real: Any, fake: Any, names: tuple[str, str] = ("real", "generated"), flatten: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets via :func:`_features`, on ``real``'s device; their dimensions must agree."""
    a, b = _features(real, f"{names[0]} features", flatten), _features(fake, f"{names[1]} features", flatten)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names[0]} and {names[1]} features differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    return a, b.to(a.device)


def _blocks(a: torch.Tensor, b: torch.Tensor) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(start, stop, cdist(a[start:stop], b)) over row blocks of ``a``."""
    rows = max(1, _CHUNK_ELEMENTS // max(1, b.shape[0]))
    for i in range(0, a.shape[0], rows):
        yield i, min(i + rows, a.shape[0]), torch.cdist(a[i : i + rows], b)


def _knn_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest neighbour in ``x`` other than itself."""
    radii = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for i, j, d in _blocks(x, x):
        rows = torch.arange(j - i, device=x.device)
        d[rows, rows + i] = math.inf  # the row itself is never its own neighbour
        radii[i:j] = d.topk(k, dim=1, largest=False).values[:, k - 1]
    return radii


def knn_radii(real: torch.Tensor, k: int) -> torch.Tensor:
    """The k-NN radii (N,) of ``real`` (N, D) that :func:`precision_recall` and
    :func:`density_coverage` draw their real balls with: each row's distance to its k-th nearest
    other row, after centring on the mean (as those functions centre)."""
    real = _features(real, "real features")
    if k < 1 or k >= real.shape[0]:
        raise InputError(f"k={k} needs 1 <= k < the size of the real set ({real.shape[0]})")
    return _knn_radii(real - real.mean(dim=0), k)


def _given_radii(radii: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    r = torch.as_tensor(radii).detach().to(torch.float64).to(real.device)
    if r.shape != (real.shape[0],):
        raise ValueError(f"real_radii: expected shape ({real.shape[0]},), one per real row, got {tuple(r.shape)}")
    return r


def _nn_distance(query: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Distance from each row of ``query`` to its nearest row of ``reference``."""
    out = torch.empty(query.shape[0], dtype=query.dtype, device=query.device)
    for i, j, d in _blocks(query, reference):
        out[i:j] = d.min(dim=1).values
    return out


def _check_k(k: int, key: str, n_real: int, n_fake: int) -> None:
    if k < 1 or k >= min(n_real, n_fake):
        raise InputError(
            f"{key}: k={k} needs 1 <= k < the size of each set (real {n_real}, generated {n_fake})"
        )


class _Precomputed(nn.Module):
    """The identity as torchmetrics' "feature extractor": the features are already computed.

    ``num_features`` tells torchmetrics the feature dimension (otherwise it would push a
    random 3x299x299 dummy image through the module to find it). The output is float64, so
    torchmetrics accumulates in float64 and returns its FID as float64 (it casts the result
    back to the dtype of the last features it saw).
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float64)


# ----------------------------------------------------------------------------- FID


class FeatureGaussian(NamedTuple):
    """A feature set's Gaussian as FID uses it: ``mean`` (D,) and unbiased ``cov`` (D, D) of the
    features minus ``center`` (D,), the vector both sets are shifted by (the real mean), over
    ``count`` rows. All float64."""

    center: torch.Tensor
    mean: torch.Tensor
    cov: torch.Tensor
    count: int


def _moments(x: torch.Tensor, center: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance of ``x - center``, accumulated as torchmetrics'
    ``FrechetInceptionDistance.update``/``compute`` do (batch sums of x and x^T x, then
    (S - n m m^T) / (n - 1)), so that they match its numbers bit for bit."""
    d = x.shape[1]
    total = torch.zeros(d, dtype=torch.float64, device=x.device)
    outer = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], batch_size):
        rows = x[i : i + batch_size] - center
        total += rows.sum(dim=0)
        outer += rows.t().mm(rows)
    n = x.shape[0]
    mean = (total / n).unsqueeze(0)
    cov = (outer - n * mean.t().mm(mean)) / (n - 1)
    return mean.squeeze(0), cov


def feature_gaussian(real: torch.Tensor, batch_size: int = 1024) -> FeatureGaussian:
    """The real side of :func:`frechet_distance`, computed once: centred on its own mean."""
    real = _features(real, "real features")
    if real.shape[0] < 2:
        raise InputError(f"real features: FID needs at least 2 rows, got {real.shape[0]}")
    center = real.mean(dim=0)
    mean, cov = _moments(real, center, batch_size)
    return FeatureGaussian(center, mean, cov, real.shape[0])


def _check_fid_counts(n_real: int, n_fake: int, dim: int, key: str) -> None:
    for which, n in (("generated", n_fake), ("real", n_real)):
        if n < dim:
            raise InputError(
                f"{key}: {n} {which} samples are fewer than the {dim} feature dimensions; "
                f"FID needs at least {dim}"
            )


def frechet_distance_from_stats(
    mu1: torch.Tensor | np.ndarray,
    sigma1: torch.Tensor | np.ndarray,
    mu2: torch.Tensor | np.ndarray,
    sigma2: torch.Tensor | np.ndarray,
    method: Literal["eigvals", "sqrtm"] = "eigvals",
) -> float:
    r"""Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local
    Nash Equilibrium", https://arxiv.org/abs/1706.08500 (the FID definition):

    .. math:: d^2 = \lVert\mu_1 - \mu_2\rVert^2 + \mathrm{Tr}(\Sigma_1 + \Sigma_2 - 2(\Sigma_1\Sigma_2)^{1/2})

    ``method="eigvals"`` is the form torchmetrics uses: Tr((S1 S2)^{1/2}) as the sum of the
    square roots of the eigenvalues of S1 @ S2 (real and >= 0 in exact arithmetic, since
    S1 S2 is similar to S1^{1/2} S2 S1^{1/2}; the real part of each root is kept).
    ``method="sqrtm"`` is the reference of the original TTUR / pytorch-fid code:
    ``scipy.linalg.sqrtm(S1 @ S2)``, with a 1e-6 ridge added if the root is not finite and
    the imaginary part dropped.
    """
    m1, m2 = (torch.as_tensor(m, dtype=torch.float64).cpu() for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(s, dtype=torch.float64).cpu() for s in (sigma1, sigma2))
    d = m1.shape[-1]
    if m1.shape != (d,) or m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"expected means (D,) and covariances (D, D), got {tuple(m1.shape)}, {tuple(s1.shape)}, "
            f"{tuple(m2.shape)}, {tuple(s2.shape)}"
        )
    mean_term = float((m1 - m2).square().sum())
    trace_term = float(s1.trace() + s2.trace())
    if method == "eigvals":
        cross = float(torch.linalg.eigvals(s1 @ s2).sqrt().real.sum())
    elif method == "sqrtm":
        a, b = s1.numpy(), s2.numpy()
        root = scipy.linalg.sqrtm(a @ b)
        if not np.isfinite(root).all():
            ridge = 1e-6 * np.eye(d)
            root = scipy.linalg.sqrtm((a + ridge) @ (b + ridge))
        cross = float(np.trace(root).real)
    else:
        raise ValueError(f"method must be 'eigvals' or 'sqrtm', got {method!r}")
    return mean_term + trace_term - 2.0 * cross


def frechet_distance(real: torch.Tensor | None, fake: torch.Tensor, batch_size: int = 1024,
                     key: str = "evaluate.num_samples", real_stats: FeatureGaussian | None = None) -> float:
    r"""FID between real features (N, D) and generated features (M, D), via torchmetrics.

    Heusel et al. 2017, https://arxiv.org/abs/1706.08500: fit a Gaussian to each set and take

    .. math:: \mathrm{FID} = \lVert\mu_r - \mu_g\rVert^2 + \mathrm{Tr}(\Sigma_r + \Sigma_g - 2(\Sigma_r\Sigma_g)^{1/2})

    The features go through ``torchmetrics.image.fid.FrechetInceptionDistance`` with an
    identity "extractor" (:class:`_Precomputed`) in batches of ``batch_size`` rows; its sums
    and covariance sums are float64, and so is what it is fed. Both sets are first shifted by
    the mean of ``real`` (FID is translation invariant), because torchmetrics forms each
    covariance as (sum x x^T - n mu mu^T) / (n - 1), which loses digits when the mean is large
    next to the spread. The covariances are unbiased (n - 1). Rounding can leave a value of
    about -1e-10 for identical sets.

    With ``real_stats`` (:func:`feature_gaussian` of the real features, computed once) ``real``
    is not needed: the generated set is centred on ``real_stats.center`` and its moments are
    summed as torchmetrics sums them (:func:`_moments`); the distance is torchmetrics' formula
    (:func:`frechet_distance_from_stats`, ``eigvals``), so both ways give the same number.

    Raises :class:`InputError` naming ``key`` (the setting behind the sample count) when
    either set has fewer rows than D: its covariance would be singular and the estimate meaningless.
    """
    if real_stats is not None:
        fake = _features(fake, "generated features")
        center = real_stats.center.to(torch.float64)
        if fake.shape[1] != center.shape[0]:
            raise ValueError(f"real and generated features differ in dimension: {center.shape[0]} vs {fake.shape[1]}")
        _check_fid_counts(real_stats.count, fake.shape[0], fake.shape[1], key)
        mean, cov = _moments(fake, center.to(fake.device), batch_size)
        return frechet_distance_from_stats(real_stats.mean, real_stats.cov, mean, cov)
    real, fake = _pair(real, fake)
    dim = real.shape[1]
    _check_fid_counts(real.shape[0], fake.shape[0], dim, key)
    shift = real.mean(dim=0)
    metric = FrechetInceptionDistance(feature=_Precomputed(dim)).to(real.device)
    with torch.no_grad():
        for features, is_real in ((real, True), (fake, False)):
            for i in range(0, features.shape[0], batch_size):
                metric.update(features[i : i + batch_size] - shift, real=is_real)
        return float(metric.compute())


# ----------------------------------------------------------------------------- KID


def kernel_inception_distance(
    real: torch.Tensor,
    fake: torch.Tensor,
    subsets: int = 50,
    subset_size: int = 500,
    seed: int = 0,
    batch_size: int = 1024,
    key: str = "evaluate.num_samples",
) -> tuple[float, float]:
    r"""KID between real (N, D) and generated (M, D) features via torchmetrics: (mean, std).

    Binkowski et al. 2018, "Demystifying MMD GANs", https://arxiv.org/abs/1801.01401: the
    unbiased estimate of the squared MMD with the cubic polynomial kernel
    k(x, y) = (x . y / D + 1)^3,

    .. math::
        \widehat{\mathrm{MMD}}^2 = \frac{1}{m(m-1)}\sum_{i\ne j}\big(k(x_i,x_j) + k(y_i,y_j)\big)
            - \frac{2}{m^2}\sum_{i,j}k(x_i,y_j)

    averaged over ``subsets`` random subsets of ``m`` rows of each set; the std is over those
    subsets (population std, as torchmetrics and the original code compute it). The estimate
    is unbiased, so it can be slightly negative when the two sets share one distribution.

    ``m = min(subset_size, N, M)``: the subset size is clamped to the smaller set rather than
    failing as torchmetrics would (with ``m`` equal to both set sizes every subset is the whole
    set and the std is 0). torchmetrics draws the subsets with ``torch.randperm`` from the
    global CPU generator; here that draw runs inside ``torch.random.fork_rng`` seeded with
    ``seed`` (and under a lock, against other threads' KID), so equal inputs give equal KID and
    the caller's RNG stream is left untouched.
    The features are used in float64. Unlike FID, KID is not translation invariant, so the
    features are passed unshifted.
    """
    real, fake = _pair(real, fake)
    n = min(real.shape[0], fake.shape[0])
    if n < 2:
        raise InputError(
            f"{key}: KID needs at least 2 samples in each set (real {real.shape[0]}, "
            f"generated {fake.shape[0]})"
        )
    if subsets < 1 or subset_size < 2:
        raise InputError(f"evaluate.kid_subsets/kid_subset_size: need >= 1 and >= 2, got {subsets} and {subset_size}")
    with warnings.catch_warnings():  # "will save all extracted features in buffer": we chose to
        warnings.filterwarnings("ignore", message=".*save all extracted features in buffer.*")
        metric = KernelInceptionDistance(
            feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=min(subset_size, n)
        ).to(real.device)
    with torch.no_grad():
        for features, is_real in ((real, True), (fake, False)):
            for i in range(0, features.shape[0], batch_size):
                metric.update(features[i : i + batch_size], real=is_real)
        with isolated_rng(seed):  # torchmetrics draws the subsets from the global RNG
            mean, std = metric.compute()
    return float(mean), float(std)


# ----------------------------------------------------------------------------- k-NN manifolds


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3,
                     real_radii: torch.Tensor | None = None) -> tuple[float, float]:
    r"""Improved precision and recall of generated (M, D) vs real (N, D) features.

    Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for Assessing Generative
    Models", https://arxiv.org/abs/1904.06991. Each set's manifold is the union of balls
    around its points with radius the distance to the point's k-th nearest neighbour in the
    same set (the point itself excluded):

    .. math::
        f(\phi, \Phi) = 1 \text{ if } \exists \phi' \in \Phi:
            \lVert\phi - \phi'\rVert_2 \le \lVert\phi' - \mathrm{NN}_k(\phi', \Phi)\rVert_2

        \mathrm{precision} = \frac{1}{M}\sum_j f(\phi_{g,j}, \Phi_r), \qquad
        \mathrm{recall} = \frac{1}{N}\sum_i f(\phi_{r,i}, \Phi_g)

    Precision is the share of generated samples inside the real manifold (fidelity), recall
    the share of real samples inside the generated manifold (diversity). The ball is closed
    (<=), as in the paper and its official code. One pass of real-vs-generated distances serves
    both. ``real_radii``: :func:`knn_radii` of ``real`` at this ``k``, computed once (the
    generated set's radii are always computed). Raises :class:`InputError` naming
    ``evaluate.pr_k`` unless 1 <= k < min(N, M).
    """
    real, fake = _pair(real, fake)
    _check_k(k, "evaluate.pr_k", real.shape[0], fake.shape[0])
    shift = real.mean(dim=0)
    real, fake = real - shift, fake - shift
    r_real = _knn_radii(real, k) if real_radii is None else _given_radii(real_radii, real)
    r_fake = _knn_radii(fake, k)
    precise = torch.zeros(fake.shape[0], dtype=torch.bool, device=real.device)
    recalled = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    for i, j, d in _blocks(fake, real):  # d[a, b] = |fake_a - real_b|
        precise[i:j] = (d <= r_real[None, :]).any(dim=1)
        recalled |= (d <= r_fake[i:j, None]).any(dim=0)
    return float(precise.double().mean()), float(recalled.double().mean())


def density_coverage(real: torch.Tensor, fake: torch.Tensor, k: int = 5,
                     real_radii: torch.Tensor | None = None) -> tuple[float, float]:
    r"""Density and coverage of generated (M, D) vs real (N, D) features.

    Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for Generative Models",
    https://arxiv.org/abs/2002.09797. With B(X_i, r_i) the ball around real sample X_i of
    radius r_i = its distance to its k-th nearest real neighbour (itself excluded); only the
    real set defines balls, so outliers among the generated samples cannot inflate them:

    .. math::
        \mathrm{density} = \frac{1}{kM}\sum_{j=1}^{M}\sum_{i=1}^{N} 1[Y_j \in B(X_i, r_i)], \qquad
        \mathrm{coverage} = \frac{1}{N}\sum_{i=1}^{N} 1[\exists j: Y_j \in B(X_i, r_i)]

    Density counts how many real neighbourhoods hold each sample (about 1 when both sets
    share a distribution; it is not capped at 1), coverage the share of real neighbourhoods
    holding at least one sample (about 1 - 2^-k for two equal-size samples of one
    distribution). The ball is open (<), as in the authors' code (``prdc``): a set compared
    with itself has coverage 1 and density 1 (each ball holds its centre and k - 1
    neighbours; the k-th neighbour sits on the boundary, where rounding of |a - b| vs |b - a|
    can tip it in, so expect 1 + O(1/N)). ``real_radii``: :func:`knn_radii` of ``real`` at this
    ``k``, computed once. Raises :class:`InputError` naming ``evaluate.dc_k`` unless 1 <= k < min(N, M).
    """
    real, fake = _pair(real, fake)
    _check_k(k, "evaluate.dc_k", real.shape[0], fake.shape[0])
    shift = real.mean(dim=0)
    real, fake = real - shift, fake - shift
    r_real = _knn_radii(real, k) if real_radii is None else _given_radii(real_radii, real)
    count = 0
    covered = torch.zeros(real.shape[0], dtype=torch.bool, device=real.device)
    for _, _, d in _blocks(fake, real):
        inside = d < r_real[None, :]
        count += int(inside.sum())
        covered |= inside.any(dim=0)
    return count / (k * fake.shape[0]), float(covered.double().mean())


# ----------------------------------------------------------------------------- classifier-based


def _probabilities(probs: torch.Tensor | np.ndarray) -> torch.Tensor:
    p = torch.as_tensor(probs).detach().to(torch.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"class probabilities: expected a non-empty (N, K) tensor, got shape {tuple(p.shape)}")
    sums_to_one = bool(((p.sum(dim=1) - 1.0).abs() <= 1e-3).all())
    if not torch.isfinite(p).all() or (p < 0).any() or not sums_to_one:
        raise ValueError("class probabilities: rows must be finite, non-negative and sum to 1 (softmax, not logits)")
    return p


def _kl(q: torch.Tensor, p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """KL(q || p) in nats; terms with q = 0 are exactly 0 (xlogy), never NaN."""
    return (torch.special.xlogy(q, q) - torch.special.xlogy(q, p)).sum(dim=dim)


def inception_score(probs: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    r"""Inception score from class probabilities p(y|x) (N, K): (mean, std) over ``splits``.

    Salimans et al. 2016, "Improved Techniques for Training GANs",
    https://arxiv.org/abs/1606.03498 (Sec. 4):

    .. math:: \mathrm{IS} = \exp\big(\mathbb{E}_x\, \mathrm{KL}(p(y|x) \,\Vert\, p(y))\big)

    with p(y) the mean of p(y|x) over each split. The rows are cut into ``min(splits, N)``
    near-equal consecutive parts (``torch.tensor_split``, no row dropped); the std is the
    population std over parts, as in the original code. Computed in float64; 0 log 0 = 0, so one-hot rows
    are fine. It ranges from 1 (every prediction equal) to K (confident and balanced).
    """
    p = _probabilities(probs)
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    parts = torch.tensor_split(p, min(splits, p.shape[0]))
    scores = torch.stack([torch.exp(_kl(part, part.mean(dim=0, keepdim=True)).mean()) for part in parts])
    return float(scores.mean()), float(scores.std(unbiased=False))


def class_histogram(
    probs: torch.Tensor, label_distribution: torch.Tensor | np.ndarray, min_count: int = 1
) -> dict[str, Any]:
    r"""Predicted classes (argmax of ``probs`` (N, K)) against the training label distribution.

    Returns ``counts`` and ``fractions`` per class (lists of K), ``num_classes``,
    ``classes_covered`` (classes predicted for at least ``min_count`` samples; 1 by default)
    and ``kl_to_labels``:

    .. math:: \mathrm{KL}(q \,\Vert\, p) = \sum_c q_c \log(q_c / p_c)

    in nats, with q the predicted class fractions and p ``label_distribution`` (weights of
    shape (K,), normalised here). This direction stays finite when the model misses classes
    (q_c = 0 terms are 0), and it grows as the samples pile onto few classes: all samples in
    one class against uniform labels give exactly log K, balanced samples 0. The reverse
    direction would be infinite for every missed class and so depend only on an epsilon. Label
    classes with p_c = 0 are floored at 1e-12 (then renormalised), so a predicted class that
    never occurs in the labels gives a large, finite KL. ``probs`` may also be logits.
    """
    scores = torch.as_tensor(probs).detach()
    if scores.ndim != 2 or scores.shape[0] == 0:
        raise ValueError(f"class probabilities: expected a non-empty (N, K) tensor, got shape {tuple(scores.shape)}")
    k = scores.shape[1]
    p = torch.as_tensor(label_distribution).detach().to(torch.float64).cpu()
    if p.shape != (k,) or not torch.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"label_distribution: expected {k} non-negative weights with a positive sum, got {p.tolist()}")
    p = (p / p.sum()).clamp_min(_LABEL_EPS)
    p = p / p.sum()
    counts = torch.bincount(scores.argmax(dim=1).cpu(), minlength=k)
    q = counts.double() / scores.shape[0]
    return {
        "counts": counts.tolist(),
        "fractions": q.tolist(),
        "num_classes": k,
        "classes_covered": int((counts >= min_count).sum()),
        "kl_to_labels": float(_kl(q, p)),
    }


# ----------------------------------------------------------------------------- copying


def _centred_train(train: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``train`` flattened to float64 rows and centred on its mean; and that mean."""
    t = _features(train, "train features", flatten=True)
    shift = t.mean(dim=0)
    return t - shift, shift


def _nearest(train_c: torch.Tensor, shift: torch.Tensor, query: Any, name: str) -> torch.Tensor:
    q = _features(query, name, flatten=True).to(train_c.device)
    if q.shape[1] != train_c.shape[1]:
        raise ValueError(f"train and {name} differ in dimension: {train_c.shape[1]} vs {q.shape[1]}")
    return _nn_distance(q - shift, train_c)


def nearest_train_distances(train: Any, query: Any) -> torch.Tensor:
    """Distance (M,) from each row of ``query`` to its nearest row of ``train`` (both flattened,
    float64, centred on the train mean): what :func:`memorisation` averages, and what the
    features stage stores for the held-out images."""
    train_c, shift = _centred_train(train)
    return _nearest(train_c, shift, query, "held-out features")


def train_scale(train: Any) -> float:
    """The largest |coordinate| of ``train`` centred on its mean: sets the tolerance below which
    :func:`memorisation_ratio` takes a mean distance for rounding (equal rows)."""
    return float(_centred_train(train)[0].abs().max())


def memorisation_ratio(fake_to_train: torch.Tensor, heldout_to_train: torch.Tensor, scale: float) -> dict[str, float]:
    """:func:`memorisation`'s figures from the per-sample nearest-train distances; ``scale``:
    :func:`train_scale` of the train set."""
    fake_nn, heldout_nn = float(fake_to_train.mean()), float(heldout_to_train.mean())
    if heldout_nn <= 1e-9 * (1.0 + scale):  # cdist puts equal rows ~1e-15 apart
        raise InputError("held-out images: every one duplicates a training image; the memorisation ratio is undefined")
    return {"fake_to_train": fake_nn, "heldout_to_train": heldout_nn, "ratio": fake_nn / heldout_nn}


def memorisation(train: torch.Tensor, fake: torch.Tensor, heldout: torch.Tensor | None = None,
                 heldout_to_train: torch.Tensor | None = None) -> dict[str, float]:
    """Do generated samples sit closer to the training set than unseen real images do?

    Inputs are (N, ...) images or features, flattened to vectors (uint8 pixels are fine; all
    three must be in the same representation). Returns, in those units:

    - ``fake_to_train``: mean L2 distance from each generated sample to its nearest training
      sample;
    - ``heldout_to_train``: the same for each held-out real image;
    - ``ratio`` = fake_to_train / heldout_to_train. About 1 when samples are as far from the
      training images as new real images are; well below 1 means the model reproduces
      training images (copying). Above 1 is a quality problem rather than copying.

    ``heldout_to_train``: the held-out images' distances (:func:`nearest_train_distances`),
    computed once; then ``heldout`` is not needed. Raises :class:`InputError` when the held-out
    images coincide with training images (the ratio would divide by zero).
    """
    train_c, shift = _centred_train(train)
    fake_d = _nearest(train_c, shift, fake, "generated features")
    if heldout_to_train is None:
        if heldout is None:
            raise ValueError("memorisation needs heldout or heldout_to_train")
        heldout_to_train = _nearest(train_c, shift, heldout, "held-out features")
    return memorisation_ratio(fake_d, heldout_to_train, float(train_c.abs().max()))
