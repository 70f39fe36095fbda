"""Warm starts from a checkpoint of another scale, channel count or head (fine-tuning an x2 or x1
model from an x4 one, the community's `strict_load_g: false` practice).

BasicSR 1.4.2 (PyPI) is driven through its own code: ``BaseModel.save_network`` writes the
checkpoint, ``BaseModel.load_network`` (with ``_print_different_keys_loading``, which drops
size-mismatched keys) loads it, and ``SRModel`` reads ``path.pretrain_network_g`` /
``strict_load_g`` from an option dict exactly as from a YAML file. neosr and traiNNer-redux use the
same ``load_state_dict(strict=False)`` after removing size-mismatched keys; the plain-torch test
covers that pattern.
"""

from __future__ import annotations


import pytest
import torch

import hyresr_arch as H
from conftest import perturb


# target networks warm-started from an x4 hyresr_tiny checkpoint
TARGETS = {
    "x2": dict(scale=2),
    "x1": dict(scale=1),
    "gray_x4": dict(scale=4, in_ch=1, out_ch=1),
    "x2_dysample": dict(scale=2, upsampler="dysample"),  # another head: its keys are all new
    "x4_noise": dict(scale=4, noise=True),  # the GAN templates' fine-tune: new noise weights
}


def _x4_source(seed: int = 0) -> H.HyReSR:
    """A trained-looking x4 hyresr_tiny (perturbed weights, balancing state moved)."""
    torch.manual_seed(seed)
    model = perturb(H.hyresr_tiny(scale=4), std=0.05, seed=seed).train()
    model(torch.rand(1, 3, 16, 16))  # route_bias steps away from zero
    return model.eval()


def _check_warm_start(model: H.HyReSR, fresh: dict, source: dict) -> None:
    """Every tensor whose name and shape fit was loaded; every other one kept its fresh init;
    the network's own metadata was kept."""
    got = model.state_dict()
    loaded = [k for k in got if k != "hyresr_meta" and k in source and source[k].shape == got[k].shape]
    kept = [k for k in got if k != "hyresr_meta" and k not in loaded]
    assert len(loaded) > 0.9 * len(got)  # nearly everything fits
    for k in loaded:
        assert torch.equal(got[k], source[k]), f"{k} was not loaded"
    for k in kept:
        assert torch.equal(got[k], fresh[k]), f"{k} did not keep its fresh init"
    assert torch.equal(got["hyresr_meta"], fresh["hyresr_meta"])  # describes this network, not the source
    assert any(k.endswith("route_bias") and source[k].abs().sum() > 0 for k in loaded)  # balancing state too
    with torch.no_grad():
        x = torch.rand(1, model.in_ch, 12, 12)
        assert model.eval()(x).shape == (1, model.out_ch, 12 * model.scale, 12 * model.scale)


@pytest.mark.parametrize("target", list(TARGETS))
def test_basicsr_load_network_non_strict_loads_everything_that_fits(target, basicsr_models, capture_log, tmp_path):
    basicsr_log = capture_log("basicsr")
    BaseModel, _ = basicsr_models
    host = BaseModel({"num_gpu": 0, "is_train": True, "path": {"models": str(tmp_path)}})
    source = _x4_source()
    host.save_network([source, source], "net_g", 100, param_key=["params", "params_ema"])  # SRModel.save's format
    path = tmp_path / "net_g_100.pth"

    model = H.hyresr_tiny(**TARGETS[target])
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    host.load_network(model, str(path), strict=False, param_key="params_ema")
    _check_warm_start(model, fresh, source.state_dict())
    head = {"x2": "head.conv.weight", "x1": "head.conv.weight", "gray_x4": "stem.weight",
            "x2_dysample": "head_dysample.offset.weight", "x4_noise": "high.noise.strength"}[target]
    assert any(head in k for k in fresh)
    if target in ("x2", "x1", "gray_x4"):  # BasicSR reported the skipped tensors
        assert any(line.startswith("Size different, ignore [") and head in line for line in basicsr_log)


