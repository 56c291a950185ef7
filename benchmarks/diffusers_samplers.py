"""Benchmark: genpipe's DDIM and DPM-Solver++(2M) against diffusers' schedulers, same network.

Run from the repository root (diffusers installed into the venv; nothing is downloaded):

    .venv/bin/python benchmarks/diffusers_samplers.py [--train-steps 300] [--prediction v]

A genpipe diffusion model with the quick defaults (U-Net 16 channels, [1, 2, 2], cosine
schedule, T = 1000) is trained ``--train-steps`` Adam steps on the 16x16 digits (0: left at
its random initialisation). From one x_T (16 images, seed 0) it is sampled with

- genpipe's ``ddim_sample`` (eta = 0) and ``dpm_solver_pp_sample``, with the model's denoiser
  ("after": x0_hat and eps_hat formed directly from the network's output, in float64), and
  with a float32 v -> eps -> x0 round trip ("before": :func:`round_trip_denoiser`);
- diffusers' ``DDIMScheduler`` and ``DPMSolverMultistepScheduler`` (dpmsolver++, order 2,
  midpoint) with genpipe's betas (``trained_betas``) and genpipe's float64 alpha-bar put in
  place of the float32 cumulative product diffusers computes from them, the same prediction
  type, no clipping or thresholding, ``final_sigmas_type="zero"``, ``lower_order_final=False``
  (genpipe's 2M is second order on every step but the first and the last);

on the same timesteps at 10, 20 and 50 steps: diffusers' ``"trailing"`` spacing, t_i =
T - 1 - i T / S (999, 899, ..., 99 at S = 10), which genpipe's samplers take as their list
(diffusers' DDIM steps by a fixed stride, so its ``"linspace"`` sequence is not a DDIM one).
It prints, per sampler and step count, the largest absolute difference between the final
(unclamped) images of genpipe and diffusers, before and after, as a Markdown table.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path

import torch

from genpipe.models.diffusion.config import DiffusionConfig, DiffusionSamplingConfig
from genpipe.data.sources import load_digits_source
from genpipe.models.base import ImageSpec
from genpipe.models.diffusion.model import Diffusion, build_diffusion
from genpipe.samplers import Denoised, DenoiseFn
from genpipe.samplers.ddim import ddim_sample
from genpipe.samplers.dpm_solver import dpm_solver_pp_sample

STEPS = (10, 20, 50)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import diffusers

    return (f"{os.cpu_count()} cores ({cpu}), torch {torch.__version__}, diffusers {diffusers.__version__}, "
            f"Python {platform.python_version()}")


def trained_model(prediction: str, steps: int, seed: int = 0) -> Diffusion:
    """The quick-default diffusion model after ``steps`` Adam steps (batch 64) on the 16x16 digits."""
    src = load_digits_source(16)
    x = torch.from_numpy(src.images).float() / 127.5 - 1.0  # (1797, 1, 16, 16) in [-1, 1]
    torch.manual_seed(seed)
    cfg = DiffusionConfig(prediction=prediction)
    model = build_diffusion(cfg, ImageSpec((1, 16, 16), 10))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = model.training_losses(x[torch.randint(len(x), (64,), generator=g)], None, "model")["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def round_trip_denoiser(model: Diffusion) -> DenoiseFn:
    """The round trip: eps from the output in float32, then x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)."""
    abar = model.process.alphas_cumprod

    def denoise(x: torch.Tensor, t: torch.Tensor) -> Denoised:
        out = model.net(x, t, None).float()
        a = abar[t].to(x.dtype).view(-1, 1, 1, 1)
        eps = out if model.cfg.prediction == "epsilon" else (1 - a).sqrt() * x + a.sqrt() * out
        ab = float(abar[int(t[0])])
        return Denoised((x - math.sqrt(1.0 - ab) * eps) / math.sqrt(ab), eps)

    return denoise


def trailing(num_timesteps: int, steps: int) -> list[int]:
    """diffusers' "trailing" timesteps: round(T - i T / S) - 1 for i = 0 .. S-1."""
    return [round(num_timesteps - i * num_timesteps / steps) - 1 for i in range(steps)]


