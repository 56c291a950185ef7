"""Gated PixelCNN: an autoregressive model with an exact discrete likelihood.

van den Oord et al. 2016, "Conditional Image Generation with PixelCNN Decoders",
https://arxiv.org/abs/1606.05328

The image is factorised in raster order, channel by channel inside a pixel (eq. 1):

    p(x | y) = prod_{i=1}^{H W} prod_{c=1}^{C} p(x_{i,c} | x_{<i}, x_{i,<c}, y)

and each factor is either a 256-way softmax over the 8-bit levels (``output: categorical``,
the paper's) or a mixture of discretised logistics (``output: logistic_mixture``,
Salimans et al. 2017, "PixelCNN++", https://arxiv.org/abs/1701.05517, eq. 2), which puts
nearby levels close together by construction: 3 numbers per component instead of 256
free logits, so it learns the ordering of intensities instead of having to find it in the
data. Inside a pixel the channels stay autoregressive through the masks (no linear
channel coupling as in PixelCNN++). The network
(:mod:`genpipe.models.nets.masked`) is a first gated layer of mask type A (the current
sub-pixel hidden) followed by type-B gated layers with vertical and horizontal stacks
(no blind spot) and residual connections in the horizontal stack. A conditional model
adds a learnt class embedding as a bias to every gate (eq. 4); every model also adds a
learnt bias per row and per column (eq. 5 with the coordinates as the spatial map), so
that a gate whose causal reach ends above the digit still knows where it is.

Either way -log p(x) is a sum of exact code lengths over the 256 levels, so the log-likelihood is
exact and bits/dim need no dequantisation correction. Training is one parallel pass
(teacher forcing). Sampling is sequential: per row, one pass of the vertical stack over
the rows within reach above it; per sub-pixel, one pass of the horizontal stack over that
row; each level drawn by inverse CDF from a uniform taken on the CPU from the caller's
generator (the same images for a seed on any device, up to float rounding at a bin edge).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from genpipe.errors import InputError
from genpipe.models.base import ImageSpec, LogLikelihood, OptimizerGroup, check_labels
from genpipe.models.distributions import HALF_BIN, discretized_logistic_log_prob
from genpipe.models.nets.masked import GatedLayer, channel_groups, pointwise_conv
from genpipe.models.pixelcnn.config import SUBSCALE, PixelCNNSamplingConfig, PixelCNNConfig

LEVELS = 256  # 8-bit sub-pixels


def to_levels(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images -> long levels 0..255 (same shape)."""
    return ((x + 1.0) * 127.5).round().clamp(0, LEVELS - 1).long()


