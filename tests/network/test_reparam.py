"""Re-parameterization: fusing is exact, explicit, idempotent, and survives a state-dict reload."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, assert_nonzero_gradients, perturb
from hyresr_arch import BUILDERS, ReparamLargeKernelConv, build_from_state_dict, fuse, hyresr_light, hyresr_tiny


def _max_diff_after_fuse(model, x):
    with torch.no_grad():
        ref = model(x)
        fuse(model)
        return (model(x) - ref).abs().max().item()


@pytest.mark.parametrize("name", list(BUILDERS))
def test_fused_output_equals_unfused_on_random_input(name):
    model = perturb(BUILDERS[name](scale=2)).eval()
    assert _max_diff_after_fuse(model, torch.rand(1, 3, 20, 28)) <= 1e-4
    assert model.is_fused


def test_fused_output_equals_unfused_on_real_images():
    import cv2

    path = SHARED_DATA / "val_Set5" / "img_001.png"
    if path.exists():
        img = cv2.imread(str(path))[..., ::-1]
    else:  # the shared data is optional: scikit-image's bundled photo is the same kind of input
        from skimage import data

        img = data.astronaut()
    crop = np.ascontiguousarray(img[:64, :64]).astype(np.float32) / 255
    x = torch.from_numpy(crop).permute(2, 0, 1)[None]
    for builder in (hyresr_tiny, hyresr_light):
        model = perturb(builder(scale=4)).eval()
        assert _max_diff_after_fuse(model, x) <= 1e-4


def test_fuse_is_explicit_and_idempotent():
    model = perturb(hyresr_tiny(scale=2))
    model.eval()  # eval alone never fuses
    assert not model.is_fused
    model.fuse()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.fuse()  # a second fuse changes nothing
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    n_reparam = sum(isinstance(m, ReparamLargeKernelConv) for m in model.modules())
    assert n_reparam > 0 and sum(k.endswith("reparam.fused.weight") for k in weights) == n_reparam
    assert not any(".reparam.large." in k for k in weights)


def test_fused_model_has_fewer_parameters_and_still_trains():
    model = perturb(hyresr_tiny(scale=2))
    n_unfused = sum(p.numel() for p in model.parameters())
    model.fuse().train()
    assert sum(p.numel() for p in model.parameters()) < n_unfused
    out = model(torch.rand(1, 3, 16, 16))
    out.mean().backward()
    assert_nonzero_gradients(model)  # nonzero everywhere but in unchosen experts (conftest)


def test_reparam_conv_fuse_matches_reference_convolution():
    # independent check: the fused kernel is the sum of the centred, zero-padded branch kernels
    conv = perturb(ReparamLargeKernelConv(4, 7), std=0.1)
    x = torch.randn(1, 4, 11, 9)
    k = torch.zeros(4, 1, 7, 7)
    k += conv.large.weight.detach()
    k[:, :, 2:5, 2:5] += conv.small.weight.detach()
    k[:, :, 3, 3] += conv.point.weight.detach()[:, :, 0, 0] + 1.0
    b = (conv.large.bias + conv.small.bias + conv.point.bias).detach()
    expected = torch.nn.functional.conv2d(x, k, b, padding=3, groups=4)
    with torch.no_grad():
        assert torch.allclose(conv(x), expected, atol=1e-5)
        conv.fuse()
        assert torch.allclose(conv(x), expected, atol=1e-5)


def test_fused_checkpoint_reloads_as_fused():
    model = perturb(hyresr_light(scale=3)).eval().fuse()
    again = build_from_state_dict(model.state_dict()).eval()
    assert again.is_fused
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
