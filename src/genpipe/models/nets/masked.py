"""Masked and gated convolutions of the Gated PixelCNN.

van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders",
https://arxiv.org/abs/1606.05328 (sec. 2, fig. 2); the R -> G -> B channel masks (types A
and B) are those of van den Oord et al. 2016, "Pixel Recurrent Neural Networks",
https://arxiv.org/abs/1601.06759 (sec. 3.4).

Order: pixels in raster order, and inside a pixel the channels in order, so

    p(x) = prod_i prod_c p(x_{i,c} | x_{<i}, x_{i,<c})

Two stacks remove the blind spot of a single masked kernel (sec. 2.2):

* vertical stack, kernels (k//2 + 1) x k padded k//2 rows above and none below: its output
  at row r sees only rows < r. The first layer (type A) zeroes the kernel's bottom row;
  later layers (type B) keep it, since their input at row r already sees only rows < r.
* horizontal stack, kernels 1 x (k//2 + 1) padded on the left: it sees the pixels to the
  left in the same row, and everything above through a 1x1 link from the vertical stack.
  The kernel's last column is the current pixel; there the channel mask applies.

Channel groups: each feature map is split into C contiguous groups (C image channels);
group g carries what image channel g may depend on. At the current pixel, output group g
may read input group g' when g' < g (type A, first layer) or g' <= g (type B). With C = 1
the type-A centre is empty and the type-B one is full.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

MaskType = Literal["A", "B"]  # A: the current sub-pixel excluded (first layer); B: included
Stack = Literal["vertical", "horizontal"]


def channel_groups(n: int, image_channels: int) -> torch.Tensor:
    """(n,) long: the image channel each of ``n`` feature channels belongs to, in C blocks."""
    return torch.arange(n) * image_channels // n


def group_mask(out_groups: torch.Tensor, in_groups: torch.Tensor, mask_type: MaskType) -> torch.Tensor:
    """(O, I) float: 1 where output group g may read input group g' at the same pixel."""
    o, i = out_groups[:, None], in_groups[None, :]
    return (i < o).float() if mask_type == "A" else (i <= o).float()


class MaskedConv2d(nn.Module):
    """A convolution whose weight is multiplied by a fixed 0/1 mask, with explicit padding."""

    def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int], padding: tuple[int, int, int, int],
                 mask: torch.Tensor, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel)
        self.padding = padding  # (left, right, top, bottom), as F.pad takes it
        self.dilation = dilation
        self.register_buffer("mask", mask, persistent=False)  # (c_out, c_in, kh, kw), derived from the config

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c_in, H, W) -> (B, c_out, H, W)
        return F.conv2d(F.pad(x, self.padding), self.conv.weight * self.mask, self.conv.bias, dilation=self.dilation)


