"""The CUDA code paths without a GPU: forwards on fake CUDA tensors.

``torch._subclasses.fake_tensor.FakeTensorMode`` gives tensors a device and a dtype but no data, so
a forward on ``device="cuda"`` runs every CUDA branch of the network (the MoE's dispatch, dtype
handling, tensors the forward creates) on a machine without a GPU. The model is built outside the
mode (real CPU weights) and moved with one ``.to("cuda", dtype)`` inside it: torch 2.14 needs
``allow_non_fake_inputs=True`` for that (the real weights are converted on the fly), and a second
cast of an already fake model fails (``swap_tensors`` refuses the fake weights), so device and
dtype travel in one call. Autocast is off without CUDA, so half precision means a cast model.

What the tests check, for every variant, eval and train mode, fp32 / fp16 / bf16:
- no op inside the forward reads or makes a tensor on any device but CUDA;
- the output's device and dtype;
- the MoE takes the path CUDA would: dense in fp32 and fp16, grouped (``torch._grouped_mm``) in
  bf16 when the device reports compute capability >= 9.0 (``torch.cuda.get_device_capability`` is
  patched; the network asks it only for bf16), dense in bf16 below that.

Backward: autograd's engine itself needs a device for CUDA tensors. ``loss.backward()`` on the fake
output, ``make_fx(tracing_mode="fake")`` of a function calling ``torch.autograd.grad``,
``functorch.compile.aot_function`` and ``torch.autograd.set_multithreading_enabled(False)`` all stop
in ``GraphTask::stash_current_streams`` ("hasPrimaryContext expects a valid device index"). What
works: trace the training forward on fake CUDA with ``make_fx`` (the graph of exactly the ops the
CUDA branches chose), move that graph to the meta device and run its backward there
(``test_backward_of_the_cuda_forward_graph``).

The two deep variants (hyresr, hyresr_sr: 28 blocks, 6000-20000 ops per forward, about 0.5 ms each
under fake tensors on this project's 2-core CI) run the mode x dtype matrix with one block per level
and their own widths, window, overlap, experts and levels (the code paths are the same; depth only
repeats blocks), and their full depth once each (eval, bf16, sm90).
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from hyresr_arch import BUILDERS, TokenMoE

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEEP = ("hyresr", "hyresr_sr")  # run the matrix with one block per level (see the module docstring)
SM90, SM80 = (9, 0), (8, 0)


def build(name: str, train: bool, *, full_depth: bool = False) -> torch.nn.Module:
    builder = BUILDERS[name]
    kw = {}
    if name in DEEP and not full_depth:
        kw["depths"] = (1,) * len(builder.__kwdefaults__["dims"])
    torch.manual_seed(0)
    return builder(scale=2, **kw).train(train)


class DeviceRecorder(TorchDispatchMode):
    """Every aten op under it, and every tensor one of them reads or makes that is not on CUDA."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []
        self.off_device: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.append(str(func.overloadpacket))
        for t in tree_leaves((args, kwargs, out)):
            if isinstance(t, torch.Tensor) and t.device.type != "cuda":
                self.off_device.append(f"{func}: {t.device} {t.dtype} {tuple(t.shape)}")
        return out


def fake_cuda_forward(model: torch.nn.Module, dtype: torch.dtype, capability=SM90, size: int = 16):
    """model moved to fake CUDA in ``dtype`` and run once; returns (output, recorder, capability mock)."""
    with FakeTensorMode(allow_non_fake_inputs=True), \
            mock.patch.object(torch.cuda, "get_device_capability", return_value=capability) as cap:
        model = model.to("cuda", dtype)  # one call: a second cast of fake weights fails (module docstring)
        x = torch.rand(1, 3, size, size, device="cuda", dtype=dtype)
        recorder = DeviceRecorder()
        with recorder, torch.set_grad_enabled(model.training):
            out = model(x)
    return out, recorder, cap


def moe_layers(model: torch.nn.Module) -> list[TokenMoE]:
    return [m for m in model.modules() if isinstance(m, TokenMoE)]


def assert_cuda_forward(model, out, recorder, dtype, *, grouped: bool) -> None:
    assert out.device.type == "cuda" and out.dtype == dtype and out.shape == (1, 3, 32, 32)
    assert not recorder.off_device, f"non-CUDA tensors inside forward: {recorder.off_device[:5]}"
    n_grouped = recorder.ops.count("aten._grouped_mm")
    # grouped: two grouped GEMMs per MoE layer; dense: none (two plain matmuls instead)
    assert n_grouped == (2 * len(moe_layers(model)) if grouped else 0), (n_grouped, len(moe_layers(model)))


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_forward_on_fake_cuda_stays_on_the_device_and_takes_the_cuda_moe_path(name, mode, dtype):
    model = build(name, train=mode == "train")
    out, recorder, cap = fake_cuda_forward(model, DTYPES[dtype], capability=SM90)
    assert_cuda_forward(model, out, recorder, DTYPES[dtype], grouped=dtype == "bf16")
    assert cap.called == (dtype == "bf16")  # only bf16 asks for the device's capability
    if mode == "train":  # the balancing step ran on the device and kept the counters exact integers
        assert all(m.pending.device.type == "cuda" and m.counts.dtype == torch.int64 for m in moe_layers(model))
        assert all(m.route_bias.dtype == DTYPES[dtype] for m in moe_layers(model))


