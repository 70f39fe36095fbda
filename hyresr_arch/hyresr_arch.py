"""HyReSR-MoE: a hybrid restoration + super-resolution network.

One self-contained file (torch only): copy it into ``neosr/archs/`` or ``traiNNer/archs/``
and it registers its variants with that host; with BasicSR installed it registers with
BasicSR's ``ARCH_REGISTRY``; ``register_spandrel()`` teaches spandrel (and so chaiNNer-style
apps) to load its checkpoints.

Data flow (read the classes in this order)::

    input --pad--> stem --> encoder1 --down--> encoder2 --down--> bottleneck (+GlobalMix)
      --up + skip--> decoder2 --up + skip--> decoder1 --(+ stem)--> head (x scale) --crop--> + upsampled input

    HyReSRBlock:  x --FreqSplit--> low  (half resolution) --NAF gated conv------------\\
                                   high (full resolution) --window attn, FFN, MoE------ Fusion --> reparam conv --> + x

No full global attention: window attention is local, GlobalMix is linear in the pixel count.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "HyReSR",
    "VARIANTS",
    "hyresr_tiny",
    "hyresr_light",
    "hyresr",
    "hyresr_sr",
    "hyresr_rest",
    "fuse",
    "build_from_state_dict",
    "unwrap_state_dict",
    "HyReSRStateDictError",
    "register_spandrel",
]

FORMAT_VERSION = 1
# The U-Net halves the size twice and FreqSplit halves the bottleneck once more.
PAD_MULTIPLE = 8
# Finite "minus infinity" for masked logits: safe in fp16 and never NaN for fully masked rows.
MASK_VALUE = -1e4
# Learned residual scales start small (near identity) but not at zero, so every weight behind
# them gets a gradient from the first step.
RESIDUAL_INIT = 1e-2


def _store_hyperparameters(cls):
    """Record constructor kwargs (with defaults) in ``model.hyperparameters``.

    The same convention as ``spandrel.util.store_hyperparameters``, written here so that importing
    this file never imports spandrel.
    """
    init = cls.__init__
    spec = inspect.getfullargspec(init)
    assert spec.args == ["self"] and spec.varkw is None, "keyword-only arguments required"
    defaults = dict(spec.kwonlydefaults or {})

    @functools.wraps(init)
    def new_init(self, **kwargs):
        self.hyperparameters = {**defaults, **kwargs}
        init(self, **kwargs)

    cls.__init__ = new_init
    return cls


# --------------------------------------------------------------------------------------------
# Small building blocks
# --------------------------------------------------------------------------------------------


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of an NCHW tensor.

    Uses ``F.layer_norm`` on a channels-last view: statistics are computed in fp32 inside the
    kernel, so fp16 does not overflow (the ``(x - mean).pow(2)`` pattern does).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-6)
        return x.permute(0, 3, 1, 2)


class SimpleGate(nn.Module):
    """NAFNet's gate: split channels in two halves and multiply them."""

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b


class ChannelAttention(nn.Module):
    """Simplified channel attention (NAFNet's SCA): global average pool, 1x1 conv, rescale."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.proj(x.mean(dim=(2, 3), keepdim=True))


class GatedFFN(nn.Module):
    """Token-wise gated feed-forward (GEGLU) on (..., C) tensors; also the MoE expert."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden * 2)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.gelu(a) * b)


# --------------------------------------------------------------------------------------------
# (A) Frequency split
# --------------------------------------------------------------------------------------------


class FreqSplit(nn.Module):
    """Split features into a half-resolution low band and a full-resolution high band.

    low = dwconv(avgpool(x)); high = x - alpha * up(low). ``alpha`` is a learnable per-channel
    soft split (starts at 1): the draft's mitigation for split artifacts.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.smooth = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.alpha = nn.Parameter(torch.ones(1, dim, 1, 1))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        low = self.smooth(F.avg_pool2d(x, 2))  # B, C, H/2, W/2
        high = x - self.alpha * _upsample_to(low, x)  # B, C, H, W
        return low, high


def _upsample_to(x: Tensor, ref: Tensor) -> Tensor:
    return F.interpolate(x, size=ref.shape[-2:], mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------------------------
# (B) Low-frequency path: NAF-style gated convolutions
# --------------------------------------------------------------------------------------------


class NAFBlock(nn.Module):
    """NAFNet block: gated depthwise conv + channel attention, then a gated 1x1 FFN.

    Residual scales start near zero (NAFNet uses exactly zero) so a deep stack starts close to
    identity, yet every weight gets a gradient from the first step.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.pw1 = nn.Conv2d(dim, dim * 2, 1)
        self.dw = nn.Conv2d(dim * 2, dim * 2, 3, padding=1, groups=dim * 2)
        self.gate = SimpleGate()
        self.ca = ChannelAttention(dim)
        self.pw2 = nn.Conv2d(dim, dim, 1)
        self.norm2 = LayerNorm2d(dim)
        self.ffn1 = nn.Conv2d(dim, dim * 2, 1)
        self.ffn2 = nn.Conv2d(dim, dim, 1)
        self.beta = nn.Parameter(torch.full((1, dim, 1, 1), RESIDUAL_INIT))
        self.gamma = nn.Parameter(torch.full((1, dim, 1, 1), RESIDUAL_INIT))

    def forward(self, x: Tensor) -> Tensor:
        y = self.pw2(self.ca(self.gate(self.dw(self.pw1(self.norm1(x))))))
        x = x + self.beta * y
        y = self.ffn2(self.gate(self.ffn1(self.norm2(x))))
        return x + self.gamma * y


class LowFreqPath(nn.Module):
    def __init__(self, dim: int, depth: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[NAFBlock(dim) for _ in range(depth)])

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


# --------------------------------------------------------------------------------------------
# (C) High-frequency path: shifted-window attention, gated FFN, token MoE, optional noise
# --------------------------------------------------------------------------------------------


