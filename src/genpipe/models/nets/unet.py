"""A small U-Net for denoising, conditioned on the timestep (and optionally a class).

Ho et al. 2020, "Denoising Diffusion Probabilistic Models", https://arxiv.org/abs/2006.11239
(appendix B: a PixelCNN++-style U-Net, GroupNorm, sinusoidal time embedding, self-attention
at a low resolution), as simplified in Nichol & Dhariwal 2021 ("improved-diffusion",
https://arxiv.org/abs/2102.09672). Classifier-free guidance (Ho & Salimans 2022,
https://arxiv.org/abs/2207.12598) needs one extra "null" class: index ``num_classes``.

Layout, for ``channel_mults = (1, 2, 2)`` on 16x16 images and base width ``ch``::

    conv3x3 -> [16x16: ResBlock(ch)] -> down -> [8x8: ResBlock(2ch)] -> down -> [4x4: ResBlock(2ch) + attn]
            -> middle (ResBlock, attn, ResBlock)
            -> the mirror image, each block also taking the matching skip -> GN, SiLU, conv3x3
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genpipe.models.nets.conv import group_norm


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps, as in the Transformer.

    emb = [cos(t * f_0), ..., cos(t * f_{d-1}), sin(t * f_0), ..., sin(t * f_{d-1})],
    f_i = max_period^(-i / d), d = dim / 2      (Vaswani et al. 2017, sec. 3.5)

    Args: t (B,) timesteps; dim even. Returns (B, dim).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def _zero(module: nn.Module) -> nn.Module:
    """Zero-initialise the output of the attention branch: it starts as the identity.

    (The ResBlocks and the output conv keep PyTorch's default init, unlike improved-diffusion,
    so that even an untrained net depends on t and on the label.)"""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class EmbResBlock(nn.Module):
    """Residual block whose first conv output is shifted by a projection of the embedding."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out))
        self.out_layers = nn.Sequential(
            group_norm(c_out), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(c_out, c_out, 3, padding=1)
        )
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x (B, c_in, H, W), emb (B, emb_dim) -> (B, c_out, H, W)."""
        h = self.in_layers(x) + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions, residual; heads of width 32."""

    def __init__(self, channels: int):
        super().__init__()
        self.heads = max(1, channels // 32)
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, HW, c/heads)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, c/heads)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class _Level(nn.Module):
    """The blocks of one resolution level: ResBlocks, each optionally followed by attention."""

    def __init__(self, widths: list[tuple[int, int]], emb_dim: int, dropout: float, attention: bool):
        super().__init__()
        self.res = nn.ModuleList(EmbResBlock(a, b, emb_dim, dropout) for a, b in widths)
        self.attn = nn.ModuleList(SelfAttention(b) if attention else nn.Identity() for _, b in widths)


class UNet(nn.Module):
    """eps/v-predicting U-Net: (x_t, t, y) -> (B, C, H, W).

    Args:
        in_channels: image channels C.
        channels: base width; level i has ``channels * channel_mults[i]``.
        channel_mults: one per resolution level; 2x downsampling between levels.
        num_res_blocks: ResBlocks per level on the way down (one more on the way up).
        attention_levels: indices into ``channel_mults`` whose blocks get self-attention
            (the middle block always has it).
        num_classes: 0 for an unconditional net; else a class embedding with
            ``num_classes + 1`` rows, the last being the "null" class of CFG.
    """

    def __init__(self, in_channels: int, channels: int, channel_mults: tuple[int, ...], num_res_blocks: int,
                 attention_levels: tuple[int, ...], dropout: float = 0.0, num_classes: int = 0):
        super().__init__()
        emb_dim = 4 * channels
        self.channels, self.num_classes = channels, num_classes
        self.time_mlp = nn.Sequential(nn.Linear(channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.inp = nn.Conv2d(in_channels, channels, 3, padding=1)

        widths = [channels * m for m in channel_mults]
        skips, c = [channels], channels  # widths of the skip tensors, in push order
        self.down, self.downsamplers = nn.ModuleList(), nn.ModuleList()
        for i, w in enumerate(widths):
            pairs = [(c if j == 0 else w, w) for j in range(num_res_blocks)]
            self.down.append(_Level(pairs, emb_dim, dropout, i in attention_levels))
            skips += [w] * num_res_blocks
            c = w
            if i < len(widths) - 1:
                self.downsamplers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([EmbResBlock(c, c, emb_dim, dropout), SelfAttention(c),
                                  EmbResBlock(c, c, emb_dim, dropout)])
        self.up, self.upsamplers = nn.ModuleList(), nn.ModuleList()
        for i, w in reversed(list(enumerate(widths))):
            pairs = []
            for _ in range(num_res_blocks + 1):
                pairs.append((c + skips.pop(), w))
                c = w
            self.up.append(_Level(pairs, emb_dim, dropout, i in attention_levels))
            if i > 0:
                self.upsamplers.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                     nn.Conv2d(c, c, 3, padding=1)))
        self.out = nn.Sequential(group_norm(c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1))

    def embed(self, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """Timesteps (B,) and class indices (B,) (``num_classes`` = null) -> (B, emb_dim)."""
        emb = self.time_mlp(timestep_embedding(t, self.channels))
        if self.class_emb is not None:
            if labels is None:
                labels = torch.full_like(t, self.num_classes, dtype=torch.long)
            emb = emb + self.class_emb(labels)
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W), t (B,) timesteps, labels (B,) or None -> (B, C, H, W)."""
        emb = self.embed(t, labels)
        h = self.inp(x)
        hs = [h]
        for i, level in enumerate(self.down):
            for res, attn in zip(level.res, level.attn):
                h = attn(res(h, emb))
                hs.append(h)
            if i < len(self.downsamplers):
                h = self.downsamplers[i](h)
                hs.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb)), emb)
        for i, level in enumerate(self.up):
            for res, attn in zip(level.res, level.attn):
                h = attn(res(torch.cat([h, hs.pop()], dim=1), emb))
            if i < len(self.upsamplers):
                h = self.upsamplers[i](h)
        return self.out(h)
