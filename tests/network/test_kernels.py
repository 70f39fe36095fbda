"""GPU-shaped compute, checked on the CPU: no host syncs, bounded op counts, no per-window bias
copies, an attention mask that equals an explicit one, checkpoints of the v1 network refused with a
message, and graphs that torch.compile captures whole."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from conftest import perturb
from hyresr_arch import BUILDERS, HyReSRStateDictError, TokenMoE, build_from_state_dict, hyresr_light, hyresr_tiny
from hyresr_arch import hyresr_arch as A

from kernels import HOST_SYNC_OPS, OpCounter, count_forward, count_training_step  # noqa: E402


def _skewed(model):
    """Routing biases that send tokens to different experts, so every expert path is exercised."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, TokenMoE):
                m.route_bias.copy_(torch.linspace(-0.5, 0.5, m.experts))
    return model


@pytest.fixture
def dispatch(request, monkeypatch):
    """Run the MoE in the given form: "dense" (CUDA fp32/fp16, compiled and traced graphs) or
    "grouped" (CPU, CUDA bf16 on sm90+)."""
    monkeypatch.setattr(TokenMoE, "dispatch", request.param)
    return request.param


@pytest.mark.parametrize("dispatch", ["dense", "grouped"], indirect=True)
@pytest.mark.parametrize("name", list(BUILDERS))
def test_no_host_syncs_in_eval_and_training_forwards(name, dispatch):
    model = _skewed(perturb(BUILDERS[name](scale=2)))
    x = torch.rand(2, 3, 20, 28)  # padding and shifted windows in every stage
    evals = count_forward(model.eval(), x)
    train = count_training_step(model.train(), x)
    assert evals.host_syncs == 0, {op: n for op, n in evals.ops.items() if op in HOST_SYNC_OPS}
    assert train.host_syncs == 0, {op: n for op, n in train.ops.items() if op in HOST_SYNC_OPS}
    # the counter does see a sync when there is one
    with OpCounter() as probe:
        torch.arange(4).nonzero()
    assert probe.host_syncs == 1


@pytest.mark.parametrize("dispatch", ["dense"], indirect=True)  # the path CUDA takes in fp32
# bounds: network v1 counted 583 / 924 / 2797; v2's MSG skips add ~24 ops each (two per network) and
# hyresr_light went from 6 to 8 hybrid blocks (its capacity moved to full resolution); hyresr_tiny's
# 6x6 windows do not divide 64, so every stage pads and masks (746; 4x4 windows counted 677 here; on
# the CPU MoE path at 72x72, where 6 divides and 4 does not at 1/4, 731 vs 754); hyresr_rest (five
# levels, 24 NAF blocks, 6 hybrid blocks) counts 1383 here (1455 on the CPU MoE path), NAFNet w24
# (its x1 peer) 1461
@pytest.mark.parametrize("name, bound", [("hyresr_tiny", 800), ("hyresr_light", 1150), ("hyresr", 2900),
                                         ("hyresr_rest", 1500)])
def test_fused_eval_forward_op_count(name, bound, dispatch):
    model = BUILDERS[name](scale=4).eval().fuse()
    n = count_forward(model, torch.rand(1, 3, 64, 64)).total
    print(f"\n{name}: {n} aten ops per 64x64 x4 fused eval forward")
    assert n <= bound


def test_grouped_and_dense_moe_give_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    model = _skewed(perturb(hyresr_tiny(scale=2, experts=4))).train()
    twins = {d: __import__("copy").deepcopy(model) for d in ("dense", "grouped")}
    x = torch.rand(2, 3, 20, 28)
    outs = {}
    for d, m in twins.items():
        for moe in m.modules():
            if isinstance(moe, TokenMoE):
                moe.dispatch = d
        outs[d] = m(x)
        outs[d].abs().mean().backward()
    assert torch.allclose(outs["dense"], outs["grouped"], atol=1e-5)
    for (name, a), (_, b) in zip(twins["dense"].named_parameters(), twins["grouped"].named_parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, atol=1e-6, rtol=1e-4), name
        if name.endswith("route_bias"):
            assert torch.equal(a, b)  # same routing, same balancing update


def test_attention_allocates_no_per_window_bias():
    """The bias is one (1, heads, N, Nk) table; no op produces a (windows, heads, N, N) tensor."""
    model = hyresr_light(scale=2).eval()
    seen = []

    class Shapes(OpCounter):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                seen.append(tuple(out.shape))
            return out

    with torch.no_grad(), Shapes():
        model(torch.rand(2, 3, 44, 36))
    n = model.hyperparameters["window"] ** 2
    square = [s for s in seen if len(s) == 4 and s[-2:] == (n, n)]  # (windows or 1, heads, N, N)
    assert square and all(s[0] == 1 for s in square), sorted(set(square))


