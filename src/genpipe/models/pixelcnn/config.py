"""The PixelCNN's config section (``pixelcnn:`` in params.yaml) and its sampling settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt, field_validator

from genpipe.sections import FamilyConfig, SamplingSection


SUBSCALE = 2  # ordering=subscale: the image as SUBSCALE x SUBSCALE interleaved slices


class PixelCNNSamplingConfig(SamplingSection):
    """How the sequential sampler draws each sub-pixel."""

    temperature: float = Field(1.0, gt=0.0)  # softmax temperature: <1 sharper (cleaner, less varied), 1 = the model


class PixelCNNConfig(FamilyConfig):
    """Gated PixelCNN (van den Oord et al. 2016); per sub-pixel a 256-way softmax or a
    discretised logistic mixture (Salimans et al. 2017)."""

    lr: float = Field(2e-2, gt=0.0, le=1.0)  # high for the quick budget's short run; full uses 1e-3
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
