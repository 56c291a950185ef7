"""The diffusion model's config section (``diffusion:`` in params.yaml) and its sampling settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from genpipe.sections import FamilyConfig, SamplingSection


class DiffusionSamplingConfig(SamplingSection):
    """How to sample a trained diffusion model; chosen at generation time."""

    sampler: Literal["ddpm", "ddim", "dpm_solver++"] = "ddim"  # ddpm: ancestral, all T steps (steps unused)
    steps: int = Field(50, ge=1)  # network evaluations of ddim / dpm_solver++ (<= timesteps)
    eta: float = Field(0.0, ge=0.0, le=1.0)  # ddim noise: 0 deterministic, 1 DDPM-like
    spacing: Literal["uniform", "quadratic"] = "uniform"  # how ddim / dpm_solver++ pick timesteps
    guidance_scale: float = Field(1.0, ge=0.0)  # classifier-free guidance; 1.0 = off (conditional only)
    clip_denoised: Literal["static", "none"] = "static"  # clamp each x0 prediction to [-1, 1]

    def sampler_steps(self, timesteps: int) -> int:
        """Denoising steps of one sample with ``timesteps`` = T: all T for ddpm, else ``steps``."""
        return timesteps if self.sampler == "ddpm" else self.steps

    def label(self) -> str:
        """``ddpm`` or ``<sampler>-<steps>`` (``ddim-50``)."""
        return self.sampler if self.sampler == "ddpm" else f"{self.sampler}-{self.steps}"

    def series(self) -> str:
        """The sampler: its settings differ in steps, which is the NFE."""
        return self.sampler


class DiffusionConfig(FamilyConfig):
    """DDPM with a small U-Net; the quick profile is these defaults."""

    lr: float = Field(2e-3, gt=0.0, le=1.0)
    timesteps: int = Field(1000, ge=2)  # T of the forward process
    schedule: Literal["linear", "cosine"] = "cosine"  # beta schedule
    prediction: Literal["epsilon", "v"] = "v"  # what the network regresses: epsilon or v (Salimans & Ho 2022)
    loss_weighting: Literal["uniform", "min_snr"] = "uniform"  # min_snr: Hang et al. 2023, gamma = 5
    channels: int = Field(16, ge=8)  # base width of the U-Net
    channel_mults: tuple[int, ...] = Field((1, 2, 2), min_length=1)  # width per level; 2x down between
    num_res_blocks: int = Field(1, ge=1)  # ResBlocks per level (down path)
    attention_levels: tuple[int, ...] = (2,)  # levels (indices into channel_mults) with self-attention
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    p_uncond: float = Field(0.1, ge=0.0, le=1.0)  # label dropout for classifier-free guidance
    vlb_timesteps: int = Field(50, ge=1)  # stratified timesteps per image of the likelihood bound (>= T-1: all)
    sampling: DiffusionSamplingConfig = DiffusionSamplingConfig()

    @model_validator(mode="after")
    def _steps_within_timesteps(self) -> DiffusionConfig:
        if self.sampling.sampler_steps(self.timesteps) > self.timesteps:
            raise ValueError(f"sampling.steps={self.sampling.steps} exceeds timesteps={self.timesteps}")
        return self