def categorical_log_prob(logits: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[level] per sub-pixel: logits (B, C, 256, H, W), levels (B, C, H, W)."""
    log_p = F.log_softmax(logits.float(), dim=2)
    return log_p.gather(2, levels.unsqueeze(2)).squeeze(2)  # (B, C, H, W)


LEVEL_VALUES = torch.arange(LEVELS, dtype=torch.float32) / 127.5 - 1.0  # level k as a pixel in [-1, 1]
LEVEL_EDGES = LEVEL_VALUES[:-1].double() + HALF_BIN  # the 255 bin edges, between level k and k + 1
MIN_LOG_SCALE = -7.0  # PixelCNN++'s floor on a logistic's log scale


def logistic_mixture_log_prob(params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log P(x) under a mixture of discretised logistics.

    params (B, C, 3M, H, W): M mixture logits, M means, M log scales per sub-pixel;
    x (B, C, K, H, W) levels as pixels in [-1, 1] (K = 1 for the data, 256 for every level)
    -> (B, C, K, H, W).
    """
    m = params.shape[2] // 3
    params = params.float()
    log_pi = F.log_softmax(params[:, :, :m], dim=2).unsqueeze(2)  # (B, C, 1, M, H, W)
    mean = params[:, :, m : 2 * m].unsqueeze(2)
    log_scale = params[:, :, 2 * m :].clamp_min(MIN_LOG_SCALE).unsqueeze(2)
    per_component = discretized_logistic_log_prob(x.unsqueeze(3), mean, log_scale)  # (B, C, K, M, H, W)
    return torch.logsumexp(log_pi + per_component, dim=3)


def logistic_mixture_level_log_probs(params: torch.Tensor) -> torch.Tensor:
    """log P(level k) for all 256 levels, (B, C, 256, ...) from params (B, C, 3M, ...): the
    mixture's CDF at the 255 bin edges, differenced, in float64 (what the sampler draws from;
    one sigmoid per edge and component instead of the full log-probability per level)."""
    m = params.shape[2] // 3
    p = params.double()
    pi = F.softmax(p[:, :, :m], dim=2).unsqueeze(2)  # (B, C, 1, M, ...)
    mean = p[:, :, m : 2 * m].unsqueeze(2)
    inv_scale = torch.exp(-p[:, :, 2 * m :].clamp_min(MIN_LOG_SCALE)).unsqueeze(2)
    edges = LEVEL_EDGES.to(params.device).view(1, 1, LEVELS - 1, 1, *([1] * (params.dim() - 3)))
    cdf = (pi * torch.sigmoid((edges - mean) * inv_scale)).sum(3)  # (B, C, 255, ...)
    zero, one = torch.zeros_like(cdf[:, :, :1]), torch.ones_like(cdf[:, :, :1])
    probs = torch.diff(torch.cat([zero, cdf, one], dim=2), dim=2)  # (B, C, 256, ...), the edge bins take the tails
    return probs.clamp_min(1e-300).log()


def inverse_cdf_draw(logits: torch.Tensor, u: torch.Tensor, temperature: float) -> torch.Tensor:
    """The first level k with u <= CDF(k) under softmax(logits / T): logits (B, K), u (B,) in [0, 1)."""
    cdf = F.softmax(logits.float() / temperature, dim=-1).cumsum(-1)  # (B, 256)
    level = torch.searchsorted(cdf, u[:, None].to(cdf.dtype).contiguous()).squeeze(1)  # (B,)
    return level.clamp(max=cdf.shape[-1] - 1)  # u above the float CDF's last value


class PixelCNN(nn.Module):
    """Gated layers (type A, then type B) -> ReLU, masked 1x1, ReLU, masked 1x1 -> logits.

    With ``ordering: subscale`` (Menick & Kalchbrenner 2019, "Generating High Fidelity Images
    with Subscale Pixel Networks", https://arxiv.org/abs/1812.01608; the coarse-to-fine idea of
    Reed et al. 2017) the H x W image is cut into K = 4 slices of (H/2) x (W/2) by a 2 x 2
    ``pixel_unshuffle``: slice k holds the pixels at offset (k // 2, k % 2) of every 2 x 2 block.
    The slices are generated one after another, each in raster order by the same masked
    network, whose gates get one more bias map (eq. 5) from an unmasked context network over
    the slices already drawn and the slice's index:

        p(x) = prod_k prod_{i in slice k} p(x_i | x_{<i in slice k}, slices < k)

    still an exact likelihood, in a coarse-to-fine order: the first slice is an (H/2) x (W/2)
    image whose whole extent the masked stack sees, and the other three fill in around it.
    With ``first_slice: separate`` (SPN's separate first decoder) the first slice is drawn by
    its own raster PixelCNN (``self.first``) and the shared network draws only the later ones;
    ``fill_slices`` < 3 trains on an unbiased, cheaper estimate of the same loss
    (:meth:`sampled_slices_log_prob`).
    """

    def __init__(self, cfg: PixelCNNConfig, spec: ImageSpec):
        super().__init__()
        c, height, width = spec.shape
        n = cfg.hidden_channels
        if n < c:
            raise InputError(f"pixelcnn.hidden_channels: {n} is fewer than the {c} image channels")
        subscale = cfg.ordering == "subscale"
        if subscale and (height % SUBSCALE or width % SUBSCALE):
            raise InputError(f"pixelcnn.ordering: subscale needs an even image side, got {height}x{width} "
                             "(data.resolution)")
        self.cfg, self.spec = cfg, spec
        self.slices = SUBSCALE**2 if subscale else 1
        self.grid = (height // SUBSCALE, width // SUBSCALE) if subscale else (height, width)  # what one pass sees
        classes = spec.num_classes if cfg.conditional else 0
        size = self.grid if cfg.position_bias == "rows_and_columns" else None
        dilations = [cfg.dilations[i % len(cfg.dilations)] for i in range(cfg.num_layers - 1)]  # type-B layers, cycled
        self.layers = nn.ModuleList(
            [GatedLayer(c, n, cfg.first_kernel_size, "A", c, classes, size, cfg.dropout)]
            + [GatedLayer(n, n, cfg.kernel_size, "B", c, classes, size, cfg.dropout, d) for d in dilations]
        )
        hidden = channel_groups(n, c)
        self.per_channel = LEVELS if cfg.output == "categorical" else 3 * cfg.mixtures  # head outputs per sub-pixel
        self.head = nn.Sequential(
            nn.ReLU(), pointwise_conv(n, n, hidden, hidden),
            nn.ReLU(), pointwise_conv(n, c * self.per_channel, hidden, torch.arange(c).repeat_interleave(self.per_channel)),
        )
        # rows above (and columns to the left) that the output at a pixel can see: what the
        # sampler must keep in view
        self.reach = sum(layer.reach for layer in self.layers)
        self.context_net = self.context_proj = None
        if subscale:  # slices drawn so far (zeros for the others) + the slice's one-hot index
            m, k = cfg.context_channels, self.slices
            convs: list[nn.Module] = [nn.Conv2d(c * k + k, m, 3, padding=1)]
            for _ in range(cfg.context_layers - 1):
                convs += [nn.ELU(), nn.Conv2d(m, m, 3, padding=1)]
            self.context_net = nn.Sequential(*convs, nn.ELU())
            self.context_proj = nn.ModuleList([nn.Conv2d(m, 4 * n, 1) for _ in self.layers])  # both stacks' gates
            for proj in self.context_proj:  # starts as the unconditioned network
                nn.init.zeros_(proj.weight)
                nn.init.zeros_(proj.bias)
        # the first slice's own network: a raster PixelCNN of the same size on the slice grid
        self.first = None
        if subscale and cfg.first_slice == "separate":
            first_cfg = cfg.model_copy(update={"ordering": "raster", "first_slice": "shared"})
            self.first = PixelCNN(first_cfg, ImageSpec((c, *self.grid), spec.num_classes))

    # -- subscale slices ----------------------------------------------------------------
    def to_slices(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, K, H/2, W/2), slice k = the pixels at offset (k // 2, k % 2)
        of every 2 x 2 block; raster ordering: K = 1, the image itself."""
        if self.slices == 1:
            return x.unsqueeze(2)
        b, c, height, width = x.shape
        return F.pixel_unshuffle(x, SUBSCALE).view(b, c, self.slices, height // SUBSCALE, width // SUBSCALE)

    def from_slices(self, slices: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_slices`."""
        b, c, k, h, w = slices.shape
        return slices[:, :, 0] if k == 1 else F.pixel_shuffle(slices.reshape(b, c * k, h, w), SUBSCALE)

    def slice_context(self, slices: torch.Tensor, index: torch.Tensor) -> list[torch.Tensor]:
        """Gate bias maps (B, 4n, H/2, W/2), one per layer, for drawing slice ``index`` (B,) given
        ``slices`` (B, C, K, H/2, W/2), of which only those before ``index`` are read."""
        b, c, k, h, w = slices.shape
        drawn = (torch.arange(k, device=slices.device) < index[:, None]).to(slices.dtype)  # (B, K)
        seen = (slices * drawn[:, None, :, None, None]).reshape(b, c * k, h, w)
        which = F.one_hot(index, k).to(slices.dtype)[:, :, None, None].expand(b, k, h, w)
        features = self.context_net(torch.cat([seen, which], dim=1))
        return [proj(features) for proj in self.context_proj]

    def slice_outputs(self, x: torch.Tensor, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's output for every sub-pixel in one parallel pass (teacher forcing), every
        slice at once: (out (K * B, C, P, h, w), the slices it predicts (K * B, C, h, w)),
        slice-major (raster: K = 1, the image itself)."""
        if self.slices == 1:
            return self.outputs(x, labels), x
        sl = self.to_slices(x)
        b, k = sl.shape[0], sl.shape[2]
        rows = torch.arange(b, device=x.device).repeat(k)
        index = torch.arange(k, device=x.device).repeat_interleave(b)  # slice-major (K * B,)
        return self.teacher_forced(sl, rows, index, labels)

    def teacher_forced(self, sl: torch.Tensor, rows: torch.Tensor, index: torch.Tensor,
                       labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's output for slice ``index[i]`` of image ``rows[i]`` of ``sl`` (B, C, K, h, w),
        given the slices before it: (out (N, C, P, h, w), the slices it predicts (N, C, h, w))."""
        target = sl[rows, :, index]
        y = None if labels is None else labels[rows]
        if self.first is None:
            return self.outputs(target, y, context=self.slice_context(sl[rows], index)), target
        # the first slices through their own network (no context), the others through this one
        first, later = (index == 0).nonzero().squeeze(1), (index != 0).nonzero().squeeze(1)
        out = torch.cat([
            self.first.outputs(target[first], None if y is None else y[first]),
            self.outputs(target[later], None if y is None else y[later],
                         context=self.slice_context(sl[rows[later]], index[later])),
        ])
        return out[torch.cat([first, later]).argsort()], target  # back in the order of ``index``

    def sampled_slices_log_prob(self, x: torch.Tensor, labels: torch.Tensor | None, fill: int) -> torch.Tensor:
        """An unbiased estimate of the mean log p per sub-pixel that teacher-forces, per image,
        the first slice and ``fill`` of the K - 1 later ones (drawn at random, without
        replacement, from torch's global generator), each of those weighted (K - 1) / fill:
        the later slices are near-determined by the first (they fill in around it), so their
        terms vary little, and the network sees (1 + fill) / K of the full loss's slices."""
        sl = self.to_slices(x)
        b, k = sl.shape[0], sl.shape[2]
        later = torch.rand(b, k - 1, device=x.device).argsort(dim=1)[:, :fill] + 1  # (B, fill)
        index = torch.cat([torch.zeros(b, dtype=torch.long, device=x.device), later.T.reshape(-1)])
        rows = torch.arange(b, device=x.device).repeat(1 + fill)  # slice-major, as index
        lp = self.log_prob(*self.teacher_forced(sl, rows, index, labels)).flatten(1).sum(1)  # (N,)
        total = lp[:b].sum() + (k - 1) / fill * lp[b:].sum()
        return total / (b * x[0].numel())

    def subpixel_log_probs(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """log p(x_i | everything before i in the model's order) per sub-pixel, (B, K, C, h, w)."""
        lp = self.log_prob(*self.slice_outputs(x, labels))  # (K * B, C, h, w)
        return lp.view(self.slices, x.shape[0], *lp.shape[1:]).transpose(0, 1)

    # -- the masked network ---------------------------------------------------------------
    def outputs(self, x: torch.Tensor, labels: torch.Tensor | None, top: int = 0,
                context: list[torch.Tensor] | None = None) -> torch.Tensor:
        """x (B, C, R, W) in [-1, 1], rows top..top+R-1 of one pass's grid -> the head's output
        (B, C, P, R, W), P = 256 logits or 3M mixture parameters per sub-pixel;
        outputs[..., i] see only the sub-pixels of x before i (and ``labels``, ``context``)."""
        return self.horizontal_outputs(x, self.vertical_links(x, labels, top, context), labels, top, context=context)

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(x_i | x_<i) per sub-pixel (B, C, H, W) from the head's output for images x."""
        if self.cfg.output == "categorical":
            return categorical_log_prob(out, to_levels(x))
        return logistic_mixture_log_prob(out, to_levels(x).unsqueeze(2).float() / 127.5 - 1.0).squeeze(2)

    def level_logits(self, out: torch.Tensor) -> torch.Tensor:
        """Unnormalised log-probabilities of all 256 levels, (B, C, 256, ...), from the head's output."""
        if self.cfg.output == "categorical":
            return out
        return logistic_mixture_level_log_probs(out)

    def vertical_links(self, x: torch.Tensor, labels: torch.Tensor | None, top: int = 0,
                       context: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """The vertical stack's input to the horizontal stack, per layer (B, 2n, R, W).
        Row r depends only on rows above r, so the sampler runs this once per row."""
        rows = slice(top, top + x.shape[2])
        v, links = x, []
        for layer, ctx in zip(self.layers, context or [None] * len(self.layers)):
            v, link = layer.vertical_step(v, labels, rows, ctx)
            links.append(link)
        return links

    def row_links(self, x: torch.Tensor, i: int, labels: torch.Tensor | None,
                  context: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """The vertical links of row ``i`` alone, (B, 2n, 1, W) per layer, from the rows within
        ``reach`` above it (the rows further up cannot change them)."""
        top = max(0, i - self.reach)
        return [link[:, :, -1:] for link in self.vertical_links(x[:, :, top : i + 1], labels, top, context)]

    def horizontal_outputs(self, x: torch.Tensor, links: list[torch.Tensor], labels: torch.Tensor | None,
                           top: int = 0, left: int = 0, context: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The horizontal stack and the head: x (B, C, R, W) and ``links`` -> (B, C, P, R, W),
        for grid rows from ``top`` and columns from ``left`` (x and links already cut there)."""
        rows, cols = slice(top, top + x.shape[2]), slice(left, left + x.shape[3])
        h = x
        for layer, link, ctx in zip(self.layers, links, context or [None] * len(self.layers)):
            h = layer.horizontal_step(h, link, labels, rows, cols, ctx)
        b, c, height, width = x.shape
        with torch.autocast(x.device.type, enabled=False):  # level parameters need float32: a bf16
            out = self.head(h.float())  # mean is ~half a level bin (2/255) coarse
        return out.view(b, c, self.per_channel, height, width)

    def _labels(self, labels: torch.Tensor | None) -> torch.Tensor | None:
        """The labels the network sees: None for an unconditional model."""
        return labels if self.cfg.conditional else None

    # -- the family interface ---------------------------------------------------------
    def optimizer_groups(self) -> dict[str, OptimizerGroup]:
        c = self.cfg
        return {"model": OptimizerGroup(list(self.parameters()), c.lr, c.betas, c.weight_decay)}

    def training_losses(self, x: torch.Tensor, labels: torch.Tensor | None, phase: str) -> dict[str, torch.Tensor]:
        labels = self._labels(labels)
        fill = self.cfg.fill_slices
        if fill < self.slices - 1:  # subscale: the first slice and ``fill`` of the others
            nll = -self.sampled_slices_log_prob(x, labels, fill)  # nats/dim, unbiased
        else:
            nll = -self.subpixel_log_probs(x, labels).mean()  # nats/dim
        return {"loss": nll, "bpd": (nll / math.log(2)).detach()}

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, labels: torch.Tensor | None = None,
                       generator: torch.Generator | None = None) -> LogLikelihood:
        """Exact log p(x) (no noise: ``generator`` is unused); for a conditional model given
        labels, log p(x | y) (labels ignored by an unconditional one).

        A conditional model without labels gives the exact marginal under a uniform class
        prior: log p(x) = logsumexp_y log p(x | y) - log K.
        """
        if not self.cfg.conditional:
            nats = self.subpixel_log_probs(x, None).flatten(1).sum(1)  # (B,)
            return LogLikelihood(nats=nats, kind="exact", estimator="autoregressive")
        if labels is not None:
            nats = self.subpixel_log_probs(x, labels).flatten(1).sum(1)  # (B,)
            return LogLikelihood(nats=nats, kind="exact", estimator="autoregressive-given-label")
        k = self.spec.num_classes
        per_class = torch.stack([
            self.subpixel_log_probs(x, torch.full((x.shape[0],), y, dtype=torch.long, device=x.device))
            .flatten(1).sum(1)
            for y in range(k)
        ])  # (K, B)
        nats = torch.logsumexp(per_class, dim=0) - math.log(k)
        return LogLikelihood(nats=nats, kind="exact", estimator="autoregressive-uniform-class-marginal")

    @torch.no_grad()
    def sample(
        self, n: int, labels: torch.Tensor | None = None, generator: torch.Generator | None = None, options=None
    ) -> torch.Tensor:
        opts: PixelCNNSamplingConfig = options if options is not None else self.cfg.sampling
        device = next(self.parameters()).device
        y = self._sampling_labels(n, labels, device)
        c, height, width = self.spec.shape
        u = torch.rand((n, c, height, width), generator=generator).to(device)  # CPU noise, one uniform per sub-pixel
        u = self.to_slices(u)  # (n, C, K, h, w): raster K = 1
        slices = torch.zeros_like(u)
        for k in range(self.slices):  # subscale: slice after slice, each given those before it
            if k == 0 and self.first is not None:
                slices[:, :, 0] = self.first._draw_grid(u[:, :, 0], y, opts.temperature, None)
                continue
            index = torch.full((n,), k, dtype=torch.long, device=device)
            context = self.slice_context(slices, index) if self.context_net is not None else None
            slices[:, :, k] = self._draw_grid(u[:, :, k], y, opts.temperature, context)
        return self.from_slices(slices).clamp(-1.0, 1.0)

    def _draw_grid(self, u: torch.Tensor, y: torch.Tensor | None, temperature: float,
                   context: list[torch.Tensor] | None) -> torch.Tensor:
        """One pass's grid (n, C, h, w) drawn sub-pixel by sub-pixel in raster order from the
        uniforms ``u`` (same shape): per row, one pass of the vertical stack over the rows
        within reach above it; per sub-pixel, one pass of the horizontal stack over that row."""
        n, c, height, width = u.shape
        x = torch.zeros_like(u)
        for i in range(height):
            links = self.row_links(x, i, y, context)  # the vertical stack: once per row
            for j in range(width):
                left = max(0, j - self.reach)  # the horizontal stack's output at j sees columns left..j
                row_links = [link[..., left : j + 1] for link in links]
                for ch in range(c):
                    out = self.horizontal_outputs(x[:, :, i : i + 1, left : j + 1], row_links, y, i, left, context)
                    out = out[:, ch : ch + 1, :, 0, -1]  # (n, 1, P) at column j
                    logits = self.level_logits(out)[:, 0]  # (n, 256)
                    level = inverse_cdf_draw(logits, u[:, ch, i, j], temperature)
                    x[:, ch, i, j] = level.float() / 127.5 - 1.0
        return x

    def nfe(self, options=None) -> int:
        """Sequential network passes per image: the vertical stack once per row, the horizontal
        stack and head once per sub-pixel (and, subscale, the context network once per slice
        that the shared network draws)."""
        c = self.spec.shape[0]
        height, width = self.grid
        context = self.slices - (self.first is not None) if self.context_net is not None else 0
        return self.slices * height * (1 + width * c) + context

    def _sampling_labels(self, n: int, labels: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        return check_labels(labels, n, num_classes=self.spec.num_classes, conditional=self.cfg.conditional,
                            family="pixelcnn", device=device)


def build_pixelcnn(cfg: PixelCNNConfig, spec: ImageSpec) -> PixelCNN:
    return PixelCNN(cfg, spec)
