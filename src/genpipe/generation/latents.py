"""Walks through a latent space: interpolations between seeds and single-dimension traversals.

For families with a latent space (:class:`genpipe.models.base.LatentModel`).
Latents drawn from N(0, I) are interpolated spherically (slerp; White 2016, "Sampling
Generative Networks", https://arxiv.org/abs/1609.04468): a straight line between two
Gaussian draws passes through low-norm points the model rarely saw.
"""

from __future__ import annotations

from pathlib import Path

import torch

from PIL import Image

from genpipe import tracking
from genpipe.artifacts import load_trained
from genpipe.errors import InputError
from genpipe.images import encode_png, make_grid, to_uint8
from genpipe.models import sampling_options
from genpipe.models.base import LatentModel
from genpipe.storage import atomic_write_bytes


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between latents ``a`` and ``b`` (same shape), per row."""
    fa, fb = a.flatten(1), b.flatten(1)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1)).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))[:, None]  # (B, 1)
    so = torch.sin(omega)
    linear = (1 - t) * fa + t * fb
    spherical = (torch.sin((1 - t) * omega) * fa + torch.sin(t * omega) * fb) / so.clamp_min(1e-12)
    return torch.where(so.abs() < 1e-6, linear, spherical).view_as(a)


@torch.no_grad()
def interpolation_images(model: LatentModel, seed_a: int, seed_b: int, steps: int = 10, rows: int = 8,
                         labels: torch.Tensor | None = None, options=None) -> torch.Tensor:
    """Row r walks from the latent of seed ``seed_a + r`` to that of ``seed_b + r``:
    uint8 images (rows * steps, C, H, W), row-major."""
    za = torch.cat([model.sample_latents(1, torch.Generator().manual_seed(seed_a + r)) for r in range(rows)])
    zb = torch.cat([model.sample_latents(1, torch.Generator().manual_seed(seed_b + r)) for r in range(rows)])
    frames = [model.decode_latents(slerp(za, zb, t), labels, options) for t in torch.linspace(0, 1, steps).tolist()]
    return to_uint8(torch.stack(frames, 1).flatten(0, 1).float().cpu())  # (rows, steps, ...) -> row-major


@torch.no_grad()
def traversal_images(model: LatentModel, seed: int, steps: int = 10, max_dims: int = 16, coverage: float = 0.95,
                     labels: torch.Tensor | None = None, options=None, prior_draws: int = 2000) -> torch.Tensor | None:
    """Row r sweeps one latent dimension across the central ``coverage`` of the prior's mass in
    that dimension, the other dimensions held at one drawn latent; the rows are the ``max_dims``
    dimensions whose sweep moves the image most, most first. None when the latent is not a flat
    vector (an image-shaped latent).

    The range comes from ``prior_draws`` draws of the model's own prior (its quantiles per
    dimension), not a fixed [-3, 3]: under a learned prior a dimension may spread far less or more
    than N(0, 1), and a fixed range sweeps it off the prior into images the decoder never made.
    A dimension's movement is the path length of its sweep in pixel space (mean |change| per
    pixel, summed over the steps), so the rows shown are the dimensions the decoder uses, not
    the first ``max_dims`` indices, which may be dimensions it ignores."""
    generator = torch.Generator().manual_seed(seed)
    z0 = model.sample_latents(1, generator)
    if z0.dim() != 2:
        return None
    tail = (1.0 - coverage) / 2
    draws = model.sample_latents(prior_draws, generator).float()
    lo, hi = torch.quantile(draws, torch.tensor([tail, 1.0 - tail], device=draws.device), dim=0)  # (Z,) each
    z_dims = z0.shape[1]
    t = torch.linspace(0.0, 1.0, steps, device=z0.device)[:, None]  # (steps, 1)
    z = z0.repeat(z_dims * steps, 1)  # (Z * steps, Z): row block j sweeps z_j
    for j in range(z_dims):
        z[j * steps : (j + 1) * steps, j] = (lo[j] + t * (hi[j] - lo[j]))[:, 0].to(z.dtype)
    if labels is None and getattr(getattr(model, "cfg", None), "conditional", False):
        labels = torch.zeros(z_dims * steps, dtype=torch.long)  # one class throughout: only z_j moves
    images = model.decode_latents(z, labels, options).float().cpu()
    frames = images.view(z_dims, steps, -1)
    movement = (frames[:, 1:] - frames[:, :-1]).abs().mean(2).sum(1)  # (Z,) path length per dimension
    order = torch.argsort(movement, descending=True, stable=True)[: min(z_dims, max_dims)]
    return to_uint8(images.view(z_dims, steps, *images.shape[1:])[order].flatten(0, 1))


def latent_grids(model: LatentModel, seed_a: int = 0, seed_b: int = 1, steps: int = 10,
                 options=None) -> dict[str, Image.Image]:
    """The latent walks as grids: ``interpolation`` (and ``traversal`` for flat latents)."""
    grids = {"interpolation": make_grid(interpolation_images(model, seed_a, seed_b, steps, options=options), nrow=steps)}
    trav = traversal_images(model, seed_a, steps, options=options)
    if trav is not None:
        grids["traversal"] = make_grid(trav, nrow=steps)
    return grids


def latent_walks(cfg, family: str, seed_a: int, seed_b: int, steps: int, out: Path | None = None) -> list[Path]:
    """The ``genpipe latents`` stage: grids for a trained family in ``out`` (default
    ``reports/latents/<family>``), logged to its MLflow run; the paths written."""
    model, state = load_trained(cfg, family)
    if not isinstance(model, LatentModel):
        raise InputError(f"--family {family}: this family has no latent space to walk (its model is no LatentModel)")
    if steps < 2:
        raise InputError(f"--steps {steps}: an interpolation needs at least 2 steps")
    folder = out or Path("reports") / "latents" / family
    written = []
    for name, grid in latent_grids(model, seed_a, seed_b, steps, sampling_options(cfg, family)).items():
        written.append(folder / f"{name}.png")
        atomic_write_bytes(written[-1], encode_png(grid))
    if run_id := state["meta"].get("mlflow_run_id"):
        for path in written:
            tracking.log_artifact(run_id, path, f"latents/seeds-{seed_a}-{seed_b}")
    return written


__all__ = ["interpolation_images", "latent_grids", "latent_walks", "slerp", "traversal_images"]
