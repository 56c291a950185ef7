"""The family interface: what training, evaluation and generation need from a model.

A family is a small spec (:class:`Family`): its typed config section and a ``build``
function. ``build`` returns an ``nn.Module`` that satisfies :class:`GenerativeModel`.
Families implement this protocol; they do not inherit behaviour from a base class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import nn

from genpipe.errors import InputError
from genpipe.sections import FamilyConfig, SamplingSection


@dataclass(frozen=True)
class ImageSpec:
    """What a model must know about the data: ``shape`` is (C, H, W)."""

    shape: tuple[int, int, int]
    num_classes: int


@dataclass(frozen=True)
class OptimizerGroup:
    """Parameters stepped together in one phase, with their optimizer settings."""

    params: list[nn.Parameter]
    lr: float
    betas: tuple[float, float]
    weight_decay: float


@dataclass(frozen=True)
class LogLikelihood:
    """log p(x) per image in nats, and whether it is the exact value or a bound."""

    nats: torch.Tensor  # (B,) log-likelihood (or its bound) of each image, in nats
    kind: Literal["exact", "lower_bound"]
    estimator: str  # e.g. "elbo", "iwae-64", "change-of-variables"


@runtime_checkable
class GenerativeModel(Protocol):
    """A trained or trainable generative model over images in [-1, 1]."""

    def optimizer_groups(self) -> dict[str, OptimizerGroup]:
        """Phases of one training step, in order (``{"model": ...}``; a GAN has two)."""
        ...

    def training_losses(
        self, x: torch.Tensor, labels: torch.Tensor | None, phase: str
    ) -> dict[str, torch.Tensor]:
        """Losses of one phase on a batch ``x`` (B, C, H, W) in [-1, 1].

        ``"loss"`` is the scalar the loop backpropagates; every other entry is a scalar
        that is logged as it is.
        """
        ...

    def sample(
        self,
        n: int,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        options: Any = None,
    ) -> torch.Tensor:
        """``n`` images (n, C, H, W) in [-1, 1]. Noise comes from ``generator`` on the CPU,
        so a seed gives the same draws on any device. ``labels`` (n,) for a conditional
        model (an unconditional one raises :class:`InputError` when given labels).
        ``options`` is the family's ``sampling`` config section, chosen at generation time
        (sampler, steps, temperature, guidance ...); None means the trained config's."""
        ...

    def log_likelihood(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> LogLikelihood | None:
        """log p(x) of 8-bit images ``x`` in [-1, 1], or None if the family has none. An estimate
        that draws noise (dequantisation, posterior samples, timesteps) draws it on the CPU from
        ``generator`` (None: the global RNG), so a seed gives the same number on any device and
        beside other threads."""
        ...


@runtime_checkable
class LatentModel(Protocol):
    """Optional: families with a latent space (VAE, GAN, flow) for interpolations."""

    def sample_latents(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` draws from the prior p(z), on the model's device (noise from the CPU generator)."""
        ...

    def decode_latents(self, z: torch.Tensor, labels: torch.Tensor | None = None, options: Any = None) -> torch.Tensor:
        """Images in [-1, 1] for latents ``z`` (the deterministic map the samples go through)."""
        ...


@runtime_checkable
class FittedModel(Protocol):
    """Optional: families fitted in closed form or by EM rather than by gradient steps.

    Their ``optimizer_groups()`` is empty; the train stage calls ``fit`` once instead of the loop.
    """

    def fit(self, images: torch.Tensor, labels: torch.Tensor, seed: int) -> dict[str, float]:
        """Fit to uint8 images (N, C, H, W) and labels (N,), every random choice from ``seed``;
        returns numbers worth logging."""
        ...


@runtime_checkable
class MomentModel(Protocol):
    """Optional: families whose sampling distribution has a closed-form mean and covariance
    (the Gaussian mixture); the contract tests check ``sample`` against them."""

    def moments(self, labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (D,) and covariance (D, D), float64, of one flattened image of ``sample(n, labels)``
        drawn at random among the n (the mixture over the rows of ``labels``), before the clamp
        to [-1, 1]."""
        ...


def network_evaluations(model: nn.Module, options: Any = None) -> int:
    """Network evaluations per generated image (NFE): the model's ``nfe(options)`` where the
    family defines one (diffusion: sampler steps; PixelCNN: sequential passes; Gaussian
    mixture: 0), else 1 (one decoder / generator / inverse-flow pass)."""
    nfe = getattr(model, "nfe", None)
    return int(nfe(options)) if callable(nfe) else 1


@dataclass(frozen=True)
class Family:
    """A registered family: what generic code (training, evaluation, the report) asks about it."""

    name: str
    config_type: type[FamilyConfig]  # its params.yaml section (models/<family>/config.py)
    build: Callable[[FamilyConfig, ImageSpec], nn.Module]
    summary: str
    trainer: Literal["gradient", "fit"] = "gradient"  # "fit": a FittedModel, trained in-process by fit()
    # DDP's find_unused_parameters: set where a phase's loss leaves some parameters without a
    # gradient (the GAN's generator phase never reaches the discriminator's)
    unused_parameters: bool = False
    # what the comparison report checks about this family: ``claims(results, losses)`` -> verdict
    # lines, from every evaluated family's results (EvaluationResult by family) and training-loss
    # curves ({family: {key: [(step, value)]}}); None: no claims of its own
    claims: Callable[[Mapping[str, Any], Mapping[str, Any]], list[str]] | None = None

    @property
    def sampling_type(self) -> type[SamplingSection] | None:
        """The type of its ``sampling`` section (settings chosen at generation time), or None."""
        field = self.config_type.model_fields.get("sampling")
        return None if field is None else field.annotation


def check_labels(labels: torch.Tensor | None, n: int, *, num_classes: int, conditional: bool, family: str,
                 device: torch.device | str | None = None) -> torch.Tensor | None:
    """Labels to sample ``n`` images with: None for an unconditional model (which refuses labels);
    for a conditional one ``labels`` checked to be (n,) class ids in [0, num_classes), or, when
    absent, a balanced mix ``i % num_classes``. An :class:`InputError` says what is wrong."""
    if not conditional:
        if labels is not None:
            raise InputError(f"labels: this {family} model is unconditional ({family}.conditional=false); "
                             "sample without labels")
        return None
    labels = torch.arange(n) % num_classes if labels is None else torch.as_tensor(labels)
    if labels.shape != (n,) or (n and (labels.min() < 0 or labels.max() >= num_classes)):
        found = f"values {int(labels.min())}..{int(labels.max())}" if labels.numel() else "none"
        raise InputError(f"labels: expected {n} class ids in [0, {num_classes}), got shape {tuple(labels.shape)}, {found}")
    return labels.to(device=device, dtype=torch.long)


def cpu_randn(shape: Iterable[int], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal noise drawn on the CPU (device-independent for a seed), then moved."""
    return torch.randn(tuple(shape), generator=generator).to(device)