class WindowGeometry:
    """How one stage's feature map is padded and cut into attention windows.

    Windows are shifted by padding ``window // 2`` pixels at the top/left instead of rolling the
    map: the partition is the same as Swin's shifted windows, but nothing wraps around, so the
    only mask needed marks padded pixels. The mask is built from tensor ops on the runtime size
    (it stays correct in a dynamic-size ONNX graph) once per stage, and shared by its blocks.
    """

    def __init__(self, x: Tensor, window: int, kv_window: int, shift: bool) -> None:
        h, w = x.shape[-2:]
        self.window, self.kv_window = window, kv_window
        self.h, self.w = h, w
        s = window // 2 if shift else 0
        self.pads = (s, (-(w + s)) % window, s, (-(h + s)) % window)  # left, right, top, bottom
        valid = F.pad(x.new_ones(1, 1, h, w), self.pads)  # 1, 1, Hp, Wp
        self.hp, self.wp = valid.shape[-2:]
        valid = partition_kv(valid.permute(0, 2, 3, 1), window, kv_window)  # 1, nW, Nk, 1
        self.mask = ((1.0 - valid) * MASK_VALUE).permute(0, 1, 3, 2).unsqueeze(2)  # 1, nW, 1, 1, Nk

    def pad(self, x: Tensor) -> Tensor:  # B, H, W, C -> B, Hp, Wp, C
        left, right, top, bottom = self.pads
        return F.pad(x, (0, 0, left, right, top, bottom))

    def crop(self, x: Tensor) -> Tensor:  # B, Hp, Wp, C -> B, H, W, C
        left, _, top, _ = self.pads
        return x[:, top : top + self.h, left : left + self.w]


def partition(x: Tensor, window: int) -> Tensor:
    """B, Hp, Wp, C -> B, nW, window*window, C (non-overlapping windows)."""
    b, hp, wp, c = x.shape
    x = x.reshape(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, -1, window * window, c)


def merge(x: Tensor, window: int, hp: int, wp: int) -> Tensor:
    """Inverse of ``partition``: B, nW, window*window, C -> B, Hp, Wp, C."""
    b, _, _, c = x.shape
    x = x.reshape(b, hp // window, wp // window, window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)


def partition_kv(x: Tensor, window: int, kv_window: int) -> Tensor:
    """Key/value windows: B, Hp, Wp, C -> B, nW, kv_window**2, C.

    With ``kv_window > window`` each key window overlaps its neighbours (HAT's overlapping
    cross-attention) and is centred on its query window; outside the map it reads zeros, which
    the stage mask hides.
    """
    if kv_window == window:
        return partition(x, window)
    b, hp, wp, c = x.shape
    cols = F.unfold(x.permute(0, 3, 1, 2), kv_window, padding=(kv_window - window) // 2, stride=window)
    return cols.reshape(b, c, kv_window * kv_window, -1).permute(0, 3, 2, 1)


def relative_position_index(window: int, kv_window: int) -> Tensor:
    """Index into a ((window + kv_window - 1) ** 2)-entry bias table for every (query, key) pair."""
    # query i sits at i + off in its key window (off = (kv_window - window) // 2); the displacement
    # i + off - k, shifted by kv_window - 1 - off, lies in [0, window + kv_window - 2]
    q = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    k = torch.stack(torch.meshgrid(torch.arange(kv_window), torch.arange(kv_window), indexing="ij")).flatten(1)
    rel = q[:, :, None] - k[:, None, :] + (kv_window - 1)  # 2, Nq, Nk
    return rel[0] * (window + kv_window - 1) + rel[1]


class WindowAttention(nn.Module):
    """Window multi-head self-attention with relative position bias.

    Cosine attention with a clamped learnable temperature (Swin v2) keeps logits bounded, and
    scaled_dot_product_attention accumulates its softmax in fp32, so fp16/bf16 inference does not
    overflow.
    """

    def __init__(self, dim: int, heads: int, window: int, kv_window: int) -> None:
        super().__init__()
        self.heads, self.window, self.kv_window = heads, window, kv_window
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.full((heads, 1, 1), math.log(10.0)))
        self.rel_bias = nn.Parameter(torch.zeros(heads, (window + kv_window - 1) ** 2))
        nn.init.trunc_normal_(self.rel_bias, std=0.02)
        self.register_buffer("rel_index", relative_position_index(window, kv_window), persistent=False)

    def forward(self, x: Tensor, geo: WindowGeometry) -> Tensor:  # x: B, H, W, C
        b, _, _, c = x.shape
        d = c // self.heads
        qkv = geo.pad(self.qkv(x))  # B, Hp, Wp, 3C
        q, k, v = qkv.chunk(3, dim=-1)
        q = partition(q, self.window)  # B, nW, Nq, C
        k = partition_kv(k, self.window, self.kv_window)  # B, nW, Nk, C
        v = partition_kv(v, self.window, self.kv_window)
        q, k, v = (t.reshape(b, t.shape[1], t.shape[2], self.heads, d).transpose(2, 3) for t in (q, k, v))
        n_win = q.shape[1]
        # cosine similarity x clamped temperature: logits stay within +-100 in any precision;
        # SDPA's kernels accumulate the softmax in fp32
        # (norms in fp32: the zero vectors of padded pixels give 0/eps, and eps underflows in fp16)
        scale = self.logit_scale.float().clamp(max=math.log(100.0)).exp()  # heads, 1, 1
        q = (F.normalize(q.float(), dim=-1) * scale).to(v.dtype)
        k = F.normalize(k.float(), dim=-1).to(v.dtype)
        bias = (self.rel_bias.float()[:, self.rel_index] + geo.mask).to(v.dtype)  # 1, nW, heads, Nq, Nk
        bias = bias.expand(b, -1, -1, -1, -1).reshape(b * n_win, *bias.shape[2:])
        out = F.scaled_dot_product_attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), attn_mask=bias,
                                             scale=1.0)  # B*nW, heads, Nq, d
        out = out.reshape(b, n_win, self.heads, -1, d).transpose(2, 3).reshape(b, n_win, -1, c)
        out = geo.crop(merge(out, self.window, geo.hp, geo.wp))  # B, H, W, C
        return self.proj(out)


