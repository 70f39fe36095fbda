"""Property-based tests (hypothesis) over random small HyReSR configurations and input sizes.

For every drawn configuration and input: the output has shape (N, out_ch, H*s, W*s) and is
finite; the fused network matches the unfused one (<= 1e-4); the state dict (through
safetensors bytes) rebuilds a network with identical output, fused or not.
Kept small (max_examples=15, tiny dims) so the file runs in well under 30 s on 2 cores.
"""

from __future__ import annotations

import copy

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hyresr_arch as H
from conftest import assert_nonzero_gradients, perturb

torch.set_num_threads(1)

PROFILE = settings(max_examples=12, deadline=None, derandomize=True, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _valid_overlaps(window: int) -> list[float]:
    """window * overlap an even integer in [0, window], overlap with at most 3 decimals."""
    out = []
    for k in range(0, window + 1, 2):
        o = k / window
        if abs(o * 1000 - round(o * 1000)) < 1e-9:
            out.append(o)
    return out


@st.composite
def configs(draw) -> dict:
    window = draw(st.sampled_from([2, 4, 6, 8]))
    scale = draw(st.sampled_from([1, 2, 3, 4]))
    upsampler = draw(st.sampled_from(["pixelshuffle", "dysample"] if scale in (2, 3, 4) else ["pixelshuffle"]))
    ch = st.sampled_from([1, 3, 4])
    dim = st.sampled_from(list(range(4, 41, 4)))  # multiples of 4 up to 40 (see the heads test below)
    return dict(
        in_ch=draw(ch),
        out_ch=draw(ch),
        scale=scale,
        dims=(draw(dim), draw(dim), draw(dim)),
        depths=tuple(draw(st.integers(1, 2)) for _ in range(3)),
        window=window,
        overlap=draw(st.sampled_from(_valid_overlaps(window))),
        experts=draw(st.integers(1, 3)),
        expert_ratio=draw(st.sampled_from([0.5, 1.0])),
        ffn_ratio=draw(st.sampled_from([1.0, 1.5, 2.0])),
        low_depth=draw(st.integers(1, 2)),
        high_depth=draw(st.integers(1, 2)),
        global_mix=draw(st.booleans()),
        kernel_size=draw(st.sampled_from([3, 5, 7])),
        upsampler=upsampler,
        noise=draw(st.booleans()),
    )


sizes = st.tuples(st.integers(1, 2), st.integers(1, 20), st.integers(1, 20))


def _model(cfg: dict, seed: int) -> H.HyReSR:
    torch.manual_seed(seed)
    return perturb(H.HyReSR(**cfg), std=0.05, seed=seed).eval()


def _round_trip(model: torch.nn.Module) -> H.HyReSR:
    blob = safetensors.torch.save({k: v.contiguous() for k, v in model.state_dict().items()})
    return H.build_from_state_dict(safetensors.torch.load(blob)).eval()


@PROFILE
@given(cfg=configs(), size=sizes, seed=st.integers(0, 2**16))
def test_shape_finiteness_fuse_and_round_trip(cfg, size, seed):
    n, h, w = size
    model = _model(cfg, seed)
    x = torch.rand(n, cfg["in_ch"], h, w, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        out = model(x)
        assert out.shape == (n, cfg["out_ch"], h * cfg["scale"], w * cfg["scale"])
        assert torch.isfinite(out).all()

        rebuilt = _round_trip(model)
        assert rebuilt.hyperparameters == model.hyperparameters
        assert torch.equal(rebuilt(x), out)

        fused = copy.deepcopy(model).fuse()
        assert fused.is_fused
        fused_out = fused(x)
        assert (fused_out - out).abs().max().item() <= 1e-4

        rebuilt_fused = _round_trip(fused)
        assert rebuilt_fused.is_fused and torch.equal(rebuilt_fused(x), fused_out)


@PROFILE
@given(cfg=configs(), seed=st.integers(0, 2**16))
def test_training_forward_backward_is_finite_and_reaches_every_parameter(cfg, seed):
    model = _model(cfg, seed).train()
    x = torch.rand(1, cfg["in_ch"], 12, 10, generator=torch.Generator().manual_seed(seed))
    out = model(x)
    assert out.shape == (1, cfg["out_ch"], 12 * cfg["scale"], 10 * cfg["scale"])
    out.square().mean().backward()
    assert_nonzero_gradients(model)  # nonzero everywhere but in unchosen experts (conftest)
    assert all(torch.isfinite(p).all() for name, p in model.named_parameters() if name.endswith("route_bias"))


@pytest.mark.parametrize("dims", [(52, 8, 8), (8, 56, 8)])
def test_every_dims_the_constructor_accepts_runs(dims):
    model = H.HyReSR(dims=dims, depths=(1, 1, 1), window=4, experts=1, kernel_size=3).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)
