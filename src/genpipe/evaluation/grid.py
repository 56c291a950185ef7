"""Sample grids: a batch of uint8 images tiled into one PIL image."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2, scale: int = 4) -> Image.Image:
    """Tile ``images`` (N, C, H, W) uint8 into a grid, ``nrow`` per row, upscaled ``scale``x.

    Grey (C=1) stays greyscale, C=3 is RGB; padding is mid-grey so dark and light digits
    both stand out.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"make_grid expects (N, C, H, W) uint8, got {tuple(images.shape)} {images.dtype}")
    n, c, h, w = images.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    canvas = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 128, dtype=np.uint8)
    arr = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        canvas[y : y + h, x : x + w] = arr[i]
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas, mode="L" if c == 1 else "RGB")
    return img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST) if scale > 1 else img
