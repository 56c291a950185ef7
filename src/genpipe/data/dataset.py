"""Read a prepared dataset back: one split as tensors, checked against its card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from genpipe.data.prepare import read_card
from genpipe.errors import InputError
from genpipe.storage import sha256_file


@dataclass(frozen=True)
class ImageSplit:
    """One split of a prepared dataset, held in memory."""

    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    card: dict

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.card["shape"])  # (C, H, W)

    @property
    def num_classes(self) -> int:
        return int(self.card["num_classes"])


def load_split(data_dir: Path | str, split: str, verify: bool = True) -> ImageSplit:
    """Load ``split`` ("train", "val" or "test") of the dataset in ``data_dir``.

    Each shard's sha256 is checked against the card first (``verify``; a changed bit would
    otherwise train on wrong pixels or labels under the card's sha256), and every label must be
    one of the card's classes. A missing, changed or unreadable shard is an :class:`InputError`
    naming it.
    """
    data_dir = Path(data_dir)
    card = read_card(data_dir)
    images, labels = [], []
    for shard in card["shards"]:
        path = data_dir / shard["path"]
        if not path.exists():
            raise InputError(f"{path}: shard listed in {data_dir / 'card.json'} is missing")
        if verify and sha256_file(path) != shard["sha256"]:
            raise InputError(f"{path}: sha256 does not match {data_dir / 'card.json'}")
        try:
            table = pq.read_table(path, columns=["split", "label", "pixels"])
        except (pa.ArrowException, OSError, ValueError) as exc:  # truncated, corrupt, or another layout
            raise InputError(f"{path}: not a readable shard of this dataset ({type(exc).__name__}); "
                             "run `genpipe prepare` again") from None
        pixels, ys = decode_rows(table, split, card, path)
        if len(ys):
            images.append(pixels)
            labels.append(ys)
    if not images:
        raise InputError(f"{data_dir}: split {split!r} is empty")
    return ImageSplit(
        images=torch.from_numpy(np.concatenate(images)),
        labels=torch.from_numpy(np.concatenate(labels)),
        card=card,
    )


def decode_rows(table: pa.Table, split: str, card: dict, name: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``split`` in one shard's ``table``: pixels (n, C, H, W) uint8 and labels (n,)
    int64, in the shard's order; an :class:`InputError` naming ``name`` if they do not fit the card."""
    c, h, w = card["shape"]
    try:
        table = table.filter(pc.equal(table["split"], split))
        buf = b"".join(table["pixels"].to_pylist())
        pixels = np.frombuffer(buf, dtype=np.uint8).reshape(-1, c, h, w)
        ys = table["label"].to_numpy().astype(np.int64)
    except (pa.ArrowException, OSError, ValueError, KeyError) as exc:  # corrupt, or another layout
        raise InputError(f"{name}: not a readable shard of this dataset ({type(exc).__name__}); "
                         "run `genpipe prepare` again") from None
    if len(ys) != len(pixels):
        raise InputError(f"{name}: {len(ys)} labels for {len(pixels)} images; run `genpipe prepare` again")
    if len(ys) and (ys.min() < 0 or ys.max() >= card["num_classes"]):
        raise InputError(f"{name}: label {int(ys.max()) if ys.max() >= card['num_classes'] else int(ys.min())} "
                         f"is not one of the card's {card['num_classes']} classes")
    return pixels, ys