@pytest.mark.parametrize("name", DEEP)
def test_full_depth_deep_variants_on_fake_cuda(name):
    model = build(name, train=False, full_depth=True)
    out, recorder, _ = fake_cuda_forward(model, torch.bfloat16, capability=SM90)
    assert_cuda_forward(model, out, recorder, torch.bfloat16, grouped=True)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_bf16_below_sm90_is_dense(mode):
    model = build("hyresr_tiny", train=mode == "train")
    out, recorder, cap = fake_cuda_forward(model, torch.bfloat16, capability=SM80)
    assert cap.called
    assert_cuda_forward(model, out, recorder, torch.bfloat16, grouped=False)


# -- backward: the CUDA forward's graph, differentiated on the meta device ----------------------


def _trace_cuda_training_forward(model: torch.nn.Module, dtype: torch.dtype):
    """make_fx graph of a training forward on fake CUDA (weights and buffers as graph inputs)."""
    names = [n for n, _ in model.named_parameters()]
    buffer_names = [n for n, _ in model.named_buffers()]

    def forward(x, params, buffers):
        state = {**dict(zip(names, params)), **dict(zip(buffer_names, buffers))}
        return torch.func.functional_call(model, state, (x,))

    cast = lambda t: t.detach().to("cuda", dtype if t.is_floating_point() else t.dtype)  # noqa: E731
    with FakeTensorMode(allow_non_fake_inputs=True), \
            mock.patch.object(torch.cuda, "get_device_capability", return_value=SM90):
        params = [cast(p) for p in model.parameters()]
        buffers = [cast(b) for b in model.buffers()]
        x = torch.rand(1, 3, 16, 16, device="cuda", dtype=dtype)
        return make_fx(forward, tracing_mode="fake")(x, params, buffers)


# the dense MoE (fp16) and the grouped MoE with overlapping key windows (bf16, sm90); 5-10 s each
@pytest.mark.parametrize("name,dtype", [("hyresr_tiny", "fp16"), ("hyresr_sr", "bf16")])
def test_backward_of_the_cuda_forward_graph(name, dtype):
    """Autograd cannot run a backward on fake CUDA tensors (module docstring); the forward graph the
    CUDA branches produced, moved to meta tensors, differentiates: every op of the CUDA path has a
    derivative with the right shapes, and every trainable weight gets a gradient of its dtype."""
    dtype = DTYPES[dtype]
    model = build(name, train=True)
    graph = _trace_cuda_training_forward(model, dtype)
    moes = len(moe_layers(model))
    n_grouped = sum(n.target is torch.ops.aten._grouped_mm.default for n in graph.graph.nodes)
    assert n_grouped == (2 * moes if dtype == torch.bfloat16 else 0)
    for node in graph.graph.nodes:  # the ops that create tensors on the device: now on meta
        if isinstance(node.kwargs.get("device"), torch.device):
            node.kwargs = {**node.kwargs, "device": torch.device("meta")}
    graph.recompile()
    assert "cuda" not in graph.code

    def meta(t: torch.Tensor, grad: bool = False) -> torch.Tensor:
        out = torch.empty_like(t, device="meta", dtype=dtype if t.is_floating_point() else t.dtype)
        return out.requires_grad_(grad)

    params = [meta(p, p.requires_grad) for p in model.parameters()]
    out = graph(torch.empty(1, 3, 16, 16, device="meta", dtype=dtype), params, [meta(b) for b in model.buffers()])
    assert out.shape == (1, 3, 32, 32) and out.dtype == dtype
    recorder = DeviceRecorder()
    with recorder:
        out.float().square().mean().backward()
    missing = [n for (n, p), m in zip(model.named_parameters(), params) if p.requires_grad and m.grad is None]
    assert not missing, f"no gradient in the CUDA graph's backward: {missing[:5]}"
    assert all(m.grad.shape == m.shape and m.grad.dtype == dtype for m in params if m.requires_grad)
    if dtype == torch.bfloat16:  # the grouped GEMMs' own backward: grouped GEMMs again
        assert recorder.ops.count("aten._grouped_mm") >= 2 * moes
