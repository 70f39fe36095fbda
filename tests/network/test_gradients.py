"""Training reaches every weight: nonzero gradients everywhere but in the MoE's unchosen experts
(exactly zero there; conftest.assert_nonzero_gradients states the rule)."""

from __future__ import annotations

import pytest
import torch

from conftest import assert_nonzero_gradients, perturb
from hyresr_arch import BUILDERS, hyresr_tiny


@pytest.mark.parametrize("name", list(BUILDERS))
def test_training_step_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = BUILDERS[name](scale=2).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    out = model(torch.rand(2, 3, 16, 16))
    assert torch.isfinite(out).all()
    torch.nn.functional.l1_loss(out, torch.rand_like(out)).backward()
    assert_nonzero_gradients(model)
    opt.step()
    trainable = [k for k, p in model.named_parameters() if p.requires_grad]
    unchanged = [k for k in trainable if torch.equal(before[k], model.get_parameter(k).detach())]
    assert not unchanged, f"AdamW step left parameters unchanged: {unchanged[:5]}"


def test_the_gradient_rule_knows_unchosen_experts():
    """The helper's exception is exact: with every token forced onto expert 0, experts 1.. have
    zero gradients and it passes; a zero gradient anywhere else fails it."""
    model = perturb(hyresr_tiny(scale=2, experts=3)).train()
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ == "TokenMoE":
                m.route_bias.copy_(torch.tensor([50.0, 0.0, 0.0]))
    model(torch.rand(1, 3, 16, 16)).mean().backward()
    assert all(m.counts.tolist()[1:] == [0, 0] for m in model.modules() if type(m).__name__ == "TokenMoE")
    assert_nonzero_gradients(model)
    model.stem.weight.grad.zero_()
    with pytest.raises(AssertionError, match="stem.weight: all-zero gradient"):
        assert_nonzero_gradients(model)


def test_msg_refinement_reaches_the_output_and_learns():
    model = perturb(hyresr_tiny(scale=2, msg_depth=2)).train()
    model(torch.rand(2, 3, 16, 16)).mean().backward()
    for skip in (model.skip1, model.skip2):
        assert len(skip.refine) == 2
        assert skip.gamma.grad is not None and skip.gamma.grad.abs().sum() > 0
        assert skip.refine[0].pw1.weight.grad.abs().sum() > 0
