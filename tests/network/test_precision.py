"""Half precision and memory layout on the CPU (CUDA: tests/test_cuda.py and tests/test_fake_cuda.py).

Bounds are about 3x the error measured with these seeds (torch 2.14.1, x86 CPU; the measured value
is written next to each). Over four seeds the errors stay within 1.4x of seed 0's."""

from __future__ import annotations

import pytest
import torch

from conftest import perturb
from hyresr_arch import hyresr_light, hyresr_tiny
from hyresr_arch import hyresr_arch as A

# max abs error vs fp32 of a cast model (.to(dtype), as chaiNNer runs it), on [0, 1] images
HALF_EVAL_BOUNDS = {  # measured (seed 0): tiny bf16 5.7e-3, fp16 6.7e-4; light bf16 6.2e-3, fp16 8.3e-4
    ("hyresr_tiny", torch.bfloat16): 0.018, ("hyresr_tiny", torch.float16): 0.002,
    ("hyresr_light", torch.bfloat16): 0.019, ("hyresr_light", torch.float16): 0.0025,
}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("builder", [hyresr_tiny, hyresr_light])
def test_half_precision_eval_is_finite_and_close(builder, dtype):
    torch.manual_seed(0)
    model = perturb(builder(scale=2)).eval()
    x = torch.rand(1, 3, 24, 20)
    with torch.no_grad():
        ref = model(x)
        out = model.to(dtype)(x.to(dtype)).float()
    assert torch.isfinite(out).all()
    err = (out - ref).abs().max().item()
    assert err < HALF_EVAL_BOUNDS[builder.__name__, dtype], f"{dtype} max abs error {err:.5f} vs fp32"


# relative max error; measured: LayerNorm2d 7.1e-4, GlobalMix 3.7e-4, WindowAttention 1.3e-3
LARGE_ACTIVATION_BOUNDS = {"LayerNorm2d": 2e-3, "GlobalMix": 1.1e-3, "WindowAttention": 4e-3}


@pytest.mark.parametrize("module", list(LARGE_ACTIVATION_BOUNDS))
def test_half_precision_normalisation_and_attention_survive_large_activations(module):
    # activations of magnitude ~1000: (x - mean)^2 or q^3 would overflow fp16 (max 65504);
    # statistics, logits and the focused power are computed in fp32 instead
    torch.manual_seed(0)
    x = torch.randn(1, 32, 16, 16) * 1000
    if module == "LayerNorm2d":
        m, run = A.LayerNorm2d(32), lambda m, t: m(t)
    elif module == "GlobalMix":
        m, run = A.GlobalMix(32, 2), lambda m, t: m(t)
    else:
        m = A.WindowAttention(32, 2, 8, 8)

        def run(m, t):
            tokens = t.permute(0, 2, 3, 1).reshape(-1, 32)
            return m(tokens, 1, A.WindowGeometry(t, 8, 8, shift=True, head_dim=16))
    m = perturb(m).eval()
    with torch.no_grad():
        ref = run(m, x)
        out = run(m.half(), x.half()).float()
    assert torch.isfinite(out).all()
    err = ((out - ref).abs().max() / ref.abs().max()).item()
    assert err < LARGE_ACTIVATION_BOUNDS[module], f"relative error {err:.2e}"


# measured (seed 0): bf16 8.2e-3, fp16 1.06e-3
@pytest.mark.parametrize("dtype, bound", [(torch.bfloat16, 0.025), (torch.float16, 0.0032)])
def test_dysample_half_precision_is_finite_and_close(dtype, bound):
    torch.manual_seed(0)
    model = perturb(hyresr_tiny(scale=3, upsampler="dysample")).eval()
    x = torch.rand(1, 3, 20, 300)  # wide: sampling positions must stay exact
    with torch.no_grad():
        ref = model(x)
        out = model.to(dtype)(x.to(dtype)).float()
    err = (out - ref).abs().max().item()
    assert torch.isfinite(out).all() and err < bound, f"{dtype} max abs error {err:.5f}"


def test_channels_last_matches_contiguous():
    model = perturb(hyresr_light(scale=2)).eval()
    x = torch.rand(2, 3, 24, 20)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        sliced = model(torch.rand(2, 3, 24, 40)[..., ::2])  # non-contiguous input runs too
    assert torch.allclose(out, ref, atol=1e-5)
    assert sliced.shape == (2, 3, 48, 40)
