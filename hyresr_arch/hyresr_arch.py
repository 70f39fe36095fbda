"""HyReSR-MoE: a hybrid restoration + super-resolution network.

One self-contained file (torch only): copy it into ``neosr/archs/`` or ``traiNNer/archs/``
and it registers its variants with that host; with BasicSR installed it registers with
BasicSR's ``ARCH_REGISTRY``; ``register_spandrel()`` teaches spandrel (and so chaiNNer-style
apps) to load its checkpoints.

Data flow (read the classes in this order)::

    input --pad--> stem --> encoder1 --down--> encoder2 --down--> ... bottleneck (+GlobalMix)
      ... --up + skip--> decoder2 --up + skip--> decoder1 --(+ stem)--> head (x scale) --crop--> + upsampled input

    (one encoder/decoder pair per level above the bottleneck: three levels in the SR variants,
    five in hyresr_rest; ``naf_levels`` top levels use NAF blocks only)

    HyReSRBlock:  x --FreqSplit--> low  (half resolution) --NAF gated conv------------\\
                                   high (full resolution) --window attn, FFN, MoE------ Fusion --> reparam conv --> + x
    skip (MSG):   encoder feature + up(gated convs(down(encoder feature))), concat with the decoder, 1x1

Section labels follow the design draft: (A) frequency split, (B) low-frequency path, (C)
high-frequency path, (D) cross-fusion, (E) MSG residual, 3.2 GlobalMix, 3.4 re-parameterization.
Consecutive attention layers alternate plain and shifted windows across blocks and stages.

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

# Checkpoint format, stored in "hyresr_meta" (what tensor shapes cannot tell). Format 3 is network
# v2 (MSG skips, shift alternation across stages, grouped DySample); formats 1 and 2 describe the
# v1 network, which computes differently, so they are refused with a message, never mis-loaded.
FORMAT_VERSION = 3
# The last revision of this file that reads formats 1 and 2.
V1_REVISION = "9f4a82d"
# U-Net levels (dims/depths entries): a network of L levels pads its input to a multiple of 2**L.
MAX_LEVELS = 5
# Finite "minus infinity" for masked logits: safe in fp16 and never NaN for fully masked rows.
MASK_VALUE = -1e4
# Learned residual scales start small (near identity) but not at zero, so every weight behind
# them gets a gradient from the first step.
RESIDUAL_INIT = 1e-2


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
    """Token-wise gated feed-forward (GEGLU) on (..., C) tensors (TokenMoE stacks E of these)."""

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
        high = _add_scaled(x, self.alpha, _upsample2(low), sign=-1)  # x - alpha * up(low); B, C, H, W
        return low, high


def _add_scaled(x: Tensor, scale: Tensor, y: Tensor, sign: int = 1) -> Tensor:
    """x + sign * scale * y as one fused kernel (a learned residual scale), in x's dtype: under
    autocast the fp32 scale would otherwise promote the whole residual stream to fp32. A traced ONNX
    graph gets the plain form: the exporter turns addcmul's scalar into an fp32 constant, which breaks
    fp16 graphs."""
    scale, y = scale.to(x.dtype), y.to(x.dtype)
    if _tracing():
        return x + scale * y if sign > 0 else x - scale * y
    return torch.addcmul(x, scale, y, value=sign)


def _upsample2(x: Tensor) -> Tensor:
    """x2 bilinear (stage sizes are even: the input is padded to a multiple of 8). A scale factor,
    not a target size: the same result, and no size-derived float for a dynamic-shape compile."""
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


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
        x = _add_scaled(x, self.beta, y)
        y = self.ffn2(self.gate(self.ffn1(self.norm2(x))))
        return _add_scaled(x, self.gamma, y)


def naf_blocks(dim: int, depth: int) -> nn.Sequential:
    """``depth`` NAF blocks in a row: the low path, a NAF-only stage and the MSG skip's refinement."""
    return nn.Sequential(*[NAFBlock(dim) for _ in range(depth)])


class LowFreqPath(nn.Module):
    """NAF blocks on the half-resolution low band."""

    def __init__(self, dim: int, depth: int) -> None:
        super().__init__()
        self.blocks = naf_blocks(dim, depth)

    def forward(self, x: Tensor) -> Tensor:
        return self.blocks(x)


# --------------------------------------------------------------------------------------------
# (C) High-frequency path: shifted-window attention, gated FFN, token MoE, optional noise
# --------------------------------------------------------------------------------------------