@pytest.mark.parametrize("target", ["x2", "gray_x4"])
def test_basicsr_load_network_strict_fails_with_a_clear_message(target, basicsr_models, tmp_path):
    BaseModel, _ = basicsr_models
    host = BaseModel({"num_gpu": 0, "is_train": True, "path": {"models": str(tmp_path)}})
    host.save_network(_x4_source(), "net_g", 5)
    model = H.hyresr_tiny(**TARGETS[target])
    with pytest.raises(RuntimeError) as err:
        host.load_network(model, str(tmp_path / "net_g_5.pth"), strict=True)
    message = str(err.value)
    assert "size mismatch for head.conv.weight" in message
    if target == "gray_x4":  # out_ch leaves no unambiguous trace in shapes: the metadata says it
        assert "size mismatch for stem.weight" in message
        assert "hyresr_meta" in message and "out_ch 3" in message and "out_ch 1" in message


def test_basicsr_srmodel_pretrain_network_g_with_strict_load_g_false(basicsr_models, tmp_path):
    """The option keys the README documents: path.pretrain_network_g + strict_load_g: false load
    net_g (param_key_g, default "params") and, with EMA on, net_g_ema ("params_ema")."""
    BaseModel, SRModel = basicsr_models
    saver = BaseModel({"num_gpu": 0, "is_train": True, "path": {"models": str(tmp_path)}})
    source, ema_source = _x4_source(0), _x4_source(1)
    saver.save_network([source, ema_source], "net_g", 7, param_key=["params", "params_ema"])
    opt = {
        "num_gpu": 0, "dist": False, "is_train": True, "scale": 2,
        "network_g": {"type": "hyresr_tiny", "upscale": 2},
        "path": {"pretrain_network_g": str(tmp_path / "net_g_7.pth"), "strict_load_g": False},
        "train": {"ema_decay": 0.999, "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0},
                  "optim_g": {"type": "Adam", "lr": 1e-4},
                  "scheduler": {"type": "MultiStepLR", "milestones": [10], "gamma": 0.5}},
    }
    torch.manual_seed(3)
    fresh = H.hyresr_tiny(scale=2).state_dict()
    torch.manual_seed(3)  # SRModel builds net_g first: the same fresh weights
    model = SRModel(opt)
    _check_warm_start(model.net_g, fresh, source.state_dict())
    got = model.net_g_ema.state_dict()
    assert torch.equal(got["encoder1.blocks.0.high.moe.fc1.weight"],
                       ema_source.state_dict()["encoder1.blocks.0.high.moe.fc1.weight"])
    assert not torch.equal(got["head.conv.weight"], model.net_g.state_dict()["head.conv.weight"])  # own fresh head
    model.feed_data({"lq": torch.rand(1, 3, 16, 16), "gt": torch.rand(1, 3, 32, 32)})
    model.optimize_parameters(1)  # a real BasicSR training step of the warm-started network
    assert all(torch.isfinite(p).all() for p in model.net_g.parameters())


def test_plain_torch_non_strict_load_after_removing_mismatched_keys():
    """What neosr's and traiNNer-redux's loaders (and most user scripts) do."""
    source = _x4_source().state_dict()
    for target in ("x2", "x1", "gray_x4"):
        model = H.hyresr_tiny(**TARGETS[target])
        fresh = {k: v.clone() for k, v in model.state_dict().items()}
        own = model.state_dict()
        filtered = {k: v for k, v in source.items() if k in own and v.shape == own[k].shape}
        result = model.load_state_dict(filtered, strict=False)
        # the only "unexpected key" a non-strict load may report: metadata of another network
        assert all(k.startswith("hyresr_meta") and "describes another network" in k for k in result.unexpected_keys)
        assert len(result.unexpected_keys) == (target == "gray_x4")  # out_ch differs
        assert set(result.missing_keys) == set(own) - set(filtered)
        _check_warm_start(model, fresh, source)
        # unfiltered, non-strict: torch reports the size mismatch (it never skips mismatched shapes)
        with pytest.raises(RuntimeError, match="size mismatch"):
            H.hyresr_tiny(**TARGETS[target]).load_state_dict(source, strict=False)


def test_strict_load_of_another_variant_names_the_difference():
    source = _x4_source().state_dict()
    with pytest.raises(RuntimeError) as err:
        H.hyresr_tiny(scale=4, expert_ratio=0.5).load_state_dict(source, strict=True)
    message = str(err.value)
    assert "hyresr_meta" in message and "describes another network" in message
    assert "expert_ratio/1000 1000" in message and "expert_ratio/1000 500" in message
    # the same checkpoint warm-starts it
    model = H.hyresr_tiny(scale=4, expert_ratio=0.5)
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in source.items() if v.shape == own[k].shape}, strict=False)
    assert torch.equal(model.state_dict()["stem.weight"], source["stem.weight"])
