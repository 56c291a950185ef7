"""Typed, validated configuration: params.yaml loaded once into frozen models.

Resolution order (later wins):

1. the base values in ``params.yaml``;
2. the active profile, ``profiles.<profile>``, deep-merged on top (``quick`` for CPU
   minutes, ``full`` for a GPU);
3. ``-S key.path=value`` overrides, the same syntax as ``dvc exp run -S``. Values are
   parsed as YAML (``-S train.steps=10``, ``-S vae.channels=[16,32]``).

Unknown keys, wrong types and out-of-range values raise :class:`InputError` with one line
naming the file and the key path. Every profile is validated, not only the active one, so
a typo in ``profiles.full`` fails on a laptop rather than on the GPU host.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, SecretStr, ValidationError, field_validator, model_validator

from genpipe.errors import InputError

DEFAULT_PARAMS = Path("params.yaml")
INCEPTION_FEATURE_DIM = 2048  # the FID Inception-v3's pool3 width (features.extractor=inception)
FamilyName = Literal["vae", "gmm", "flow", "gan", "pixelcnn", "diffusion"]  # the sections below, one per family
SUBSCALE = 2  # pixelcnn.ordering=subscale: the image as SUBSCALE x SUBSCALE interleaved slices


class Section(BaseModel):
    """Base for every config section: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class PathsConfig(Section):
    data: Path = Path("data/prepared")  # Parquet shards + card.json
    models: Path = Path("models")  # models/<family>/checkpoint.pt
    metrics: Path = Path("metrics")  # metrics/<family>.json (DVC metrics)
    figures: Path = Path("figures")  # figures/<family>/: samples, interpolations, traversals
    reports: Path = Path("reports")  # reports/comparison.md and .html


class DataConfig(Section):
    source: Literal["digits"] = "digits"  # scikit-learn's bundled 8x8 handwritten digits
    resolution: int = Field(16, ge=8, le=256)  # side length of the prepared images, pixels
    val_fraction: float = Field(0.1, ge=0.0, lt=0.5)  # share of images held out for validation
    test_fraction: float = Field(0.1, gt=0.0, lt=0.5)  # share held out for the final numbers
    shard_rows: int = Field(1024, ge=1)  # rows per Parquet shard


class TrainConfig(Section):
    runner: Literal["local", "ray"] = "ray"  # in-process loop, or the same loop in Ray Train
    num_workers: int = Field(2, ge=1, le=1024)  # Ray Train workers (DDP ranks)
    use_gpu: bool = False  # one GPU per Ray worker (NCCL); CPU workers use gloo
    device: Literal["auto", "cpu", "cuda"] = "auto"  # local runner only; auto = cuda if present
    # auto: bf16 autocast where the device computes bf16 natively (a GPU from Ampere on; a CPU with AVX512-BF16
    # or AMX), else fp32; each family may set its own (PixelCNN and the flow keep fp32)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    steps: int = Field(2000, ge=1)  # optimizer steps in total (each phase of a family)
    batch_size: int = Field(64, ge=1)  # per worker
    warmup_steps: int = Field(100, ge=0)  # linear warm-up, then cosine decay to lr_min_ratio*lr
    lr_min_ratio: float = Field(0.05, ge=0.0, le=1.0)
    grad_clip: float = Field(1.0, gt=0.0)  # max global gradient norm per phase
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)  # EMA of the weights, used for sampling
    log_every: int = Field(25, ge=1)  # steps between logged losses
    sample_every: int = Field(500, ge=1)  # steps between sample grids logged to MLflow
    checkpoint_every: int = Field(500, ge=1)  # steps between checkpoints (and one at the end)
    threads: int = Field(0, ge=0)  # torch CPU threads for the local runner; 0 = torch default
    storage_path: str = Field(".ray_results", min_length=1)  # Ray Train run state; s3://... on a cluster
    max_failures: int = Field(0, ge=0)  # Ray Train restarts from the last checkpoint after a worker dies


class TrackingConfig(Section):
    experiment: str = Field("genpipe", min_length=1)  # MLflow experiment name
    # The tracking URI is not a param: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here.


