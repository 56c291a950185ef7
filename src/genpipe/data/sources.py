"""Image sources: each returns every image of a dataset as uint8 ``(N, C, H, W)`` plus labels.

Nothing here downloads: sources read data that ships with an installed package or sits
at a path the user gives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class SourceImages:
    images: np.ndarray  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) int64
    class_names: tuple[str, ...]
    description: str


def resize_uint8(images: np.ndarray, resolution: int) -> np.ndarray:
    """Resize ``(N, C, H, W)`` uint8 images to ``resolution`` squared, bicubic per channel."""
    if images.shape[-1] == resolution and images.shape[-2] == resolution:
        return images.copy()
    n, c = images.shape[:2]
    out = np.empty((n, c, resolution, resolution), dtype=np.uint8)
    for i in range(n):
        for ch in range(c):
            img = Image.fromarray(images[i, ch], mode="L")
            out[i, ch] = np.asarray(img.resize((resolution, resolution), Image.Resampling.BICUBIC))
    return out


def load_digits_source(resolution: int) -> SourceImages:
    """scikit-learn's bundled UCI handwritten digits: 1797 images, 8x8, 17 grey levels."""
    from sklearn.datasets import load_digits  # deferred: scikit-learn takes a second to import

    bunch = load_digits()
    raw = bunch.images.astype(np.float64)  # (1797, 8, 8) in [0, 16]
    images = np.rint(raw * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    return SourceImages(
        images=resize_uint8(images, resolution),
        labels=bunch.target.astype(np.int64),
        class_names=tuple(str(n) for n in bunch.target_names),
        description="UCI ML hand-written digits (scikit-learn load_digits), 8x8, 17 grey levels",
    )


SOURCES: dict[str, Callable[[int], SourceImages]] = {
    "digits": load_digits_source,
}
