"""The prepare stage: a source -> stratified train/val/test split -> Parquet shards + card.

Layout of ``paths.data`` (written atomically as a whole)::

    shard-00000.parquet   columns: index (int32), split (string), label (int16),
    ...                            pixels (binary, C*H*W uint8 bytes in CHW order)
    card.json             source, shape, classes, counts per split, sha256 and rows per split per shard

The dataset sha256 (``card["sha256"]``) is the sha256 of the shards' hashes in order; it is
what MLflow runs and reports cite.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import time
import types
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genpipe import __version__
from genpipe.config import Config
from genpipe.data.files import Policy, decode_chunk, probe_chunk, set_reader
from genpipe.data.sources import FILE_SOURCES, SOURCES, SourceFiles
from genpipe.errors import InputError
from genpipe.runtime import progress_bar
from genpipe.storage import atomic_directory, sha256_file

SPLITS = ("train", "val", "test")
CARD = "card.json"
SCHEMA = pa.schema(
    [
        ("index", pa.int32()),
        ("split", pa.string()),
        ("label", pa.int16()),
        ("pixels", pa.binary()),
    ]
)


def split_indices(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int,
                  test: np.ndarray | None = None) -> np.ndarray:
    """Assign each image to a split, stratified by label and fixed by ``seed``. With ``test``
    (the source's own test split, a boolean per image) that is the test split, and validation
    is carved from the rest at ``val_fraction`` (``test_fraction`` does not apply).

    Returns an array of split names, one per image.
    """
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=object)
    if test is not None:
        out[test] = "test"
    for label in np.unique(labels):
        idx = rng.permutation(np.flatnonzero((labels == label) & (test is None or ~test)))
        if test is not None:
            n_val = int(round(len(idx) * val_fraction))
            out[idx[:n_val]] = "val"
            out[idx[n_val:]] = "train"
            continue
        n_test = int(round(len(idx) * test_fraction))
        n_val = int(round(len(idx) * val_fraction))
        out[idx[:n_test]] = "test"
        out[idx[n_test : n_test + n_val]] = "val"
        out[idx[n_test + n_val :]] = "train"
    return out


ARRAY_KEYS = {"digits": (), "shapes": ("shapes",), "mnist": ("path",), "cifar": ("path",)}
FILE_KEYS = ("path", "channels", "resize", "upscale", "background", "on_bad_file")
SOURCE_KEYS = {**ARRAY_KEYS, "imagefolder": FILE_KEYS, "parquet": (*FILE_KEYS, "parquet")}
COMMON_KEYS = ("source", "resolution", "val_fraction", "test_fraction", "shard_rows")
PROBE_CHUNK = 256  # files a worker probes per task
FIRST_BAD = 20  # skipped files the card names
PROGRESS_FROM = 1000  # images: below this prepare takes a second and shows no progress


def prepare_dataset(cfg: Config) -> dict:
    """Run the prepare stage for ``cfg.data`` into ``cfg.paths.data``; returns the card."""
    dc = cfg.data
    if dc.source in FILE_SOURCES:
        return _prepare_files(cfg, FILE_SOURCES[dc.source](dc, cfg.storage))
    src = SOURCES[dc.source](dc, cfg.seed, cfg.storage)
    splits = split_indices(src.labels, dc.val_fraction, dc.test_fraction, cfg.seed, src.test)
    order = np.concatenate([np.flatnonzero(splits == s) for s in SPLITS])  # train, val, test
    with atomic_directory(cfg.paths.data) as tmp:
        shards = _Shards(tmp)
        for start in range(0, len(order), dc.shard_rows):
            rows = order[start : start + dc.shard_rows]
            shards.write(rows, splits[rows], src.labels[rows], src.images[rows])
        card = _card(cfg, src.images.shape[1:], src.class_names, src.description, shards, labelled=None)
        (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n")
    return card


class _Shards:
    """Parquet shards written one after another, with what the card needs of them."""

    def __init__(self, folder: Path):
        self.folder, self.entries = folder, []
        self.splits: list[np.ndarray] = []
        self.labels: list[np.ndarray] = []

    def write(self, index: np.ndarray, splits: np.ndarray, labels: np.ndarray, pixels: np.ndarray) -> None:
        table = pa.table(
            {
                "index": pa.array(index.astype(np.int32)),
                "split": pa.array(splits.tolist(), pa.string()),
                "label": pa.array(labels.astype(np.int16)),
                "pixels": pa.array([p.tobytes() for p in pixels], pa.binary()),
            },
            schema=SCHEMA,
        )
        name = f"shard-{len(self.entries):05d}.parquet"
        pq.write_table(table, self.folder / name, compression="zstd")
        self.entries.append({"path": name, "rows": len(index), "sha256": sha256_file(self.folder / name),
                             # rows per split: the streamed training path plans from these without opening shards
                             "splits": {s: int((splits == s).sum()) for s in SPLITS}})
        self.splits.append(np.asarray(splits))
        self.labels.append(np.asarray(labels))


def _card(cfg: Config, shape, class_names, description: str, shards: _Shards, labelled: bool | None,
          extra: dict | None = None) -> dict:
    dc = cfg.data
    splits = np.concatenate(shards.splits) if shards.splits else np.array([], dtype=object)
    labels = np.concatenate(shards.labels) if shards.labels else np.array([], dtype=np.int64)
    settings = dc.model_dump(mode="json")
    card = {
        "source": dc.source,
        "description": description,
        "shape": [int(d) for d in shape],
        "dtype": "uint8",
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "counts": {s: int((splits == s).sum()) for s in SPLITS},
        "label_counts": {s: np.bincount(labels[splits == s], minlength=len(class_names)).tolist() for s in SPLITS},
        "seed": cfg.seed,
        # the settings this source reads, not those of the others (a digits card stays as it was)
        "params": {k: settings[k] for k in (*COMMON_KEYS, *SOURCE_KEYS[dc.source])},
        "shards": shards.entries,
        "sha256": hashlib.sha256("".join(s["sha256"] for s in shards.entries).encode()).hexdigest(),
        "created_by": f"genpipe {__version__}",
    }
    if labelled is not None:  # file sources say whether their images had classes
        card["labelled"] = labelled
        card["class_counts"] = dict(zip(class_names, np.bincount(labels, minlength=len(class_names)).tolist()))
    return {**card, **(extra or {})}


def _processes(setting: int, chunks: int) -> int:
    """Decoding processes: ``data.workers`` (0: one per usable core), never more than there is work."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(setting or cores, chunks))


class _Decoders:
    """Tasks over chunks of items, in worker processes (spawned: safe beside the threads of a
    Prefect flow or Ray) or, with one process, here; results in order, at most two tasks per
    process in flight, so memory holds a few chunks whatever the dataset's size."""

    def __init__(self, processes: int, reader):
        self.reader, self.pool = reader, None
        if processes > 1:
            with _light_main():
                self.pool = multiprocessing.get_context("spawn").Pool(processes, set_reader, (reader,))
        self.in_flight = 2 * processes

    def map(self, fn, chunks, *args) -> Iterator:
        if self.pool is None:
            for chunk in chunks:
                yield fn(chunk, *args, reader=self.reader)
            return
        pending: deque = deque()
        for chunk in chunks:
            pending.append(self.pool.apply_async(fn, (chunk, *args)))
            if len(pending) >= self.in_flight:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def __enter__(self) -> _Decoders:
        return self

    def __exit__(self, kind, *exc) -> None:
        if self.pool is not None:
            if kind is None:
                self.pool.close()
            else:  # a bad file or an interrupt: the queued chunks are not wanted
                self.pool.terminate()
            self.pool.join()


@contextmanager
def _light_main() -> Iterator[None]:
    """A spawned process first imports the parent's ``__main__`` (the CLI, the Prefect flow, or
    pytest: each imports torch, 300+ MB a process); the workers need only genpipe.data.files, so
    they are started while a bare module stands in for it."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _bad(name: str, why: str) -> InputError:
    return InputError(f"{name}: {why} (data.on_bad_file=skip leaves such files out, recorded in the card)")


def _prepare_files(cfg: Config, src: SourceFiles) -> dict:
    """Probe every item (header only: colour, size, readable), split the usable ones, then decode
    them a shard at a time in worker processes, each shard written as it arrives."""
    dc, reader = cfg.data, src.reader
    n = len(reader)
    policy = Policy.of(dc)
    skipped: list[tuple[int, str]] = []
    procs = _processes(dc.workers, -(-n // PROBE_CHUNK))
    with _Decoders(procs, reader) as pool:
        ok = np.zeros(n, dtype=bool)
        colour = False
        with progress_bar(n, "prepare: probe", "image", enabled=n >= PROGRESS_FROM) as bar:
            chunks = (np.arange(a, min(a + PROBE_CHUNK, n)) for a in range(0, n, PROBE_CHUNK))
            for a, results in zip(range(0, n, PROBE_CHUNK), pool.map(probe_chunk, chunks, policy)):
                for k, r in enumerate(results):
                    if isinstance(r, str):
                        if dc.on_bad_file == "fail":
                            raise _bad(reader.name(a + k), r)
                        skipped.append((a + k, r))
                    else:
                        ok[a + k], colour = True, colour or r[0]
                bar.update(len(results))
        keep = np.flatnonzero(ok)
        if len(keep) == 0:
            raise InputError(f"data.path: {src.listing['path']}: none of its {n} images could be read "
                             f"(first: {reader.name(skipped[0][0])}: {skipped[0][1]})")
        channels = (3 if colour else 1) if dc.channels == "auto" else int(dc.channels)
        policy = Policy.of(dc, channels)
        labels = src.labels[keep]
        splits = split_indices(labels, dc.val_fraction, dc.test_fraction, cfg.seed, None)
        if src.shuffle:  # each split in a seeded order: a shard then holds every class
            rng = np.random.default_rng([cfg.seed, 0x5A4D])
            order = np.concatenate([rng.permutation(np.flatnonzero(splits == s)) for s in SPLITS])
        else:
            order = np.arange(len(keep))
        with atomic_directory(cfg.paths.data) as tmp:
            shards = _Shards(tmp)
            starts = range(0, len(order), dc.shard_rows)
            with progress_bar(len(order), "prepare: decode", "image", enabled=n >= PROGRESS_FROM) as bar:
                done, t0 = 0, time.perf_counter()
                chunks = (keep[order[a : a + dc.shard_rows]] for a in starts)
                for a, (pixels, bad) in zip(starts, pool.map(decode_chunk, chunks, policy)):
                    rows = order[a : a + dc.shard_rows]
                    if bad and dc.on_bad_file == "fail":
                        k, why = bad[0]
                        raise _bad(reader.name(int(keep[rows[k]])), why)
                    skipped += [(int(keep[rows[k]]), why) for k, why in bad]
                    good = np.delete(rows, [k for k, _ in bad])
                    if len(good):
                        shards.write(keep[good], splits[good], labels[good], pixels)
                    done += len(rows)
                    bar.set_postfix(images_s=f"{done / max(time.perf_counter() - t0, 1e-9):.0f}")  # in logs too
                    bar.update(len(rows))
            skipped.sort()
            extra = {
                "source_files": src.listing,
                "preprocessing": {"channels": channels, "resize": dc.resize, "upscale": dc.upscale,
                                  "background": dc.background, "resolution": dc.resolution},
                "skipped": {"count": len(skipped),
                            "first": [{"file": reader.name(i), "why": why} for i, why in skipped[:FIRST_BAD]]},
            }
            card = _card(cfg, (channels, dc.resolution, dc.resolution), src.class_names, src.description, shards,
                         src.labelled, extra)
            (tmp / CARD).write_text(json.dumps(card, indent=2) + "\n")
    return card


def read_card(data_dir: Path | str) -> dict:
    """The dataset card of a prepared dataset; :class:`InputError` if it is missing."""
    path = Path(data_dir) / CARD
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no prepared dataset here; run `genpipe prepare` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError(f"{path}: not valid JSON; run `genpipe prepare` again") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    if (problem := _card_problem(card)) is not None:
        raise InputError(f"{path}: not a dataset card ({problem}); run `genpipe prepare` again")
    return card


def _card_problem(card) -> str | None:
    """What makes ``card`` unusable as a dataset card, or None."""
    if not isinstance(card, dict):
        return "not a JSON object"
    shape = card.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(type(d) is int and d > 0 for d in shape)):
        return "shape: expected [C, H, W] of positive integers"
    if not (type(card.get("num_classes")) is int and card["num_classes"] > 0):
        return "num_classes: expected a positive integer"
    counts = card.get("counts")
    if not (isinstance(counts, dict) and all(type(counts.get(s)) is int and counts[s] >= 0 for s in SPLITS)):
        return f"counts: expected an integer for each of {', '.join(SPLITS)}"
    shards = card.get("shards")
    if not (isinstance(shards, list) and shards and all(
            isinstance(s, dict) and isinstance(s.get("path"), str) and isinstance(s.get("sha256"), str) for s in shards)):
        return "shards: expected a list of {path, sha256}"
    if any(Path(s["path"]).is_absolute() or ".." in Path(s["path"]).parts for s in shards):
        return "shards: a path outside the dataset folder"
    for key in ("sha256", "source"):
        if not isinstance(card.get(key), str):
            return f"{key}: expected a string"
    return None
