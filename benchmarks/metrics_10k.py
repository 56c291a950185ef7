"""Benchmark: 10,000 samples of 3x32x32 colour scored by every metric of the evaluate stage.

Run from the repository root:

    .venv/bin/python benchmarks/metrics_10k.py [--samples 10000] [--images 12500] [--threads 2]

It prepares the ``shapes`` source at 32 px (``--images`` in all: 80 % train, the reference)
in a temp folder, trains the domain feature network briefly (its default width and feature
dimension: those set the extraction cost; its accuracy does not matter here), which writes the
reference statistics, then scores ``--samples`` fresh shapes images (another seed, with pixel
noise: the "generated" samples) exactly as :func:`genpipe.evaluation.quality.sample_quality`
does, timing each metric, and prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.quick_pipeline import machine  # noqa: E402 (after the path insert)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=10_000)
    p.add_argument("--images", type=int, default=12_500, help="shapes images prepared (80 %% of them the train split)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--feature-steps", type=int, default=100)
    args = p.parse_args()

    import numpy as np  # deferred: the --help above needs none of these
    import torch

    from genpipe.config import load_config
    from genpipe.data import load_split, prepare_dataset
    from genpipe.data.sources import load_shapes_source
    from genpipe.evaluation import metrics as M
    from genpipe.evaluation.features import load_extractor, train_feature_net
    from genpipe.evaluation.quality import load_reference, sample_quality
    from genpipe.evaluation.reference import compute_reference, pixels, sharpness

    torch.set_num_threads(args.threads)
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{tempfile.gettempdir()}/genpipe-bench-mlflow.db")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = load_config("params.yaml", [
            f"paths.data={root / 'data'}", f"paths.models={root / 'models'}", "data.source=shapes",
            "data.resolution=32", f"data.shapes.num_images={args.images}", f"features.steps={args.feature_steps}",
            f"evaluate.num_samples={args.samples}",
        ])
        t = time.perf_counter()
        prepare_dataset(cfg)
        prepared_s = time.perf_counter() - t
        t = time.perf_counter()
        card = train_feature_net(cfg, progress=False)
        features_s = time.perf_counter() - t

        fresh = load_shapes_source(cfg.data.model_copy(update={"shapes": cfg.data.shapes.model_copy(
            update={"num_images": args.samples})}), seed=12345).images
        noise = np.random.default_rng(0).integers(-12, 13, fresh.shape)
        samples = torch.from_numpy(np.clip(fresh.astype(np.int16) + noise, 0, 255).astype(np.uint8))  # (N, 3, 32, 32)

        e = cfg.evaluate
        times: dict[str, float] = {}

        def timed(name, fn):
            t0 = time.perf_counter()
            out = fn()
            times[name] = time.perf_counter() - t0
            return out

        extractor = load_extractor(cfg)
        ref = timed("load reference (file + train pixels)", lambda: load_reference(cfg, extractor))
        feats, probs = timed("features + class probabilities", lambda: extractor.features_and_probs(samples, e.batch_size))
        real = ref.train_features
        timed("FID", lambda: M.frechet_distance(None, feats, real_stats=ref.fid))
        timed("KID", lambda: M.kernel_inception_distance(real, feats, e.kid_subsets, e.kid_subset_size, seed=cfg.seed))
        timed("precision / recall", lambda: M.precision_recall(real, feats, e.pr_k, real_radii=ref.pr_radii))
        timed("density / coverage", lambda: M.density_coverage(real, feats, e.dc_k, real_radii=ref.dc_radii))
        timed("IS + class histogram", lambda: (M.inception_score(probs), M.class_histogram(probs, ref.label_distribution)))
        timed("sharpness", lambda: sharpness(samples))
        timed("memorisation (pixels)", lambda: M.memorisation(ref.train_pixels, pixels(samples),
                                                              heldout_to_train=ref.heldout_to_train))
        scored = sum(times.values())
        t = time.perf_counter()
        q = sample_quality(samples, ref, extractor, cfg)
        whole = time.perf_counter() - t

        train_n = len(ref.train_features)
        t = time.perf_counter()
        compute_reference(extractor, load_split(cfg.paths.data, "train"), load_split(cfg.paths.data, "test"),
                          e.pr_k, e.dc_k, e.batch_size)
        reference_s = time.perf_counter() - t

    load_after = os.getloadavg()
    print(f"\nmachine: {machine()}; torch threads {args.threads}")
    print(f"load average (1, 5, 15 min): before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(f"command: .venv/bin/python benchmarks/metrics_10k.py --samples {args.samples} --images {args.images} "
          f"--threads {args.threads} --feature-steps {args.feature_steps}")
    print(f"data: shapes 3x32x32, {train_n} train images as the reference, {len(ref.heldout_features)} test; "
          f"extractor {card['id']} ({card['architecture']['width']} wide, {card['feature_dim']}-d features); "
          f"prepare {prepared_s:.1f} s, features stage {features_s:.1f} s (of it the reference {reference_s:.1f} s)\n")
    print(f"| step ({args.samples} samples) | seconds |")
    print("|---|---:|")
    for name, s in times.items():
        print(f"| {name} | {s:.2f} |")
    print(f"| **sum** | **{scored:.1f}** |")
    print(f"| `sample_quality` in one call (what evaluate runs) | {whole:.1f} |")
    print(f"\nFID {q['fid']:.3g}, precision {q['precision']:.3f}, recall {q['recall']:.3f}, "
          f"memorisation ratio {q['memorisation']['ratio']:.3f}")


if __name__ == "__main__":
    main()