class WindowGeometry:
    """How one stage's feature map is padded and cut into attention windows.

    Windows are shifted by padding ``window // 2`` pixels at the top/left instead of rolling the
    map: the partition is the same as Swin's shifted windows, but nothing wraps around, so the
    only mask needed marks padded keys. That mask depends on the key alone, so it is never added
    to the logits as an (nW, N, N) tensor: it is appended to each key as an extra channel, with a
    constant 1 appended to each query, so that q'.k' = q.k + mask (``augment``; the values get
    zero channels so that q, k and v keep one head size, which the fused SDPA kernels require).
    The attention bias then stays a (heads, N, N) table that SDPA broadcasts over every window.
    The mask is built from tensor ops on the runtime size (correct in a dynamic-size ONNX graph)
    once per stage and shared by its blocks; a geometry without padding needs none (except in a
    traced graph, which must stay correct for sizes that need it).
    """

    def __init__(self, x: Tensor, window: int, kv_window: int, shift: bool, head_dim: int) -> None:
        h, w = x.shape[-2:]
        self.window, self.kv_window = window, kv_window
        self.h, self.w = h, w
        s = window // 2 if shift else 0
        self.pads = (s, (-(w + s)) % window, s, (-(h + s)) % window)  # left, right, top, bottom
        self.hp, self.wp = h + self.pads[2] + self.pads[3], w + self.pads[0] + self.pads[1]
        self.padded = any(p != 0 for p in self.pads) or _tracing()
        self.key_mask: Tensor | None = None
        if self.padded or kv_window > window:
            # extra channels: enough to keep head sizes multiples of 8; the query's are (1, 0, ..., 0),
            # so only the key's first extra channel counts: 0 for a real pixel, MASK_VALUE for padding
            extra = 8 - head_dim % 8
            invalid = F.pad(x.new_zeros(1, h, w, extra), (0, 0, *self.pads), value=MASK_VALUE)  # 1, Hp, Wp, extra
            self.key_mask = partition_kv(invalid, window, kv_window, pad_value=MASK_VALUE)[0]  # nW, 1, Nk, extra
            self.query_one = F.pad(x.new_ones(1), (0, extra - 1))  # extra

    def pad(self, t: Tensor, b: int) -> Tensor:  # B*H*W, C -> B, Hp, Wp, C (or unchanged if no padding)
        if not self.padded:
            return t
        left, right, top, bottom = self.pads
        return F.pad(t.view(b, self.h, self.w, -1), (0, 0, left, right, top, bottom))

    def merge(self, x: Tensor, d: int) -> Tensor:
        """Attention output back to tokens, keeping the first ``d`` channels of each head:
        B*nW, heads, window*window, >=d -> B*H*W, heads*d (one permute, one copy)."""
        _, heads, _, dx = x.shape
        w = self.window
        x = x.view(-1, self.hp // w, self.wp // w, heads, w, w, dx)
        x = (x[..., :d] if dx > d else x).permute(0, 1, 4, 2, 5, 3, 6)  # B, nh, w, nw, w, heads, d
        if not self.padded:
            return x.reshape(-1, heads * d)
        left, _, top, _ = self.pads
        x = x.reshape(-1, self.hp, self.wp, heads * d)[:, top : top + self.h, left : left + self.w]
        return x.reshape(-1, heads * d)

    def augment(self, q: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Fold the key mask into the dot product (q, k, v: B*nW, heads, N, d)."""
        if self.key_mask is None:
            return q, k, v
        n_win, _, n_k, extra = self.key_mask.shape
        q = torch.cat([q, self.query_one.to(q.dtype).expand(*q.shape[:-1], extra)], dim=-1)
        k = k.view(-1, n_win, *k.shape[1:])  # B, nW, heads, Nk, d
        k = torch.cat([k, self.key_mask.to(k.dtype).expand(*k.shape[:-1], extra)], dim=-1).flatten(0, 1)
        return q, k, F.pad(v, (0, extra))


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _compiling() -> bool:
    return torch.compiler.is_compiling() if hasattr(torch, "compiler") else False


def partition(x: Tensor, b: int, hp: int, wp: int, w: int, groups: int = 1, heads: int = 1) -> Tensor:
    """Windows of a B, Hp, Wp, groups*C map (or its B*Hp*Wp x groups*C matrix), split into heads:
    -> groups, B*nW, heads, w*w, C/heads (one permute, one copy)."""
    d = x.shape[-1] // (groups * heads)
    x = x.view(b, hp // w, w, wp // w, w, groups, heads, d)
    x = x.permute(5, 0, 1, 3, 6, 2, 4, 7)  # groups, B, nh, nw, heads, window, window, d
    return x.reshape(groups, -1, heads, w * w, d)


def _unit(x: Tensor) -> Tensor:
    """x / |x| along the last dim (F.normalize's eps, one op fewer)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def partition_kv(x: Tensor, window: int, kv_window: int, groups: int = 1, heads: int = 1,
                 pad_value: float = 0.0) -> Tensor:
    """Key/value windows: B, Hp, Wp, groups*C -> groups, B*nW, heads, kv_window**2, C/heads.

    With ``kv_window > window`` each key window overlaps its neighbours (HAT's overlapping
    cross-attention) and is centred on its query window; outside the map it reads ``pad_value``
    (zeros for features, which the stage's key mask hides).
    """
    b, hp, wp, c = x.shape
    if kv_window == window:
        return partition(x, b, hp, wp, window, groups, heads)
    margin = (kv_window - window) // 2
    x = F.pad(x.permute(0, 3, 1, 2), (margin,) * 4, value=pad_value)
    cols = F.unfold(x, kv_window, stride=window)
    cols = cols.view(b, groups, heads, c // (groups * heads), kv_window * kv_window, -1)
    return cols.permute(1, 0, 5, 2, 4, 3).flatten(1, 2)  # groups, B*nW, heads, Nk, d


def relative_position_index(window: int, kv_window: int) -> Tensor:
    """Index into a ((window + kv_window - 1) ** 2)-entry bias table for every (query, key) pair."""
    # query i sits at i + off in its key window (off = (kv_window - window) // 2); the displacement
    # i + off - k, shifted by kv_window - 1 - off, lies in [0, window + kv_window - 2]
    q = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    k = torch.stack(torch.meshgrid(torch.arange(kv_window), torch.arange(kv_window), indexing="ij")).flatten(1)
    rel = q[:, :, None] - k[:, None, :] + (kv_window - 1)  # 2, Nq, Nk
    return rel[0] * (window + kv_window - 1) + rel[1]


class WindowAttention(nn.Module):
    """Window multi-head self-attention with relative position bias, on a token matrix.

    Cosine attention with a clamped learnable temperature (Swin v2) keeps logits bounded, and
    scaled_dot_product_attention accumulates its softmax in fp32, so fp16/bf16 inference does not
    overflow. The bias is one (1, heads, N, Nk) table broadcast over all windows and images.
    """

    def __init__(self, dim: int, heads: int, window: int, kv_window: int) -> None:
        super().__init__()
        self.heads, self.window, self.kv_window = heads, window, kv_window
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(torch.full((heads, 1, 1), math.log(10.0)))
        self.rel_bias = nn.Parameter(torch.zeros(heads, (window + kv_window - 1) ** 2))
        nn.init.trunc_normal_(self.rel_bias, std=0.02)
        # index of every (head, query, key) bias in the flattened table: one gather per call
        index = relative_position_index(window, kv_window)
        table = (window + kv_window - 1) ** 2
        # (1, heads, N, Nk): the 4-D shape CPU SDPA's fused kernel takes
        self.register_buffer("bias_index", torch.arange(heads)[None, :, None, None] * table + index,
                             persistent=False)

    def forward(self, t: Tensor, b: int, geo: WindowGeometry) -> Tensor:  # t: B*H*W, C
        c = t.shape[-1]
        qkv = geo.pad(self.qkv(t), b)  # B, Hp, Wp, 3C (a B*H*W x 3C matrix when nothing is padded)
        # cosine similarity x clamped temperature: logits stay within +-100 in any precision
        # (norms in fp32: the zero vectors of padded pixels give 0/eps, and eps underflows in fp16)
        if self.kv_window == self.window:
            qkv = partition(qkv, b, geo.hp, geo.wp, self.window, 3, self.heads)  # 3, B*nW, heads, N, d
            q, k = _unit(qkv[:2].float()).unbind(0)
            v = qkv[2]
        else:  # overlapping key windows: keys and values come from larger windows
            qkv = qkv.view(b, geo.hp, geo.wp, 3 * c)
            q = _unit(partition(qkv[..., :c], b, geo.hp, geo.wp, self.window, 1, self.heads)[0].float())
            k, v = partition_kv(qkv[..., c:], self.window, self.kv_window, 2, self.heads).unbind(0)
            k = _unit(k.float())
        del qkv  # (v may still view it) freed once augment copies v: a lower peak at large sizes
        scale = self.logit_scale.float().clamp(max=math.log(100.0)).exp()  # heads, 1, 1
        q, k, v = geo.augment((q * scale).to(v.dtype), k.to(v.dtype), v)
        # a (1, heads, N, Nk) bias: broadcast over windows and images, never copied per window
        bias = self.rel_bias.take(self.bias_index).to(v.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)  # B*nW, heads, N, d
        out = geo.merge(out, c // self.heads)  # B*H*W, C
        return self.proj(out)

class TokenMoE(nn.Module):
    """Token-wise top-1 mixture of small gated-FFN (GEGLU) experts, on a token matrix.

    - Top-1: each token's output is its chosen expert's output times the router's probability for
      that expert (the router is trained through this gate). No capacity limit, so a token's
      output never depends on the rest of the batch.
    - No host synchronisation (no ``nonzero``, no token counts read on the CPU), in one of two
      forms with the same output (``dispatch``):
      * grouped: tokens sorted by expert, each expert's rows multiplied by its own weights in one
        grouped GEMM (``torch._grouped_mm``; sparse in FLOPs). Used where that kernel runs: CPU
        (fp32, bf16) and CUDA bf16 on compute capability >= 9.0;
      * dense: every expert on every token, the hidden units of the unchosen experts zeroed by a
        one-hot gate: two plain matmuls (E x the expert FLOPs, far fewer kernels). Used elsewhere
        (CUDA fp32/fp16, traced ONNX graphs, torch.compile, torch without ``_grouped_mm``).
      The unchosen experts get zero gradients, so DDP needs no ``find_unused_parameters``.
    - Balancing needs nothing from the host's loop (no host has a hook for an auxiliary loss):
      a per-expert ``route_bias`` is added to the router logits only to pick the expert. Each
      training forward adds its per-expert token counts to ``pending``; the network applies them
      at the end of its forward (loss-free balancing, ``HyReSR._balance_experts``), with one
      all-reduce for all layers under DDP. ``route_bias`` is a frozen ``nn.Parameter``
      so that every host's EMA (BasicSR's averages parameters only) averages it and every
      checkpoint saves it.
    """

    balance_rate = 0.05  # bias step (in logits) of the first training forward
    # The step decays as balance_rate / (1 + t / balance_settle) at training forward t (the network's
    # ``balance_steps``): a fixed step keeps re-routing tokens after the learning rate has decayed (late
    # in a cosine schedule one 0.05 step moved the output ~50x more than one optimizer step), while a
    # 1/t step (stochastic approximation) settles yet can still move any distance: 0.05 at the start,
    # half that by step 200, 0.001 (the published loss-free size) by step 10,000.
    balance_settle = 200
    record_loads = False  # count tokens per expert in eval forwards too (HyReSR.moe_loads)
    dispatch: Literal["auto", "dense", "grouped"] = "auto"

    def __init__(self, dim: int, experts: int, hidden: int) -> None:
        super().__init__()
        self.experts, self.hidden = experts, hidden
        self.router = nn.Linear(dim, experts)
        self.fc1 = nn.Linear(dim, experts * hidden * 2)  # expert e: rows [2He, 2He + H) gate, [.., 2H(e+1)) value
        self.fc2 = nn.Linear(experts * hidden, dim, bias=False)  # expert e: columns [He, H(e+1))
        self.fc2_bias = nn.Parameter(torch.zeros(experts, dim))
        for e in range(experts):  # each expert initialised like its own nn.Linear pair
            _init_linear_like(self.fc1.weight[2 * hidden * e : 2 * hidden * (e + 1)], self.fc1.bias[2 * hidden * e :
                              2 * hidden * (e + 1)], dim)
            _init_linear_like(self.fc2.weight[:, hidden * e : hidden * (e + 1)], self.fc2_bias[e], hidden)
        self.route_bias = nn.Parameter(torch.zeros(experts), requires_grad=False)
        self.register_buffer("expert_ids", torch.arange(experts), persistent=False)
        # token counters are int64: .half() / .to(dtype) cast only floating buffers (an fp16 count
        # saturates at 65,504 tokens), and int64 sums are exact; not in the state dict
        counter = torch.zeros(experts, dtype=torch.long)
        self.register_buffer("pending", counter.clone(), persistent=False)  # training counts to apply
        self.register_buffer("counts", counter.clone(), persistent=False)  # tokens per expert, last forward

    def forward(self, t: Tensor, residual: Tensor) -> Tensor:  # t: N, C -> residual + MoE(t)
        with torch.autocast(device_type=t.device.type, enabled=False):
            # fp32 routing even when the model was cast with .half() (chaiNNer does)
            logits = F.linear(t.float(), self.router.weight.float(), self.router.bias.float())  # N, E
        choice = (logits + self.route_bias.float()).argmax(dim=-1, keepdim=True)  # N, 1; the bias steers the choice only
        probs = logits.softmax(dim=-1)
        grouped = self._grouped_dtype(t)
        if grouped is not None:
            out = self._grouped(t, residual, choice, probs, grouped)
        else:
            out = self._dense(t, residual, choice, probs)
        if (self.training or self.record_loads) and not _tracing():
            counts = (choice == self.expert_ids).sum(dim=0, dtype=self.counts.dtype)
            self.counts.copy_(counts)
            if self.training:
                self.pending.add_(counts)
        return out

    def _dense(self, t: Tensor, residual: Tensor, choice: Tensor, probs: Tensor) -> Tensor:
        gate = (probs * (choice == self.expert_ids)).to(t.dtype)  # N, E: p of the chosen, else 0
        a, v = self.fc1(t).view(-1, self.experts, 2, self.hidden).unbind(2)  # N, E, H each
        hidden = F.gelu(a) * v * gate.unsqueeze(-1)  # N, E, H: zero for unchosen experts
        # residual + each token's expert bias, then + its expert's second layer
        out = torch.addmm(residual, gate.to(residual.dtype), self.fc2_bias.to(residual.dtype))
        return torch.addmm(out, hidden.view(-1, self.experts * self.hidden).to(out.dtype),
                           self.fc2.weight.t().to(out.dtype))  # N, C

    def _grouped(self, t: Tensor, residual: Tensor, choice: Tensor, probs: Tensor, dtype: torch.dtype) -> Tensor:
        e, h, c = self.experts, self.hidden, t.shape[-1]
        choice = choice.view(-1)
        order = choice.argsort(stable=True)  # tokens grouped by expert
        sorted_choice = choice[order]
        ends = torch.searchsorted(sorted_choice, self.expert_ids, right=True, out_int32=True)  # E: end row per expert
        w1 = self.fc1.weight.view(e, 2 * h, c).transpose(1, 2).to(dtype)  # E, C, 2H
        x = torch._grouped_mm(t[order].to(dtype), w1, offs=ends) + self.fc1.bias.view(e, 2 * h)[sorted_choice].to(dtype)
        a, v = x.chunk(2, dim=-1)
        w2 = self.fc2.weight.view(c, e, h).permute(1, 2, 0).to(dtype)  # E, H, C
        y = torch._grouped_mm(F.gelu(a) * v, w2, offs=ends) + self.fc2_bias[sorted_choice].to(dtype)
        y = y * probs[order, sorted_choice].unsqueeze(-1).to(dtype)  # times the gate
        return residual.index_add(0, order, y.to(residual.dtype))

    def _grouped_dtype(self, t: Tensor) -> torch.dtype | None:
        """The dtype to run the grouped GEMMs in, or None for the dense form."""
        if self.dispatch == "dense" or not hasattr(torch, "_grouped_mm") or _tracing() or _compiling():
            return None
        device = t.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else t.dtype
        if (t.shape[-1] * dtype.itemsize) % 16 or (self.hidden * dtype.itemsize) % 16:
            return None  # the grouped kernels need rows aligned to 16 bytes
        if self.dispatch == "grouped" or (device == "cpu" and dtype in (torch.float32, torch.bfloat16)):
            return dtype
        if device == "cuda" and dtype == torch.bfloat16 and torch.cuda.get_device_capability(t.device) >= (9, 0):
            return dtype
        return None


@torch.no_grad()
def _init_linear_like(weight: Tensor, bias: Tensor, fan_in: int) -> None:
    """nn.Linear's default initialisation, on a slice of a larger parameter."""
    bound = 1 / math.sqrt(fan_in)
    weight.uniform_(-bound, bound)  # kaiming_uniform_(a=sqrt(5)) reduces to this bound
    bias.uniform_(-bound, bound)


class NoiseInjection(nn.Module):
    """StyleGAN-style noise for generative texture (GAN training only; off in eval).

    Amplitude = learned per-channel strength (starts at 0) x the high band's own per-channel std.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, t: Tensor, b: int) -> Tensor:  # t: B*H*W, C
        if not self.training:
            return t
        x = t.view(b, -1, t.shape[-1])  # B, H*W, C
        std = x.detach().float().std(dim=1, keepdim=True).to(x.dtype)
        return (x + self.strength.view(1, 1, -1) * std * torch.randn_like(x)).view_as(t)


class HighFreqPath(nn.Module):
    """(window attention + gated FFN) x depth, then the token MoE; all on one B*H*W x C token matrix
    (linear layers and norms are then single matrix kernels)."""

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
        b, c, h, w = x.shape
        t = x.permute(0, 2, 3, 1).reshape(-1, c)  # B*H*W, C: one layout for the whole path
        for an, attn, fn, ffn, geo in zip(self.attn_norms, self.attns, self.ffn_norms, self.ffns, geos):
            t = t + attn(an(t), b, geo)
            t = t + ffn(fn(t))
        t = self.moe(self.moe_norm(t), residual=t)
        if self.noise is not None:
            t = self.noise(t, b)
        return t.view(b, h, w, c).permute(0, 3, 1, 2)

# --------------------------------------------------------------------------------------------
# (D) Cross-fusion and (3.4) re-parameterizable large-kernel conv
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
# HyReSR block, (3.2) GlobalMix, stages
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
        low = _upsample2(self.low(low))
        high = self.high(high, geos)
        return _add_scaled(x, self.scale, self.reparam(self.fusion(low, high)))


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

    def _focus(self, t: Tensor) -> Tensor:  # fp32, B, 2, heads, d, N: features along dim -2
        t = F.relu(t) + 1e-6
        p = t**self.focus  # fp32: no overflow for any activation a network produces
        # the focused map keeps each token's norm: p / |p| * |t|
        return p * (t.norm(dim=-2, keepdim=True) / p.norm(dim=-2, keepdim=True))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x))  # B, 3C, H, W: q, k, v
        local = self.dwc(qkv[:, 2 * c :])
        with torch.autocast(device_type=x.device.type, enabled=False):
            # channels-first token layout (B*heads, d, N) all through: no transposed copies
            t = qkv.float().view(b, 3, self.heads, c // self.heads, h * w)
            q, k = (u.reshape(b * self.heads, -1, h * w) for u in self._focus(t[:, :2]).unbind(1))
            v = t[:, 2].reshape(b * self.heads, -1, h * w)
            kv = torch.bmm(k, v.transpose(1, 2)) / (h * w)  # B*heads, d, d (mean over tokens)
            denom = (q * k.mean(dim=2, keepdim=True)).sum(dim=1, keepdim=True)  # B*heads, 1, N
            out = torch.bmm(kv.transpose(1, 2), q) / (denom + 1e-6)  # B*heads, d, N
        out = out.view(b, c, h, w).to(x.dtype)
        return _add_scaled(x, self.gamma, self.proj(out + local))

class Stage(nn.Module):
    """A sequence of HyReSR blocks at one resolution.

    ``first_layer`` is the network-wide index of this stage's first attention layer (in forward
    order): shifted and plain windows alternate over that index, so consecutive attention layers
    alternate across blocks and stages, and a one-block stage is shifted when its predecessor's
    last layer was not (with a per-stage pattern, one-layer stages would never shift).
    """

    def __init__(self, dim: int, depth: int, *, first_layer: int, window: int, kv_window: int, low_depth: int,
                 high_depth: int, ffn_ratio: float, experts: int, expert_ratio: float, kernel_size: int, noise: bool,
                 global_mix: bool) -> None:
        super().__init__()
        self.window, self.kv_window, self.high_depth = window, kv_window, high_depth
        heads = next(h for h in range(max(1, dim // 16), 0, -1) if dim % h == 0)  # ~16 channels per head
        self.head_dim = dim // heads
        self.shifts = [(first_layer + i) % 2 == 1 for i in range(depth * high_depth)]  # one per attention layer
        self.blocks = nn.ModuleList(
            HyReSRBlock(dim, heads=heads, window=window, kv_window=kv_window, low_depth=low_depth,
                        high_depth=high_depth, ffn_ratio=ffn_ratio, experts=experts, expert_ratio=expert_ratio,
                        kernel_size=kernel_size, noise=noise)
            for _ in range(depth))
        self.global_mix = GlobalMix(dim, heads) if global_mix else None

    def geometries(self, x: Tensor, *others: "Stage") -> dict[bool, WindowGeometry]:
        """Window geometry (pads + key masks) for each shift this stage (and ``others``, the other
        stage of the same resolution) uses; computed once, shared by all their blocks."""
        shifts = set(self.shifts).union(*(o.shifts for o in others))
        return {s: WindowGeometry(x, self.window, self.kv_window, s, self.head_dim) for s in sorted(shifts)}

    def forward(self, x: Tensor, geos: dict[bool, WindowGeometry] | None = None) -> Tensor:
        geos = self.geometries(x) if geos is None else geos
        for i, block in enumerate(self.blocks):
            x = block(x, [geos[s] for s in self.shifts[i * self.high_depth : (i + 1) * self.high_depth]])
        if self.global_mix is not None:
            x = self.global_mix(x)
        return x


class NAFStage(LowFreqPath):
    """NAF blocks only (no attention, no experts): the top ``naf_levels`` stages of a restoration
    variant, where window attention costs the most and plain gated convs do most of the work."""

    shifts: tuple[bool, ...] = ()  # no attention layers

    def geometries(self, x: Tensor, *others: Stage) -> dict[bool, WindowGeometry]:
        return {}  # its partner at the same level is a NAFStage too

    def forward(self, x: Tensor, geos: dict[bool, WindowGeometry] | None = None) -> Tensor:
        return self.blocks(x)


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


# --------------------------------------------------------------------------------------------
# (E) MSG residual: multi-scale gated skips
# --------------------------------------------------------------------------------------------


class MSGSkip(nn.Module):
    """Multi-scale guided skip: the encoder feature is refined at half its resolution by gated conv
    (NAF) blocks and added back (a small learned scale, near identity at the start), then fused with
    the decoder feature (concat, 1x1). The coarse pass lets the skip carry context from twice the
    receptive field into the decoder at a quarter of the pixels' cost."""

    def __init__(self, dim: int, depth: int) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(dim * 4, dim, 1))  # learned x0.5
        self.refine = naf_blocks(dim, depth)
        self.gamma = nn.Parameter(torch.full((1, dim, 1, 1), RESIDUAL_INIT))
        self.mix = nn.Conv2d(dim * 2, dim, 1)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        skip = _add_scaled(skip, self.gamma, _upsample2(self.refine(self.down(skip))))
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
    """DySample (Liu et al., ICCV 2023; the "LP" form with dynamic scope) on the features.

    Channels are split into ``groups``; per output pixel and group a learned offset (in LR pixels)
    moves the sampling point from its initial position, the output pixel's own centre (the paper's
    ``init_pos`` added to the LR grid), and ``grid_sample`` reads the group's features there; a 1x1
    conv maps the sampled features to the image. offset = 0.5 * sigmoid(scope(x)) * offset(x): the
    scope conv starts at zero, so the factor starts at the static 0.25 (sampling points of
    neighbouring output pixels cannot cross), the offset conv near zero, the output conv near zero.
    Sampling positions in fp32 (half precision cannot address the pixels of a wide image). Needs
    ONNX opset >= 16 (grid_sample).
    """

    groups = 4

    def __init__(self, dim: int, out_ch: int, scale: int) -> None:
        super().__init__()
        assert dim % self.groups == 0, f"DySample needs a first-stage width divisible by {self.groups}"
        self.scale = scale
        self.offset = nn.Conv2d(dim, 2 * self.groups * scale * scale, 1)  # channels: (group, x/y, sy, sx)
        self.scope = nn.Conv2d(dim, 2 * self.groups * scale * scale, 1)
        self.to_img = nn.Conv2d(dim, out_ch, 1)
        nn.init.normal_(self.offset.weight, std=1e-3)
        nn.init.zeros_(self.offset.bias)
        nn.init.zeros_(self.scope.weight)
        nn.init.zeros_(self.scope.bias)
        _near_zero_init(self.to_img)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        s, g = self.scale, self.groups
        offset = (self.offset(x) * self.scope(x).sigmoid() * 0.5).float()  # B, 2*g*s*s, H, W
        offset = F.pixel_shuffle(offset, s).view(b * g, 2, h * s, w * s)  # per group: x, y offsets
        # initial positions: centres of the output pixels in LR pixel coordinates
        ys = (torch.arange(h * s, device=x.device, dtype=torch.float32) + 0.5) / s - 0.5
        xs = (torch.arange(w * s, device=x.device, dtype=torch.float32) + 0.5) / s - 0.5
        gx = (xs.view(1, 1, -1) + offset[:, 0] + 0.5) * (2 / w) - 1  # normalised, align_corners=False
        gy = (ys.view(1, -1, 1) + offset[:, 1] + 0.5) * (2 / h) - 1
        feats = x.float().reshape(b * g, c // g, h, w)
        out = F.grid_sample(feats, torch.stack([gx, gy], dim=-1), mode="bilinear", padding_mode="border",
                            align_corners=False)  # B*g, C/g, sH, sW
        return self.to_img(out.view(b, c, h * s, w * s).to(x.dtype))

# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------

Upsampler = Literal["pixelshuffle", "dysample"]
UPSAMPLERS: tuple[str, ...] = ("pixelshuffle", "dysample")


class HyReSR(nn.Module):
    """HyReSR-MoE. Keyword-only, typed arguments; every one of them can be read back from a
    state dict (``build_from_state_dict``)."""

    def __init__(
        self,
        *,
        in_ch: int = 3,
        out_ch: int = 3,
        scale: int = 4,
        dims: tuple[int, ...] = (48, 96, 192),
        depths: tuple[int, ...] = (4, 6, 8),
        window: int = 8,
        overlap: float = 0.0,
        experts: int = 4,
        expert_ratio: float = 1.0,
        ffn_ratio: float = 2.0,
        low_depth: int = 1,
        high_depth: int = 1,
        msg_depth: int = 1,
        naf_levels: int = 0,
        global_mix: bool = True,
        kernel_size: int = 13,
        upsampler: Upsampler = "pixelshuffle",
        noise: bool = False,
    ) -> None:
        super().__init__()
        _check_config(in_ch=in_ch, out_ch=out_ch, scale=scale, dims=dims, depths=depths, window=window,
                      overlap=overlap, experts=experts, kernel_size=kernel_size, upsampler=upsampler,
                      msg_depth=msg_depth, naf_levels=naf_levels, ratios=(ffn_ratio, expert_ratio))
        self.in_ch, self.out_ch, self.scale = in_ch, out_ch, scale
        kv_window = window + round(window * overlap)
        # What tensor shapes cannot tell, as integers (ratios in thousandths), saved in the state
        # dict as "hyresr_meta" and read back by build_from_state_dict (out_ch: the PixelShuffle
        # head's out_ch * scale**2 channels are ambiguous, e.g. 16 = 1 x 4**2 = 4 x 2**2). A plain
        # attribute, not a buffer: .half() and EMA buffer averaging must not touch it.
        self._meta = torch.tensor([FORMAT_VERSION, out_ch, window, _milli(overlap), _milli(ffn_ratio),
                                   _milli(expert_ratio)])

        block_kw = dict(window=window, kv_window=kv_window, low_depth=low_depth, high_depth=high_depth,
                        ffn_ratio=ffn_ratio, experts=experts, expert_ratio=expert_ratio, kernel_size=kernel_size,
                        noise=noise)
        layers = [0]  # attention layers built so far, in forward order: where the next stage's shifts start

        def stage(level: int, mix: bool = False) -> Stage | NAFStage:
            if level < naf_levels:
                return NAFStage(dims[level], depths[level])
            built = Stage(dims[level], depths[level], first_layer=layers[0], global_mix=mix, **block_kw)
            layers[0] += depths[level] * high_depth
            return built

        # Modules are named by level (encoder1, down1, ..., bottleneck, ..., up1, skip1, decoder1) and
        # built in forward order, which the shift alternation counts in.
        self.levels = len(dims)
        self.pad_multiple = 2**self.levels  # halved levels - 1 times; FreqSplit halves the last once more
        last = self.levels - 1
        self.stem = nn.Conv2d(in_ch, dims[0], 3, padding=1)
        for i in range(last):
            setattr(self, f"encoder{i + 1}", stage(i))
            setattr(self, f"down{i + 1}", Downsample(dims[i], dims[i + 1]))
        self.bottleneck = stage(last, mix=global_mix)
        for i in reversed(range(last)):
            setattr(self, f"up{i + 1}", Upsample(dims[i + 1], dims[i]))
            setattr(self, f"skip{i + 1}", MSGSkip(dims[i], msg_depth))
            setattr(self, f"decoder{i + 1}", stage(i))
        if upsampler == "dysample":
            self.head_dysample = DySampleHead(dims[0], out_ch, scale)
        else:
            self.head = PixelShuffleHead(dims[0], out_ch, scale)
        # training forwards balanced so far (the MoE balancing step decays with it): frozen like
        # route_bias, so that checkpoints save it and EMA copies follow it
        self.balance_steps = nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        _check_input(x, self.in_ch)
        h, w = x.shape[-2:]
        feat = self.stem(_pad_to_multiple(x, self.pad_multiple))  # B, dims[0], Hp, Wp
        y, skips = feat, []
        for i in range(1, self.levels):
            encoder, decoder = getattr(self, f"encoder{i}"), getattr(self, f"decoder{i}")
            geo = encoder.geometries(y, decoder)  # shared by the two stages of a resolution
            y = encoder(y, geo)
            skips.append((y, geo))
            y = getattr(self, f"down{i}")(y)  # half the size
        y = self.bottleneck(y)
        for i in reversed(range(1, self.levels)):
            skip, geo = skips.pop()
            y = getattr(self, f"decoder{i}")(getattr(self, f"skip{i}")(getattr(self, f"up{i}")(y), skip), geo)
        head = self.head_dysample if hasattr(self, "head_dysample") else self.head
        out = head(y + feat)[..., : h * self.scale, : w * self.scale]
        if self.training:
            self._balance_experts()
        return out + _global_residual(x, self.scale, self.out_ch)

    # -- the "hyresr_meta" entry of the state dict -----------------------------------------

    @property
    def hyresr_meta(self) -> Tensor:
        return self._meta.clone()

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        destination[prefix + "hyresr_meta"] = self._meta.clone()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
                              missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        # torch calls this with strict=True whatever load_state_dict was given, and applies strictness
        # afterwards, to missing and unexpected keys only (error_msgs always raise). So a "hyresr_meta"
        # that describes another network is reported as an unexpected key that names the difference:
        # load_state_dict(strict=True) fails with it; a non-strict load (a warm start from another
        # scale, channel count or variant) lists it in .unexpected_keys and loads every tensor that fits.
        key = prefix + "hyresr_meta"
        if prefix + "balance_steps" not in state_dict:  # network v2 before the settling balancing: start at 0
            state_dict = {**state_dict, prefix + "balance_steps": torch.zeros(())}
        if key not in state_dict:
            missing_keys.append(key)
        else:
            theirs = _meta_list(state_dict[key])
            if theirs != self._meta.tolist():
                unexpected_keys.append(f"{key} {state_dict[key].tolist()} (describes another network: "
                                       f"{_describe_meta(theirs)} vs {_describe_meta(self._meta.tolist())})")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if key in unexpected_keys:
            unexpected_keys.remove(key)

    # -- MoE balancing, once per training forward -----------------------------------------

    @torch.no_grad()
    def _balance_experts(self) -> None:
        """After a training forward, apply the token counts its MoE layers gathered: each routing
        bias steps down for an overloaded expert and up for an underloaded one (a layer that saw
        no tokens stays). A layer's bias only steers its own routing, so one update at the end of
        the forward equals updating each layer right after it routed. Under DDP the counts of all
        layers are summed over ranks in one all-reduce, so every rank makes the same update."""
        moes = [m for m in self.modules() if isinstance(m, TokenMoE)]
        pending = torch.stack([m.pending for m in moes])  # layers, E (int64 counts)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(pending)
        # sign(mean - count) as sign(sum - E * count): exact in integers, whatever the token count
        direction = torch.sign(pending.sum(dim=1, keepdim=True) - pending.shape[1] * pending)
        bias = moes[0].route_bias  # float32, or the dtype the model was cast to
        rates = {m.balance_rate for m in moes}  # one rate (a tensor of several only when layers differ)
        rate = (rates.pop() if len(rates) == 1
                else torch.tensor([m.balance_rate for m in moes], dtype=bias.dtype, device=bias.device).unsqueeze(1))
        settle = 1.0 / (1.0 + self.balance_steps.to(bias.dtype) / TokenMoE.balance_settle)  # a tensor: no host sync
        step = rate * settle * direction.to(bias.dtype)
        torch._foreach_add_([m.route_bias for m in moes], list(step.unbind(0)))
        torch._foreach_zero_([m.pending for m in moes])
        self.balance_steps.add_(1)

    # -- deployment helpers --------------------------------------------------------------

    def fuse(self) -> "HyReSR":
        """Fold every re-parameterizable conv into one conv, in place. Idempotent."""
        return fuse(self)

    @property
    def is_fused(self) -> bool:
        return all(m.fused is not None for m in self.modules() if isinstance(m, ReparamLargeKernelConv))

    def moe_loads(self) -> list[Tensor]:
        """Per-expert share of tokens in the last training forward (or eval forward, after
        ``record_moe_loads()``), one tensor per MoE layer."""
        return [m.counts / m.counts.sum().clamp(min=1) for m in self.modules() if isinstance(m, TokenMoE)]

    def record_moe_loads(self, on: bool = True) -> "HyReSR":
        """Count tokens per expert in eval forwards too (two small ops per MoE layer; off by default)."""
        for m in self.modules():
            if isinstance(m, TokenMoE):
                m.record_loads = on
        return self

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


def _meta_list(meta: Tensor) -> list[int]:
    return [int(v) for v in meta.flatten().tolist()]


def _describe_meta(meta: list[int]) -> str:
    if len(meta) != 6 or meta[0] != FORMAT_VERSION:
        return f"format {meta[0] if meta else '?'}"
    names = ("format", "out_ch", "window", "overlap/1000", "ffn_ratio/1000", "expert_ratio/1000")
    return ", ".join(f"{n} {v}" for n, v in zip(names, meta))


def _check_config(*, in_ch: int, out_ch: int, scale: int, dims: Sequence[int], depths: Sequence[int], window: int,
                  overlap: float, experts: int, kernel_size: int, upsampler: str, msg_depth: int, naf_levels: int,
                  ratios: tuple[float, float]) -> None:
    if in_ch not in (1, 3, 4) or out_ch not in (1, 3, 4):
        raise ValueError(f"HyReSR supports 1, 3 or 4 channels, got in_ch={in_ch}, out_ch={out_ch}")
    if scale not in (1, 2, 3, 4, 8):
        raise ValueError(f"HyReSR supports scales 1, 2, 3, 4 and 8, got scale={scale}")
    if upsampler not in UPSAMPLERS:
        raise ValueError(f"upsampler must be one of {UPSAMPLERS}, got {upsampler!r}")
    if upsampler == "dysample" and (scale not in (2, 3, 4) or dims[0] % DySampleHead.groups):
        raise ValueError(f"the dysample head supports scales 2, 3 and 4 and a first width divisible by "
                         f"{DySampleHead.groups}, got scale={scale}, dims[0]={dims[0]}")
    if msg_depth < 1:
        raise ValueError(f"msg_depth (gated conv blocks in each MSG skip) must be >= 1, got {msg_depth}")
    if (not 1 <= len(dims) <= MAX_LEVELS or len(depths) != len(dims) or any(d % 4 for d in dims[1:])
            or min(depths) < 1):
        raise ValueError(f"dims and depths need one entry per U-Net level (1 to {MAX_LEVELS} levels), dims[1:] "
                         f"multiples of 4, depths >= 1; got dims={dims}, depths={depths}")
    if len(dims) == 1 and msg_depth != 1:
        raise ValueError(f"a one-level network has no skips, so msg_depth does not apply: leave it at 1, got {msg_depth}")
    if not 0 <= naf_levels < len(dims):
        raise ValueError(f"naf_levels (levels, from full resolution down, that use NAF blocks only) must be in "
                         f"[0, {len(dims) - 1}]: the bottleneck is always hybrid; got {naf_levels}")
    if window < 2 or window % 2 or experts < 1 or kernel_size < 3 or kernel_size % 2 == 0:
        raise ValueError("window must be even >= 2, experts >= 1, kernel_size odd >= 3")
    if not 0 <= overlap <= 1 or (window * overlap) % 2:
        raise ValueError(f"overlap must be in [0, 1] with window * overlap an even integer, got {overlap}")
    if any(r < 0 or abs(r * 1000 - round(r * 1000)) > 1e-9 for r in (overlap, *ratios)):
        raise ValueError(f"overlap, ffn_ratio and expert_ratio take at most 3 decimals, got {(overlap, *ratios)}")


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

# Each builder is one variant: its numbers are the defaults of its signature, which hosts and users
# can read (help(), inspect.signature, traiNNer-redux's option docs). Every builder works with only
# ``scale=``; any other argument overrides the variant's value. ``upscale`` is BasicSR's name for
# ``scale`` (traiNNer-redux always passes ``scale``).


def hyresr_tiny(
    scale: int = 4, *, upscale: int | None = None, in_ch: int = 3, out_ch: int = 3,
    upsampler: Upsampler = "pixelshuffle", noise: bool = False,
    dims: tuple[int, ...] = (32, 32, 48), depths: tuple[int, ...] = (1, 1, 2), window: int = 6,
    overlap: float = 0.0, experts: int = 2, expert_ratio: float = 1.0, ffn_ratio: float = 1.0, low_depth: int = 1,
    high_depth: int = 1, msg_depth: int = 1, naf_levels: int = 0, global_mix: bool = False, kernel_size: int = 9,
) -> HyReSR:
    """<= 300K params at x4 (298K): no GlobalMix, 2 experts, 6x6 windows, 9x9 reparam; 32 wide at full
    resolution, where SR detail is made."""
    return _build(**locals())


def hyresr_light(
    scale: int = 4, *, upscale: int | None = None, in_ch: int = 3, out_ch: int = 3,
    upsampler: Upsampler = "pixelshuffle", noise: bool = False,
    dims: tuple[int, ...] = (48, 48, 64), depths: tuple[int, ...] = (2, 2, 2), window: int = 8,
    overlap: float = 0.0, experts: int = 2, expert_ratio: float = 1.0, ffn_ratio: float = 1.5, low_depth: int = 1,
    high_depth: int = 1, msg_depth: int = 1, naf_levels: int = 0, global_mix: bool = True, kernel_size: int = 9,
) -> HyReSR:
    """<= SwinIR-light's params at x4 (881K); its capacity sits at full resolution, where SR detail is
    made: two 48-wide blocks per full-resolution stage, two per lower stage. Every width is a multiple
    of 16, so every attention head is 16 channels: GPU fused attention kernels need a multiple of 8."""
    return _build(**locals())


def hyresr(
    scale: int = 4, *, upscale: int | None = None, in_ch: int = 3, out_ch: int = 3,
    upsampler: Upsampler = "pixelshuffle", noise: bool = False,
    dims: tuple[int, ...] = (48, 96, 192), depths: tuple[int, ...] = (4, 6, 8), window: int = 8,
    overlap: float = 0.0, experts: int = 4, expert_ratio: float = 1.0, ffn_ratio: float = 2.0, low_depth: int = 1,
    high_depth: int = 1, msg_depth: int = 1, naf_levels: int = 0, global_mix: bool = True, kernel_size: int = 13,
) -> HyReSR:
    """The draft's default."""
    return _build(**locals())


def hyresr_sr(
    scale: int = 4, *, upscale: int | None = None, in_ch: int = 3, out_ch: int = 3,
    upsampler: Upsampler = "pixelshuffle", noise: bool = False,
    dims: tuple[int, ...] = (48, 96, 192), depths: tuple[int, ...] = (4, 6, 8), window: int = 8,
    overlap: float = 0.5, experts: int = 4, expert_ratio: float = 1.0, ffn_ratio: float = 2.0, low_depth: int = 1,
    high_depth: int = 2, msg_depth: int = 1, naf_levels: int = 0, global_mix: bool = True, kernel_size: int = 13,
) -> HyReSR:
    """SR-heavy: overlapping key windows, two attention layers per high path."""
    return _build(**locals())


def hyresr_rest(
    scale: int = 4, *, upscale: int | None = None, in_ch: int = 3, out_ch: int = 3,
    upsampler: Upsampler = "pixelshuffle", noise: bool = False,
    dims: tuple[int, ...] = (32, 64, 128, 192, 320), depths: tuple[int, ...] = (2, 2, 2, 2, 4), window: int = 8,
    overlap: float = 0.0, experts: int = 2, expert_ratio: float = 0.5, ffn_ratio: float = 2.0, low_depth: int = 2,
    high_depth: int = 1, msg_depth: int = 1, naf_levels: int = 3, global_mix: bool = True, kernel_size: int = 13,
) -> HyReSR:
    """Restoration-heavy (x1): a five-level U-Net (down to 1/16, like NAFNet) with NAF blocks in the
    top three levels and hybrid blocks (attention, experts, GlobalMix) at 1/8 and 1/16, where
    they are cheap; deeper low path, fewer and smaller experts."""
    return _build(**locals())


def _build(scale: int, upscale: int | None, **options) -> HyReSR:
    return HyReSR(scale=int(upscale if upscale is not None else scale), **options)


BUILDERS = {f.__name__: f for f in (hyresr_tiny, hyresr_light, hyresr, hyresr_sr, hyresr_rest)}

# (the class is decorated here only in spandrel's copy of this part of the file)
_DEFAULTS = dict(getattr(HyReSR.__init__, "__wrapped__", HyReSR.__init__).__kwdefaults__)
_ARCH_KEYS = ("dims", "depths", "window", "overlap", "experts", "expert_ratio", "ffn_ratio", "low_depth",
              "high_depth", "msg_depth", "naf_levels", "global_mix", "kernel_size")
# what each variant sets differently from the HyReSR defaults (read from the builders' signatures)
VARIANTS: dict[str, dict] = {
    name: {k: v for k, v in fn.__kwdefaults__.items() if k in _ARCH_KEYS and v != _DEFAULTS[k]}
    for name, fn in BUILDERS.items()
}


def _arch_numbers(hp: dict) -> dict:
    """Hyperparameters that define a variant (not scale, channels, head or noise)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in hp.items() if k in _ARCH_KEYS}


# --------------------------------------------------------------------------------------------
# Plumbing: the hyperparameter record, state-dict reading, host and spandrel registration
# --------------------------------------------------------------------------------------------

# Everything from here on serves hosts and apps; the computation is all above.


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


HyReSR = _store_hyperparameters(HyReSR)


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


_TOP_LEVEL = ("hyresr_meta", "balance_steps", "stem", "bottleneck", "head", "head_dysample",
              *(f"{m}{i}" for i in range(1, MAX_LEVELS) for m in ("encoder", "down", "up", "skip", "decoder")))


def _count(sd: dict, prefix: str) -> int:
    """Number of consecutive ``prefix.<i>.`` entries."""
    n = 0
    while any(k.startswith(f"{prefix}.{n}.") for k in sd):
        n += 1
    return n


def _count_levels(sd: dict, name: str, key: str = "") -> int:
    """Number of consecutive levels 1, 2, ... with a ``<name><level>.<key>`` entry."""
    n = 0
    while any(k.startswith(f"{name}{n + 1}.{key}") for k in sd):
        n += 1
    return n


def read_hyperparameters(sd: dict[str, Tensor]) -> tuple[dict, bool]:
    """Every HyReSR constructor argument, read from a state dict; and whether it is fused."""
    if "hyresr_meta" not in sd or "stem.weight" not in sd:
        raise HyReSRStateDictError("not a HyReSR state dict (no 'hyresr_meta' / 'stem.weight' keys)")
    meta = _meta_list(sd["hyresr_meta"])
    _check_format(meta)
    _, out_ch, window, overlap_m, ffn_m, expert_m = meta
    try:
        b0 = "bottleneck.blocks.0"  # hybrid in every network; all hybrid blocks have the same layout
        downs = _count_levels(sd, "down")
        fused = f"{b0}.reparam.fused.weight" in sd
        dysample = "head_dysample.to_img.weight" in sd
        # the head's channels: out_ch * scale**2 (PixelShuffle) or 2 * groups * scale**2 offsets (DySample)
        head = (sd["head_dysample.offset.weight"].shape[0] // (2 * DySampleHead.groups) if dysample
                else sd["head.conv.weight"].shape[0] // out_ch)
        hp = dict(
            in_ch=sd["stem.weight"].shape[1],
            out_ch=out_ch,
            scale=math.isqrt(head),
            dims=(sd["stem.weight"].shape[0], *(sd[f"down{i}.conv.weight"].shape[0] * 4 for i in range(1, downs + 1))),
            depths=(*(_count(sd, f"encoder{i}.blocks") for i in range(1, downs + 1)), _count(sd, "bottleneck.blocks")),
            window=window,
            overlap=overlap_m / 1000,
            experts=sd[f"{b0}.high.moe.router.weight"].shape[0],
            expert_ratio=expert_m / 1000,
            ffn_ratio=ffn_m / 1000,
            low_depth=_count(sd, f"{b0}.low.blocks"),
            high_depth=_count(sd, f"{b0}.high.attns"),
            msg_depth=_count(sd, "skip1.refine") or 1,  # a one-level network has no skips (and msg_depth 1)
            naf_levels=_count_levels(sd, "encoder", "blocks.0.norm1.weight"),  # NAF blocks, from the top
            global_mix="bottleneck.global_mix.qkv.weight" in sd,
            kernel_size=sd[f"{b0}.reparam.{'fused' if fused else 'large'}.weight"].shape[-1],
            upsampler="dysample" if dysample else "pixelshuffle",
            noise=f"{b0}.high.noise.strength" in sd,
        )
    except KeyError as err:
        raise HyReSRStateDictError(f"HyReSR state dict is missing key {err}") from None
    return hp, fused


def _check_format(meta: list[int]) -> None:
    version = meta[0] if meta else "?"
    if meta and meta[0] in (1, 2):
        raise HyReSRStateDictError(
            f"HyReSR checkpoint format {version}: a network v1 checkpoint (plain skips, per-stage window shifts, "
            f"single-group DySample). This hyresr_arch.py builds network v2 (format {FORMAT_VERSION}), which computes "
            f"differently, so v1 weights cannot be loaded into it; load the file with hyresr_arch.py from revision "
            f"{V1_REVISION} of the HyReSR repository, or fine-tune a v2 model from it (non-strict load)")
    if not meta or meta[0] != FORMAT_VERSION or len(meta) != 6:
        newer = "newer than this file reads" if meta and meta[0] > FORMAT_VERSION else "not one this file reads"
        raise HyReSRStateDictError(f"HyReSR checkpoint format {version} is {newer} (format {FORMAT_VERSION}); "
                                   f"update hyresr_arch.py")


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
    """The variant's builder, with the scale read from neosr's option file when none is given."""
    variant = BUILDERS[name]

    def build(scale: int | None = None, **options) -> HyReSR:
        if scale is None and options.get("upscale") is None:
            scale = _neosr_scale()
        return variant(scale or 4, **options)

    signature = inspect.signature(variant)
    params = [p.replace(default=None, annotation="int | None") if p.name == "scale" else p
              for p in signature.parameters.values()]
    build.__signature__ = signature.replace(parameters=params)
    build.__name__ = build.__qualname__ = name
    build.__doc__ = variant.__doc__
    return build


def _register(registry, builders: dict) -> None:
    """Register each builder once; an existing entry (a re-import of this file) is kept."""
    known = getattr(registry, "_obj_map", {})
    for name, fn in builders.items():
        if name not in known and name.lower() not in known:
            registry.register(fn)


class _FrozenRouteBiasLogFilter:
    """Drops the hosts' "Params <name>.route_bias will not be optimized." warnings (BasicSR, neosr
    and traiNNer-redux log one per frozen parameter: one per MoE layer here, and one for
    balance_steps). Both are frozen on purpose: the balancing rule updates them, EMA averages them,
    checkpoints save them. Every other line, including the same warning for any other parameter, passes."""

    frozen = ("route_bias", "balance_steps")

    def filter(self, record) -> bool:
        message, head, tail = record.getMessage(), "Params ", " will not be optimized."
        if not (message.startswith(head) and message.endswith(tail)):
            return True
        return message[len(head) : -len(tail)].split(".")[-1] not in self.frozen


def _quiet_host_logs() -> None:
    import logging

    for host in ("basicsr", "neosr", "traiNNer"):
        logger = logging.getLogger(host)
        if not any(type(f).__name__ == _FrozenRouteBiasLogFilter.__name__ for f in logger.filters):  # re-imports
            logger.addFilter(_FrozenRouteBiasLogFilter())


def _register_with_host(module_name: str) -> None:
    """Register with the host that imported this file: neosr or traiNNer-redux when it sits in
    their archs/ folder; otherwise BasicSR, if BasicSR is already imported (import basicsr first,
    as in BasicSR-examples; ``registry_hooks.basicsr`` does)."""
    import sys

    _quiet_host_logs()
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
# reflect padding, which needs H, W >= 2**levels there (8 for the three-level variants).
SUPPORTS_HALF = True
SUPPORTS_BFLOAT16 = True


def _make_spandrel_arch():
    from spandrel import Architecture, ImageModelDescriptor, ModelTiling, SizeRequirements
    from spandrel.util import KeyCondition

    class HyReSRArch(Architecture[HyReSR]):
        def __init__(self) -> None:
            super().__init__(
                id="HyReSR",
                detect=KeyCondition.has_all("hyresr_meta", "stem.weight",
                                            "bottleneck.blocks.0.high.moe.router.weight",
                                            "bottleneck.blocks.0.split.alpha"),
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
