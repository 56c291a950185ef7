"""The train split beyond one worker's memory: each rank streams only its share of the shards.

Small data keeps the fast path (:func:`genpipe.data.load_split`: the whole split as one tensor,
batches drawn by index). Past ``train.memory_limit_mb`` (``train.data_path: auto``) each rank r of
W reads only its shards, from a local folder or ``s3://bucket/prefix``, through a bounded
prefetching loader. Every batch is a pure function of (seed, step, rank, W) and the card:

- epoch e shuffles the order of the shards holding train rows (from ``seed``, ``e``) and deals them
  out round-robin: rank r reads shards ``perm[r::W]``, so each epoch a rank reads other shards;
- a rank's shards go in windows of ``train.shuffle_shards`` consecutive shards; the rows of a
  window are shuffled together (from ``seed``, ``e``, ``r``, the window), and batches are cut
  from the windows one after another;
- every rank takes the same number of batches per epoch (DDP steps together): the train rows of
  the ``S // W`` smallest shards, over the batch size. That holds for any deal of the shards,
  so the epoch of a step is ``step // batches_per_epoch``; the rows of larger shares beyond it
  are left out of that epoch (others next epoch, as the deal changes).

So a run resumed at step s reads from the window holding its row s and yields exactly the
batches of an uninterrupted run. A background thread reads, checks (sha256 against the card) and
decodes shards ahead into a queue of ``train.prefetch_shards``; the loader holds at most
``shuffle_shards + prefetch_shards + 1`` decoded shards (one window, the queue, the one being read).
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from genpipe.config import StorageConfig, TrainConfig
from genpipe.data.dataset import ImageSplit, decode_rows
from genpipe.data.files import s3_filesystem
from genpipe.data.prepare import CARD, _card_problem, read_card
from genpipe.errors import InputError
from genpipe.storage import sha256_file

_STREAM = 0x5EED_DA7A  # the stream's own entropy word: its draws never coincide with other uses of a seed


def choose_data_path(tc: TrainConfig, card: dict, fitted: bool = False) -> str:
    """``"memory"`` or ``"shards"``: ``train.data_path``, with ``auto`` deciding by the train
    split's decoded size against ``train.memory_limit_mb``. A fitted family (one ``fit`` on the
    whole array) always takes the split in memory."""
    if fitted or tc.data_path == "memory":
        return "memory"
    if tc.data_path == "shards":
        return "shards"
    c, h, w = card["shape"]
    return "shards" if card["counts"]["train"] * c * h * w > tc.memory_limit_mb * 2**20 else "memory"


class ShardedDataset:
    """A prepared dataset (card + shards) in a local folder or under ``s3://bucket/prefix``,
    read shard by shard through pyarrow's filesystems."""

    def __init__(self, uri: str | Path, storage: StorageConfig):
        self.uri = str(uri).rstrip("/")
        if self.uri.startswith("s3://"):
            self.fs, self.root = s3_filesystem(storage), self.uri[len("s3://"):]
            self.card = self._remote_card()
        else:
            self.fs, self.root = pafs.LocalFileSystem(), Path(uri).resolve().as_posix()
            self.card = read_card(uri)

    def where(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def _read(self, name: str) -> bytes:
        try:
            with self.fs.open_input_stream(f"{self.root}/{name}") as f:
                return f.read()
        except FileNotFoundError:
            what = "no prepared dataset here; run `genpipe prepare` first" if name == CARD \
                else f"shard listed in {self.where(CARD)} is missing"
            raise InputError(f"{self.where(name)}: {what}") from None
        except OSError as exc:  # unreachable endpoint, access denied: pyarrow's first line (no credentials in it)
            raise InputError(f"{self.where(name)}: cannot be read ({str(exc).splitlines()[0][:200]})") from None

    def _remote_card(self) -> dict:
        try:
            card = json.loads(self._read(CARD))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(f"{self.where(CARD)}: not valid JSON; copy the prepared dataset again") from None
        if (problem := _card_problem(card)) is not None:
            raise InputError(f"{self.where(CARD)}: not a dataset card ({problem})")
        return card

    def read_rows(self, shard: dict, split: str) -> tuple[np.ndarray, np.ndarray]:
        """One shard's rows of ``split`` (pixels (n, C, H, W) uint8, labels (n,) int64), its bytes
        checked against the card's sha256 first."""
        data = self._read(shard["path"])
        if hashlib.sha256(data).hexdigest() != shard["sha256"]:
            raise InputError(f"{self.where(shard['path'])}: sha256 does not match {self.where(CARD)}")
        try:
            table = pq.read_table(pa.BufferReader(data), columns=["split", "label", "pixels"])
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise InputError(f"{self.where(shard['path'])}: not a readable shard of this dataset "
                             f"({type(exc).__name__}); run `genpipe prepare` again") from None
        return decode_rows(table, split, self.card, self.where(shard["path"]))

    def split_rows(self, split: str) -> list[int]:
        """Rows of ``split`` in each shard, in card order: the card's per-shard ``splits`` where it
        has them, else counted from each shard's ``split`` column (a column read, not the pixels)."""
        out = []
        for shard in self.card["shards"]:
            if isinstance(shard.get("splits"), dict):
                out.append(int(shard["splits"].get(split, 0)))
                continue
            try:
                column = pq.read_table(f"{self.root}/{shard['path']}", columns=["split"], filesystem=self.fs)["split"]
            except FileNotFoundError:
                raise InputError(f"{self.where(shard['path'])}: shard listed in {self.where(CARD)} is missing") from None
            except (pa.ArrowException, OSError, ValueError) as exc:
                raise InputError(f"{self.where(shard['path'])}: not a readable shard of this dataset "
                                 f"({type(exc).__name__}); run `genpipe prepare` again") from None
            out.append(int(pc.sum(pc.equal(column, split)).as_py() or 0))
        return out

    def verify(self) -> None:
        """Every local shard's sha256 against the card and its Parquet footer, streamed from disk
        (nothing held): what the workers would find wrong, found before a run exists."""
        if self.uri.startswith("s3://"):
            return  # the workers check each shard as they read it; the driver does not download them all
        for shard in self.card["shards"]:
            path, name = Path(self.root) / shard["path"], self.where(shard["path"])
            if not path.exists():
                raise InputError(f"{name}: shard listed in {self.where(CARD)} is missing")
            if sha256_file(path) != shard["sha256"]:
                raise InputError(f"{name}: sha256 does not match {self.where(CARD)}")
            try:
                pq.read_metadata(path)
            except (pa.ArrowException, OSError) as exc:
                raise InputError(f"{name}: not a readable shard of this dataset ({type(exc).__name__}); "
                                 "run `genpipe prepare` again") from None

    def load_split(self, split: str) -> ImageSplit:
        """The whole split in memory, as :func:`genpipe.data.load_split` gives it from a folder."""
        parts = [self.read_rows(s, split) for s, n in zip(self.card["shards"], self.split_rows(split)) if n]
        if not parts:
            raise InputError(f"{self.uri}: split {split!r} is empty")
        return ImageSplit(torch.from_numpy(np.concatenate([p for p, _ in parts])),
                          torch.from_numpy(np.concatenate([y for _, y in parts])), self.card)

    def head(self, split: str, n: int) -> ImageSplit:
        """The first ``n`` rows of ``split`` (from its first shard that has any): for pre-flights."""
        for shard, rows in zip(self.card["shards"], self.split_rows(split)):
            if rows:
                pixels, labels = self.read_rows(shard, split)
                return ImageSplit(torch.from_numpy(pixels[:n].copy()), torch.from_numpy(labels[:n].copy()), self.card)
        raise InputError(f"{self.uri}: split {split!r} is empty")


@dataclass(frozen=True)
class ShardPlan:
    """Which shards rank r reads in epoch e, in which windows and row order: pure functions of
    the seed and the card's per-shard train rows."""

    shards: tuple[dict, ...]  # the card's entries of the shards holding train rows, in card order
    rows: tuple[int, ...]  # their train rows
    world_size: int
    batch_size: int
    seed: int
    shuffle_shards: int

    @classmethod
    def build(cls, dataset: ShardedDataset, tc: TrainConfig, world_size: int, seed: int) -> ShardPlan:
        """The plan for ``dataset``'s train split; an :class:`InputError` if a rank would get no
        shard or no whole batch in some epoch."""
        pairs = [(s, n) for s, n in zip(dataset.card["shards"], dataset.split_rows("train")) if n]
        if len(pairs) < world_size:
            raise InputError(f"train.num_workers: {world_size} workers need at least as many shards with train rows; "
                             f"{dataset.uri} has {len(pairs)} (prepare with a smaller data.shard_rows)")
        plan = cls(tuple(s for s, _ in pairs), tuple(n for _, n in pairs), world_size, tc.batch_size, seed,
                   tc.shuffle_shards)
        if plan.batches_per_epoch == 0:
            raise InputError(f"train.batch_size: {tc.batch_size} per worker exceeds the {plan.rows_per_epoch} train rows "
                             f"a worker is sure to get per epoch from {dataset.uri} (its smallest "
                             f"{len(pairs) // world_size} shards); use a smaller batch or fewer workers")
        return plan

    @property
    def rows_per_epoch(self) -> int:
        """Rows every rank has in any epoch: those of the ``S // W`` smallest shards."""
        return sum(sorted(self.rows)[: len(self.rows) // self.world_size])

    @property
    def batches_per_epoch(self) -> int:
        return self.rows_per_epoch // self.batch_size

    def assignment(self, epoch: int) -> list[list[int]]:
        """Per rank, the indices (into ``shards``) it reads in ``epoch``, in reading order."""
        perm = np.random.default_rng([self.seed, _STREAM, epoch]).permutation(len(self.shards))
        return [perm[r :: self.world_size].tolist() for r in range(self.world_size)]

    def windows(self, epoch: int, rank: int) -> list[list[int]]:
        mine = self.assignment(epoch)[rank]
        return [mine[i : i + self.shuffle_shards] for i in range(0, len(mine), self.shuffle_shards)]

    def window_order(self, epoch: int, rank: int, window: int, rows: int) -> np.ndarray:
        """The order of a window's rows (indices into its shards' rows, concatenated)."""
        return np.random.default_rng([self.seed, _STREAM, epoch, rank, window]).permutation(rows)

    def reads(self, rank: int, start: int, stop: int) -> Iterator[tuple[int, int, list[int], int, int]]:
        """What rank ``rank`` reads for the batches of steps ``start`` to ``stop``: per window,
        (epoch, window, shard indices, first row, end row) with rows counted in the window."""
        per_epoch = self.batches_per_epoch
        for epoch in range(start // per_epoch, -(-stop // per_epoch)):
            lo = max(start - epoch * per_epoch, 0) * self.batch_size  # rows of this epoch's stream wanted
            hi = min(stop - epoch * per_epoch, per_epoch) * self.batch_size
            begin = 0
            for j, ids in enumerate(self.windows(epoch, rank)):
                end = begin + sum(self.rows[i] for i in ids)
                if end > lo and begin < hi:
                    yield epoch, j, ids, max(lo, begin) - begin, min(hi, end) - begin
                begin = end


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


class ShardStream:
    """Rank ``rank``'s batches under ``plan``, read by a background thread (a
    :class:`genpipe.training.loop.BatchSource`). Its counters say what it read and held."""

    kind = "shards"

    def __init__(self, dataset: ShardedDataset, plan: ShardPlan, rank: int, prefetch_shards: int):
        self.dataset, self.plan, self.rank, self.prefetch = dataset, plan, rank, prefetch_shards
        self._lock = threading.Lock()
        self.held_shards = self.held_rows = 0  # decoded and not yet released
        self.peak_shards = self.peak_rows = 0
        self.rows_read = 0
        self.opened: list[tuple[int, str]] = []  # (epoch, shard path), the two newest epochs

    def _hold(self, shards: int, rows: int) -> None:
        with self._lock:
            self.held_shards += shards
            self.held_rows += rows
            self.peak_shards = max(self.peak_shards, self.held_shards)
            self.peak_rows = max(self.peak_rows, self.held_rows)

    def _produce(self, start: int, stop: int, out: queue.Queue, halt: threading.Event) -> None:
        """The reader thread: each shard of each window in turn, decoded, into ``out``."""
        try:
            for epoch, _, ids, _, _ in self.plan.reads(self.rank, start, stop):
                for i in ids:
                    if halt.is_set():
                        return
                    shard = self.plan.shards[i]
                    pixels, labels = self.dataset.read_rows(shard, "train")
                    with self._lock:
                        self.opened = [o for o in self.opened if o[0] >= epoch - 1] + [(epoch, shard["path"])]
                        self.rows_read += len(labels)
                    self._hold(1, len(labels))
                    _put(out, (i, pixels, labels), halt)
        except BaseException as exc:  # handed to the training thread, which raises it
            _put(out, _Failed(exc), halt)

    def batches(self, start: int, stop: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of steps ``start`` to ``stop``: images (B, C, H, W) uint8, labels (B,) int64."""
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        halt = threading.Event()
        reader = threading.Thread(target=self._produce, args=(start, stop, out, halt), daemon=True,
                                  name=f"genpipe-shards-rank{self.rank}")
        reader.start()
        bs, pending, n = self.plan.batch_size, [], 0
        try:
            for epoch, j, ids, lo, hi in self.plan.reads(self.rank, start, stop):
                total = sum(self.plan.rows[i] for i in ids)
                pixels = np.empty((total, *self.dataset.card["shape"]), np.uint8)  # the window, filled shard by shard
                labels, at = np.empty(total, np.int64), 0
                for i in ids:
                    got = out.get()
                    if isinstance(got, _Failed):
                        raise got.exc
                    assert got[0] == i, (got[0], i)  # the reader follows the same plan
                    pixels[at : at + len(got[2])], labels[at : at + len(got[2])] = got[1], got[2]
                    at += len(got[2])
                    del got
                order, a = self.plan.window_order(epoch, self.rank, j, total)[lo:hi], 0
                while a < len(order):  # a batch may take the end of one window and the start of the next
                    take = order[a : a + bs - n]
                    pending.append((pixels[take], labels[take]))
                    n, a = n + len(take), a + len(take)
                    if n == bs:
                        yield (torch.from_numpy(np.concatenate([p for p, _ in pending])),
                               torch.from_numpy(np.concatenate([y for _, y in pending])))
                        pending, n = [], 0
                del pixels, labels
                self._hold(-len(ids), -total)
        finally:
            halt.set()
            reader.join()

    def report(self) -> dict[str, Any]:
        """What this rank read and held, for the checkpoint's meta."""
        with self._lock:
            return {"path": self.kind, "source": self.dataset.uri, "rank": self.rank,
                    "opened": [list(o) for o in self.opened],
                    "rows_read": self.rows_read, "peak_shards": self.peak_shards, "peak_rows": self.peak_rows}


def _put(out: queue.Queue, item: Any, halt: threading.Event) -> None:
    """Put ``item`` when there is room, unless the consumer has stopped."""
    while not halt.is_set():
        try:
            out.put(item, timeout=0.1)
            return
        except queue.Full:
            continue
