"""Budgets: parameter counts against the peers they replace, and cost linear in the pixel count."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from hyresr_arch import hyresr_light, hyresr_tiny

SWINIR_LIGHT_X4 = 929_628  # SwinIR-light (embed 60, 4x6 blocks) at x4


@pytest.mark.parametrize("builder, budget", [(hyresr_tiny, 300_000), (hyresr_light, SWINIR_LIGHT_X4)])
def test_parameter_budgets(builder, budget):
    assert sum(p.numel() for p in builder(scale=4).parameters()) <= budget


def _flops(model: torch.nn.Module, size: int) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, size, size))
    return counter.get_total_flops()


@pytest.mark.parametrize("builder", [hyresr_tiny, hyresr_light])
def test_flops_grow_linearly_with_pixel_count(builder):
    model = builder(scale=4).eval()
    ratio = _flops(model, 128) / _flops(model, 64)
    assert ratio <= 4.3, f"FLOPs(128)/FLOPs(64) = {ratio:.3f}: something is super-linear"
