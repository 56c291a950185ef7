"""Images between the stages: the model range [-1, 1] and uint8, sample grids, PNG bytes."""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1] (the range every family trains on)."""
    return images.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounding to the nearest level."""
    return x.clamp(-1.0, 1.0).add(1.0).mul(127.5).round().to(torch.uint8)


def encode_png(image: np.ndarray | Image.Image) -> bytes:
    """(C, H, W) uint8 (greyscale for C=1, RGB for C=3) or a PIL image -> PNG bytes; deterministic."""
    if isinstance(image, np.ndarray):
        c = image.shape[0]
        image = Image.fromarray(image[0] if c == 1 else image.transpose(1, 2, 0), mode="L" if c == 1 else "RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


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
