"""Network v2 topology: MSG skips, shift alternation across stages, grouped DySample, NAF
stages in the top levels, U-Nets of 2 to 5 levels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import perturb
from hyresr_arch import BUILDERS, HyReSR, build_from_state_dict, hyresr_light, hyresr_rest, hyresr_tiny
from hyresr_arch import hyresr_arch as A


def stages(model: HyReSR) -> list[str]:
    """Stage names in forward order: encoder1, ..., bottleneck, ..., decoder1."""
    above = range(1, model.levels)
    return [f"encoder{i}" for i in above] + ["bottleneck"] + [f"decoder{i}" for i in reversed(above)]


# -- (E) MSG skips ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(BUILDERS))
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


def test_msg_refinement_reaches_the_output_and_learns():
    model = perturb(hyresr_tiny(scale=2, msg_depth=2)).train()
    model(torch.rand(2, 3, 16, 16)).mean().backward()
    for skip in (model.skip1, model.skip2):
        assert len(skip.refine) == 2
        assert skip.gamma.grad is not None and skip.gamma.grad.abs().sum() > 0
        assert skip.refine[0].pw1.weight.grad.abs().sum() > 0


def test_parameter_budgets_with_msg():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(hyresr_tiny(scale=4)) <= 300_000
    assert count(hyresr_light(scale=4)) <= 929_628  # SwinIR-light (embed 60, 4x6 blocks) at x4


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


# -- DySample -----------------------------------------------------------------------------------


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


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dysample_half_precision_is_finite_and_close(dtype):
    model = perturb(hyresr_tiny(scale=3, upsampler="dysample")).eval()
    x = torch.rand(1, 3, 20, 300)  # wide: sampling positions must stay exact
    with torch.no_grad():
        ref = model(x)
        out = model.to(dtype)(x.to(dtype)).float()
    assert torch.isfinite(out).all() and (out - ref).abs().max() < 0.08


def test_dysample_needs_a_width_divisible_by_its_groups():
    with pytest.raises(ValueError, match="divisible by 4"):
        hyresr_tiny(scale=2, upsampler="dysample", dims=(26, 32, 48))


# -- levels, NAF stages, fuse, read-back --------------------------------------------------------


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


@pytest.mark.parametrize("kw, match", [
    (dict(dims=(24,), depths=(1,)), "2 to 5 levels"),
    (dict(dims=(24, 32, 48, 64, 96, 128), depths=(1,) * 6), "2 to 5 levels"),
    (dict(dims=(24, 32, 48), depths=(1, 1)), "one entry per U-Net level"),
    (dict(naf_levels=3), "the bottleneck is always hybrid"),
    (dict(naf_levels=-1), "naf_levels"),
])
def test_bad_level_configurations_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        hyresr_tiny(scale=2, **kw)
