"""Datasets: sources -> Parquet shards + dataset card -> tensors."""

from genpipe.data.dataset import ImageSplit, load_split
from genpipe.data.prepare import prepare_dataset, read_card

__all__ = ["ImageSplit", "load_split", "prepare_dataset", "read_card"]