def diffusers_sample(model: Diffusion, scheduler, x_T: torch.Tensor, steps: int) -> torch.Tensor:
    """Run a diffusers scheduler with genpipe's network and alpha-bar; returns x_0."""
    abar = model.process.alphas_cumprod
    scheduler.alphas_cumprod = abar.clone()  # float64, as genpipe's samplers use it
    if hasattr(scheduler, "lambda_t"):  # the DPM-Solver scheduler caches these at construction
        scheduler.alpha_t, scheduler.sigma_t = abar.sqrt(), (1 - abar).sqrt()
        scheduler.lambda_t = scheduler.alpha_t.log() - scheduler.sigma_t.log()
    scheduler.set_timesteps(steps)
    assert scheduler.timesteps.tolist() == trailing(model.process.num_timesteps, steps)
    x = x_T.clone()
    for t in scheduler.timesteps:
        out = model.net(x, torch.full((x.shape[0],), int(t), dtype=torch.long), None)
        x = scheduler.step(out, t, x).prev_sample
    return x


def schedulers(model: Diffusion) -> dict:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    common = dict(num_train_timesteps=model.process.num_timesteps, trained_betas=model.process.betas().numpy(),
                  prediction_type="v_prediction" if model.cfg.prediction == "v" else "epsilon",
                  thresholding=False, timestep_spacing="trailing", steps_offset=0)
    return {
        "ddim": lambda: DDIMScheduler(clip_sample=False, set_alpha_to_one=True, **common),
        "dpm_solver++": lambda: DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
                                                            solver_type="midpoint", lower_order_final=False,
                                                            final_sigmas_type="zero", **common),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--train-steps", type=int, default=300, help="Adam steps on the digits (0: random init)")
    parser.add_argument("--prediction", choices=["v", "epsilon"], default="v")
    parser.add_argument("--images", type=int, default=16)
    args = parser.parse_args()

    start = time.perf_counter()
    model = trained_model(args.prediction, args.train_steps)
    trained_s = time.perf_counter() - start
    abar = model.process.alphas_cumprod
    x_T = torch.randn((args.images, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    ours = {"ddim": ddim_sample, "dpm_solver++": dpm_solver_pp_sample}
    after = model.denoiser(None, DiffusionSamplingConfig(clip_denoised="none"))
    before = round_trip_denoiser(model)
    rows = []
    with torch.no_grad():
        t_last = torch.full((args.images,), model.process.num_timesteps - 1)
        out = model.net(x_T, t_last, None)  # the float32 output both paths start from
        x0_64 = model.process.denoise(out.double(), x_T.double(), t_last).x0  # the rest in float64
        x0_err = {name: float((fn(x_T, t_last).x0.double() - x0_64).abs().max()) for name, fn in
                  (("before", before), ("after", after))}
        for name, scheduler in schedulers(model).items():
            for steps in STEPS:
                ts = trailing(model.process.num_timesteps, steps)
                ref = diffusers_sample(model, scheduler(), x_T, steps)
                new = ours[name](after, x_T, abar, ts)
                old = ours[name](before, x_T, abar, ts)
                rows.append((name, steps, float((old - ref).abs().max()), float((new - ref).abs().max()),
                             float((new - old).abs().max()), float(ref.abs().max())))
    print(f"machine: {machine()}")
    print(f"model: quick-default diffusion, prediction={args.prediction}, {args.train_steps} training steps "
          f"({trained_s:.0f} s); {args.images} images 1x16x16 from one x_T (seed 0)")
    print(f"max |x0_hat - float64 x0_hat| at t = T-1: before {x0_err['before']:.2e}, after {x0_err['after']:.2e}")
    print()
    print("| sampler | steps | before: max abs diff to diffusers | after | max abs diff before vs after | max abs image value |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, steps, old, new, change, scale in rows:
        print(f"| {name} | {steps} | {old:.2e} | {new:.2e} | {change:.2e} | {scale:.2f} |")


if __name__ == "__main__":
    main()
