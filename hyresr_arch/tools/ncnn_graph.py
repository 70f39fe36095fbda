"""The NCNN export graph: HyReSR's function written with the operations pnnx converts to NCNN layers.

``ncnn_graph()`` swaps the forwards of the network's attention, experts, high-frequency path,
GlobalMix and DySample head (and its window geometry and input padding) for the ones below while
``hyresr export-ncnn`` traces the model, and puts the originals back after. The network file that
users copy carries none of this; tests hold this graph equal to the main forward for every variant.

What NCNN needs that the main forward does not do: tensors of at most four dimensions besides the
batch of 1, constant pads only, no argmax, no reshape whose sizes come from another blob (NCNN runs
those ~40x slower than a plain reshape), and arithmetic that stays finite in fp16 (NCNN on
Vulkan/ARM computes in fp16). Batch 1 and inputs of at least ``2**levels`` pixels a side.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hyresr_arch import hyresr_arch as arch
from hyresr_arch.hyresr_arch import MASK_VALUE, _add_scaled

__all__ = ["ncnn_graph", "key_order"]


def pointwise(linear: nn.Linear, x: Tensor) -> Tensor:
    """``linear`` on the channels of a B, C, H, W map, as a 1x1 convolution (no token matrix: see
    ``high_path``)."""
    return F.conv2d(x, linear.weight[:, :, None, None], linear.bias)


def channel_norm(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """``norm`` over the channels of a B, C, H, W map (NCNN's LayerNorm normalises the last axis)."""
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def ffn_map(ffn: nn.Module, x: Tensor) -> Tensor:
    """``GatedFFN`` on a B, C, H, W map."""
    a, b = pointwise(ffn.fc1, x).chunk(2, dim=1)
    return pointwise(ffn.fc2, F.gelu(a) * b)


# --------------------------------------------------------------------------------------------
# Windows on their grid
# --------------------------------------------------------------------------------------------

def windows_nchw(x: Tensor, window: int, parts: int) -> list[Tensor]:
    """The NCNN graph's window partition: B, parts*d, Hp, Wp -> ``parts`` tensors B, nh, nw, N, d
    (N = window**2; one per head of q, k and v). The windows keep their (nh, nw) grid, so that
    ``unwindow_nchw`` reads every size from the tensor it reshapes: NCNN runs a reshape whose sizes
    come from a second blob ~40x slower than a plain one (measured), and heads stay separate
    tensors because NCNN has at most four dimensions besides the batch."""
    return [p.permute(0, 3, 4, 2, 1) for p in _window_corners(x, window, window, window).chunk(parts, dim=1)]

def _window_corners(x: Tensor, window: int, rows: int, cols: int) -> Tensor:
    """The top-left rows x cols pixels of every window: B, C, Hp, Wp -> B, C, rows*cols, nh, nw
    (row-major within the corner)."""
    c = x.shape[1]
    t = F.pixel_unshuffle(x, window)  # B, C*w*w, nh, nw: channel (c, y, x) of window (nh, nw)
    if cols < window:
        t = t.reshape(t.shape[0], -1, window, t.shape[2], t.shape[3])[:, :, :cols]  # B, C*w, cols, nh, nw
    t = t.reshape(t.shape[0], c, -1, t.shape[-2], t.shape[-1])  # B, C, w*cols, nh, nw
    return t[:, :, : rows * cols] if rows < window else t

def key_windows_nchw(x: Tensor, window: int, kv_window: int, parts: int, pad_value: float) -> list[Tensor]:
    """Overlapping key windows for the NCNN graph (``partition_kv``'s): B, parts*d, Hp, Wp -> ``parts``
    tensors B, nh, nw, Nk, d (Nk = kv_window**2), reading ``pad_value`` outside the map, keys in
    ``key_order``. Key window (i, j) of the map padded by the margin m is its block (i, j) and the
    top-left corners of blocks (i, j+1), (i+1, j) and (i+1, j+1), each cut like ``windows_nchw``."""
    w, e = window, kv_window - window  # e = 2m: the extra rows and columns
    hp, wp = x.shape[2], x.shape[3]
    xs = F.pad(x, (e // 2, w - e // 2, e // 2, w - e // 2), value=pad_value)  # B, C, Hp + w, Wp + w
    keys = torch.cat([_window_corners(xs[:, :, :hp, :wp], w, w, w), _window_corners(xs[:, :, :hp, w : w + wp], w, w, e),
                      _window_corners(xs[:, :, w : w + hp, :wp], w, e, w),
                      _window_corners(xs[:, :, w : w + hp, w : w + wp], w, e, e)], dim=2)  # B, C, Nk, nh, nw
    return [p.permute(0, 3, 4, 2, 1) for p in keys.chunk(parts, dim=1)]

def key_order(window: int, kv_window: int) -> list[int]:
    """Row-major key index (as in ``partition_kv``) of each key of ``key_windows_nchw``."""
    w, e = window, kv_window - window
    corners = ((0, 0, w, w), (0, w, w, e), (w, 0, e, w), (w, w, e, e))  # top, left, rows, cols
    return [(top + y) * kv_window + left + x for top, left, rows, cols in corners for y in range(rows) for x in range(cols)]

def unwindow_nchw(windows: Sequence[Tensor], window: int) -> Tensor:
    """``windows_nchw`` undone for the heads' outputs: B, nh, nw, N, d each -> B, heads*d, Hp, Wp."""
    cols = [t.permute(0, 4, 3, 1, 2) for t in windows]  # B, d, N, nh, nw
    cols = [t.reshape(t.shape[0], -1, t.shape[3], t.shape[4]) for t in cols]  # B, d*N, nh, nw
    return F.pixel_shuffle(torch.cat(cols, dim=1), window)

def _unit_ncnn(x: Tensor) -> Tensor:
    """x / |x| along the last dim for the NCNN graph (rsqrt of the clamped sum of squares)."""
    return x * torch.rsqrt(torch.clamp((x * x).sum(dim=-1, keepdim=True), min=1e-24))

class NCNNGeometry:
    """``WindowGeometry`` for the NCNN graph: constant pads, then a crop to the window grid (NCNN pads
    by constants only; the crop's end is a shape expression), and the key mask as a (B, nh, nw, 1, Nk)
    map added to the logits (zero everywhere when nothing is padded)."""

    def __init__(self, x: Tensor, window: int, kv_window: int, shift: bool, head_dim: int) -> None:
        self.h, self.w = x.shape[-2:]
        self.window, self.kv_window = window, kv_window
        w = window
        self.shift = w // 2 if shift else 0
        self.hp = (self.h + self.shift + w - 1) // w * w
        self.wp = (self.w + self.shift + w - 1) // w * w
        self.padded = True
        zero = x[:, :1] * 0.0  # B, 1, H, W (from the map, so its size follows the input's)
        invalid = self.pad_nchw(zero, MASK_VALUE)  # B, 1, Hp, Wp: MASK_VALUE on padding
        if kv_window == w:
            keys = windows_nchw(invalid, w, 1)[0]  # B, nh, nw, N, 1
        else:
            keys = key_windows_nchw(invalid, w, kv_window, 1, MASK_VALUE)[0]  # B, nh, nw, Nk, 1
        self.key_mask = keys.transpose(-1, -2)  # B, nh, nw, 1, Nk

    def pad_nchw(self, x: Tensor, value: float = 0.0) -> Tensor:
        """B, C, H, W -> B, C, Hp, Wp for the NCNN graph: constant pads, cropped to the grid."""
        s, w = self.shift, self.window
        return F.pad(x, (s, w - 1, s, w - 1), value=value)[:, :, : self.hp, : self.wp]


# --------------------------------------------------------------------------------------------
# The swapped forwards (same names and signatures as the modules' own)
# --------------------------------------------------------------------------------------------


def attention(self, x: Tensor, b: int, geo: NCNNGeometry) -> Tensor:
    """The same attention for the NCNN graph, on a B, C, H, W map: windows cut per head
    (``windows_nchw``, ``key_windows_nchw``), the key mask added to the logits, softmax written
    out, windows put back by ``unwindow_nchw`` and a crop."""
    c, heads, w = x.shape[1], self.heads, self.window
    qkv = pointwise(self.qkv, x)  # B, 3C, H, W
    # padded pixels read 1, not 0: their keys are masked (zero weight) and their queries cropped,
    # and a zero vector's norm (rsqrt of 0) would be inf in fp16 arithmetic (NCNN on Vulkan/ARM)
    qkv = geo.pad_nchw(qkv, 1.0)  # B, 3C, Hp, Wp
    scale = self.logit_scale.clamp(max=math.log(100.0)).exp()  # heads, 1, 1
    bias = self.rel_bias.take(self.bias_index)[0]  # heads, N, Nk
    # per head, windows on their grid (B, nh, nw, N, d): q of every head, then k, then v
    if self.kv_window == w:
        parts = windows_nchw(qkv, w, 3 * heads)
    else:  # the keys of key_windows_nchw come in key_order: the bias columns follow
        parts = windows_nchw(qkv[:, :c], w, heads) + key_windows_nchw(qkv[:, c:], w, self.kv_window, 2 * heads, 1.0)
        bias = bias[:, :, key_order(w, self.kv_window)]
    outs = []
    for i in range(heads):
        q, k, v = _unit_ncnn(parts[i]), _unit_ncnn(parts[heads + i]), parts[2 * heads + i]
        logits = torch.matmul(q * scale[i], k.transpose(-1, -2)) + bias[i] + geo.key_mask  # B, nh, nw, N, Nk
        outs.append(torch.matmul(logits.softmax(dim=-1), v))
    out = unwindow_nchw(outs, w)[:, :, geo.shift : geo.shift + geo.h, geo.shift : geo.shift + geo.w]
    return pointwise(self.proj, out)  # B, C, H, W


def moe(self, x: Tensor, residual: Tensor) -> Tensor:
    """The dense form for the NCNN graph (fp32, eval), on B, C, H, W maps: the chosen expert's
    one-hot is 1 - ceil(clamp(max - logit, 0, 1)), exact without argmax or comparisons (an exact
    tie of two biased logits would select both; argmax picks the first), experts split by slicing."""
    logits = pointwise(self.router, x)  # B, E, H, W
    biased = logits + self.route_bias.view(1, -1, 1, 1)
    onehot = 1.0 - torch.ceil(torch.clamp(biased.max(dim=1, keepdim=True)[0] - biased, 0.0, 1.0))
    gate = logits.softmax(dim=1) * onehot  # B, E, H, W: p of the chosen, else 0
    y = pointwise(self.fc1, x)  # B, E*2H, H, W: expert e's gate then value channels
    h = self.hidden
    hidden = torch.cat([F.gelu(y[:, 2 * h * e : 2 * h * e + h]) * y[:, 2 * h * e + h : 2 * h * (e + 1)]
                        * gate[:, e : e + 1] for e in range(self.experts)], dim=1)  # B, E*H, H, W
    return residual + F.conv2d(gate, self.fc2_bias.t()[:, :, None, None]) + pointwise(self.fc2, hidden)


def high_path(self, t: Tensor, geos: Sequence[NCNNGeometry]) -> Tensor:
    """The same path for the NCNN graph on the B, C, H, W map (eval: no noise), linear layers as
    1x1 convolutions. No token matrix: pnnx writes a reshape between a map and a matrix with a
    second blob for the sizes (or as a batch reshape), which NCNN runs ~40x slower than a plain
    reshape, and with B*H*W as NCNN's batch axis every later layer loops over single tokens
    (hyresr_tiny, 64x64, one thread: 1.4 s with the token matrix, 0.07 s with maps and
    ``windows_nchw``)."""
    for an, attn, fn, ffn, geo in zip(self.attn_norms, self.attns, self.ffn_norms, self.ffns, geos):
        t = t + attn(channel_norm(an, t), t.shape[0], geo)
        t = t + ffn_map(ffn, channel_norm(fn, t))
    return self.moe(channel_norm(self.moe_norm, t), residual=t)


def _focus_unit(t: Tensor, focus: float) -> Tensor:
    """``GlobalMix._focus`` with the power taken of the unit vector (p / |p| is scale-free): no overflow
    in fp16 arithmetic (NCNN on Vulkan/ARM), where the plain power overflows."""
    t = F.relu(t) + 1e-6
    norm = torch.sqrt((t * t).sum(dim=-2, keepdim=True))
    p = (t / norm) ** focus
    return p * (norm / torch.sqrt((p * p).sum(dim=-2, keepdim=True)))


def global_mix(self, x: Tensor) -> Tensor:
    """The same mixer for the NCNN graph: four-dimensional (B, heads, d, N) tensors, the
    token count read from a row of ones (a runtime size, not a traced constant)."""
    b, c, h, w = x.shape
    qkv = self.qkv(self.norm(x))  # B, 3C, H, W
    local = self.dwc(qkv[:, 2 * c :])
    q, k, v = qkv.reshape(b, 3 * self.heads, c // self.heads, -1).chunk(3, dim=1)  # B, heads, d, N each
    q, k = _focus_unit(q, self.focus), _focus_unit(k, self.focus)
    n = (v[:, :1, :1] * 0.0 + 1.0).sum(dim=-1, keepdim=True)  # B, 1, 1, 1: N
    kv = torch.matmul(k, (v / n).transpose(-1, -2))  # B, heads, d, d (mean over tokens)
    denom = (q * k.mean(dim=-1, keepdim=True)).sum(dim=2, keepdim=True)  # B, heads, 1, N
    out = torch.matmul(kv.transpose(-1, -2), q) / (denom + 1e-6)  # B, heads, d, N
    return _add_scaled(x, self.gamma, self.proj(out.reshape(b, c, h, w) + local))


def dysample(self, x: Tensor) -> Tensor:
    """The same head for the NCNN graph (batch 1): one grid_sample per group, the output pixel
    centres counted with cumsum and the 2 / size normalisation read from a row of ones (no
    arange of a runtime size)."""
    s, g = self.scale, self.groups
    offset = F.pixel_shuffle(self.offset(x) * self.scope(x).sigmoid() * 0.5, s)  # 1, 2g, sH, sW
    ones = offset[:, :1] * 0.0 + 1.0  # 1, 1, sH, sW
    xs = (ones.cumsum(dim=3) - 0.5) / s  # LR x coordinate of each output pixel centre, + 0.5
    ys = (ones.cumsum(dim=2) - 0.5) / s
    sx = (2.0 * s) / ones.sum(dim=3, keepdim=True)  # 2 / W
    sy = (2.0 * s) / ones.sum(dim=2, keepdim=True)  # 2 / H
    outs = []
    for i, feats in enumerate(x.chunk(g, dim=1)):  # 1, C/g, H, W each
        gx = (xs + offset[:, 2 * i : 2 * i + 1]) * sx - 1.0  # 1, 1, sH, sW (normalised, align_corners=False)
        gy = (ys + offset[:, 2 * i + 1 : 2 * i + 2]) * sy - 1.0
        grid = torch.cat([gx, gy], dim=1).permute(0, 2, 3, 1)  # 1, sH, sW, 2
        outs.append(F.grid_sample(feats, grid, mode="bilinear", padding_mode="border", align_corners=False))
    return self.to_img(torch.cat(outs, dim=1))


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """A constant reflect pad (NCNN pads by constants only), cropped to the multiple."""
    h, w = x.shape[-2:]
    x = F.pad(x, (0, multiple - 1, 0, multiple - 1), mode="reflect")
    return x[:, :, : (h + multiple - 1) // multiple * multiple, : (w + multiple - 1) // multiple * multiple]


# (owner, attribute, replacement): what ``ncnn_graph`` swaps
SWAPS = [
    (arch.WindowAttention, "forward", attention),
    (arch.TokenMoE, "forward", moe),
    (arch.HighFreqPath, "forward", high_path),
    (arch.GlobalMix, "forward", global_mix),
    (arch.DySampleHead, "forward", dysample),
    (arch, "WindowGeometry", NCNNGeometry),
    (arch, "_pad_to_multiple", pad_to_multiple),
]


@contextlib.contextmanager
def ncnn_graph() -> Iterator[None]:
    """Within this context every HyReSR forward takes the NCNN graph (not thread-safe: it swaps class
    attributes of the network module, and puts them back on leaving)."""
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in SWAPS]
    try:
        for owner, name, new in SWAPS:
            setattr(owner, name, new)
        yield
    finally:
        for owner, name, old in saved:
            setattr(owner, name, old)
