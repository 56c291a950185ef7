"""Image sources: each returns every image of a dataset as uint8 ``(N, C, H, W)`` plus labels.

Nothing here downloads: sources read data that ships with an installed package, sits at a
path the user gives, or is generated here from the seed (``shapes``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from genpipe.config import DataConfig


@dataclass(frozen=True)
class SourceImages:
    images: np.ndarray  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) int64
    class_names: tuple[str, ...]
    description: str
    factors: dict[str, np.ndarray] = field(default_factory=dict)  # (N,) each: what generated image i


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


def load_digits_source(dc: DataConfig, seed: int = 0) -> SourceImages:
    """scikit-learn's bundled UCI handwritten digits: 1797 images, 8x8, 17 grey levels."""
    from sklearn.datasets import load_digits  # deferred: scikit-learn takes a second to import

    bunch = load_digits()
    raw = bunch.images.astype(np.float64)  # (1797, 8, 8) in [0, 16]
    images = np.rint(raw * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    return SourceImages(
        images=resize_uint8(images, dc.resolution),
        labels=bunch.target.astype(np.int64),
        class_names=tuple(str(n) for n in bunch.target_names),
        description="UCI ML hand-written digits (scikit-learn load_digits), 8x8, 17 grey levels",
    )


SHAPES = ("square", "circle", "triangle")
COLOURS = {  # name -> RGB: six well-separated hues on the black background
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240),
    "yellow": (235, 215, 40), "magenta": (220, 50, 220), "cyan": (40, 210, 220),
}
SUPERSAMPLE = 4  # drawn at 4x the side and box-filtered down: anti-aliased edges


def shape_area(shape: str, scale: float) -> float:
    """The area of one shape as a fraction of the image, ``scale`` being its bounding box's side
    as a fraction of the image's (the triangle is equilateral, its base the box's width)."""
    return {"square": 1.0, "circle": np.pi / 4, "triangle": np.sqrt(3) / 4}[shape] * scale**2


def load_shapes_source(dc: DataConfig, seed: int = 0) -> SourceImages:
    """Procedural colour images: one shape per image on black, its factors drawn independently
    and uniformly from the seed: shape (the label), colour, scale (the bounding box's side, a
    fraction of the image's) and position (the box's centre, where the box fits)."""
    sc, side = dc.shapes, dc.resolution
    n = sc.num_images
    rng = np.random.default_rng([seed, 0x5AA9E5])
    shape = rng.integers(0, len(SHAPES), n)
    colour = rng.integers(0, len(COLOURS), n)
    scale = rng.uniform(sc.min_scale, sc.max_scale, n)
    x = rng.uniform(scale / 2, 1 - scale / 2)
    y = rng.uniform(scale / 2, 1 - scale / 2)
    big = side * SUPERSAMPLE
    rgb = list(COLOURS.values())
    images = np.empty((n, 3, side, side), dtype=np.uint8)
    for i in range(n):
        canvas = Image.new("RGB", (big, big))
        draw = ImageDraw.Draw(canvas)
        half = scale[i] * big / 2
        cx, cy = x[i] * big, y[i] * big
        fill = rgb[colour[i]]
        # Pillow fills the end coordinates' pixels too: the far edges one pixel in, so that a box
        # of side s covers s pixels
        x0, x1, y0, y1 = cx - half, cx + half - 1, cy - half, cy + half - 1
        if SHAPES[shape[i]] == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif SHAPES[shape[i]] == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        else:  # equilateral, pointing up, centred in its box's height
            h = np.sqrt(3) * half
            draw.polygon([(x0, cy + h / 2 - 1), (x1, cy + h / 2 - 1), ((x0 + x1) / 2, cy - h / 2)], fill=fill)
        small = canvas.resize((side, side), Image.Resampling.BOX)
        images[i] = np.asarray(small).transpose(2, 0, 1)
    return SourceImages(
        images=images,
        labels=shape.astype(np.int64),
        class_names=SHAPES,
        description=(f"procedural shapes (genpipe, seeded): {len(SHAPES)} shapes x {len(COLOURS)} colours on black, "
                     f"scale {sc.min_scale:g}-{sc.max_scale:g} of the side, uniform position; label = shape"),
        factors={"shape": shape, "colour": colour, "scale": scale, "x": x, "y": y},
    )


SOURCES: dict[str, Callable[[DataConfig, int], SourceImages]] = {
    "digits": load_digits_source,
    "shapes": load_shapes_source,
}
