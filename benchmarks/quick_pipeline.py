"""Benchmark: the quick pipeline (what `make run` runs), end to end, with per-family times.

Run from the repository root, with nothing else loading the machine:

    .venv/bin/python benchmarks/quick_pipeline.py [-S key=value ...]

It runs the Prefect flow on params.yaml (plus overrides) and prints a Markdown table for
docs/benchmarks.md: wall-clock of the whole flow, and per family the training, evaluation
and generation seconds as the stages measured them, with held-out bits/dim. Families train
concurrently, so per-family seconds overlap and do not add up to the total.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__}, Python {platform.python_version()}"


def cpu_seconds() -> tuple[float, float, float]:
    """Machine-wide (busy, idle, stolen) CPU seconds since boot, all cores together (/proc/stat)."""
    f = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return (f[0] + f[1] + f[2] + f[5] + f[6]) / tick, (f[3] + f[4]) / tick, f[7] / tick


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-S", "--set", dest="overrides", action="append", default=[])
    args = p.parse_args()
    from flows.pipeline import pipeline

    t0, cpu0 = time.perf_counter(), cpu_seconds()
    result = pipeline(params="params.yaml", overrides=args.overrides or None)
    total = time.perf_counter() - t0
    busy, idle, stolen = (b - a for a, b in zip(cpu0, cpu_seconds()))
    print(f"\nmachine: {machine()}")
    print(f"command: .venv/bin/python benchmarks/quick_pipeline.py {' '.join('-S ' + o for o in args.overrides)}".rstrip())
    print(f"whole flow: {total:.0f} s (includes Prefect's temporary API, Ray start-up and DVC)")
    print(f"CPU: {busy:.0f} core-s busy, {idle:.0f} core-s idle, {stolen:.0f} stolen by the hypervisor (machine-wide, {os.cpu_count()} cores)\n")
    print("| family | train s | evaluate s | generate s | test bits/dim (estimator) |")
    print("|---|---:|---:|---:|---|")
    for family, s in result["seconds"].items():
        ll = result["metrics"][family]
        bpd = f"{ll['bits_per_dim']:.3f} ({ll['estimator']})" if ll else "— (no likelihood)"
        print(f"| {family} | {s['train']:.1f} | {s['evaluate']:.1f} | {s['generate']:.1f} | {bpd} |")


if __name__ == "__main__":
    main()
