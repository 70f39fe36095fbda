"""Quiet host logs: the hosts warn "Params <name> will not be optimized." for every frozen
parameter. HyReSR's ``route_bias`` (one per MoE layer) is frozen on purpose, so importing the arch
file installs a filter that drops exactly those lines on the "basicsr", "neosr" and "traiNNer"
loggers; the same warning for any other frozen parameter still shows. route_bias stays a
parameter: BasicSR's EMA (parameters only) still averages it.

BasicSR 1.4.2 runs its real ``SRModel`` (built from an option dict, CPU, num_gpu 0). neosr and
traiNNer-redux log the same line from their own ``setup_optimizers`` (an f-string in neosr,
``"Params %s will not be optimized.", k`` in traiNNer-redux); their loggers are checked here with
records of both forms.
"""

from __future__ import annotations

import logging

import pytest
import torch

import hyresr_arch as H

torch.set_num_threads(1)


def _opt(ema_decay: float) -> dict:
    return {
        "num_gpu": 0, "dist": False, "is_train": False, "scale": 2,
        "network_g": {"type": "hyresr_tiny", "upscale": 2},
        "path": {},
        "train": {"ema_decay": ema_decay, "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0},
                  "optim_g": {"type": "Adam", "lr": 1e-3},
                  "scheduler": {"type": "MultiStepLR", "milestones": [10], "gamma": 0.5}},
    }


def _route_biases(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in net.named_parameters() if n.endswith("route_bias")}


def test_basicsr_setup_optimizers_is_quiet_about_route_bias_only(basicsr_models, capture_log):
    lines = capture_log("basicsr")
    torch.manual_seed(0)
    model = basicsr_models[1](_opt(ema_decay=0.5))  # is_train False: no training settings yet
    biases = _route_biases(model.net_g)
    assert len(biases) == 6 and not any(p.requires_grad for p in biases.values())
    model.net_g.stem.bias.requires_grad_(False)  # a parameter frozen by mistake must still be reported
    model.is_train = True
    model.init_training_settings()  # EMA copy, loss, setup_optimizers, schedulers: BasicSR's own code
    warnings = [line for line in lines if "will not be optimized" in line]
    assert warnings == ["Params stem.bias will not be optimized."]
    assert not any("route_bias" in line for line in lines)
    in_optimizer = {id(p) for group in model.optimizer_g.param_groups for p in group["params"]}
    assert not any(id(p) in in_optimizer for p in biases.values())


def test_basicsr_training_step_ema_averages_route_bias(basicsr_models):
    """A real SRModel step: the training forward moves route_bias, model_ema(decay) averages it."""
    torch.manual_seed(0)
    opt = _opt(ema_decay=0.5)
    opt["is_train"] = True
    model = basicsr_models[1](opt)
    ema_before = {n: p.detach().clone() for n, p in _route_biases(model.net_g_ema).items()}
    assert all(torch.equal(v, torch.zeros_like(v)) for v in ema_before.values())
    for step in range(1, 4):
        g = torch.Generator().manual_seed(step)
        model.feed_data({"lq": torch.rand(2, 3, 16, 16, generator=g), "gt": torch.rand(2, 3, 32, 32, generator=g)})
        model.optimize_parameters(step)
        now = {n: p.detach() for n, p in _route_biases(model.net_g).items()}
        expected = {n: 0.5 * ema_before[n] + 0.5 * now[n] for n in now}
        got = _route_biases(model.net_g_ema)
        for n in expected:
            assert torch.allclose(got[n], expected[n], atol=1e-7), n
        ema_before = {n: p.detach().clone() for n, p in got.items()}
    assert any(v.abs().sum() > 0 for v in ema_before.values())  # the average really moved
    # and the saved EMA weights carry it
    assert all(torch.equal(model.net_g_ema.state_dict()[n], v) for n, v in ema_before.items())


@pytest.mark.parametrize("host", ["basicsr", "neosr", "traiNNer"])
def test_each_host_logger_drops_exactly_the_route_bias_warning(host, capture_log):
    lines = capture_log(host)
    logger = logging.getLogger(host)
    name = "decoder1.blocks.0.high.moe.route_bias"
    logger.warning(f"Params {name} will not be optimized.")  # BasicSR / neosr
    logger.warning("Params %s will not be optimized.", name)  # traiNNer-redux
    logger.warning("Params %s will not be optimized.", "stem.bias")
    logger.warning("Params route_bias_scale will not be optimized.")  # not a HyReSR route_bias
    logger.warning(f"Loaded {name} from the checkpoint.")
    assert lines == ["Params stem.bias will not be optimized.", "Params route_bias_scale will not be optimized.",
                     f"Loaded {name} from the checkpoint."]


def test_a_second_import_of_the_arch_file_adds_no_second_filter():
    """neosr re-imports its archs on every build; a copy under another module name is the same case."""
    import importlib.util

    counts = {h: len(logging.getLogger(h).filters) for h in ("basicsr", "neosr", "traiNNer")}
    assert all(n >= 1 for n in counts.values())
    spec = importlib.util.spec_from_file_location("hyresr_arch_second_copy", H.hyresr_arch.__file__)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert {h: len(logging.getLogger(h).filters) for h in counts} == counts