class FeaturesConfig(Section):
    """The feature network of every distribution metric (FID, KID, PR, DC, IS, class histogram).

    ``domain``: a small CNN classifier trained on the prepared train split (its own DVC stage);
    ``inception``: Inception-v3 in the FID configuration (plain torch), weights from a local file the user supplies.
    """

    extractor: Literal["domain", "inception"] = "domain"
    inception_weights: Path | None = None  # local pt_inception-2015-12-05 weights (extractor=inception)
    width: int = Field(32, ge=4)  # channels of the classifier's first conv block (doubled per block)
    feature_dim: int = Field(64, ge=2)  # penultimate width: the features' dimension
    steps: int = Field(800, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(2e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    augment_shift: int = Field(1, ge=0)  # random translation by up to this many pixels while training


class EvaluateConfig(Section):
    batch_size: int = Field(256, ge=1)  # sampling batch; images/s is timed on these batches
    grid_samples: int = Field(64, ge=1, le=1024)  # the first scored images, shown as the sample grid
    num_samples: int = Field(1000, ge=2)  # generated images per distribution metric (never < feature_dim)
    kid_subsets: int = Field(50, ge=1)
    kid_subset_size: int = Field(500, ge=2)
    pr_k: int = Field(3, ge=1)  # k of improved precision and recall (Kynkaanniemi et al. 2019)
    dc_k: int = Field(5, ge=1)  # k of density and coverage (Naeem et al. 2020)
    # diffusion: FID against NFE, each entry overriding diffusion.sampling, on sweep_samples images
    diffusion_sweep: tuple[dict[str, Any], ...] = ()
    sweep_samples: int = Field(500, ge=2)

    @model_validator(mode="after")
    def _grid_within_scored(self) -> EvaluateConfig:
        if self.grid_samples > self.num_samples:
            raise ValueError(f"grid_samples={self.grid_samples} exceeds num_samples={self.num_samples} "
                             "(the grid shows the first scored images)")
        return self


class StorageConfig(Section):
    """S3 settings; each falls back to the standard AWS variable when empty."""

    endpoint_url: str | None = None  # else AWS_ENDPOINT_URL; empty for AWS itself
    region: str | None = None  # else AWS_DEFAULT_REGION, else us-east-1
    access_key_id: str | None = None  # else AWS_ACCESS_KEY_ID (prefer the environment)
    secret_access_key: SecretStr | None = None  # else AWS_SECRET_ACCESS_KEY; never logged
    connect_timeout: float = Field(5.0, gt=0.0)  # seconds; an unreachable endpoint fails fast


class GenerateConfig(Section):
    out: str = Field("generated", min_length=1)  # folder, file:///path or s3://bucket/prefix; jobs go to <out>/<family>
    n: int = Field(64, ge=1)  # images per family and job
    seed: int = Field(0, ge=0)  # image i of a job depends only on (seed, i, batch_size)
    batch_size: int = Field(64, ge=1)
    runner: Literal["local", "ray"] = "local"  # in-process, or Ray Data actors (pays off at scale)
    num_workers: int = Field(2, ge=1)  # Ray Data actors (each holds one model copy)
    use_gpu: bool = False  # one GPU per actor


class PipelineConfig(Section):
    schedule: str = Field("0 3 * * *", min_length=9)  # cron of the scheduled training pipeline
    timezone: str = "UTC"
    task_retries: int = Field(1, ge=0)  # retries of the tasks where a retry can help
    # trainings at a time, started in `families` order (the next when any running one ends);
    # 0 = all at once and Ray queues them in an order of its own. With train.runner=local the
    # flow trains in its own threads (one GIL): one at a time, whatever this says; those threads
    # also share torch's global RNG with the flow's feature network and evaluations, so the
    # pipeline is bit-reproducible with the ray runner (separate processes) only
    concurrent_trainings: int = Field(2, ge=0)
    # torch CPU threads of the flow's own work (feature network, evaluation, generation, report),
    # which runs beside the training workers; 0 = torch's default (all cores)
    threads: int = Field(1, ge=0)
    record_with_dvc: bool = True  # after a run on unmodified params, `dvc commit` what it made


class FamilyConfig(Section):
    """Fields every trainable family has: its optimizer."""

    conditional: bool = False  # learn p(x | y) from the dataset labels; sample takes labels
    steps: int | None = Field(None, ge=1)  # this family's optimizer steps; None = train.steps
    batch_size: int | None = Field(None, ge=1)  # this family's batch per worker; None = train.batch_size
    precision: Literal["auto", "fp32", "bf16"] | None = None  # this family's; None = train.precision
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0.0)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in v):
            raise ValueError("each beta must be in [0, 1)")
        return v