class TokenMoE(nn.Module):
    """Token-wise top-1 mixture of small gated-FFN experts.

    - Sparse dispatch: each token runs through exactly one expert; no capacity limit, so a
      token's output never depends on the rest of the batch.
    - The router is trained through the chosen expert's gate probability (output = p * expert).
    - Balancing needs nothing from the host's loop (no host has a hook for an auxiliary loss):
      a per-expert ``route_bias`` is added to the router logits only to pick the expert, and nudged
      under ``no_grad`` towards equal load after each training forward (loss-free balancing).
      It is a frozen ``nn.Parameter`` rather than a buffer so that every host's EMA (BasicSR's
      averages parameters only) averages it, and it is saved in every checkpoint; under DDP the
      load counts are all-reduced so all ranks make the same update.
    - Every expert runs on every forward, on an empty batch if no token chose it, so every
      parameter is in the graph (DDP works without ``find_unused_parameters``).
    """

    balance_rate = 0.05  # bias step (in logits) per training forward

    def __init__(self, dim: int, experts: int, hidden: int) -> None:
        super().__init__()
        self.router = nn.Linear(dim, experts)
        self.experts = nn.ModuleList(GatedFFN(dim, hidden) for _ in range(experts))
        self.route_bias = nn.Parameter(torch.zeros(experts), requires_grad=False)
        self.register_buffer("load", torch.zeros(experts), persistent=False)

    def forward(self, x: Tensor) -> Tensor:  # x: B, H, W, C
        tokens = x.reshape(-1, x.shape[-1])  # N, C
        with torch.autocast(device_type=x.device.type, enabled=False):
            # fp32 routing even when the model was cast with .half() (chaiNNer does)
            logits = F.linear(tokens.float(), self.router.weight.float(), self.router.bias.float())  # N, E
        probs = logits.softmax(dim=-1)
        choice = (logits + self.route_bias.float()).argmax(dim=-1)  # N; the bias steers selection only
        gate = probs.gather(1, choice[:, None]).to(tokens.dtype)  # N, 1
        if not torch.jit.is_tracing():
            self._update_load(choice)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            # clone(): under torch.inference_mode() index_add with a view of nonzero's output
            # takes a ~1000x slower path on CPU
            idx = (choice == e).nonzero().flatten().clone()
            y = expert(tokens.index_select(0, idx)) * gate.index_select(0, idx)
            out = out.index_add(0, idx, y.to(out.dtype))
        return out.reshape(x.shape)

    @torch.no_grad()
    def _update_load(self, choice: Tensor) -> None:
        counts = torch.zeros_like(self.load).scatter_add_(0, choice, torch.ones_like(choice, dtype=self.load.dtype))
        if self.training:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(counts)
            self.route_bias.add_(self.balance_rate * torch.sign(counts.mean() - counts))
        self.load.copy_(counts / counts.sum().clamp(min=1))


class NoiseInjection(nn.Module):
    """StyleGAN-style noise for generative texture (GAN training only; off in eval).

    Amplitude = learned per-channel strength (starts at 0) x the high band's own per-channel std.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: Tensor) -> Tensor:  # x: B, H, W, C
        if not self.training:
            return x
        std = x.detach().float().std(dim=(1, 2), keepdim=True).to(x.dtype)
        return x + self.strength * std * torch.randn_like(x)


class HighFreqPath(nn.Module):
    """(window attention + gated FFN) x depth, then the token MoE; all in token layout."""

    def __init__(self, dim: int, *, heads: int, window: int, kv_window: int, depth: int, ffn_ratio: float,
                 experts: int, expert_ratio: float, noise: bool) -> None:
        super().__init__()
        self.attn_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.attns = nn.ModuleList(WindowAttention(dim, heads, window, kv_window) for _ in range(depth))
        self.ffn_norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(depth))
        self.ffns = nn.ModuleList(GatedFFN(dim, round(dim * ffn_ratio)) for _ in range(depth))
        self.moe_norm = nn.LayerNorm(dim)
        self.moe = TokenMoE(dim, experts, round(dim * expert_ratio))
        self.noise = NoiseInjection(dim) if noise else None

    def forward(self, x: Tensor, geos: Sequence[WindowGeometry]) -> Tensor:  # x: B, C, H, W
        h = x.permute(0, 2, 3, 1)  # B, H, W, C
        for i, (an, attn, fn, ffn) in enumerate(zip(self.attn_norms, self.attns, self.ffn_norms, self.ffns)):
            h = h + attn(an(h), geos[i])
            h = h + ffn(fn(h))
        h = h + self.moe(self.moe_norm(h))
        if self.noise is not None:
            h = self.noise(h)
        return h.permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------
# (D) Cross-fusion and (E) re-parameterizable large-kernel conv
# --------------------------------------------------------------------------------------------


class Fusion(nn.Module):
    """Concat low/high bands, 1x1 conv back to ``dim``, reweight channels."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mix = nn.Conv2d(dim * 2, dim, 1)
        self.ca = ChannelAttention(dim)

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        return self.ca(self.mix(torch.cat([low, high], dim=1)))


