"""CUDA precision checks: fp16/bf16 inference and short AMP training, as the hosts run them
(traiNNer-redux/neosr: autocast + GradScaler for fp16, autocast alone for bf16, channels_last).

Skipped on machines without CUDA (the CPU half-precision paths are covered in test_precision.py and
test_training_state.py). On a GPU machine they run with the default suite: `bash scripts/test.sh`.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hyresr_arch import hyresr_light, hyresr_tiny
from conftest import perturb

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DTYPES = [(torch.float16, 0.02), (torch.bfloat16, 0.08)]


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("builder", [hyresr_tiny, hyresr_light])
def test_cuda_half_inference_close_to_fp32(builder, dtype, tol):
    torch.manual_seed(0)
    model = perturb(builder(scale=4)).cuda().eval()
    x = torch.rand(2, 3, 40, 36, device="cuda")
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cuda", dtype=dtype):
            auto = model(x).float()
        half = model.to(dtype).to(memory_format=torch.channels_last)
        pure = half(x.to(dtype).contiguous(memory_format=torch.channels_last)).float()
    for name, out in (("autocast", auto), ("pure + channels_last", pure)):
        assert torch.isfinite(out).all(), f"{dtype} {name}: non-finite output"
        err = (out - ref).abs().max().item()
        assert err < tol, f"{dtype} {name}: max abs error {err:.4f} vs fp32"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_amp_training_stays_finite_and_learns(dtype):
    torch.manual_seed(0)
    model = hyresr_tiny(scale=2).cuda().to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    g = torch.Generator(device="cuda").manual_seed(0)
    # a fixed batch of smooth images: the loss must fall if gradients flow in reduced precision
    hr = F.interpolate(torch.rand(4, 3, 12, 12, device="cuda", generator=g), size=64, mode="bicubic").clamp(0, 1)
    lr = F.interpolate(hr, scale_factor=0.5, mode="bicubic", antialias=True).contiguous(memory_format=torch.channels_last)
    losses = []
    for _ in range(30):
        with torch.autocast("cuda", dtype=dtype):
            loss = F.l1_loss(model(lr), hr)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast never casts the weights
    assert min(losses[-5:]) < losses[0], f"{dtype}: loss did not fall: {losses[0]:.4f} -> {losses[-5:]}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("builder", [hyresr_tiny, hyresr_light])
def test_cuda_forward_and_training_step_never_wait_for_the_device(builder, dtype):
    """CUDA's own detector: set_sync_debug_mode("error") raises on any host sync (nonzero, item,
    a blocking copy) in the eval forward and in a training forward + backward."""
    model = perturb(builder(scale=2)).cuda()
    x = torch.rand(2, 3, 20, 28, device="cuda")
    model(x)  # warm-up outside the check (lazy CUDA initialisation may synchronise once)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=dtype, enabled=dtype != torch.float32):
            with torch.no_grad():
                model.eval()(x)
            model.train()(x).abs().mean().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                    reason="torch._grouped_mm runs in bf16 on sm90+")
def test_cuda_grouped_moe_equals_dense_in_bf16():
    from hyresr_arch import TokenMoE

    torch.manual_seed(0)
    moe = TokenMoE(48, 4, 48).cuda().bfloat16()
    with torch.no_grad():
        moe.route_bias.copy_(torch.linspace(-0.3, 0.3, 4))
    t = torch.randn(4096, 48, device="cuda", dtype=torch.bfloat16)
    assert moe._grouped_dtype(t) == torch.bfloat16
    with torch.no_grad():
        grouped = moe(t, t).float()
        moe.dispatch = "dense"
        dense = moe(t, t).float()
    assert (grouped - dense).abs().max().item() < 0.05 * dense.abs().max().item()