class VAEConfig(FamilyConfig):
    """Convolutional VAE (Kingma & Welling 2014) with a discretised-logistic decoder."""

    latent_dim: int = Field(20, ge=1)  # size of z
    channels: tuple[int, ...] = Field((32, 64), min_length=1)  # conv widths, one per 2x downsample
    kl_weight: float = Field(1.0, gt=0.0)  # 1.0 is the ELBO; other values give a beta-VAE
    iwae_samples: int = Field(64, ge=1)  # k of the importance-weighted bound used as its likelihood
    # p(z): N(0, I) | VampPrior (Tomczak & Welling 2018; params.yaml's choice). "standard" when
    # absent, so checkpoints written before the option existed load as what they are
    prior: Literal["standard", "vamp"] = "standard"
    pseudo_inputs: int = Field(25, ge=1)  # K learned pseudo-inputs of the VampPrior


class GMMConfig(FamilyConfig):
    """Gaussian mixture on pixels after PCA (the classical baseline), fitted by EM."""

    components: int = Field(10, ge=1)  # mixture components (per class when conditional)
    covariance: Literal["full", "diag"] = "full"
    pca_components: int = Field(0, ge=0)  # K principal directions; 0 = no PCA (all pixels)
    reg_covar: float = Field(1e-4, gt=0.0)  # added to covariance diagonals (stability)
    max_iter: int = Field(200, ge=1)  # EM iterations
    dequantization_samples: int = Field(4, ge=1)  # uniform-noise draws when evaluating log p


class FlowSamplingConfig(Section):
    """How the flow samples: the temperature of its Gaussian latents."""

    temperature: float = Field(0.7, ge=0.0, le=2.0)  # eps scale; 0 = mean image path, 1 = the model's density


class FlowConfig(FamilyConfig):
    """Glow-style multi-scale flow (Kingma & Dhariwal 2018) trained by maximum likelihood."""

    lr: float = Field(5e-3, gt=0.0, le=1.0)  # FamilyConfig has 1e-3; flows here train stably (clip 1.0) and faster at 5e-3
    # one entry per scale (squeeze + that many steps + split); H and W must divide by 2**len
    steps_per_level: tuple[PositiveInt, ...] = Field((4, 4, 4), min_length=1, max_length=8)
    hidden: int = Field(64, ge=1)  # width of each coupling's conv net
    coupling: Literal["affine", "additive"] = "affine"  # additive = NICE (volume preserving)
    input_transform: Literal["logit", "identity"] = "logit"  # RealNVP's logit of the pixels, or none (Glow)
    logit_alpha: float = Field(0.05, gt=0.0, lt=0.5)  # logit(alpha + (1 - 2 alpha) p) keeps the edges finite
    eval_dequant_samples: int = Field(4, ge=1)  # uniform-noise draws per image in log_likelihood
    sampling: FlowSamplingConfig = FlowSamplingConfig()


class GANSamplingConfig(Section):
    """How ``sample`` draws z."""

    # None: z ~ N(0, I). t > 0: each z_i ~ N(0, 1) conditioned on |z_i| <= t, the law of
    # BigGAN's truncation trick (redraw while |z_i| > t); smaller t trades diversity for fidelity.
    truncation: float | None = Field(None, gt=0.0)


