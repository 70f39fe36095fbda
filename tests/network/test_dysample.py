"""The DySample head: bilinear at zero offsets, per-group offsets, its start near the bilinear
residual, its learning scope, its width rule (half precision: tests/test_precision.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hyresr_arch import hyresr_tiny
from hyresr_arch import hyresr_arch as A


def test_dysample_with_zero_offsets_is_bilinear_feature_upsampling():
    torch.manual_seed(0)
    head = A.DySampleHead(8, 3, 3)
    head.to_img = torch.nn.Identity()  # look at the sampled features
    torch.nn.init.zeros_(head.offset.weight)
    x = torch.randn(2, 8, 7, 5)
    with torch.no_grad():
        ref = F.interpolate(x, scale_factor=3, mode="bilinear", align_corners=False)
        assert torch.allclose(head(x), ref, atol=1e-5)


def test_dysample_groups_move_only_their_own_channels():
    head = A.DySampleHead(8, 3, 2)
    head.to_img = torch.nn.Identity()
    with torch.no_grad():
        head.offset.weight.zero_()
        head.offset.bias.zero_()
        head.offset.bias[0:4] = 2.0  # group 0, x offsets of the 2x2 sub-pixels (channels: group, x/y, sy, sx)
        head.scope.bias.fill_(20.0)  # sigmoid -> 1: the dynamic factor reaches its 0.5 ceiling
        x = torch.randn(1, 8, 6, 6)
        out = head(x)
        ref = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    assert torch.allclose(out[:, 2:], ref[:, 2:], atol=1e-5)  # groups 1-3: untouched
    # group 0: read one LR pixel (0.5 * 2) to the right, i.e. the bilinear result two HR pixels on
    assert torch.allclose(out[:, :2, :, :8], ref[:, :2, :, 2:10], atol=1e-5)


def test_dysample_head_starts_as_bilinear_and_learns_offsets():
    model = hyresr_tiny(scale=2, upsampler="dysample").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 13, 16)).shape == (1, 3, 26, 32)
    model.train()
    out = model(torch.rand(1, 3, 16, 16))
    out.mean().backward()
    assert model.head_dysample.scope.weight.grad.abs().sum() > 0


def test_dysample_starts_near_the_bilinear_residual_and_its_scope_learns():
    model = hyresr_tiny(scale=4, upsampler="dysample")
    head = model.head_dysample
    assert head.scope.weight.abs().sum() == 0 and head.offset.weight.std() < 1e-2
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        base = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
        assert (model.eval()(x) - base).abs().max() < 0.05
    model.train()(x).mean().backward()
    assert head.scope.weight.grad.abs().sum() > 0 and head.offset.weight.grad.abs().sum() > 0


def test_dysample_needs_a_width_divisible_by_its_groups():
    with pytest.raises(ValueError, match="divisible by 4"):
        hyresr_tiny(scale=2, upsampler="dysample", dims=(26, 32, 48))
