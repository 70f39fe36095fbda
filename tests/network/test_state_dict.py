"""Hyperparameter recovery: every variant, fused or not, rebuilds from its own state dict."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import perturb
from hyresr_arch import (BUILDERS, HyReSRStateDictError, build_from_state_dict, hyresr_tiny, read_hyperparameters,
                         unwrap_state_dict)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_round_trip_through_safetensors_gives_identical_model(name, fused, tmp_path):
    model = perturb(BUILDERS[name](scale=2)).eval()
    if fused:
        model.fuse()
    save_file(model.state_dict(), tmp_path / "m.safetensors")
    again = build_from_state_dict(load_file(tmp_path / "m.safetensors")).eval()
    assert again.hyperparameters == model.hyperparameters
    assert again.is_fused == fused and again.variant == name
    x = torch.rand(1, 3, 12, 20)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


@pytest.mark.parametrize("kwargs", [
    dict(scale=1, in_ch=1, out_ch=1),
    dict(scale=3, in_ch=4, out_ch=4, noise=True),
    dict(scale=4, upsampler="dysample", window=4, overlap=0.5),
    dict(scale=1, dims=(16, 16, 16, 16, 16), depths=(1, 1, 1, 2, 1), naf_levels=3, msg_depth=2),
    dict(scale=2, in_ch=3, out_ch=1, expert_ratio=0.333, ffn_ratio=1.25, low_depth=2, high_depth=2),
    dict(scale=8, dims=(16, 24, 32), depths=(2, 1, 3), window=6, experts=3, kernel_size=5, global_mix=True),
])
def test_every_hyperparameter_is_read_back(kwargs):
    model = hyresr_tiny(**kwargs)
    hp, fused = read_hyperparameters(model.state_dict())
    assert hp == model.hyperparameters and not fused


def test_host_wrappers_and_prefixes_are_unwrapped():
    sd = hyresr_tiny(scale=2).state_dict()
    prefixed = {f"module.{k}": v for k, v in sd.items()}
    for wrapped in ({"params_ema": sd, "params": {}}, {"params": prefixed}, {"state_dict": prefixed}):
        assert unwrap_state_dict(wrapped).keys() == sd.keys()
    assert build_from_state_dict({"params": prefixed}).scale == 2


def test_half_precision_checkpoint_keeps_exact_metadata():
    model = hyresr_tiny(scale=3, expert_ratio=0.333).half()
    assert build_from_state_dict(model.state_dict()).hyperparameters == model.hyperparameters


def test_clear_errors_for_foreign_or_damaged_state_dicts():
    sd = hyresr_tiny(scale=2).state_dict()
    with pytest.raises(HyReSRStateDictError, match="not a HyReSR"):
        build_from_state_dict({"body.0.weight": torch.zeros(1), "body.1.weight": torch.zeros(1)})
    missing = {k: v for k, v in sd.items() if "decoder1.blocks.0.fusion.mix.weight" not in k}
    with pytest.raises(HyReSRStateDictError, match="fusion.mix.weight"):
        build_from_state_dict(missing)
    wrong = dict(sd, **{"head.conv.weight": torch.zeros(3, 3, 3, 3)})
    with pytest.raises(HyReSRStateDictError, match="head.conv.weight"):
        build_from_state_dict(wrong)
    newer = dict(sd, hyresr_meta=sd["hyresr_meta"].clone().index_fill_(0, torch.tensor([0]), 99))
    with pytest.raises(HyReSRStateDictError, match="newer"):
        build_from_state_dict(newer)


def test_keys_do_not_look_like_spandrel_compact():
    sd = hyresr_tiny(scale=2).state_dict()
    assert "body.0.weight" not in sd and "body.1.weight" not in sd
