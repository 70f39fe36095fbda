"""The network's outer contract: shapes for every variant, scale, size, batch and channel count;
U-Net levels, NAF stages and MSG skips; builders and their signatures; fused = unfused and read-back;
determinism; input and configuration errors."""

from __future__ import annotations

import pytest
import torch

from conftest import perturb
from hyresr_arch import BUILDERS, HyReSR, build_from_state_dict, hyresr_light, hyresr_rest, hyresr_tiny
from hyresr_arch import hyresr_arch as A

NAMES = list(BUILDERS)


def stages(model: HyReSR) -> list[str]:
    """Stage names in forward order: encoder1, ..., bottleneck, ..., decoder1."""
    above = range(1, model.levels)
    return [f"encoder{i}" for i in above] + ["bottleneck"] + [f"decoder{i}" for i in reversed(above)]


# -- shapes ------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 5), (8, 8)])
def test_tiny_images(size):
    model = hyresr_tiny(scale=2).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, *size))
    assert out.shape == (1, 3, size[0] * 2, size[1] * 2) and torch.isfinite(out).all()


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


# -- levels, NAF stages, MSG skips -----------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_variant_refines_every_skip_at_half_its_resolution(name):
    model = BUILDERS[name](scale=2)
    skips = [f"skip{i}" for i in range(1, model.levels)]
    seen = {}
    hooks = [getattr(model, s).refine.register_forward_hook(lambda m, i, o, s=s: seen.__setitem__(s, o.shape))
             for s in skips]
    model.eval()
    with torch.no_grad():
        model(torch.rand(1, 3, 64, 96))  # a multiple of every variant's pad multiple (up to 32)
    for h in hooks:
        h.remove()
    # skip i sits at level i (64 x 96 / 2**(i-1)) and refines at half of that
    assert {s: seen[s][-2:] for s in skips} == {f"skip{i}": (64 >> i, 96 >> i) for i in range(1, model.levels)}
    assert all(len(getattr(model, s).refine) == 1 for s in skips)


def test_naf_levels_have_no_attention_or_experts():
    model = hyresr_light(scale=1, naf_levels=1)
    assert isinstance(model.encoder1, A.NAFStage) and isinstance(model.decoder1, A.NAFStage)
    assert not any(isinstance(m, (A.WindowAttention, A.TokenMoE)) for m in model.encoder1.modules())
    assert model.encoder2.shifts[0] is False  # attention starts (unshifted) at half resolution
    assert isinstance(model, HyReSR) and model(torch.rand(1, 3, 12, 12)).shape == (1, 3, 12, 12)


def test_hyresr_rest_is_five_levels_with_hybrid_blocks_only_at_the_two_lowest():
    model = hyresr_rest(scale=1)
    assert model.levels == 5 and model.pad_multiple == 32
    kinds = {name: type(getattr(model, name)).__name__ for name in stages(model)}
    assert kinds == {**{f"{p}{i}": "NAFStage" for p in ("encoder", "decoder") for i in (1, 2, 3)},
                     "encoder4": "Stage", "decoder4": "Stage", "bottleneck": "Stage"}
    assert model.bottleneck.global_mix is not None
    x = torch.rand(1, 3, 37, 50)  # padded to 64 x 64 inside, cropped back
    model.eval()
    with torch.no_grad():
        assert model(x).shape == x.shape


def test_levels_change_the_padding_and_the_names():
    model = hyresr_tiny(scale=2, dims=(24, 32, 48, 64), depths=(1, 1, 1, 1))
    assert model.levels == 4 and model.pad_multiple == 16
    names = {n.split(".")[0] for n in model.state_dict()}
    assert {"encoder3", "down3", "up3", "skip3", "decoder3"} <= names and "encoder4" not in names


@pytest.mark.parametrize("kw", [dict(upsampler="dysample"), dict(naf_levels=1, msg_depth=2),
                                dict(dims=(24, 32, 48, 64), depths=(1, 1, 1, 1), naf_levels=2),
                                dict(dims=(24, 32), depths=(1, 2))])
def test_fused_equals_unfused_and_reads_back(kw):
    model = perturb(hyresr_tiny(scale=2, **kw)).eval()
    x = torch.rand(1, 3, 18, 22)
    with torch.no_grad():
        ref = model(x)
        rebuilt = build_from_state_dict(model.state_dict())
        assert rebuilt.hyperparameters == model.hyperparameters
        assert torch.equal(rebuilt(x), ref)
        fused = build_from_state_dict(model.fuse().state_dict())
        assert torch.allclose(fused(x), ref, atol=1e-5)


# -- builders ----------------------------------------------------------------------------------


def test_builders_take_upscale_alias_and_explicit_overrides():
    model = hyresr_tiny(upscale=3, noise=True, upsampler="dysample")
    assert model.scale == 3 and model.hyperparameters["noise"] and model.variant == "hyresr_tiny"
    assert hyresr_tiny(scale=2, experts=3).variant == "custom"


def test_builders_show_every_option_typed_with_the_variant_defaults():
    """help(), inspect and traiNNer-redux's option docs read the builders' signatures."""
    import inspect
    import typing

    from hyresr_arch import VARIANTS

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


# -- errors ------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("kw, match", [
    (dict(dims=(), depths=()), "1 to 5 levels"),
    (dict(dims=(24, 32, 48, 64, 96, 128), depths=(1,) * 6), "1 to 5 levels"),
    (dict(dims=(24,), depths=(1,), msg_depth=2), "no skips, so msg_depth does not apply"),
    (dict(dims=(24, 32, 48), depths=(1, 1)), "one entry per U-Net level"),
    (dict(naf_levels=3), "the bottleneck is always hybrid"),
    (dict(naf_levels=-1), "naf_levels"),
])
def test_bad_level_configurations_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        hyresr_tiny(scale=2, **kw)


def test_a_one_level_network_is_a_full_resolution_stack_of_hybrid_blocks():
    """One level: no U-Net, every block at the input's resolution; odd sizes pad to 2 (the frequency
    split halves once), and the state dict reads back."""
    from hyresr_arch import build_from_state_dict

    model = hyresr_tiny(scale=3, dims=(32,), depths=(2,)).eval()
    assert model.pad_multiple == 2 and not any(n.startswith(("encoder", "down", "skip")) for n, _ in model.named_children())
    with torch.no_grad():
        y = model(torch.rand(1, 3, 13, 17))
    assert y.shape == (1, 3, 39, 51)
    assert build_from_state_dict(model.state_dict()).hyperparameters == model.hyperparameters
