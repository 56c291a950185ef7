"""Sample-quality metrics on synthetic features whose true values are known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genpipe.errors import InputError
from genpipe.evaluation import metrics
from genpipe.evaluation.metrics import (
    class_histogram,
    density_coverage,
    frechet_distance,
    frechet_distance_from_stats,
    inception_score,
    kernel_inception_distance,
    memorisation,
    precision_recall,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def gaussian(n: int, d: int, seed: int, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale + shift


# ----------------------------------------------------------------------------- FID


def test_fid_of_a_set_against_itself_is_zero():
    x = gaussian(2000, 16, 0)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_fid_with_equal_covariances_is_the_squared_mean_shift():
    x = gaussian(2000, 16, 1)
    delta = torch.linspace(-1.0, 2.0, 16, dtype=torch.float64)
    # the same samples moved by delta: covariances are equal, so FID = |delta|^2 exactly
    assert frechet_distance(x, x + delta) == pytest.approx(float(delta.square().sum()), rel=1e-6)


def test_fid_through_torchmetrics_matches_the_scipy_reference_on_unequal_sets():
    real, fake = gaussian(1500, 8, 2), gaussian(1200, 8, 3, scale=1.5, shift=0.4)
    r, f = real.numpy(), fake.numpy()
    ref = frechet_distance_from_stats(
        r.mean(0), np.cov(r, rowvar=False), f.mean(0), np.cov(f, rowvar=False), method="sqrtm"
    )
    assert ref > 1.0  # the sets do differ
    assert frechet_distance(real, fake) == pytest.approx(ref, rel=1e-9)
    assert frechet_distance(real.float(), fake.float()) == pytest.approx(ref, rel=1e-5)  # float32 input


def test_fid_keeps_its_digits_when_the_features_sit_far_from_the_origin():
    # torchmetrics forms covariances as sum(x x^T) - n mu mu^T; at |mu| = 1e5 that alone is
    # off by ~1e-5 relative. Shifting both sets by one vector first keeps FID exact.
    real, fake = gaussian(2000, 16, 30), gaussian(2000, 16, 31, scale=1.1)
    assert frechet_distance(real + 1e5, fake + 1e5) == pytest.approx(frechet_distance(real, fake), rel=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_eigenvalue_and_sqrtm_forms_agree(seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(32, 40, generator=g, dtype=torch.float64), torch.randn(32, 40, generator=g, dtype=torch.float64)
    s1, s2 = a @ a.T / 40 + 0.01 * torch.eye(32, dtype=torch.float64), b @ b.T / 40 + 0.01 * torch.eye(32, dtype=torch.float64)
    mu1, mu2 = torch.randn(32, generator=g, dtype=torch.float64), torch.randn(32, generator=g, dtype=torch.float64)
    by_eig = frechet_distance_from_stats(mu1, s1, mu2, s2, method="eigvals")
    by_sqrtm = frechet_distance_from_stats(mu1.numpy(), s1.numpy(), mu2.numpy(), s2.numpy(), method="sqrtm")
    assert by_eig > 1.0
    assert by_eig == pytest.approx(by_sqrtm, rel=1e-3, abs=1e-3)


def test_fid_with_fewer_samples_than_dimensions_raises_naming_num_samples():
    real, fake = gaussian(100, 32, 4), gaussian(20, 32, 5)
    with pytest.raises(InputError, match=r"evaluate\.num_samples: 20 generated samples.*32 feature dimensions") as err:
        frechet_distance(real, fake)
    assert "\n" not in str(err.value)


def test_non_finite_features_raise_instead_of_giving_nan():
    fake = gaussian(100, 4, 6)
    fake[3, 1] = math.nan
    with pytest.raises(InputError, match="generated features: 1 of 100 rows contain NaN"):
        frechet_distance(gaussian(100, 4, 7), fake)


# ----------------------------------------------------------------------------- KID


def test_kid_is_about_zero_for_one_distribution_positive_for_shifted_and_deterministic():
    real, same, shifted = gaussian(1000, 16, 8), gaussian(1000, 16, 9), gaussian(1000, 16, 10, shift=0.5)
    rng_before = torch.get_rng_state()
    mean, std = kernel_inception_distance(real, same, subsets=10, subset_size=200, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG stream is untouched
    assert abs(mean) < 0.01 and 0.0 < std < 0.05
    assert kernel_inception_distance(real, same, subsets=10, subset_size=200, seed=0) == (mean, std)
    assert kernel_inception_distance(real, same, subsets=10, subset_size=200, seed=1) != (mean, std)
    shifted_mean, _ = kernel_inception_distance(real, shifted, subsets=10, subset_size=200, seed=0)
    assert shifted_mean > 0.1 > 10 * abs(mean)


def test_kid_is_the_same_while_another_thread_loads_models(tmp_path):
    """The pipeline evaluates families in threads of one process: loading a checkpoint builds a
    model, whose initial weights draw from torch's global RNG, which KID's subsets come from too."""
    import threading

    from genpipe.artifacts import checkpoint_state, load_model, save_checkpoint
    from genpipe.config import validate_config
    from genpipe.models import ImageSpec, get_family

    cfg = validate_config({"vae": {"latent_dim": 2, "channels": [4]}})
    spec = ImageSpec((1, 8, 8), 10)
    weights = get_family("vae").build(cfg.family("vae"), spec).state_dict()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, checkpoint_state(
        family="vae", step=1, total_steps=1, seconds=0.0, model=weights, ema={f"module.{k}": v for k, v in weights.items()},
        optimizers={}, rngs=[], meta={"config": cfg.to_dict()}, world_size=1))
    real, fake = gaussian(600, 16, 21), gaussian(600, 16, 22, shift=0.2)
    alone = kernel_inception_distance(real, fake, subsets=20, subset_size=200, seed=0)
    stop = threading.Event()

    def load_again_and_again():
        while not stop.is_set():
            load_model(path, spec.shape, spec.num_classes)

    loader = threading.Thread(target=load_again_and_again)
    loader.start()
    try:
        beside = [kernel_inception_distance(real, fake, subsets=20, subset_size=200, seed=0) for _ in range(4)]
    finally:
        stop.set()
        loader.join()
    assert beside == [alone] * 4


def test_kid_clamps_the_subset_size_to_the_smaller_set():
    real, fake = gaussian(300, 8, 11), gaussian(50, 8, 12, shift=1.0)
    mean, std = kernel_inception_distance(real, fake, subsets=5, subset_size=500)  # torchmetrics alone would raise
    assert mean > 0.0 and math.isfinite(std)
    # with m equal to both set sizes every subset is the whole set: no spread
    assert kernel_inception_distance(real[:50], fake, subsets=4, subset_size=500)[1] == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- precision/recall, density/coverage


def test_precision_and_recall_of_a_set_against_itself_are_one_and_zero_when_disjoint():
    x, y = gaussian(500, 8, 13), gaussian(500, 8, 14)
    assert precision_recall(x, x, k=3) == (1.0, 1.0)
    assert precision_recall(x, y + 100.0, k=3) == (0.0, 0.0)
    # two samples of one distribution: high but not 1
    p, r = precision_recall(x, y, k=3)
    assert 0.7 < p < 1.0 and 0.7 < r < 1.0
    # k=1 is the nearest neighbour other than the point itself; radii that counted the point
    # as its own neighbour would be 0 and give (0, 0) here
    assert min(precision_recall(x, y, k=1)) > 0.4


def test_mode_dropping_keeps_precision_and_loses_recall():
    real = gaussian(1000, 2, 15)
    fake = gaussian(2000, 2, 16)
    fake = fake[fake[:, 0] > 0.0][:500]  # half of the distribution, densely
    p, r = precision_recall(real, fake, k=3)
    assert p > 0.9 and r < 0.65


def test_density_and_coverage_of_a_set_against_itself_and_of_far_sets():
    x, y = gaussian(500, 8, 17), gaussian(500, 8, 18)
    density, coverage = density_coverage(x, x, k=5)
    assert density == pytest.approx(1.0, abs=0.01) and coverage == 1.0
    assert density_coverage(x, y + 100.0, k=5) == (0.0, 0.0)
    # two samples of one distribution: E[density] = 1, E[coverage] ~ 1 - 2^-k (Naeem et al. 2020)
    density, coverage = density_coverage(x, y, k=5)
    assert density == pytest.approx(1.0, abs=0.1)
    assert coverage == pytest.approx(1 - 2**-5, abs=0.03)


def test_chunked_distances_give_the_unchunked_result(monkeypatch):
    real, fake = gaussian(300, 6, 19), gaussian(250, 6, 20, scale=1.3)
    heldout = gaussian(100, 6, 21)
    whole = precision_recall(real, fake, 3), density_coverage(real, fake, 5), memorisation(real, fake, heldout)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 7 * 300)  # 7-row blocks: offsets and ORs across blocks
    assert precision_recall(real, fake, 3) == whole[0]
    assert density_coverage(real, fake, 5) == whole[1]
    assert memorisation(real, fake, heldout) == pytest.approx(whole[2], rel=1e-12)


def test_k_too_large_for_the_sets_names_the_config_key():
    with pytest.raises(InputError, match=r"evaluate\.pr_k: k=10"):
        precision_recall(gaussian(50, 4, 21), gaussian(10, 4, 22), k=10)
    with pytest.raises(InputError, match=r"evaluate\.dc_k: k=50"):
        density_coverage(gaussian(50, 4, 21), gaussian(60, 4, 22), k=50)


# ----------------------------------------------------------------------------- classifier-based


def test_inception_score_is_one_for_uniform_and_k_for_confident_balanced_predictions():
    k = 7
    mean, std = inception_score(torch.full((700, k), 1.0 / k), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    one_hot = torch.nn.functional.one_hot(torch.arange(700) % k, k).float()  # each split of 70 is balanced
    mean, std = inception_score(one_hot, splits=10)
    assert mean == pytest.approx(float(k), rel=1e-12) and std == pytest.approx(0.0, abs=1e-9)
    # confident but collapsed onto one class: no diversity, IS 1
    collapsed = torch.nn.functional.one_hot(torch.zeros(100, dtype=torch.long), k).float()
    assert inception_score(collapsed, splits=4)[0] == pytest.approx(1.0, abs=1e-12)


def test_inception_score_with_fewer_rows_than_splits_uses_one_row_per_split():
    # a single confident row has p(y) = p(y|x): IS 1 per split
    assert inception_score(torch.eye(4)[:3], splits=10) == pytest.approx((1.0, 0.0), abs=1e-12)


def test_inception_score_rejects_logits():
    with pytest.raises(ValueError, match="sum to 1"):
        inception_score(torch.randn(20, 5), splits=2)


def test_class_histogram_of_a_collapsed_and_a_balanced_sampler():
    k = 10
    uniform = torch.full((k,), 1.0 / k)
    collapsed = class_histogram(torch.nn.functional.one_hot(torch.full((200,), 3), k).float(), uniform)
    assert collapsed["classes_covered"] == 1 and collapsed["counts"][3] == 200
    assert collapsed["kl_to_labels"] == pytest.approx(math.log(k), abs=1e-9)
    balanced = class_histogram(torch.nn.functional.one_hot(torch.arange(200) % k, k).float(), uniform)
    assert balanced["classes_covered"] == k and balanced["fractions"] == pytest.approx([0.1] * k)
    assert balanced["kl_to_labels"] == pytest.approx(0.0, abs=1e-12)
    # label counts work as weights; a predicted class absent from the labels gives a large, finite KL
    skew = class_histogram(torch.nn.functional.one_hot(torch.arange(200) % k, k).float(), torch.tensor([0.0] + [20.0] * 9))
    assert 2.0 < skew["kl_to_labels"] < 10.0


# ----------------------------------------------------------------------------- memorisation


def test_memorisation_ratio_flags_copies_and_not_fresh_samples():
    train, heldout, fresh = gaussian(1000, 16, 23), gaussian(300, 16, 24), gaussian(300, 16, 25)
    copies = memorisation(train, train[:300], heldout)
    assert copies["ratio"] < 1e-6 and copies["heldout_to_train"] > 1.0
    assert memorisation(train, fresh, heldout)["ratio"] == pytest.approx(1.0, abs=0.05)


def test_memorisation_takes_uint8_images():
    g = torch.Generator().manual_seed(26)
    train = torch.randint(0, 256, (200, 1, 8, 8), generator=g, dtype=torch.uint8)
    heldout = torch.randint(0, 256, (50, 1, 8, 8), generator=g, dtype=torch.uint8)
    result = memorisation(train, train[:50].clone(), heldout)
    assert result["ratio"] < 1e-6 and result["heldout_to_train"] > 100.0  # pixel units


# ----------------------------------------------------------------------------- likelihood
