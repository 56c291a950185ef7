"""The process a stage runs in: progress display, the CPU set-up (allocator, threads), the
device, and the Ray cluster the distributed stages share."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from tqdm.auto import tqdm

from genpipe.errors import InputError
from genpipe.reaper import reap_on_exit


def interactive() -> bool:
    """Progress bars for a person at a terminal: stderr is a TTY and ``CI`` is not set; else
    (a log file, CI) a line per milestone (:class:`MilestoneLog`)."""
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return sys.stderr.isatty() and not ci


def progress_bar(total: int, desc: str, unit: str, initial: int = 0, enabled: bool = True) -> Any:
    """A tqdm bar at a terminal, :class:`MilestoneLog` lines elsewhere, nothing if not ``enabled``;
    each with tqdm's ``update`` / ``set_postfix`` / ``close`` and usable as a context manager."""
    if not enabled:
        return tqdm(total=total, initial=initial, disable=True)
    if not interactive():
        return MilestoneLog(total, initial, desc, unit=unit + "s")
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, mininterval=0.5)


class MilestoneLog:
    """The progress bar's interface for logs: one line at every ``every``-th of the way
    (10 % by default) and at the end, ``<desc>: <done>/<total> <unit> (<pct> %) <postfix>``."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", unit: str = "steps", every: float = 0.1):
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.stride = max(1, round(total * every))
        self.postfix = ""
        self._printed = initial

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kw: Any) -> None:
        """tqdm's signature; ``refresh`` means nothing here (a line is written at the milestones)."""
        self.postfix = " ".join(f"{k}={v}" for k, v in {**(ordered_dict or {}), **kw}.items())

    def update(self, n: int = 1) -> None:
        before, self.n = self.n, self.n + n
        if self.n // self.stride > before // self.stride and self.n < self.total:
            self._line()

    def close(self) -> None:
        if self.n != self._printed:
            self._line()

    def _line(self) -> None:
        self._printed = self.n
        pct = 100.0 * self.n / max(self.total, 1)
        # a write, not print(): Ray Train's workers patch print() to log as well, which doubles each line
        sys.stderr.write(f"{self.desc}: {self.n}/{self.total} {self.unit} ({pct:.0f} %) {self.postfix}".rstrip() + "\n")
        sys.stderr.flush()

    def __enter__(self) -> MilestoneLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def pick_device(requested: str) -> torch.device:
    """``auto`` -> cuda when present, else cpu; ``cuda`` without a GPU is an input error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError("train.device: cuda requested but no CUDA device is available")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit systems


def reuse_freed_memory() -> bool:
    """Keep freed tensor buffers in the heap instead of giving them back to the kernel.

    glibc serves blocks over its mmap threshold (128 KiB at first) with fresh mmaps and unmaps
    them on free, so every batch of activations page-faults its memory in again (docs/benchmarks.md
    has the measurement). The effect of PyTorch's CPU tuning guide's jemalloc/tcmalloc advice,
    without a preloaded library. Idempotent; False where the C library has no ``mallopt``
    (not glibc), which leaves the allocator as it was.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # freed memory at the top of the heap is returned only beyond 256 MiB: a few batches of
    # activations stay mapped, a process's peak does not
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(mallopt(_M_TRIM_THRESHOLD, 256 * 1024 * 1024))


def configure_cpu(threads: int = 0) -> None:
    """Set up this process for torch work on the CPU: :func:`reuse_freed_memory`, and with
    ``threads`` > 0 that many intra-op threads (process-wide: every Python thread sees it)."""
    reuse_freed_memory()
    if threads > 0:
        torch.set_num_threads(threads)


_GLOBAL_RNG = threading.RLock()  # torch's global CPU generator is one per process, shared by its threads


@contextmanager
def isolated_rng(seed: int | None = None) -> Iterator[None]:
    """Torch's global CPU RNG for this block alone (seeded with ``seed`` when given), its state
    restored afterwards; other blocks that take it wait. The pipeline trains the feature network,
    pre-flights trainings, evaluates and generates in threads of one process: without this,
    building a model in one thread (its weight initialisation draws) shifts a seeded draw in
    another (the feature network's initial weights, torchmetrics' KID subsets). Every draw from
    the global RNG in such a process takes it: one that does not can be shifted or rewound."""
    with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        yield


_INIT_LOCK = threading.Lock()  # the pipeline trains families in concurrent threads


def local_cluster() -> bool:
    """True when this process starts (and owns) the Ray cluster: no ``RAY_ADDRESS``."""
    return not os.environ.get("RAY_ADDRESS")


def ensure_ray() -> None:
    """Connect to ``RAY_ADDRESS`` if set, else start (or reuse) a local cluster, which ends with
    this process however it ends (:func:`genpipe.reaper.reap_on_exit`); thread-safe."""
    # families queue for CPUs in the pipeline: waiting for workers is expected, not a failure
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "3600")
    if local_cluster():  # one local node is never preempted: no watcher actor per fit
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        reap_on_exit()
    import ray  # deferred: most commands never start Ray, and importing it costs seconds

    with _INIT_LOCK:
        if not ray.is_initialized():
            ray.init(address=os.environ.get("RAY_ADDRESS"), log_to_driver=True)
