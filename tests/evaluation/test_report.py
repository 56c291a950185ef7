"""The report's verdict is computed from the numbers: each claim can come out either way."""

from __future__ import annotations

from genpipe.evaluation.render import cell as _cell
from genpipe.evaluation.report import _seed_spread, verdict
from genpipe.results import EvaluationResult


def family(fid: float, sharp: float = 1.0, ips: float = 100.0, bpd: float | None = None, seed_fids=None,
           name: str = "vae") -> EvaluationResult:
    seeds = None
    if seed_fids:
        mean = sum(seed_fids) / len(seed_fids)
        sd = (sum((f - mean) ** 2 for f in seed_fids) / (len(seed_fids) - 1)) ** 0.5
        seeds = {"training_seeds": list(range(len(seed_fids))), "fid": seed_fids, "fid_mean": mean, "fid_std": sd,
                 "num_samples": 100, "sampling_seed": 0, "extractor_id": "x", "checkpoint_sha256": ["0"] * len(seed_fids)}
    return EvaluationResult.model_validate({
        "family": name, "split": "test", "num_images": 10, "samples_png": "s.png", "sampling": None, "seed": 0,
        "dataset_sha256": "d", "checkpoint_sha256": "c", "checkpoint_step": 1, "mlflow_run_id": None, "figures": [],
        "extractor": {"id": "x"}, "training": {"steps": 1},
        "quality": {"extractor_id": "x", "num_samples": 100, "fid": fid, "kid": 0.0, "kid_std": 0.0, "precision": 0.5,
                    "recall": 0.5, "density": 1.0, "coverage": 0.5, "classes_covered": 10, "class_kl": 0.01,
                    "sharpness_ratio": sharp, "memorisation": {"ratio": 1.0}},
        "speed": {"images_per_s": ips, "batch_size": 10, "timed_batches": 1, "warm_up_excluded": False, "nfe": 1,
                  "device": "cpu", "threads": 1},
        "likelihood": None if bpd is None else {"nll_nats": bpd, "bits_per_dim": bpd, "estimator": "e",
                                                "kind": "exact" if bpd < 3.2 else "lower_bound"},
        "seeds": seeds,
    })


def test_the_orderings_are_checked_not_asserted():
    good = verdict({"diffusion": family(2.0, bpd=3.0), "gan": family(5.0), "vae": family(9.0, sharp=0.5, bpd=4.0),
                    "gmm": family(10.0, bpd=3.5)}, {})
    text = "\n".join(good)
    assert "'Diffusion gives the best quality': **holds**" in text
    assert "'VAEs are blurry': VAE sample sharpness is 0.50× " in text and "**holds** (threshold 0.8)" in text
    assert "Not beating the Gaussian mixture (3.500): vae." in text
    assert "diffusion 3.000 < gmm 3.500 (bound) < vae 4.000 (bound)." in text  # bounds are marked
    assert "not measured (one seed; set `stability_seeds`)" in text

    bad = "\n".join(verdict({"diffusion": family(8.0), "gan": family(5.0), "vae": family(4.0, sharp=0.95)}, {}))
    assert "'Diffusion gives the best quality': **does not hold** here (diffusion ranks 3 of 3" in bad
    assert "**does not hold** (threshold 0.8)" in bad


def test_the_fid_spread_across_training_seeds_names_the_least_stable_family():
    unstable_gan = {"gan": family(5.0, seed_fids=[5.0, 9.0, 3.0]), "vae": family(9.0, seed_fids=[9.0, 9.5, 8.8])}
    line = next(x for x in verdict(unstable_gan, {}) if x.startswith("FID spread"))
    assert line.index("gan") < line.index("vae") and "the GAN's is **the largest**" in line
    stable_gan = {"gan": family(5.0, seed_fids=[5.0, 5.1, 4.9]), "vae": family(9.0, seed_fids=[9.0, 14.0, 6.0])}
    assert "the GAN's is **not the largest**" in "\n".join(verdict(stable_gan, {}))
    assert _seed_spread(unstable_gan["gan"]) == "5.67 ± 3.1 (3 seeds)"
    assert _seed_spread(family(1.0)) is None


def test_cells_mark_what_a_column_means_for_their_row():
    row = {"model": "gan", "images_per_s": 1234.0, "bits_per_dim": 3.5, "bits_per_dim_is": "bound"}
    assert _cell(row, "bits_per_dim").endswith(" (bound)")
    assert _cell({"bits_per_dim": 2.7, "bits_per_dim_is": "exact"}, "bits_per_dim") == "2.7"
    assert _cell({"kid": 0.0123}, "kid") == "12.3" and _cell({"images_per_s": 5771.4}, "images_per_s") == "5771"