class GANConfig(FamilyConfig):
    """DCGAN (Radford et al. 2016) trained as a non-saturating, hinge or WGAN-GP game.

    ``lr`` is the step size of both players; ``lr_g`` / ``lr_d`` override it for one of them
    (two time-scale updates, Heusel et al. 2017). The loop's warm-up and cosine decay apply
    to both. There is one D step per G step (the loop runs each phase once per batch).
    """

    lr: float = Field(2e-4, gt=0.0, le=1.0)  # Adam step size of both players unless lr_g / lr_d is set
    betas: tuple[float, float] = (0.5, 0.999)  # DCGAN's; WGAN-GP's paper uses (0.0, 0.9)
    lr_g: float | None = Field(None, gt=0.0, le=1.0)  # generator step size; None = lr
    lr_d: float | None = Field(None, gt=0.0, le=1.0)  # discriminator step size; None = lr (TTUR: lr_d > lr_g)
    latent_dim: int = Field(64, ge=1)  # size of z
    g_width: int = Field(32, ge=1)  # G channels at half the image side, doubled at each coarser level
    d_width: int = Field(32, ge=1)  # D channels after its first stride-2 conv, doubled at each level
    loss: Literal["non_saturating", "hinge", "wgan_gp"] = "non_saturating"  # the game: gan_losses.D_LOSSES / G_LOSSES
    # D's normalisation after its first layer; "none" without spectral_norm collapsed to one
    # digit in a quick run, "layer" (GroupNorm(1)) is what WGAN-GP's paper suggests for its critic
    d_norm: Literal["batch", "layer", "none"] = "batch"
    spectral_norm: bool = False  # W / sigma(W) on every D layer (Miyato et al. 2018)
    gp_weight: float = Field(10.0, ge=0.0)  # lambda of the gradient penalty (wgan_gp only)
    sampling: GANSamplingConfig = GANSamplingConfig()

    @model_validator(mode="after")
    def _penalty_needs_per_image_critic(self) -> GANConfig:
        if self.loss == "wgan_gp" and self.d_norm == "batch":
            raise ValueError("d_norm batch does not go with loss wgan_gp (batch norm mixes the images "
                             "of a batch, so the per-image gradient penalty is not the critic's); use layer or none")
        return self


class PixelCNNSamplingConfig(Section):
    """How the sequential sampler draws each sub-pixel."""

    temperature: float = Field(1.0, gt=0.0)  # softmax temperature: <1 sharper (cleaner, less varied), 1 = the model


