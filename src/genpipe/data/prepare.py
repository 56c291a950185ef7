"""The prepare stage: a source -> stratified train/val/test split -> Parquet shards + card.

Layout of ``paths.data`` (written atomically as a whole)::

    shard-00000.parquet   columns: index (int32), split (string), label (int16),
    ...                            pixels (binary, C*H*W uint8 bytes in CHW order)
    card.json             source, shape, classes, counts per split, sha256 per shard

The dataset sha256 (``card["sha256"]``) is the sha256 of the shards' hashes in order; it is
what MLflow runs and reports cite.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genpipe import __version__
from genpipe.config import Config
from genpipe.data.sources import SOURCES
from genpipe.errors import InputError
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


def prepare_dataset(cfg: Config) -> dict:
    """Run the prepare stage for ``cfg.data`` into ``cfg.paths.data``; returns the card."""
    dc = cfg.data
    src = SOURCES[dc.source](dc, cfg.seed)
    splits = split_indices(src.labels, dc.val_fraction, dc.test_fraction, cfg.seed, src.test)
    order = np.concatenate([np.flatnonzero(splits == s) for s in SPLITS])  # train, val, test
    _, c, h, w = src.images.shape

    with atomic_directory(cfg.paths.data) as tmp:
        shards = []
        for k, start in enumerate(range(0, len(order), dc.shard_rows)):
            rows = order[start : start + dc.shard_rows]
            table = pa.table(
                {
                    "index": pa.array(rows.astype(np.int32)),
                    "split": pa.array(splits[rows].tolist(), pa.string()),
                    "label": pa.array(src.labels[rows].astype(np.int16)),
                    "pixels": pa.array([src.images[i].tobytes() for i in rows], pa.binary()),
                },
                schema=SCHEMA,
            )
            name = f"shard-{k:05d}.parquet"
            pq.write_table(table, tmp / name, compression="zstd")
            shards.append({"path": name, "rows": len(rows), "sha256": sha256_file(tmp / name)})
        card = {
            "source": dc.source,
            "description": src.description,
            "shape": [c, h, w],
            "dtype": "uint8",
            "num_classes": len(src.class_names),
            "class_names": list(src.class_names),
            "counts": {s: int((splits == s).sum()) for s in SPLITS},
            "label_counts": {
                s: np.bincount(src.labels[splits == s], minlength=len(src.class_names)).tolist()
                for s in SPLITS
            },
            "seed": cfg.seed,
            # the settings of this source, not those of the others nor unset ones (a digits card stays as it was)
            "params": {k: v for k, v in dc.model_dump(mode="json").items()
                       if (k == dc.source or k not in SOURCES) and v is not None},
            "shards": shards,
            "sha256": hashlib.sha256("".join(s["sha256"] for s in shards).encode()).hexdigest(),
            "created_by": f"genpipe {__version__}",
        }
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