def vertical_conv(c_in: int, c_out: int, k: int, mask_type: MaskType, dilation: int = 1) -> MaskedConv2d:
    """(k//2 + 1) x k kernel over the rows above (and, type B, the current row of features);
    with ``dilation`` d its taps are d rows and columns apart (rows -d*(k//2) .. 0)."""
    mask = torch.ones(c_out, c_in, k // 2 + 1, k)
    if mask_type == "A":
        mask[:, :, -1, :] = 0.0  # the current row of the image
    r = dilation * (k // 2)
    return MaskedConv2d(c_in, c_out, (k // 2 + 1, k), (r, r, r, 0), mask, dilation)


def horizontal_conv(c_in: int, c_out: int, k: int, mask_type: MaskType,
                    in_groups: torch.Tensor, out_groups: torch.Tensor, dilation: int = 1) -> MaskedConv2d:
    """1 x (k//2 + 1) kernel over the pixels to the left (``dilation`` apart), channel-masked
    at the current pixel."""
    mask = torch.ones(c_out, c_in, 1, k // 2 + 1)
    mask[:, :, 0, -1] = group_mask(out_groups, in_groups, mask_type)
    return MaskedConv2d(c_in, c_out, (1, k // 2 + 1), (dilation * (k // 2), 0, 0, 0), mask, dilation)


def pointwise_conv(c_in: int, c_out: int, in_groups: torch.Tensor, out_groups: torch.Tensor) -> MaskedConv2d:
    """1x1 convolution with the type-B channel mask (group g reads groups <= g)."""
    mask = group_mask(out_groups, in_groups, "B")[:, :, None, None]
    return MaskedConv2d(c_in, c_out, (1, 1), (0, 0, 0, 0), mask)


def gate(pre: torch.Tensor) -> torch.Tensor:
    """Gated activation tanh(f) * sigmoid(g) (eq. 2); ``pre`` (B, 2n, H, W) -> (B, n, H, W)."""
    f, g = pre.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class GatedLayer(nn.Module):
    """One gated layer (fig. 2), its gates biased by the conditioning (eq. 4 and 5):

        v'    = tanh(W_v,f * v + b_v,f) * sigmoid(W_v,g * v + b_v,g)
        h_pre = W_h * h + W_vh * (W_v * v) + b_h
        h'    = h + W_1x1 * dropout(tanh(h_pre_f) * sigmoid(h_pre_g))   (no residual on type A)

    where b = V^T y for a label y (eq. 4) plus, with ``size``, a learnt bias per row and per
    column: eq. 5's location-dependent term V * s for the map s of one-hot coordinates,
    which tells every gate where in the image it is (beyond what its causal reach shows).
    The two stacks are separate methods because the sampler runs them at different rates
    (the vertical one once per row, the horizontal one once per sub-pixel).
    """

    def __init__(self, c_in: int, n: int, k: int, mask_type: MaskType, image_channels: int,
                 num_classes: int, size: tuple[int, int] | None, dropout: float, dilation: int = 1):
        super().__init__()
        in_groups = channel_groups(c_in, image_channels)
        hidden = channel_groups(n, image_channels)
        gates = hidden.repeat(2)  # f and g halves carry the same groups
        self.reach = dilation * (k // 2)  # rows above and columns to the left this layer adds
        self.vertical = vertical_conv(c_in, 2 * n, k, mask_type, dilation)
        self.horizontal = horizontal_conv(c_in, 2 * n, k, mask_type, in_groups, gates, dilation)
        self.v_to_h = nn.Conv2d(2 * n, 2 * n, 1)  # the vertical stack sees only rows above: no mask
        self.h_out = pointwise_conv(n, n, hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.residual = mask_type == "B"
        # conditioning biases for both stacks (4n = 2n vertical + 2n horizontal): small random
        # label codes (an untrained model's samples already differ by label), zero positions
        self.label_bias = nn.Embedding(num_classes, 4 * n) if num_classes else None
        if self.label_bias is not None:
            nn.init.normal_(self.label_bias.weight, std=0.1)
        self.row_bias = nn.Parameter(torch.zeros(4 * n, size[0], 1)) if size else None
        self.col_bias = nn.Parameter(torch.zeros(4 * n, 1, size[1])) if size else None

    def conditioning(self, labels: torch.Tensor | None, rows: slice, stack: Stack,
                     cols: slice = slice(None), context: torch.Tensor | None = None) -> torch.Tensor | None:
        """Gate bias (B or 1, 2n, R or 1, W or 1) of one stack for image rows ``rows`` (and
        columns ``cols``), or None. ``context`` (B, 4n, H, W): a bias map over the whole image
        (eq. 5's V * s) computed from what the model may already see everywhere, e.g. the
        slices drawn before this one in the subscale order."""
        half = 0 if stack == "vertical" else 1  # of the 4n bias channels: this stack's 2n
        bias = None  # the small terms first, the whole-image context map last (one large add)
        if self.label_bias is not None and labels is not None:
            bias = self.label_bias(labels).chunk(2, dim=1)[half][:, :, None, None]  # (B, 2n, 1, 1)
        if self.row_bias is not None:
            pos = (self.row_bias.chunk(2)[half][:, rows] + self.col_bias.chunk(2)[half][:, :, cols])[None]
            bias = pos if bias is None else bias + pos  # (1 or B, 2n, R, W)
        if context is not None:
            ctx = context.chunk(2, dim=1)[half][:, :, rows, cols]
            bias = ctx if bias is None else ctx + bias.to(ctx.dtype)
        return bias

    def vertical_step(self, v: torch.Tensor, labels: torch.Tensor | None,
                      rows: slice, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """v (B, c_in, R, W) -> v' (B, n, R, W) and the link W_vh * v_pre (B, 2n, R, W) to the
        horizontal stack; row r of both depends only on image rows above r."""
        v_pre = self.vertical(v)
        link = self.v_to_h(v_pre)
        bias = self.conditioning(labels, rows, "vertical", context=context)
        return gate(v_pre if bias is None else v_pre + bias), link

    def horizontal_step(self, h: torch.Tensor, link: torch.Tensor, labels: torch.Tensor | None,
                        rows: slice, cols: slice = slice(None), context: torch.Tensor | None = None) -> torch.Tensor:
        """h (B, c_in, R, W), link (B, 2n, R, W) -> h' (B, n, R, W) for image rows ``rows`` and
        columns ``cols``; row by row independent."""
        h_pre = self.horizontal(h) + link
        bias = self.conditioning(labels, rows, "horizontal", cols, context)
        h_new = self.h_out(self.dropout(gate(h_pre if bias is None else h_pre + bias)))
        return h + h_new if self.residual else h_new
