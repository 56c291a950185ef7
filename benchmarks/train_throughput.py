"""Benchmark: training images/s at 3x32x32 colour, the train split in memory against streamed
from its shards (train.data_path), in-process and under Ray Train with 1 and 2 workers.

Run from the repository root:

    .venv/bin/python benchmarks/train_throughput.py [--families vae diffusion] [--window 40]
        [--setups local:1 ray:1 ray:2] [-S key=value ...]

It prepares ``data.source=shapes`` at ``data.resolution=32`` (6,000 images, 4,800 of them train,
in shards of 256 rows) in a temp folder, then trains each family for 2 x ``--window`` steps
with the quick profile's settings, once per setup and data path. The figure is the loop's own
``images_per_s`` of the second logging window (all ranks together: batch x workers per step),
so neither the first window (warm-up, the first shards read) nor Ray Train's start is in it.
Local runs use 1 torch thread, as each Ray worker does.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.quick_pipeline import machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", nargs="+", default=["vae", "diffusion"])
    p.add_argument("--window", type=int, default=40, help="steps per logging window (2 windows per run)")
    p.add_argument("--setups", nargs="+", default=["local:1", "ray:1", "ray:2"], help="runner:workers")
    p.add_argument("--paths", nargs="+", default=["memory", "shards"])
    p.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    args = p.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="train_throughput_"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    os.chdir(folder)
    (folder / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())

    from mlflow.tracking import MlflowClient

    from genpipe.config import load_config
    from genpipe.data import prepare_dataset
    from genpipe.training import train_family

    base = ["data.source=shapes", "data.resolution=32", "data.shard_rows=256", "train.threads=1",
            "train.precision=fp32", f"train.log_every={args.window}", "train.sample_every=100000",
            "train.checkpoint_every=100000", "train.storage_path=ray_results", *args.overrides]
    card = prepare_dataset(load_config("params.yaml", base))
    print(f"dataset: {card['counts']} of {card['shape']}, {len(card['shards'])} shards", flush=True)
    load = Path("/proc/loadavg").read_text().split()[:3]
    rows = []
    for family in args.families:
        for setup in args.setups:
            runner, workers = setup.split(":")
            for path in args.paths:
                cfg = load_config("params.yaml", [*base, f"train.runner={runner}", f"train.num_workers={workers}",
                                                  f"train.data_path={path}", f"{family}.steps={2 * args.window}"])
                t0 = time.perf_counter()
                out = train_family(cfg, family)
                wall = time.perf_counter() - t0
                history = MlflowClient().get_metric_history(out.run_id, "images_per_s")
                ips = max(history, key=lambda m: m.step).value
                batch = cfg.train_for(family).batch_size * (int(workers) if runner == "ray" else 1)
                rows.append((family, runner, workers if runner == "ray" else "—", path, batch, ips, wall))
                print(f"{family} {setup} {path}: {ips:.0f} img/s ({wall:.0f} s wall)", flush=True)
    print(f"\nmachine: {machine()}; load average before: {' '.join(load)}, "
          f"after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print(f"command: .venv/bin/python benchmarks/train_throughput.py --families {' '.join(args.families)} "
          f"--window {args.window} --setups {' '.join(args.setups)}\n")
    print("| family | runner | workers | data path | global batch | train img/s | wall s (incl. start) |")
    print("|---|---|---:|---|---:|---:|---:|")
    for family, runner, workers, path, batch, ips, wall in rows:
        print(f"| {family} | {runner} | {workers} | {path} | {batch} | {ips:.0f} | {wall:.0f} |")


if __name__ == "__main__":
    main()
