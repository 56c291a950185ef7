"""Latent walks: slerp, interpolation grids between seeds, traversals, the CLI stage."""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from genpipe.cli import main
from genpipe.config import load_config
from genpipe.images import to_uint8
from genpipe.artifacts import load_trained
from genpipe.generation.latents import interpolation_images, slerp, traversal_images


def test_slerp_endpoints_and_norm():
    a, b = torch.randn(4, 16), torch.randn(4, 16)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    mid = slerp(a, a * 3, 0.5)  # parallel vectors: falls back to the straight line
    assert torch.allclose(mid, a * 2, atol=1e-4)
    unit = torch.nn.functional.normalize(torch.randn(2, 8), dim=1)
    other = torch.nn.functional.normalize(torch.randn(2, 8), dim=1)
    assert torch.allclose(slerp(unit, other, 0.3).norm(dim=1), torch.ones(2), atol=1e-5)  # stays on the sphere


def test_walks_start_and_end_at_the_seeds(in_trained):
    model, _ = load_trained(load_config("params.yaml"), "vae")
    grid = interpolation_images(model, 3, 9, steps=5, rows=2)  # (rows * steps, C, H, W)
    assert grid.shape == (10, 1, 8, 8) and grid.dtype == torch.uint8
    start = to_uint8(model.decode_latents(model.sample_latents(1, torch.Generator().manual_seed(4))))
    end = to_uint8(model.decode_latents(model.sample_latents(1, torch.Generator().manual_seed(10))))
    assert torch.equal(grid[5], start[0]) and torch.equal(grid[9], end[0])  # row 1 uses seeds 3+1, 9+1
    trav = traversal_images(model, 0, steps=7, max_dims=3)
    assert trav.shape == (21, 1, 8, 8)
    assert not torch.equal(trav[0], trav[6])  # sweeping z_0 changes the image


class _ScaledPrior:
    """A latent model with prior N(0, diag(scale^2)) whose decoder paints z_j's value into
    pixel j (all dimensions weigh the same): a traversal must sweep each dimension over the
    prior's own range and show the widest first."""

    def __init__(self, scale: list[float]):
        self.scale = torch.tensor(scale)
        self.seen: list[torch.Tensor] = []

    def sample_latents(self, n, generator=None):
        return torch.randn((n, len(self.scale)), generator=generator) * self.scale

    def decode_latents(self, z, labels=None, options=None):
        self.seen.append(z.clone())
        return (z[:, None, None, :] / 20).clamp(-1, 1)  # (n, 1, 1, Z)


def test_traversals_sweep_the_priors_range_and_show_the_dimensions_that_move_most():
    model = _ScaledPrior([0.1, 5.0, 1.0, 0.0])  # dimension 3 is unused (the prior puts it at 0)
    trav = traversal_images(model, 0, steps=5, max_dims=3)
    z = model.seen[-1].view(4, 5, 4)  # every dimension was swept: (dims, steps, Z)
    for j, s in enumerate([0.1, 5.0, 1.0]):  # from about the 2.5 % to the 97.5 % quantile of N(0, s^2)
        assert torch.allclose(z[j, [0, -1], j], torch.tensor([-1.96 * s, 1.96 * s]), rtol=0.1), j
    assert torch.equal(z[3, :, 3], torch.zeros(5))
    # rows: dimensions 1, 2, 0 (the widest sweep first); the unused dimension is left out
    assert trav.shape == (15, 1, 1, 4)
    for row, j in enumerate([1, 2, 0]):
        frames = trav[row * 5 : (row + 1) * 5, 0, 0].int()  # (steps, Z)
        moved = (frames[-1] - frames[0]).abs()
        assert moved[j] > 0 and moved.sum() == moved[j], (row, j)  # only z_j's pixel changes


def test_latents_cli_writes_grids_and_logs_them(in_trained, mlflow_uri, capsys):
    with pytest.raises(SystemExit) as done:
        main(["latents", "--family", "vae", "--seeds", "2", "5", "--steps", "6", "--out", "walks"])
    assert done.value.code == 0
    assert Image.open(in_trained / "walks/interpolation.png").size == (4 * (6 * 10 + 2), 4 * (8 * 10 + 2))
    assert (in_trained / "walks/traversal.png").exists()
    run_id = torch.load(in_trained / "models/vae/checkpoint.pt", weights_only=True)["meta"]["mlflow_run_id"]
    logged = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(run_id, "latents/seeds-2-5")}
    assert logged == {"latents/seeds-2-5/interpolation.png", "latents/seeds-2-5/traversal.png"}
    with pytest.raises(SystemExit) as bad:
        main(["latents", "--family", "gmm"])
    assert bad.value.code == 2