class ReparamLargeKernelConv(nn.Module):
    """Depthwise large-kernel conv with train-time branches (large k x k, 3x3, 1x1, identity).

    All branches are linear and zero-padded "same", so ``fuse()`` folds them exactly into one
    depthwise k x k conv (smaller kernels padded to k and centred). Fusing is explicit, never a
    side effect of ``eval()``.
    """

    def __init__(self, dim: int, kernel_size: int) -> None:
        super().__init__()
        self.dim, self.kernel_size = dim, kernel_size
        self.large = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.small = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.point = nn.Conv2d(dim, dim, 1, groups=dim)
        self.fused: nn.Conv2d | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.fused is not None:
            return self.fused(x)
        return self.large(x) + self.small(x) + self.point(x) + x

    @torch.no_grad()
    def fuse(self) -> None:
        if self.fused is not None:
            return
        k = self.kernel_size
        weight = self.large.weight.clone()
        weight += F.pad(self.small.weight, [(k - 3) // 2] * 4)
        weight += F.pad(self.point.weight, [k // 2] * 4)
        weight[:, :, k // 2, k // 2] += 1.0  # identity
        self.fused = nn.Conv2d(self.dim, self.dim, k, padding=k // 2, groups=self.dim).to(weight)
        self.fused.weight.copy_(weight)
        self.fused.bias.copy_(self.large.bias + self.small.bias + self.point.bias)
        del self.large, self.small, self.point


# --------------------------------------------------------------------------------------------
# HyReSR block, GlobalMix, stages
# --------------------------------------------------------------------------------------------


class HyReSRBlock(nn.Module):
    """FreqSplit -> (low: NAF path at half resolution | high: attention + MoE) -> fusion -> reparam."""

    def __init__(self, dim: int, *, heads: int, window: int, kv_window: int, low_depth: int, high_depth: int,
                 ffn_ratio: float, experts: int, expert_ratio: float, kernel_size: int, noise: bool) -> None:
        super().__init__()
        self.split = FreqSplit(dim)
        self.low = LowFreqPath(dim, low_depth)
        self.high = HighFreqPath(dim, heads=heads, window=window, kv_window=kv_window, depth=high_depth,
                                 ffn_ratio=ffn_ratio, experts=experts, expert_ratio=expert_ratio, noise=noise)
        self.fusion = Fusion(dim)
        self.reparam = ReparamLargeKernelConv(dim, kernel_size)
        self.scale = nn.Parameter(torch.full((1, dim, 1, 1), 0.1))  # learned residual scale

    def forward(self, x: Tensor, geos: Sequence[WindowGeometry]) -> Tensor:
        low, high = self.split(x)
        low = _upsample_to(self.low(low), x)
        high = self.high(high, geos)
        return x + self.scale * self.reparam(self.fusion(low, high))


class GlobalMix(nn.Module):
    """Focused linear attention (FLatten) over all bottleneck tokens: O(N) in the token count.

    No positional table, so any (non-square) size works; a depthwise conv on the values restores
    locality and rank. The attention core runs in fp32 (the focusing power overflows in fp16).
    """

    def __init__(self, dim: int, heads: int, focus: float = 3.0) -> None:
        super().__init__()
        self.heads, self.focus = heads, focus
        self.norm = LayerNorm2d(dim)
        self.qkv = nn.Conv2d(dim, dim * 3, 1)
        self.dwc = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.gamma = nn.Parameter(torch.full((1, dim, 1, 1), RESIDUAL_INIT))

    def _focus(self, t: Tensor) -> Tensor:
        t = F.relu(t) + 1e-6
        norm = t.norm(dim=-1, keepdim=True)
        t = F.normalize(t, dim=-1) ** self.focus  # normalised before the power: no overflow
        return F.normalize(t, dim=-1) * norm

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=1)
        local = self.dwc(v)
        with torch.autocast(device_type=x.device.type, enabled=False):
            q, k, vf = (t.float().reshape(b, self.heads, c // self.heads, h * w).transpose(-2, -1) for t in (q, k, v))
            q, k = self._focus(q), self._focus(k)  # B, heads, N, d
            kv = (k.transpose(-2, -1) @ vf) / (h * w)  # B, heads, d, d (mean over tokens)
            denom = q @ k.mean(dim=2, keepdim=True).transpose(-2, -1)  # B, heads, N, 1
            out = (q @ kv) / (denom + 1e-6)
        out = out.transpose(-2, -1).reshape(b, c, h, w).to(x.dtype)
        return x + self.gamma * self.proj(out + local)


class Stage(nn.Module):
    """A sequence of HyReSR blocks at one resolution; shifted and plain windows alternate."""

    def __init__(self, dim: int, depth: int, *, window: int, kv_window: int, high_depth: int, global_mix: bool,
                 **block_kw) -> None:
        super().__init__()
        self.window, self.kv_window, self.high_depth = window, kv_window, high_depth
        heads = next(h for h in range(max(1, dim // 16), 0, -1) if dim % h == 0)  # ~16 channels per head
        self.blocks = nn.ModuleList(
            HyReSRBlock(dim, heads=heads, window=window, kv_window=kv_window, high_depth=high_depth, **block_kw)
            for _ in range(depth))
        self.global_mix = GlobalMix(dim, heads) if global_mix else None

    def forward(self, x: Tensor) -> Tensor:
        # window geometry (pads + padding masks) built once per stage, shared by all blocks
        geos = [WindowGeometry(x, self.window, self.kv_window, shift) for shift in (False, True)]
        layer = 0
        for block in self.blocks:
            x = block(x, [geos[(layer + i) % 2] for i in range(self.high_depth)])
            layer += self.high_depth
        if self.global_mix is not None:
            x = self.global_mix(x)
        return x


class Downsample(nn.Module):
    """x0.5 resolution: 3x3 conv to dim_out/4 channels, PixelUnshuffle(2)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        assert dim_out % 4 == 0, "stage widths after the first must be multiples of 4"
        self.conv = nn.Conv2d(dim_in, dim_out // 4, 3, padding=1)
        self.shuffle = nn.PixelUnshuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.shuffle(self.conv(x))


class Upsample(nn.Module):
    """x2 resolution: 1x1 conv to dim_out*4 channels, PixelShuffle(2) (the next stage's blocks
    do the spatial work; a 3x3 here would hold a third of a small variant's parameters)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim_in, dim_out * 4, 1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.shuffle(self.conv(x))


class SkipFusion(nn.Module):
    """MSG skip: concat decoder and matching encoder features, 1x1 conv."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mix = nn.Conv2d(dim * 2, dim, 1)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.mix(torch.cat([x, skip], dim=1))


# --------------------------------------------------------------------------------------------
# Reconstruction heads
# --------------------------------------------------------------------------------------------


def _near_zero_init(conv: nn.Conv2d) -> None:
    """Output convs start near zero: the network starts at its bilinear residual (~bicubic quality,
    not far below it), and unlike an exact zero every weight behind it still gets a gradient."""
    nn.init.normal_(conv.weight, std=1e-3)
    nn.init.zeros_(conv.bias)


class PixelShuffleHead(nn.Module):
    """3x3 conv to out_ch * scale^2, PixelShuffle(scale); scale 1 is a plain conv."""

    def __init__(self, dim: int, out_ch: int, scale: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, out_ch * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)
        _near_zero_init(self.conv)

    def forward(self, x: Tensor) -> Tensor:
        return self.shuffle(self.conv(x))


class DySampleHead(nn.Module):
    """DySample (Liu et al. 2023): learned point sampling of an LR image-space map.

    A 3x3 conv makes out_ch LR channels; per output pixel a learned offset (dynamic scope,
    starting near zero = plain bilinear upsampling) moves the sampling point; grid_sample reads it.
    Needs ONNX opset >= 16 (grid_sample).
    """

    def __init__(self, dim: int, out_ch: int, scale: int) -> None:
        super().__init__()
        self.scale = scale
        self.to_img = nn.Conv2d(dim, out_ch, 3, padding=1)
        _near_zero_init(self.to_img)
        self.offset = nn.Conv2d(dim, 2 * scale * scale, 1)
        self.scope = nn.Conv2d(dim, 2 * scale * scale, 1)
        nn.init.normal_(self.offset.weight, std=1e-3)
        nn.init.zeros_(self.offset.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        s = self.scale
        img = self.to_img(x)
        # sampling positions in fp32: half precision cannot address pixels of a wide image
        offset = (self.offset(x) * self.scope(x).sigmoid()).float()  # B, 2*s*s, H, W (in LR pixels)
        offset = F.pixel_shuffle(offset, s)  # B, 2, sH, sW
        # centres of the output pixels in LR pixel coordinates
        ys = (torch.arange(h * s, device=x.device, dtype=torch.float32) + 0.5) / s - 0.5
        xs = (torch.arange(w * s, device=x.device, dtype=torch.float32) + 0.5) / s - 0.5
        gy = ys.view(1, -1, 1) + offset[:, 1]
        gx = xs.view(1, 1, -1) + offset[:, 0]
        grid = torch.stack([(gx + 0.5) * 2 / w - 1, (gy + 0.5) * 2 / h - 1], dim=-1)  # B, sH, sW, 2
        out = F.grid_sample(img.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        return out.to(img.dtype)


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------

Upsampler = Literal["pixelshuffle", "dysample"]
UPSAMPLERS: tuple[str, ...] = ("pixelshuffle", "dysample")


@_store_hyperparameters
class HyReSR(nn.Module):
    """HyReSR-MoE. Keyword-only, typed arguments; every one of them can be read back from a
    state dict (``build_from_state_dict``)."""

    def __init__(
        self,
        *,
        in_ch: int = 3,
        out_ch: int = 3,
        scale: int = 4,
        dims: tuple[int, int, int] = (48, 96, 192),
        depths: tuple[int, int, int] = (4, 6, 8),
        window: int = 8,
        overlap: float = 0.0,
        experts: int = 4,
        expert_ratio: float = 1.0,
        ffn_ratio: float = 2.0,
        low_depth: int = 1,
        high_depth: int = 1,
        global_mix: bool = True,
        kernel_size: int = 13,
        upsampler: Upsampler = "pixelshuffle",
        noise: bool = False,
    ) -> None:
        super().__init__()
        _check_config(in_ch=in_ch, out_ch=out_ch, scale=scale, dims=dims, depths=depths, window=window,
                      overlap=overlap, experts=experts, kernel_size=kernel_size, upsampler=upsampler,
                      ratios=(overlap, ffn_ratio, expert_ratio))
        self.in_ch, self.out_ch, self.scale = in_ch, out_ch, scale
        kv_window = window + round(window * overlap)
        # What tensor shapes cannot tell, as integers (ratios in thousandths), saved in the state
        # dict as "hyresr_meta" and read back by build_from_state_dict. A plain attribute, not a
        # buffer: .half(), EMA buffer averaging (AveragedModel(use_buffers=True)) must not touch it.
        self._meta = torch.tensor(
            [FORMAT_VERSION, scale, in_ch, out_ch, window, _milli(overlap), _milli(ffn_ratio), _milli(expert_ratio)])

        block_kw = dict(window=window, kv_window=kv_window, low_depth=low_depth, high_depth=high_depth,
                        ffn_ratio=ffn_ratio, experts=experts, expert_ratio=expert_ratio, kernel_size=kernel_size,
                        noise=noise)
        d1, d2, d3 = dims
        self.stem = nn.Conv2d(in_ch, d1, 3, padding=1)
        self.encoder1 = Stage(d1, depths[0], global_mix=False, **block_kw)
        self.down1 = Downsample(d1, d2)
        self.encoder2 = Stage(d2, depths[1], global_mix=False, **block_kw)
        self.down2 = Downsample(d2, d3)
        self.bottleneck = Stage(d3, depths[2], global_mix=global_mix, **block_kw)
        self.up2 = Upsample(d3, d2)
        self.skip2 = SkipFusion(d2)
        self.decoder2 = Stage(d2, depths[1], global_mix=False, **block_kw)
        self.up1 = Upsample(d2, d1)
        self.skip1 = SkipFusion(d1)
        self.decoder1 = Stage(d1, depths[0], global_mix=False, **block_kw)
        if upsampler == "dysample":
            self.head_dysample = DySampleHead(d1, out_ch, scale)
        else:
            self.head = PixelShuffleHead(d1, out_ch, scale)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.in_ch)
        h, w = x.shape[-2:]
        feat = self.stem(_pad_to_multiple(x, PAD_MULTIPLE))  # B, d1, Hp, Wp
        e1 = self.encoder1(feat)
        e2 = self.encoder2(self.down1(e1))  # B, d2, Hp/2, Wp/2
        m = self.bottleneck(self.down2(e2))  # B, d3, Hp/4, Wp/4
        d2 = self.decoder2(self.skip2(self.up2(m), e2))
        d1 = self.decoder1(self.skip1(self.up1(d2), e1))
        head = self.head_dysample if hasattr(self, "head_dysample") else self.head
        out = head(d1 + feat)[..., : h * self.scale, : w * self.scale]
        return out + _global_residual(x, self.scale, self.out_ch)

    # -- the "hyresr_meta" entry of the state dict -----------------------------------------

    @property
    def hyresr_meta(self) -> Tensor:
        return self._meta.clone()

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "hyresr_meta"] = self._meta.clone()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "hyresr_meta"
        if key not in state_dict:
            if strict:
                missing_keys.append(key)
        elif not torch.equal(state_dict[key].cpu().long(), self._meta):
            error_msgs.append(f"hyresr_meta {state_dict[key].tolist()} describes another network than this one "
                              f"({self._meta.tolist()})")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if key in unexpected_keys:
            unexpected_keys.remove(key)

    # -- deployment helpers --------------------------------------------------------------

    def fuse(self) -> "HyReSR":
        """Fold every re-parameterizable conv into one conv, in place. Idempotent."""
        return fuse(self)

    @property
    def is_fused(self) -> bool:
        return all(m.fused is not None for m in self.modules() if isinstance(m, ReparamLargeKernelConv))

    def moe_loads(self) -> list[Tensor]:
        """Per-expert share of tokens in the last forward, one tensor per MoE layer."""
        return [m.load.clone() for m in self.modules() if isinstance(m, TokenMoE)]

    @property
    def variant(self) -> str:
        """The variant whose architecture numbers these are (scale, channels, head and noise may
        differ), or "custom"."""
        mine = _arch_numbers(self.hyperparameters)
        for name, cfg in VARIANTS.items():
            if _arch_numbers({**_DEFAULTS, **cfg}) == mine:
                return name
        return "custom"


def _milli(x: float) -> int:
    return round(x * 1000)


def _check_config(*, in_ch, out_ch, scale, dims, depths, window, overlap, experts, kernel_size, upsampler,
                  ratios) -> None:
    if in_ch not in (1, 3, 4) or out_ch not in (1, 3, 4):
        raise ValueError(f"HyReSR supports 1, 3 or 4 channels, got in_ch={in_ch}, out_ch={out_ch}")
    if scale not in (1, 2, 3, 4, 8):
        raise ValueError(f"HyReSR supports scales 1, 2, 3, 4 and 8, got scale={scale}")
    if upsampler not in UPSAMPLERS:
        raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {upsampler!r}")
    if upsampler == "dysample" and scale not in (2, 3, 4):
        raise ValueError(f"the dysample head supports scales 2, 3 and 4, got scale={scale}")
    if len(dims) != 3 or len(depths) != 3 or any(d % 4 for d in dims[1:]) or min(depths) < 1:
        raise ValueError(f"dims and depths need 3 entries each, dims[1:] multiples of 4, depths >= 1; "
                         f"got dims={dims}, depths={depths}")
    if window < 2 or window % 2 or experts < 1 or kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError("window must be even >= 2, experts >= 1, kernel_size odd >= 3")
    if not 0 <= overlap <= 1 or (window * overlap) % 2:
        raise ValueError(f"overlap must be in [0, 1] with window * overlap an even integer, got {overlap}")
    if any(r < 0 or abs(r * 1000 - round(r * 1000)) > 1e-9 for r in ratios):
        raise ValueError(f"overlap, ffn_ratio and expert_ratio take at most 3 decimals, got {ratios}")


def _check_input(x: Tensor, in_ch: int) -> None:
    if x.dim() != 4 or x.shape[1] != in_ch:
        raise ValueError(f"HyReSR expects an N x {in_ch} x H x W tensor, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"HyReSR expects a floating-point tensor in [0, 1], got {x.dtype}")


def _pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Reflect-pad bottom/right to a multiple (replicate where the image is too small to reflect)."""
    h, w = x.shape[-2:]
    # no early return when nothing is needed: a traced (ONNX) graph must keep the pad for other sizes
    ph, pw = (-h) % multiple, (-w) % multiple
    mode = "reflect" if ph < h and pw < w else "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def _global_residual(x: Tensor, scale: int, out_ch: int) -> Tensor:
    """The upsampled input, so the network learns only the residual (zero when channels differ)."""
    if x.shape[1] != out_ch:
        return torch.zeros((), dtype=x.dtype, device=x.device)
    if scale == 1:
        return x
    return F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)


def fuse(model: nn.Module) -> nn.Module:
    """Fuse every HyReSR re-parameterizable conv in ``model`` (in place) and return it."""
    for m in model.modules():
        if isinstance(m, ReparamLargeKernelConv):
            m.fuse()
    return model


# --------------------------------------------------------------------------------------------
# Variants: one constructor, a few numbers each
# --------------------------------------------------------------------------------------------

VARIANTS: dict[str, dict] = {
    # <= 300K params at x4: no GlobalMix, 2 experts, small windows
    "hyresr_tiny": dict(dims=(24, 32, 48), depths=(1, 1, 2), window=4, experts=2, expert_ratio=1.0,
                        ffn_ratio=1.0, global_mix=False, kernel_size=7),
    # <= 900K params at x4; one block per full-resolution stage (most of its time was spent there)
    "hyresr_light": dict(dims=(32, 48, 64), depths=(1, 2, 3), window=8, experts=3, expert_ratio=1.0,
                         ffn_ratio=1.5, global_mix=True, kernel_size=9),
    # the draft's default
    "hyresr": dict(dims=(48, 96, 192), depths=(4, 6, 8), window=8, experts=4, expert_ratio=1.0,
                   ffn_ratio=2.0, global_mix=True, kernel_size=13),
    # SR-heavy: overlapping key windows, two attention layers per high path
    "hyresr_sr": dict(dims=(48, 96, 192), depths=(4, 6, 8), window=8, overlap=0.5, experts=4, expert_ratio=1.0,
                      ffn_ratio=2.0, high_depth=2, global_mix=True, kernel_size=13),
    # restoration-heavy: deeper low path, fewer/smaller experts
    "hyresr_rest": dict(dims=(48, 96, 192), depths=(4, 6, 8), window=8, experts=2, expert_ratio=0.5,
                        ffn_ratio=2.0, low_depth=2, global_mix=True, kernel_size=13),
}

_DEFAULTS = dict(HyReSR.__init__.__wrapped__.__kwdefaults__)


def _arch_numbers(hp: dict) -> dict:
    """Hyperparameters that define a variant (not scale, channels, head or noise)."""
    skip = ("in_ch", "out_ch", "scale", "upsampler", "noise")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in hp.items() if k not in skip}


def _build(name: str, scale: int = 4, upscale: int | None = None, **overrides) -> HyReSR:
    # BasicSR option files pass `upscale`; traiNNer-redux always passes `scale`.
    scale = int(upscale if upscale is not None else scale)
    return HyReSR(**{**VARIANTS[name], **overrides, "scale": scale})


def hyresr_tiny(scale: int = 4, **kwargs) -> HyReSR:
    return _build("hyresr_tiny", scale, **kwargs)


def hyresr_light(scale: int = 4, **kwargs) -> HyReSR:
    return _build("hyresr_light", scale, **kwargs)


def hyresr(scale: int = 4, **kwargs) -> HyReSR:
    return _build("hyresr", scale, **kwargs)


def hyresr_sr(scale: int = 4, **kwargs) -> HyReSR:
    return _build("hyresr_sr", scale, **kwargs)


def hyresr_rest(scale: int = 4, **kwargs) -> HyReSR:
    return _build("hyresr_rest", scale, **kwargs)


BUILDERS = {f.__name__: f for f in (hyresr_tiny, hyresr_light, hyresr, hyresr_sr, hyresr_rest)}


# --------------------------------------------------------------------------------------------
# Reading a state dict back into a model
# --------------------------------------------------------------------------------------------


class HyReSRStateDictError(ValueError):
    """The state dict is not a (loadable) HyReSR state dict; the message says why."""


_WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model", "net_g")
_PREFIXES = ("module.", "netG.", "_orig_mod.", "model.")


def unwrap_state_dict(obj) -> dict[str, Tensor]:
    """The flat state dict inside a host checkpoint: BasicSR/neosr ``{"params_ema"|"params": sd}``,
    Lightning-style ``{"state_dict": sd}``; strips DDP ``module.``, ``netG.`` and torch.compile's
    ``_orig_mod.`` prefixes."""
    for _ in range(3):  # nested wrappers
        if isinstance(obj, dict) and "hyresr_meta" not in obj:
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None:
                obj = inner
    if not isinstance(obj, dict):
        raise HyReSRStateDictError(f"expected a state dict (a dict of tensors), got {type(obj).__name__}")
    return {_strip_prefixes(key): value for key, value in obj.items()}


def _strip_prefixes(key: str) -> str:
    while key.split(".")[0] not in _TOP_LEVEL:
        prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
        if prefix is None:
            break
        key = key[len(prefix):]
    return key


_TOP_LEVEL = ("hyresr_meta", "stem", "encoder1", "down1", "encoder2", "down2", "bottleneck", "up2", "skip2",
              "decoder2", "up1", "skip1", "decoder1", "head", "head_dysample")


def _count(sd: dict, prefix: str) -> int:
    """Number of consecutive ``prefix.<i>.`` entries."""
    n = 0
    while any(k.startswith(f"{prefix}.{n}.") for k in sd):
        n += 1
    return n


def read_hyperparameters(sd: dict[str, Tensor]) -> tuple[dict, bool]:
    """Every HyReSR constructor argument, read from a state dict; and whether it is fused."""
    if "hyresr_meta" not in sd or "stem.weight" not in sd:
        raise HyReSRStateDictError("not a HyReSR state dict (no 'hyresr_meta' / 'stem.weight' keys)")
    meta = [int(v) for v in sd["hyresr_meta"].tolist()]
    if meta[0] > FORMAT_VERSION or len(meta) < 8:
        raise HyReSRStateDictError(f"HyReSR checkpoint format {meta[0]} is newer than this file supports "
                                   f"({FORMAT_VERSION}); update hyresr_arch.py")
    _, scale, in_ch, out_ch, window, overlap_m, ffn_m, expert_m = meta[:8]
    try:
        b0 = "encoder1.blocks.0"
        d1 = sd["stem.weight"].shape[0]
        fused = f"{b0}.reparam.fused.weight" in sd
        hp = dict(
            in_ch=in_ch,
            out_ch=out_ch,
            scale=scale,
            dims=(d1, sd["down1.conv.weight"].shape[0] * 4, sd["down2.conv.weight"].shape[0] * 4),
            depths=tuple(_count(sd, f"{s}.blocks") for s in ("encoder1", "encoder2", "bottleneck")),
            window=window,
            overlap=overlap_m / 1000,
            experts=sd[f"{b0}.high.moe.router.weight"].shape[0],
            expert_ratio=expert_m / 1000,
            ffn_ratio=ffn_m / 1000,
            low_depth=_count(sd, f"{b0}.low.blocks"),
            high_depth=_count(sd, f"{b0}.high.attns"),
            global_mix="bottleneck.global_mix.qkv.weight" in sd,
            kernel_size=sd[f"{b0}.reparam.{'fused' if fused else 'large'}.weight"].shape[-1],
            upsampler="dysample" if "head_dysample.to_img.weight" in sd else "pixelshuffle",
            noise=f"{b0}.high.noise.strength" in sd,
        )
    except KeyError as err:
        raise HyReSRStateDictError(f"HyReSR state dict is missing key {err}") from None
    return hp, fused


def build_from_state_dict(state_dict) -> HyReSR:
    """A HyReSR with every hyperparameter read from ``state_dict`` (any variant, fused or not),
    with the weights loaded."""
    sd = unwrap_state_dict(state_dict)
    hp, fused = read_hyperparameters(sd)
    try:
        model = HyReSR(**hp)
    except ValueError as err:
        raise HyReSRStateDictError(f"HyReSR state dict describes an invalid network: {err}") from None
    if fused:
        model.fuse()
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as err:
        raise HyReSRStateDictError(f"HyReSR state dict does not match the network it describes: {err}") from None
    return model


# --------------------------------------------------------------------------------------------
# Host registration (neosr, traiNNer-redux, BasicSR) on import
# --------------------------------------------------------------------------------------------


def _neosr_scale() -> int:
    """neosr's archs read the scale from the option file given with -opt (net_opt()), which exits
    when there is none; so it is asked only when a network is built, and never fatally."""
    try:
        from neosr.archs.arch_util import net_opt

        return int(net_opt()[0])
    except (Exception, SystemExit):
        import warnings

        warnings.warn("HyReSR: could not read scale from neosr's options; using scale=4", stacklevel=3)
        return 4


def _neosr_builder(name: str):
    def build(scale: int | None = None, upscale: int | None = None, **kwargs) -> HyReSR:
        if scale is None and upscale is None:
            scale = _neosr_scale()
        return _build(name, scale or 4, upscale, **kwargs)

    build.__name__ = build.__qualname__ = name
    return build


def _register(registry, builders: dict) -> None:
    """Register each builder once; an existing entry (a re-import of this file) is kept."""
    known = getattr(registry, "_obj_map", {})
    for name, fn in builders.items():
        if name not in known and name.lower() not in known:
            registry.register(fn)


def _register_with_host(module_name: str) -> None:
    """Register with the host that imported this file: neosr or traiNNer-redux when it sits in
    their archs/ folder; otherwise BasicSR, if BasicSR is already imported (import basicsr first,
    as in BasicSR-examples; ``registry_hooks.basicsr`` does)."""
    import sys

    if module_name.startswith("neosr."):
        from neosr.utils.registry import ARCH_REGISTRY

        _register(ARCH_REGISTRY, {n: _neosr_builder(n) for n in BUILDERS})
    elif module_name.startswith("traiNNer."):
        from traiNNer.utils.registry import ARCH_REGISTRY

        _register(ARCH_REGISTRY, BUILDERS)
    elif "basicsr.utils.registry" in sys.modules:
        register_basicsr()


def register_basicsr() -> None:
    """Register the variants with BasicSR's ARCH_REGISTRY (idempotent)."""
    from basicsr.utils.registry import ARCH_REGISTRY

    _register(ARCH_REGISTRY, BUILDERS)


# --------------------------------------------------------------------------------------------
# spandrel support (loads checkpoints in chaiNNer-style apps); spandrel is optional
# --------------------------------------------------------------------------------------------

# Sizes any input may have in PyTorch (the network pads internally). The ONNX graph traces the
# reflect padding, which needs H, W >= 8 there.
SUPPORTS_HALF = True
SUPPORTS_BFLOAT16 = True


def _make_spandrel_arch():
    from spandrel import Architecture, ImageModelDescriptor, ModelTiling, SizeRequirements
    from spandrel.util import KeyCondition

    class HyReSRArch(Architecture[HyReSR]):
        def __init__(self) -> None:
            super().__init__(
                id="HyReSR",
                detect=KeyCondition.has_all("hyresr_meta", "stem.weight", "down1.conv.weight",
                                            "encoder1.blocks.0.high.moe.router.weight",
                                            "encoder1.blocks.0.split.alpha"),
            )

        def load(self, state_dict) -> ImageModelDescriptor[HyReSR]:
            model = build_from_state_dict(state_dict)
            hp = model.hyperparameters
            tags = [model.variant, f"{hp['dims'][0]}dim", f"{hp['experts']}experts"]
            tags += ["fused"] if model.is_fused else []
            tags += ["dysample"] if hp["upsampler"] == "dysample" else []
            return ImageModelDescriptor(
                model,
                model.state_dict(),
                architecture=self,
                purpose="Restoration" if hp["scale"] == 1 else "SR",
                tags=tags,
                supports_half=SUPPORTS_HALF,
                supports_bfloat16=SUPPORTS_BFLOAT16,
                scale=hp["scale"],
                input_channels=hp["in_ch"],
                output_channels=hp["out_ch"],
                size_requirements=SizeRequirements(minimum=1),
                # GlobalMix and channel attention see the whole input: tiles differ slightly
                tiling=ModelTiling.SUPPORTED,
            )

    return HyReSRArch


def register_spandrel() -> None:
    """Add HyReSR to spandrel's MAIN_REGISTRY (idempotent), detected before every built-in."""
    from spandrel import MAIN_REGISTRY, ArchSupport

    if "HyReSR" in {a.architecture.id for a in MAIN_REGISTRY.architectures()}:
        return
    first = tuple(a.architecture.id for a in MAIN_REGISTRY.architectures("detection"))
    MAIN_REGISTRY.add(ArchSupport.from_architecture(_make_spandrel_arch()(), before=first))


_register_with_host(__name__)