class PixelCNNConfig(FamilyConfig):
    """Gated PixelCNN (van den Oord et al. 2016); per sub-pixel a 256-way softmax or a
    discretised logistic mixture (Salimans et al. 2017)."""

    lr: float = Field(2e-2, gt=0.0, le=1.0)  # high, for a few hundred steps; ~1e-3 for long runs
    hidden_channels: int = Field(16, ge=1)  # feature maps per stack (2x that before the gates)
    num_layers: int = Field(7, ge=1)  # gated layers, the first of mask type A
    first_kernel_size: int = Field(7, ge=3)  # kernel of the first (type A) layer, odd
    kernel_size: int = Field(3, ge=3)  # kernel of the type-B layers, odd
    dilations: tuple[PositiveInt, ...] = Field((1,), min_length=1)  # of the type-B layers, cycled (1: the paper's)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)  # on the horizontal stack's gated output
    position_bias: Literal["rows_and_columns", "none"] = "rows_and_columns"  # learnt gate bias per row and column
    output: Literal["categorical", "logistic_mixture"] = "logistic_mixture"  # the distribution of each sub-pixel
    # raster: the paper's order | subscale: the image as 2x2-interleaved slices, one after another
    # (Menick & Kalchbrenner 2019), each slice raster-ordered and biased by the slices before it
    ordering: Literal["raster", "subscale"] = "subscale"
    context_channels: int = Field(32, ge=1)  # ordering=subscale: width of the context network
    context_layers: int = Field(3, ge=1)  # ordering=subscale: its 3x3 convolutions
    # ordering=subscale: the first slice drawn by the shared network (with the context of no
    # slice) or by a separate raster network of the same size (SPN's separate first decoder)
    first_slice: Literal["shared", "separate"] = "shared"
    # ordering=subscale: of the 3 later slices, how many are teacher-forced per image and
    # training step beside the first, drawn at random and weighted 3/n: an unbiased estimate
    # of the loss at (1 + n)/4 of its cost; 3 = all of them (the exact loss every step)
    fill_slices: int = Field(3, ge=1, le=SUBSCALE**2 - 1)
    mixtures: int = Field(5, ge=1)  # output=logistic_mixture: logistic components per sub-pixel
    sampling: PixelCNNSamplingConfig = PixelCNNSamplingConfig()

    @field_validator("first_kernel_size", "kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("kernel sizes must be odd")
        return v


class DiffusionSamplingConfig(Section):
    """How to sample a trained diffusion model; chosen at generation time."""

    sampler: Literal["ddpm", "ddim", "dpm_solver++"] = "ddim"  # ddpm always runs all T steps
    steps: int = Field(50, ge=1)  # network evaluations of ddim / dpm_solver++ (<= timesteps)
    eta: float = Field(0.0, ge=0.0, le=1.0)  # ddim noise: 0 deterministic, 1 DDPM-like
    spacing: Literal["uniform", "quadratic"] = "uniform"  # how ddim / dpm_solver++ pick timesteps
    guidance_scale: float = Field(1.0, ge=0.0)  # classifier-free guidance; 1.0 = off (conditional only)
    clip_denoised: Literal["static", "none"] = "static"  # clamp each x0 prediction to [-1, 1]


class DiffusionConfig(FamilyConfig):
    """DDPM with a small U-Net; the quick profile is these defaults."""

    lr: float = Field(2e-3, gt=0.0, le=1.0)
    timesteps: int = Field(1000, ge=2)  # T of the forward process
    schedule: Literal["linear", "cosine"] = "cosine"  # beta schedule
    prediction: Literal["epsilon", "v"] = "v"  # what the network regresses (v: cleaner samples early on)
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
        if self.sampling.sampler != "ddpm" and self.sampling.steps > self.timesteps:
            raise ValueError(f"sampling.steps={self.sampling.steps} exceeds timesteps={self.timesteps}")
        return self


class Config(Section):
    profile: str = "quick"  # name of the entry in `profiles` to apply
    seed: int = Field(0, ge=0)
    # extra training seeds: each family is also trained with each of these (models/<family>/seeds/<s>/),
    # and the report gives the spread of FID over `seed` and these (training stability)
    stability_seeds: tuple[NonNegativeInt, ...] = ()
    families: tuple[FamilyName, ...] = Field(("vae",), min_length=1)  # trained by the pipeline
    paths: PathsConfig = PathsConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    features: FeaturesConfig = FeaturesConfig()
    generate: GenerateConfig = GenerateConfig()
    storage: StorageConfig = StorageConfig()
    pipeline: PipelineConfig = PipelineConfig()
    vae: VAEConfig = VAEConfig()
    gmm: GMMConfig = GMMConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    pixelcnn: PixelCNNConfig = PixelCNNConfig()
    gan: GANConfig = GANConfig()
    flow: FlowConfig = FlowConfig()

    @field_validator("stability_seeds")
    @classmethod
    def _distinct_seeds(cls, v: tuple[int, ...], info) -> tuple[int, ...]:
        seeds = (info.data.get("seed", 0), *v)
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"must be distinct and differ from seed ({seeds[0]})")
        return v

    def family(self, name: str) -> FamilyConfig:
        """The typed section of one family, e.g. ``cfg.family("vae")``."""
        section = getattr(self, name, None)
        if not isinstance(section, FamilyConfig):
            raise InputError(f"unknown family {name!r} (known: {', '.join(FAMILY_NAMES)})")
        return section

    def train_for(self, name: str) -> TrainConfig:
        """``train`` with the family's own ``steps`` / ``batch_size`` / ``precision`` where it sets them."""
        fam = self.family(name)
        own = {k: getattr(fam, k) for k in ("steps", "batch_size", "precision") if getattr(fam, k) is not None}
        return self.train.model_copy(update=own)

    def sweep_settings(self) -> list[DiffusionSamplingConfig]:
        """``evaluate.diffusion_sweep`` as ``diffusion.sampling`` settings (each entry overrides
        it), each checked against the diffusion model (e.g. steps <= timesteps); an
        :class:`InputError` names the entry. Checked when params load, used by evaluation."""
        base, out = self.diffusion.sampling, []
        for i, entry in enumerate(self.evaluate.diffusion_sweep):
            try:
                options = type(base).model_validate(base.model_dump() | dict(entry))
                type(self.diffusion).model_validate(self.diffusion.model_dump() | {"sampling": options.model_dump()})
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise InputError(f"evaluate.diffusion_sweep[{i}]: {where + ': ' if where else ''}{first['msg']}") from None
            out.append(options)
        return out

    def feature_dim(self) -> int:
        """The dimension of the features every distribution metric compares."""
        return INCEPTION_FEATURE_DIM if self.features.extractor == "inception" else self.features.feature_dim

    def check_sample_counts(self) -> None:
        """Sample counts the metrics cannot work with, found when params load instead of after
        training: FID needs at least as many samples as feature dimensions, the k-NN metrics
        more samples than k. An :class:`InputError` names the key."""
        e, dim = self.evaluate, self.feature_dim()
        counts = [("evaluate.num_samples", e.num_samples)]
        if e.diffusion_sweep:  # scored whenever diffusion is evaluated
            counts.append(("evaluate.sweep_samples", e.sweep_samples))
        for key, n in counts:
            if n < dim:
                source = "Inception's pool3" if self.features.extractor == "inception" else "features.feature_dim"
                raise InputError(f"{key}: {n} is fewer than the {dim} feature dimensions ({source}); FID needs at least {dim}")
            for k_key, k in (("evaluate.pr_k", e.pr_k), ("evaluate.dc_k", e.dc_k)):
                if k >= n:
                    raise InputError(f"{k_key}: k={k} needs fewer than the {n} samples of {key}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready resolved config (what is saved beside checkpoints and logged)."""
        return self.model_dump(mode="json")

    def digest(self, *sections: str) -> str:
        """sha256 of the named sections (all if none), to tell whether a config changed."""
        data = self.to_dict()
        if sections:
            data = {k: data[k] for k in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


FAMILY_NAMES: tuple[str, ...] = tuple(
    name for name, f in Config.model_fields.items() if isinstance(f.default, FamilyConfig)
)


# ----------------------------------------------------------------------------- loading


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"vae.lr=0.1"`` -> ``(["vae", "lr"], 0.1)``; the value is parsed as YAML."""
    key, sep, value = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise InputError(f"-S {text}: expected key.path=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return [p.strip() for p in parts], parsed


def _set_path(tree: dict[str, Any], parts: list[str], value: Any, origin: str) -> None:
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InputError(f"{origin}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _validate(tree: dict[str, Any], where: str, prefix: str = "") -> Config:
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = prefix + ".".join(str(p) for p in err["loc"])
        # a section's own check (model_validator) names its keys: no dump of the whole section
        got = "" if err["type"] == "extra_forbidden" or isinstance(err.get("input"), dict) else f" (got {err.get('input')!r})"
        more = f" [+{exc.error_count() - 1} more]" if exc.error_count() > 1 else ""
        raise InputError(f"{where}: {key}: {err['msg']}{got}{more}") from None
    try:
        cfg.sweep_settings()  # entries that span two sections: fail now, not after training
        cfg.check_sample_counts()
    except InputError as exc:
        raise InputError(f"{where}: {prefix}{exc}") from None
    return cfg


def resolve(raw: dict[str, Any], overrides: list[str] = (), where: str = "params.yaml") -> Config:
    """Resolve a raw params tree (+ profile + overrides) into a validated :class:`Config`."""
    parsed = [(parse_override(o), o) for o in overrides]
    tree = copy.deepcopy(raw)
    for (parts, value), text in parsed:
        _set_path(tree, parts, value, f"{where}: -S {text}")
    profiles = tree.pop("profiles", None) or {}
    if not isinstance(profiles, dict) or not all(isinstance(p, dict) for p in profiles.values()):
        raise InputError(f"{where}: profiles: expected a mapping of profile name to settings")
    name = tree.get("profile", Config.model_fields["profile"].default)
    if name not in profiles:
        raise InputError(f"{where}: profile: unknown profile {name!r} (defined: {', '.join(profiles) or 'none'})")
    _validate(tree, where)  # the base alone first, so its errors are not blamed on a profile
    for other, settings in profiles.items():  # every profile must be valid, not only the active one
        _validate(_deep_merge(tree, settings), where, prefix=f"profiles.{other}.")
    tree = _deep_merge(tree, profiles[name])
    for (parts, value), text in parsed:  # -S beats the profile
        if parts[0] != "profiles":
            _set_path(tree, parts, value, f"{where}: -S {text}")
    return _validate(tree, where)


def load_config(path: Path | str = DEFAULT_PARAMS, overrides: list[str] = ()) -> Config:
    """Read ``params.yaml``, apply its profile and ``-S`` overrides, validate once."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise InputError(f"{path}: no such params file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{path}:{line} is not valid YAML") from None
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected a mapping at the top level")
    return resolve(raw, overrides, where=str(path))
