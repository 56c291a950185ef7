"""Benchmark: `genpipe prepare` on a folder of image files, 1 vs 2 decoding processes.

Run from the repository root:

    .venv/bin/python benchmarks/prepare_throughput.py [--images 50000] [--side 32] [--workers 1 2]

It writes ``--images`` PNGs of ``data.source=shapes`` at ``--side`` px (one sub-folder per
shape) into a temp folder, then runs ``genpipe prepare -S data.source=imagefolder`` on it once
per ``--workers`` setting, each in its own process, and reports wall time, images/s and the peak
resident memory of the whole process tree (prepare and its workers, sampled every 50 ms) next to
the decoded dataset's size: memory is bounded by a few shards, not by the dataset.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.quick_pipeline import machine  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def write_folder(root: Path, n: int, side: int) -> None:
    """``n`` shapes as PNG files, ``root/<shape>/<index>.png``."""
    from PIL import Image

    from genpipe.config import load_config
    from genpipe.data.sources import load_shapes_source

    cfg = load_config(REPO / "params.yaml", [f"data.resolution={side}", f"data.shapes.num_images={n}"])
    src = load_shapes_source(cfg.data, cfg.seed)
    for name in src.class_names:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (img, y) in enumerate(zip(src.images, src.labels)):
        Image.fromarray(img.transpose(1, 2, 0)).save(root / src.class_names[y] / f"{i:06d}.png")


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_prepare(folder: Path, images: Path, workers: int, shard_rows: int) -> tuple[float, int, str]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    cmd = [sys.executable, "-m", "genpipe.cli", "prepare", "-S", "data.source=imagefolder", "-S", f"data.path={images}",
           "-S", f"data.workers={workers}", "-S", f"data.shard_rows={shard_rows}", "-S", "data.resolution=32"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watched, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(watched))
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed:\n{out}")
    return wall, peak, out.strip().splitlines()[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=50_000)
    p.add_argument("--side", type=int, default=32)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--shard-rows", type=int, default=1024)
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="prepare_throughput_"))
    images = tmp / "images"
    t0 = time.perf_counter()
    write_folder(images, args.images, args.side)
    size = sum(f.stat().st_size for f in images.rglob("*.png"))
    print(f"wrote {args.images} PNGs ({size / 2**20:.0f} MiB) in {time.perf_counter() - t0:.0f} s", flush=True)
    decoded = args.images * 3 * args.side**2 / 2**20
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    rows = []
    for workers in args.workers:
        wall, peak, last = run_prepare(tmp / f"w{workers}", images, workers, args.shard_rows)
        rows.append((workers, wall, args.images / wall, peak / 2**20))
        print(f"workers={workers}: {wall:.1f} s, {args.images / wall:.0f} images/s, peak RSS {peak / 2**20:.0f} MiB"
              f" ({last})", flush=True)
    print(f"\nmachine: {machine()}; load average before: {load}")
    print(f"command: .venv/bin/python benchmarks/prepare_throughput.py --images {args.images} --side {args.side} "
          f"--workers {' '.join(map(str, args.workers))}\n")
    print("| decoding processes | wall s (incl. start) | images/s | peak RSS, all processes (MiB) |"
          " decoded dataset (MiB) |")
    print("|---:|---:|---:|---:|---:|")
    for workers, wall, ips, peak in rows:
        print(f"| {workers} | {wall:.1f} | {ips:.0f} | {peak:.0f} | {decoded:.0f} |")


if __name__ == "__main__":
    main()
