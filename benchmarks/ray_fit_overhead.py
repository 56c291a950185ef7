"""Benchmark: the fixed cost of one Ray Train fit, stock ``TorchTrainer`` against genpipe's
``LeanTorchTrainer`` (no DatasetManager, PlacementGroupCleaner or PreemptionWatcher actor).

Run from the repository root, with nothing else loading the machine:

    .venv/bin/python benchmarks/ray_fit_overhead.py [--pairs 4]

One local Ray cluster (2 CPUs, as the quick pipeline's), then ``--pairs`` pairs of fits, stock
and lean alternating so that the machine's drift hits both alike. Each fit runs one CPU worker
whose loop only imports torch (what every genpipe worker does first). Printed per variant: the
median wall-clock seconds and machine-wide busy CPU seconds (/proc/stat) per fit, which is the
cost a pipeline pays five times before any training step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.quick_pipeline import cpu_seconds, machine  # noqa: E402


def _loop(config: dict) -> None:
    import torch  # noqa: F401  (every genpipe worker imports torch first)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=4)
    args = p.parse_args()

    import tempfile

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from genpipe.training.ray_train import LeanTorchTrainer

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    storage = tempfile.mkdtemp(prefix="ray_fit_overhead_")
    variants = {"stock TorchTrainer": (TorchTrainer, "1"), "LeanTorchTrainer": (LeanTorchTrainer, "0")}
    # one warm-up fit: the first also starts the cluster-wide autoscaling coordinator, once
    TorchTrainer(_loop, scaling_config=ScalingConfig(num_workers=1),
                 run_config=RunConfig(name="warmup", storage_path=storage)).fit()
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for i in range(args.pairs):
        for name, (trainer_cls, watcher) in variants.items():
            os.environ["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = watcher  # read by each fit's controller
            time.sleep(2.0)  # let the previous fit's actors exit
            t0, (busy0, _, _) = time.perf_counter(), cpu_seconds()
            trainer_cls(_loop, scaling_config=ScalingConfig(num_workers=1),
                        run_config=RunConfig(name=f"{name.split()[0]}-{i}", storage_path=storage)).fit()
            time.sleep(2.0)  # exiting actors still burn CPU: count it
            wall, busy = time.perf_counter() - t0 - 2.0, cpu_seconds()[0] - busy0
            results[name].append((wall, busy))
            print(f"{name}: fit {i}: {wall:.1f} s wall, {busy:.1f} core-s busy", flush=True)
    ray.shutdown()
    print(f"\nmachine: {machine()}")
    print(f"command: .venv/bin/python benchmarks/ray_fit_overhead.py --pairs {args.pairs}\n")
    print("| trainer | wall s per fit (median) | busy core-s per fit (median, machine-wide, incl. 2 s after) |")
    print("|---|---:|---:|")
    for name, rows in results.items():
        print(f"| {name} | {statistics.median(r[0] for r in rows):.1f} | {statistics.median(r[1] for r in rows):.1f} |")


if __name__ == "__main__":
    main()
