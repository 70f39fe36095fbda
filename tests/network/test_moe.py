"""Token-wise top-1 mixture of experts: sparse, differentiable routing, loss-free balancing."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import perturb
from hyresr_arch import TokenMoE, hyresr_tiny


def _expert(moe: TokenMoE, e: int, x: torch.Tensor) -> torch.Tensor:
    """Expert e as its own GEGLU FFN, read from its slices of the stacked weights."""
    h = moe.hidden
    w1, b1 = moe.fc1.weight[2 * h * e : 2 * h * (e + 1)], moe.fc1.bias[2 * h * e : 2 * h * (e + 1)]
    a, v = (x @ w1.T + b1).chunk(2, dim=-1)
    return (torch.nn.functional.gelu(a) * v) @ moe.fc2.weight[:, h * e : h * (e + 1)].T + moe.fc2_bias[e]


def test_each_token_gets_its_chosen_expert_times_its_gate():
    torch.manual_seed(0)
    moe = perturb(TokenMoE(8, 4, 8)).eval()
    with torch.no_grad():
        moe.route_bias.copy_(torch.tensor([0.3, -0.2, 0.0, 0.1]))
    tokens = torch.randn(70, 8)
    residual = torch.randn(70, 8)
    with torch.no_grad():
        out = moe(tokens, residual=residual)
        # independent per-token reference: p_chosen * chosen expert(token), choice steered by the bias
        logits = moe.router(tokens)
        choice = (logits + moe.route_bias).argmax(-1)
        ref = torch.stack([logits[i].softmax(-1)[c] * _expert(moe, c, tokens[i])
                           for i, c in enumerate(choice.tolist())])
    assert len(set(choice.tolist())) > 1  # the reference exercises several experts
    assert torch.allclose(out - residual, ref, atol=1e-5)


def test_router_receives_gradient():
    moe = TokenMoE(8, 4, 8).train()
    t = torch.randn(36, 8)
    moe(t, residual=torch.zeros_like(t)).pow(2).mean().backward()
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0


def test_output_of_a_token_does_not_depend_on_the_batch():
    moe = TokenMoE(8, 3, 8).eval()
    t = torch.randn(36, 8)
    with torch.no_grad():
        assert torch.allclose(moe(t, t)[20:29], moe(t[20:29], t[20:29]), atol=1e-6)


def test_every_expert_gets_a_gradient_even_without_tokens_and_unchosen_ones_get_zero():
    moe = TokenMoE(8, 4, 8).train()
    with torch.no_grad():
        moe.route_bias.copy_(torch.tensor([50.0, 0, 0, 0]))  # every token picks expert 0 (training routing)
    t = torch.randn(16, 8)
    moe(t, residual=t).sum().backward()
    assert all(p.grad is not None for p in moe.parameters() if p.requires_grad)  # DDP needs no unused params
    h = moe.hidden
    assert moe.fc1.weight.grad[: 2 * h].abs().sum() > 0 and moe.fc1.weight.grad[2 * h :].abs().sum() == 0
    assert moe.fc2.weight.grad[:, h:].abs().sum() == 0 and moe.fc2_bias.grad[1:].abs().sum() == 0


def test_balancing_bias_is_updated_only_in_training_and_saved():
    model = hyresr_tiny(scale=2, experts=2)
    moes = [m for m in model.modules() if isinstance(m, TokenMoE)]
    with torch.no_grad():
        for m in moes:
            m.router.weight.zero_()
            m.router.bias.copy_(torch.tensor([1.0, 0.0]))  # all tokens prefer expert 0
    model.eval().record_moe_loads()(torch.rand(1, 3, 16, 16))
    assert all(torch.equal(m.route_bias, torch.zeros(2)) for m in moes)
    assert all(load.tolist() == [1.0, 0.0] for load in model.moe_loads())
    model.train()(torch.rand(1, 3, 16, 16))
    assert all(m.route_bias[0] < 0 < m.route_bias[1] for m in moes)  # overloaded expert pushed down
    assert all(m.pending.sum() == 0 for m in moes)  # applied once, at the end of the forward
    assert "encoder1.blocks.0.high.moe.route_bias" in model.state_dict()
    assert not moes[0].route_bias.requires_grad


def _photos() -> list[torch.Tensor]:
    from skimage import data

    imgs = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    return [torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in imgs]


def _train_and_measure_loads(balance_rate: float, steps: int = 150):
    """A small x2 SR task on crops of real photos. Per-layer expert loads: the mean over the last
    30 training forwards, and the mean over held-out crops in eval."""
    torch.manual_seed(0)
    model = hyresr_tiny(scale=2, experts=4)
    for m in model.modules():
        if isinstance(m, TokenMoE):
            m.balance_rate = balance_rate
            with torch.no_grad():  # a skewed router, as happens early in real training
                m.router.bias.copy_(torch.tensor([0.6, 0.2, 0.0, -0.2]))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4)  # the option files use 5e-4
    g = torch.Generator().manual_seed(1)
    photos = _photos()

    def batch(n, size):  # random crops of real photos and their x2 box-downscaled inputs
        hr = []
        for _ in range(n):
            img = photos[int(torch.randint(len(photos), (1,), generator=g))]
            y = int(torch.randint(img.shape[1] - size, (1,), generator=g))
            x = int(torch.randint(img.shape[2] - size, (1,), generator=g))
            hr.append(img[:, y:y + size, x:x + size])
        hr = torch.stack(hr)
        return torch.nn.functional.avg_pool2d(hr, 2), hr

    train_loads = []
    for step in range(steps):
        lr, hr = batch(4, 32)
        loss = torch.nn.functional.l1_loss(model(lr), hr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= steps - 30:
            train_loads.append(torch.stack(model.moe_loads()))

    model.eval().record_moe_loads()
    loads = []
    with torch.no_grad():  # mean load over held-out crops of the same photos
        for _ in range(8):
            model(batch(8, 32)[0])
            loads.append(torch.stack(model.moe_loads()))
    return torch.stack(train_loads).mean(0).tolist(), torch.stack(loads).mean(0).tolist()


@pytest.fixture(scope="module")
def loads_with_and_without_balancing():
    return _train_and_measure_loads(TokenMoE.balance_rate), _train_and_measure_loads(0.0)


def test_bias_balancing_keeps_every_expert_above_ten_percent(loads_with_and_without_balancing):
    (train_bal, held_bal), (train_unbal, held_unbal) = loads_with_and_without_balancing
    fmt = lambda loads: [[round(v, 2) for v in layer] for layer in loads]  # noqa: E731
    print("\nper-layer expert load, balanced, training:  ", fmt(train_bal))
    print("per-layer expert load, balanced, held-out:  ", fmt(held_bal))
    print("per-layer expert load, unbalanced, training:", fmt(train_unbal))
    print("per-layer expert load, unbalanced, held-out:", fmt(held_unbal))
    # what the bias controls: every expert's share of the training tokens
    assert min(min(layer) for layer in train_bal) > 0.10
    # the same run without balancing collapses: some layer sends (almost) nothing to an expert
    assert min(min(layer) for layer in train_unbal) < 0.01
    # held-out images in eval (a fixed snapshot of the oscillating bias): less even (measured min
    # 0.11 with format-1 initial weights, 0.049 with format 2's), but every expert of every layer is
    # used, while the unbalanced run has dead experts
    assert min(min(layer) for layer in held_bal) > 0.02
    assert min(min(layer) for layer in held_unbal) < 0.005


def test_moe_state_survives_deepcopy_and_reload():
    model = perturb(hyresr_tiny(scale=2)).train()
    model(torch.rand(1, 3, 16, 16))
    clone = copy.deepcopy(model)
    fresh = hyresr_tiny(scale=2)
    fresh.load_state_dict(model.state_dict())
    for m in (clone, fresh):
        biases = [x.route_bias for x in m.modules() if isinstance(x, TokenMoE)]
        expected = [x.route_bias for x in model.modules() if isinstance(x, TokenMoE)]
        assert all(torch.equal(a, b) for a, b in zip(biases, expected))
        assert any(b.abs().sum() > 0 for b in biases)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_token_counters_survive_a_half_precision_cast_beyond_65504_tokens_per_expert(dtype):
    """.half() / .to(dtype) cast every floating buffer; an fp16 count saturates at 65,504 (inf, then a
    NaN or zero bias step). The counters are int64, so a cast model counts exactly and balances."""
    model = hyresr_tiny(scale=2).to(dtype).train()
    moes = [m for m in model.modules() if isinstance(m, TokenMoE)]
    assert all(m.pending.dtype == m.counts.dtype == torch.int64 for m in moes)
    first = moes[0]
    with torch.no_grad():  # expert 0 takes tokens whose first feature is positive, expert 1 the rest
        first.router.weight.zero_()
        first.router.weight[0, 0], first.router.weight[1, 0] = 1.0, -1.0
        first.router.bias.zero_()
        t = torch.rand(175_000, first.router.in_features).add_(0.1).to(dtype)
        t[100_000:, 0] *= -1
        first(t, residual=t)  # 100,000 and 75,000 tokens: both beyond fp16's largest finite value
    assert first.counts.tolist() == first.pending.tolist() == [100_000, 75_000]
    model._balance_experts()  # what the end of a training forward does
    step = TokenMoE.balance_rate
    assert first.route_bias.dtype == dtype and torch.isfinite(first.route_bias).all()
    # the overloaded expert is pushed down, the other up; a layer that saw no tokens stays
    assert torch.allclose(first.route_bias.float(), torch.tensor([-step, step]), atol=1e-3)
    assert all(m.route_bias.abs().sum() == 0 for m in moes[1:]) and all(m.pending.sum() == 0 for m in moes)
    before = [m.route_bias.float().clone() for m in moes]
    model(torch.rand(1, 3, 16, 16, dtype=dtype))  # a whole training forward of the cast model balances too
    for m, b in zip(moes, before):  # each layer's bias moved against its own load (not at all if even)
        expected = torch.sign(m.counts.sum() - m.experts * m.counts).float() * step
        assert torch.isfinite(m.route_bias).all() and torch.allclose(m.route_bias.float() - b, expected, atol=1e-3)


def _always_expert_0(model) -> list[TokenMoE]:
    moes = [m for m in model.modules() if isinstance(m, TokenMoE)]
    with torch.no_grad():
        for m in moes:
            m.router.weight.zero_()
            m.router.bias.copy_(torch.tensor([100.0, 0.0]))  # expert 0 wins whatever the bias does
    return moes


def test_the_balancing_step_decays_with_training_so_the_routing_settles():
    """Step t moves each bias by balance_rate / (1 + t / balance_settle): the sum below is computed
    independently of the network's own arithmetic, step by step."""
    model = hyresr_tiny(scale=2, experts=2).train()
    moes = _always_expert_0(model)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        for _ in range(30):
            model(x)
    expected = sum(0.05 / (1 + t / 200) for t in range(30))
    assert model.balance_steps.item() == 30
    for m in moes:  # overloaded every step: pushed down, the idle expert up, by the decayed sum
        assert m.route_bias.tolist() == pytest.approx([-expected, expected], rel=1e-5)
    with torch.no_grad():  # 10,000 training forwards in: the published loss-free step (~0.001)
        model.balance_steps.fill_(10_000)
        before = moes[0].route_bias.clone()
        model(x)
    assert (before - moes[0].route_bias)[0].item() == pytest.approx(0.05 / 51, rel=1e-4)
    assert not model.balance_steps.requires_grad and "balance_steps" in model.state_dict()


def test_eval_forwards_neither_balance_nor_count_steps():
    model = hyresr_tiny(scale=2, experts=2).eval()
    _always_expert_0(model)
    with torch.no_grad():
        model(torch.rand(1, 3, 16, 16))
    assert model.balance_steps.item() == 0


def test_a_checkpoint_saved_before_balance_steps_existed_loads_and_starts_its_count_at_zero():
    from hyresr_arch import build_from_state_dict

    trained = hyresr_tiny(scale=2).train()
    with torch.no_grad():
        trained(torch.rand(1, 3, 16, 16))
    old = {k: v for k, v in trained.state_dict().items() if k != "balance_steps"}  # a network v2 file
    fresh = hyresr_tiny(scale=2)
    fresh.load_state_dict(old, strict=True)
    assert fresh.balance_steps.item() == 0
    rebuilt = build_from_state_dict(old)
    assert rebuilt.balance_steps.item() == 0
    assert all(torch.equal(rebuilt.state_dict()[k], v) for k, v in old.items())