def _reference_window_attention(attn: A.WindowAttention, x: torch.Tensor, shift: bool) -> torch.Tensor:
    """Independent reference: pad by the shift, and for every window attend over its real pixels
    only (padded keys dropped, not masked), cosine logits x temperature + relative bias."""
    b, h, w, c = x.shape
    win, heads = attn.window, attn.heads
    d = c // heads
    s = win // 2 if shift else 0
    qkv = attn.qkv(x)
    pads = (s, (-(w + s)) % win, s, (-(h + s)) % win)
    qkv = F.pad(qkv, (0, 0, *pads))
    valid = F.pad(torch.ones(h, w), pads).bool()
    out = torch.zeros(b, qkv.shape[1], qkv.shape[2], c)
    scale = attn.logit_scale.clamp(max=torch.log(torch.tensor(100.0))).exp()  # heads, 1, 1
    bias = attn.rel_bias[:, A.relative_position_index(win, win)]  # heads, N, N
    for i in range(0, qkv.shape[1], win):
        for j in range(0, qkv.shape[2], win):
            keep = valid[i:i + win, j:j + win].flatten()
            if not keep.any():
                continue
            t = qkv[:, i:i + win, j:j + win].reshape(b, win * win, 3, heads, d).permute(2, 0, 3, 1, 4)
            q, k, v = F.normalize(t[0], dim=-1), F.normalize(t[1], dim=-1), t[2]
            logits = (q @ k.transpose(-1, -2)) * scale + bias  # B, heads, N, N
            o = logits[..., keep].softmax(-1) @ v[:, :, keep]
            out[:, i:i + win, j:j + win] = o.permute(0, 2, 1, 3).reshape(b, win, win, c)
    out = out[:, pads[2]:pads[2] + h, pads[0]:pads[0] + w]
    return attn.proj(out)


@pytest.mark.parametrize("shift", [False, True])
@pytest.mark.parametrize("size", [(16, 16), (13, 22)])
def test_window_attention_equals_an_explicit_per_window_reference(shift, size):
    torch.manual_seed(0)
    attn = perturb(A.WindowAttention(32, 2, 8, 8)).eval()
    x = torch.randn(2, *size, 32)
    geo = A.WindowGeometry(x.permute(0, 3, 1, 2), 8, 8, shift, head_dim=16)
    with torch.no_grad():
        out = attn(x.reshape(-1, 32), 2, geo).view(2, *size, 32)
        ref = _reference_window_attention(attn, x, shift)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()


@pytest.mark.parametrize("version, meta", [(1, [1, 3, 3, 3, 4, 0, 1000, 1000]), (2, [2, 3, 4, 0, 1000, 1000])])
def test_network_v1_checkpoints_fail_with_a_message_naming_their_format(version, meta):
    """Formats 1 and 2 describe network v1 (plain skips, per-stage shifts, single-group DySample):
    its weights would compute something else in v2, so they are refused, never mis-loaded."""
    sd = hyresr_tiny(scale=3).state_dict()
    sd["hyresr_meta"] = torch.tensor(meta)
    with pytest.raises(HyReSRStateDictError, match=f"format {version}: a network v1 checkpoint.*revision"):
        build_from_state_dict(sd)
    with pytest.raises(RuntimeError, match=f"describes another network: format {version} vs format 3"):
        hyresr_tiny(scale=3).load_state_dict(sd)  # a host's strict load
    warm = hyresr_tiny(scale=3).load_state_dict(sd, strict=False)  # a warm start still takes the tensors
    assert warm.missing_keys == [] and len(warm.unexpected_keys) == 1


@pytest.mark.parametrize("builder", [hyresr_tiny, hyresr_light])
@pytest.mark.parametrize("training", [False, True])
def test_dynamo_captures_the_whole_forward(builder, training):
    """No graph breaks (fullgraph=True and CUDA graphs need this) in eval and training forwards."""
    import torch._dynamo

    torch._dynamo.reset()
    model = builder(scale=2).train(training)
    explained = torch._dynamo.explain(model)(torch.rand(2, 3, 20, 28))
    assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]
    assert explained.graph_count == 1


def test_kernel_table_counts_an_old_revisions_models_on_the_dense_path_too():
    """kernels.py --rev: the 'CUDA fp32 path' column must switch the old revision's MoE to dense
    as well (its TokenMoE is a class of its own module); HEAD's file stands in for the old revision."""
    from kernels import arch_from_rev, count_paths

    old = arch_from_rev("HEAD")
    assert old.TokenMoE is not TokenMoE
    x = torch.rand(1, 3, 24, 24)
    models = {"new": _skewed(hyresr_tiny(scale=2)).eval(), "old": _skewed(old.hyresr_tiny(scale=2)).eval()}
    here, dense = count_paths(models, x, old)
    assert here["old"].total == here["new"].total
    assert dense["old"].total == dense["new"].total
    assert dense["old"].total != here["old"].total  # the dense form dispatches other ops than the grouped GEMM
    assert TokenMoE.dispatch == old.TokenMoE.dispatch == "auto"  # restored
