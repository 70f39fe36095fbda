"""Window attention: no global attention (measured on the SDPA calls), kernel-friendly head dims,
an explicit per-window reference for overlapping key windows, shifted windows that alternate in
forward order and carry information across window borders."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from conftest import perturb
from hyresr_arch import BUILDERS, HyReSR, hyresr_tiny
from hyresr_arch import hyresr_arch as A

# inputs whose every attention stage is a multiple of its window (so unshifted layers run unpadded,
# shifted ones padded: both geometries), 4 x 4 windows at full resolution (hyresr_rest: attention
# at 1/8 and 1/16 only, 8 x 8 and 4 x 4 there; 2 x 2 windows when shifted)
SIZES = {"hyresr_tiny": 24, "hyresr_light": 32, "hyresr": 32, "hyresr_sr": 32, "hyresr_rest": 64}


def stages(model: HyReSR) -> list[str]:
    """Stage names in forward order: encoder1, ..., bottleneck, ..., decoder1."""
    above = range(1, model.levels)
    return [f"encoder{i}" for i in above] + ["bottleneck"] + [f"decoder{i}" for i in reversed(above)]


@functools.lru_cache(maxsize=None)
def sdpa_calls(name: str) -> tuple[HyReSR, list[tuple[A.WindowAttention, torch.Size, torch.Size, torch.Size]]]:
    """One eval forward of the variant at SIZES[name]: (module, q, k, v shapes) of every
    scaled_dot_product_attention call, each attributed to the WindowAttention layer that made it."""
    model = BUILDERS[name](scale=2).eval()
    calls, current = [], []
    sdpa = F.scaled_dot_product_attention

    def recording(q, k, v, *args, **kwargs):
        calls.append((current[-1] if current else None, q.shape, k.shape, v.shape))
        return sdpa(q, k, v, *args, **kwargs)

    attns = [m for m in model.modules() if isinstance(m, A.WindowAttention)]
    def enter(m, args) -> None:
        current.append(m)

    def leave(m, args, out) -> None:
        current.pop()

    hooks = [m.register_forward_pre_hook(enter) for m in attns] + [m.register_forward_hook(leave) for m in attns]
    F.scaled_dot_product_attention = recording  # the arch calls it through torch.nn.functional
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, SIZES[name], SIZES[name]))
    finally:
        F.scaled_dot_product_attention = sdpa
        for h in hooks:
            h.remove()
    return model, calls


@pytest.mark.parametrize("name", list(BUILDERS))
def test_no_full_global_attention_anywhere(name):
    """Measured, not configured: every attention call of a forward at an input many windows wide
    attends each query window to at most kv_window**2 keys (the padding mask is an extra key
    *channel*, not extra keys), over many windows."""
    model, calls = sdpa_calls(name)
    attns = [m for m in model.modules() if isinstance(m, A.WindowAttention)]
    assert len(calls) == len(attns) and {id(c[0]) for c in calls} == {id(m) for m in attns}  # one call each, no other
    for attn, q, k, v in calls:
        assert q[-2] == attn.window ** 2, q  # queries per window
        assert k[-2] == v[-2] <= attn.kv_window ** 2, k  # keys per query window
        assert q[0] == k[0]  # one key window per query window
    # the largest attention stage is cut into many query windows (not one window over the map)
    assert max(q[0] for _, q, _, _ in calls) >= (4 if name == "hyresr_rest" else 16)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_every_attention_head_dim_is_a_multiple_of_8(name):
    """CUDA's memory-efficient and flash SDPA kernels need a head dim that is a multiple of 8 in
    fp16/bf16 (otherwise the math kernel materialises the attention matrix). Checked as configured
    (16, 24 or 32 channels per head) and as measured on every SDPA call, in unpadded geometries
    (q, k, v as they are) and padded ones (the mask channels appended)."""
    model, calls = sdpa_calls(name)
    configured = {m.qkv.in_features // m.heads for m in model.modules() if isinstance(m, A.WindowAttention)}
    assert configured <= {16, 24, 32}, configured
    measured = {(q[-1], k[-1], v[-1]) for _, q, k, v in calls}
    assert all(d % 8 == 0 for dims in measured for d in dims), measured


# -- overlapping key windows (hyresr_sr): an explicit per-window reference --------------------------


def _reference_overlapping_attention(attn: A.WindowAttention, x: torch.Tensor, shift: bool) -> torch.Tensor:
    """Independent reference, one query window at a time, in image coordinates. Query windows tile
    the map shifted up-left by window // 2 when ``shift``; the key window of a query window is the
    same square grown by (kv_window - window) / 2 pixels on every side, and only its pixels inside the
    image are keys (nothing outside the image is attended). Logits: cosine similarity x temperature
    + the relative bias of the displacement (query - key) in pixels, whose table starts at the
    most negative displacement a query window and its key window allow."""
    b, h, w, c = x.shape
    win, kv, heads = attn.window, attn.kv_window, attn.heads
    d, margin = c // heads, (kv - win) // 2
    span = win + kv - 1  # displacements per axis: -(kv - 1 - margin) ... win - 1 + margin
    low = kv - 1 - margin
    q_all, k_all, v_all = attn.qkv(x).view(b, h, w, 3, heads, d).unbind(3)  # B, H, W, heads, d
    scale = attn.logit_scale.view(heads).clamp(max=torch.log(torch.tensor(100.0))).exp()
    out = torch.zeros(b, h, w, heads, d)
    s = win // 2 if shift else 0
    for top in range(-s, h, win):
        for left in range(-s, w, win):
            qy0, qy1, qx0, qx1 = max(top, 0), min(top + win, h), max(left, 0), min(left + win, w)
            ky0, ky1 = max(top - margin, 0), min(top + win + margin, h)
            kx0, kx1 = max(left - margin, 0), min(left + win + margin, w)
            if qy0 >= qy1 or qx0 >= qx1:
                continue
            q = F.normalize(q_all[:, qy0:qy1, qx0:qx1].reshape(b, -1, heads, d), dim=-1)
            k = F.normalize(k_all[:, ky0:ky1, kx0:kx1].reshape(b, -1, heads, d), dim=-1)
            v = v_all[:, ky0:ky1, kx0:kx1].reshape(b, -1, heads, d)
            qy, qx = torch.meshgrid(torch.arange(qy0, qy1), torch.arange(qx0, qx1), indexing="ij")
            ky, kx = torch.meshgrid(torch.arange(ky0, ky1), torch.arange(kx0, kx1), indexing="ij")
            dy = qy.reshape(-1, 1) - ky.reshape(1, -1)
            dx = qx.reshape(-1, 1) - kx.reshape(1, -1)
            bias = attn.rel_bias[:, (dy + low) * span + (dx + low)]  # heads, Nq, Nk
            logits = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale.view(1, heads, 1, 1) + bias
            o = torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v)
            out[:, qy0:qy1, qx0:qx1] = o.reshape(b, qy1 - qy0, qx1 - qx0, heads, d)
    return attn.proj(out.reshape(b, h, w, c))


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("size", [(16, 16), (13, 22)])
@pytest.mark.parametrize("window, kv_window", [(8, 12), (4, 8)])  # hyresr_sr's 8 for 12; full overlap
def test_overlapping_key_windows_equal_an_explicit_per_window_reference(window, kv_window, size, shift):
    torch.manual_seed(0)
    attn = perturb(A.WindowAttention(32, 2, window, kv_window), std=0.1).eval()
    x = torch.randn(2, *size, 32)
    geo = A.WindowGeometry(x.permute(0, 3, 1, 2), window, kv_window, shift, head_dim=16)
    with torch.no_grad():
        out = attn(x.reshape(-1, 32), 2, geo).view(2, *size, 32)
        ref = _reference_overlapping_attention(attn, x, shift)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


def test_hyresr_sr_attends_over_overlapping_key_windows():
    model = BUILDERS["hyresr_sr"](scale=2)
    attns = [m for m in model.modules() if isinstance(m, A.WindowAttention)]
    assert attns and all((m.window, m.kv_window) == (8, 12) for m in attns)


# -- shifted windows alternate across blocks and stages -----------------------------------------


@pytest.mark.parametrize("name", list(BUILDERS))
def test_attention_layers_alternate_shifts_in_forward_order(name):
    model = BUILDERS[name](scale=4)
    shifts = [s for stage in stages(model) for s in getattr(model, stage).shifts]
    assert shifts == [i % 2 == 1 for i in range(len(shifts))]


def _attention_pair(attn_a, attn_b, x: torch.Tensor, shift_a: bool, shift_b: bool, window: int, head_dim: int):
    """Two pre-norm-free attention layers (token residual form) on a B, C, H, W map."""
    b, c, h, w = x.shape
    t = x.permute(0, 2, 3, 1).reshape(-1, c)
    for attn, shift in ((attn_a, shift_a), (attn_b, shift_b)):
        geo = A.WindowGeometry(x, window, attn.kv_window, shift, head_dim)
        t = t + attn(t, b, geo)
    return t.view(b, h, w, c)


@pytest.mark.parametrize("name", ["hyresr_tiny", "hyresr_light", "hyresr", "hyresr_rest"])
def test_information_crosses_a_window_border_in_every_stage(name):
    """For every stage: its first attention layer and the layer before it in forward order (the
    stage's own previous layer or the previous stage's last) move information from one window into
    its neighbour. With two unshifted layers (the v1 pattern of a one-layer stage) the gradient
    across the border is exactly zero, so the check can fail."""
    model = perturb(BUILDERS[name](scale=4))
    shifts = [s for stage in stages(model) for s in getattr(model, stage).shifts]
    layer, controlled = 0, False
    for stage_name in stages(model):
        stage = getattr(model, stage_name)
        if not stage.shifts:
            continue
        attns = [a for block in stage.blocks for a in block.high.attns]
        prev_shift = shifts[layer - 1] if layer else not stage.shifts[0]  # the first layer: a virtual predecessor
        pair = (attns[0], attns[0]) if len(attns) == 1 else (attns[0], attns[1])
        pair_shifts = (prev_shift, stage.shifts[0]) if len(attns) == 1 else tuple(stage.shifts[:2])
        win, dim = stage.window, attns[0].qkv.in_features
        x = torch.randn(1, dim, 2 * win, 2 * win, requires_grad=True)
        out = _attention_pair(*pair, x, *pair_shifts, win, stage.head_dim)
        # the last pixel of the top-left unshifted window; its diagonal neighbour is in another window
        out[0, win - 1, win - 1].sum().backward()
        across = x.grad[0, :, win, win].abs().sum().item()
        assert across > 0, f"{stage_name}: no information crossed the window border"
        if not controlled:  # control, in the first attention stage: two unshifted layers never cross
            controlled = True
            x.grad = None
            _attention_pair(*pair, x, False, False, win, stage.head_dim)[0, win - 1, win - 1].sum().backward()
            assert x.grad[0, :, win, win].abs().sum().item() == 0
        layer += len(stage.shifts)


def test_decoder_and_encoder_of_a_resolution_share_geometries_of_both_shifts():
    model = hyresr_tiny(scale=2)  # encoder1 unshifted, decoder1 shifted: one geometry each
    geos = model.encoder1.geometries(torch.rand(1, 24, 16, 16), model.decoder1)
    assert set(geos) == {False, True}
