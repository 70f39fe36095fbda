"""fp16 autocast training on CPU, the network's side.

The NaN gradients seen with traiNNer-redux's MS-SSIM loss under CPU fp16 autocast come from the
loss, not the network: traiNNer-redux (and neosr) guard their MS-SSIM, perceptual and HSLuv
losses with ``custom_fwd(cast_inputs=torch.float32, device_type="cuda")``, which computes them in
fp32 on CUDA and does nothing on CPU. There they run in fp16 and overflow for any network whose
output is close to the target (MS-SSIM's ``sigma = E[x^2] - mu^2`` cancels to ~0 or below, and
the backward of ``(2*sigma12 + c2) / (sigma1_sq + sigma2_sq + c2)`` exceeds 65504); HyReSR meets it
first because it starts from its bilinear residual. These tests pin what the network controls:
fp16 autocast forward and backward, with the loss computed in fp32 as the hosts do on CUDA, stay
finite, and every activation and activation gradient stays far inside fp16's range.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import hyresr_arch as H

torch.set_num_threads(1)

FP16_MAX = torch.finfo(torch.float16).max


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).view(1, 1, size, size)


def _ssim_loss_fp32(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 - SSIM on the luma channel, in fp32 with autocast off (a structure loss as the hosts'
    guarded losses compute it on CUDA)."""
    with torch.autocast("cpu", enabled=False):
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        x, y = (x.float().clamp(0, 1) * w).sum(1, keepdim=True), (y.float() * w).sum(1, keepdim=True)
        win = _gaussian_window()
        mu_x, mu_y = F.conv2d(x, win), F.conv2d(y, win)
        sxx = F.conv2d(x * x, win) - mu_x**2
        syy = F.conv2d(y * y, win) - mu_y**2
        sxy = F.conv2d(x * y, win) - mu_x * mu_y
        c1, c2 = 0.01**2, 0.03**2
        ssim = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
        return 1 - ssim.mean()


def _batch(step: int, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth images (near-flat regions are where fp16 structure losses break)."""
    g = torch.Generator().manual_seed(step)
    hr = F.interpolate(torch.rand(2, 3, 8, 8, generator=g), size=32 * scale, mode="bicubic").clamp(0, 1)
    lq = F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True).clamp(0, 1)
    return lq, hr


class _Peaks:
    """Largest |value| of every fp16 module output and of its gradient."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.forward = self.backward = 0.0
        self.handles = [m.register_forward_hook(self._hook) for m in model.modules()]

    def _hook(self, module, args, out) -> None:
        if isinstance(out, torch.Tensor) and out.dtype == torch.float16:
            self.forward = max(self.forward, out.detach().abs().max().item())
            if out.requires_grad:
                out.register_hook(self._grad)

    def _grad(self, grad: torch.Tensor) -> None:
        self.backward = max(self.backward, grad.abs().max().item())

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("builder", [H.hyresr_tiny, H.hyresr_light])
def test_cpu_fp16_autocast_steps_with_fp32_losses_stay_finite(builder):
    torch.manual_seed(0)
    scale = 4
    model = builder(scale=scale).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.99))
    peaks = _Peaks(model)
    for step in range(3):
        lq, hr = _batch(step, scale)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(lq)
            pixel = torch.sqrt((out - hr) ** 2 + 1e-6).mean()  # Charbonnier, as the hosts run it (fp32 here)
        loss = pixel + 0.2 * _ssim_loss_fp32(out, hr)
        assert torch.isfinite(out).all() and math.isfinite(loss.item()), step
        loss.backward()
        for name, p in model.named_parameters():
            if p.requires_grad:
                assert p.grad is not None and torch.isfinite(p.grad).all(), (step, name)
        opt.step()
    peaks.remove()
    assert 0 < peaks.forward < FP16_MAX / 100, peaks.forward
    assert 0 < peaks.backward < FP16_MAX / 100, peaks.backward
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


def test_the_residual_stream_keeps_the_autocast_dtype():
    """Under bf16 autocast every block hands on a bf16 stream: a learned fp32 residual scale must not
    promote the stream to fp32 (twice the memory traffic for every later elementwise op on a GPU)."""
    from hyresr_arch.hyresr_arch import HyReSRBlock, NAFBlock

    model = H.hyresr_tiny(scale=2).eval()
    dtypes = []
    for m in model.modules():
        if isinstance(m, (HyReSRBlock, NAFBlock)):
            m.register_forward_hook(lambda mod, inp, out: dtypes.append((type(mod).__name__, out.dtype)))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.rand(1, 3, 16, 16))
    assert len(dtypes) > 4 and {d for _, d in dtypes} == {torch.bfloat16}, dtypes
