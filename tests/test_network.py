"""The network: shapes, training step, linear cost, precision, layout, determinism, input errors."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import perturb
from hyresr_arch import BUILDERS, HyReSR, hyresr_light, hyresr_tiny

NAMES = list(BUILDERS)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_every_variant_keeps_shape_for_odd_sizes_and_batches(name, scale):
    model = BUILDERS[name](scale=scale).eval()
    # every size at one scale per variant; 16x16 at the others (keeps the suite fast)
    shapes = [(1, 3, 16, 16), (1, 3, 17, 31), (2, 3, 16, 16)] if scale == 3 else [(1, 3, 16, 16)]
    with torch.no_grad():
        for shape in shapes:
            out = model(torch.rand(shape))
            assert out.shape == (shape[0], 3, shape[2] * scale, shape[3] * scale)
            assert torch.isfinite(out).all()


def test_scale_8_and_channel_counts():
    for in_ch, out_ch in [(1, 1), (4, 4), (3, 1)]:
        model = hyresr_tiny(scale=8, in_ch=in_ch, out_ch=out_ch).eval()
        with torch.no_grad():
            assert model(torch.rand(1, in_ch, 9, 12)).shape == (1, out_ch, 72, 96)


@pytest.mark.parametrize("name", NAMES)
def test_training_step_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = BUILDERS[name](scale=2).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    out = model(torch.rand(2, 3, 16, 16))
    assert torch.isfinite(out).all()
    torch.nn.functional.l1_loss(out, torch.rand_like(out)).backward()
    trainable = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
    missing = [k for k, p in trainable if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"
    opt.step()
    unchanged = [k for k, p in trainable if torch.equal(before[k], p.detach())]
    assert not unchanged, f"AdamW step left parameters unchanged: {unchanged[:5]}"


def test_builders_take_upscale_alias_and_explicit_overrides():
    model = hyresr_tiny(upscale=3, noise=True, upsampler="dysample")
    assert model.scale == 3 and model.hyperparameters["noise"] and model.variant == "hyresr_tiny"
    assert hyresr_tiny(scale=2, experts=3).variant == "custom"


def test_variant_parameter_budgets():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(hyresr_tiny(scale=4)) <= 300_000
    assert count(hyresr_light(scale=4)) <= 929_628  # SwinIR-light at x4


def _flops(model: torch.nn.Module, size: int) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, 3, size, size))
    return counter.get_total_flops()


@pytest.mark.parametrize("builder", [hyresr_tiny, hyresr_light])
def test_flops_grow_linearly_with_pixel_count(builder):
    model = builder(scale=4).eval()
    ratio = _flops(model, 128) / _flops(model, 64)
    assert ratio <= 4.3, f"FLOPs(128)/FLOPs(64) = {ratio:.3f}: something is super-linear"


def test_no_full_global_attention_anywhere():
    # attention score matrices are at most (kv window)^2 wide, whatever the input size
    model = hyresr_light(scale=2).eval()
    widths = []
    handles = [m.register_forward_hook(lambda m, i, o: widths.append(m.kv_window ** 2))
               for m in model.modules() if type(m).__name__ == "WindowAttention"]
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 64))
    for h in handles:
        h.remove()
    assert widths and max(widths) <= 16 * 16


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.08), (torch.float16, 0.02)])
@pytest.mark.parametrize("builder", [hyresr_tiny, hyresr_light])
def test_half_precision_eval_is_finite_and_close(builder, dtype, tol):
    torch.manual_seed(0)
    model = perturb(builder(scale=2)).eval()
    x = torch.rand(1, 3, 24, 20)
    with torch.no_grad():
        ref = model(x)
        out = model.to(dtype)(x.to(dtype)).float()
    assert torch.isfinite(out).all()
    err = (out - ref).abs().max().item()
    assert err < tol, f"{dtype} max abs error {err:.4f} vs fp32"


@pytest.mark.parametrize("module", ["LayerNorm2d", "GlobalMix", "WindowAttention"])
def test_half_precision_normalisation_and_attention_survive_large_activations(module):
    # activations of magnitude ~1000: (x - mean)^2 or q^3 would overflow fp16 (max 65504);
    # statistics, logits and the focused power are computed in fp32 instead
    from hyresr_arch import hyresr_arch as A

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
    assert ((out - ref).abs().max() / ref.abs().max()) < 1e-2


def test_channels_last_matches_contiguous():
    model = perturb(hyresr_light(scale=2)).eval()
    x = torch.rand(2, 3, 24, 20)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        sliced = model(torch.rand(2, 3, 24, 40)[..., ::2])  # non-contiguous input runs too
    assert torch.allclose(out, ref, atol=1e-5)
    assert sliced.shape == (2, 3, 48, 40)


def test_eval_is_deterministic_and_batch_independent():
    model = perturb(hyresr_light(scale=2)).eval()
    x = torch.rand(3, 3, 16, 24)
    with torch.no_grad():
        a, b = model(x), model(x)
        single = model(x[1:2])
    assert torch.equal(a, b)
    # no token dropping or batch statistics: a sample's output does not depend on its batch
    assert torch.allclose(a[1:2], single, atol=1e-5)


def test_noise_injection_only_in_training():
    model = perturb(hyresr_tiny(scale=2, noise=True))
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        model.eval()
        assert torch.equal(model(x), model(x))
        model.train()
        assert not torch.equal(model(x), model(x))


def test_dysample_head_starts_as_bilinear_and_learns_offsets():
    model = hyresr_tiny(scale=2, upsampler="dysample").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 13, 16)).shape == (1, 3, 26, 32)
    model.train()
    out = model(torch.rand(1, 3, 16, 16))
    out.mean().backward()
    assert model.head_dysample.scope.weight.grad is not None


def test_clear_errors_for_bad_input():
    model = hyresr_tiny(scale=2).eval()
    with pytest.raises(ValueError, match="expects an N x 3 x H x W"):
        model(torch.rand(1, 4, 16, 16))
    with pytest.raises(ValueError, match="expects an N x 3"):
        model(torch.rand(3, 16, 16))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.randint(0, 255, (1, 3, 16, 16), dtype=torch.uint8))
    with pytest.raises(ValueError, match="scales"):
        HyReSR(scale=5)
    with pytest.raises(ValueError, match="overlap"):
        HyReSR(overlap=0.3)


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 5), (8, 8)])
def test_tiny_images(size):
    model = hyresr_tiny(scale=2).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, *size))
    assert out.shape == (1, 3, size[0] * 2, size[1] * 2) and torch.isfinite(out).all()


def test_builders_show_every_option_typed_with_the_variant_defaults():
    """help(), inspect and traiNNer-redux's option docs read the builders' signatures."""
    import inspect
    import typing

    from hyresr_arch import BUILDERS, VARIANTS, HyReSR

    init = inspect.signature(HyReSR.__init__)
    for name, builder in BUILDERS.items():
        sig = inspect.signature(builder)
        assert list(sig.parameters)[0] == "scale" and sig.parameters["scale"].default == 4
        options = {n: p for n, p in sig.parameters.items() if n != "scale"}
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in options.values()), name
        assert set(options) == (set(init.parameters) - {"self", "scale"}) | {"upscale"}, name
        assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values()), name
        hints = typing.get_type_hints(builder)
        assert typing.get_args(hints["upsampler"]) == ("pixelshuffle", "dysample")
        assert VARIANTS[name].items() <= {k: p.default for k, p in options.items()}.items(), name
        assert builder(scale=2).hyperparameters == {**{k: p.default for k, p in options.items() if k != "upscale"},
                                                    "scale": 2}, name
