"""The GPU cost model (benchmarks/gpu_model.py) and the GMAC counting of benchmarks/efficiency.py.

Fast (no real GPU, no large forwards): the fake-CUDA tracer counts FLOPs and bytes of a known conv,
matmul, SDPA (each kernel CUDA would pick) and _grouped_mm as computed by hand; the fit recovers known
parameters from synthetic data; the committed published table parses and names its source; GMACs
count the experts of a tiny TokenMoE (top-1 and dense) as computed by hand.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[2]

import efficiency  # noqa: E402
import gpu_model as gm  # noqa: E402
from hyresr_arch import TokenMoE  # noqa: E402


@pytest.fixture
def one_thread():
    """Real forwards on tiny inputs: one intra-op thread (on a busy machine two threads of tiny ops
    spend most of their time waiting for each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ops(tr: gm.Trace, cls: str) -> list[gm.Op]:
    return [o for o in tr.ops if o.cls == cls]


# ---------------------------------------------------------------------------------------------------
# the tracer
def test_conv_flops_and_bytes_fp32():
    conv = nn.Conv2d(8, 16, 3, padding=1)
    tr = gm.trace(conv, "conv", "fp32", shape=(1, 8, 16, 16))
    (op,) = _ops(tr, "conv")
    assert op.flops == 2 * 16 * 8 * 9 * 16 * 16  # 2 * Cout * Cin * k*k * H * W
    # input + weight + bias + output, fp32; all channels_last, so no layout conversion
    assert op.bytes == 4 * (8 * 16 * 16 + 16 * 8 * 9 + 16 + 16 * 16 * 16)
    assert op.launches == 1 and op.aligned
    assert tr.out_shape == (1, 16, 16, 16) and tr.syncs == 0


def test_conv_under_fp16_autocast_reads_half_and_pays_the_casts():
    conv = nn.Conv2d(8, 16, 3, padding=1, groups=8)  # depthwise-style grouped conv
    tr = gm.trace(conv, "conv", "fp16", shape=(1, 8, 16, 16))
    (op,) = _ops(tr, "dwconv")
    assert op.flops == 2 * 16 * 1 * 9 * 16 * 16
    assert op.bytes == 2 * (8 * 16 * 16 + 16 * 1 * 9 + 16 + 16 * 16 * 16)
    casts = [o for o in tr.ops if o.name == "_to_copy"]
    # under inference_mode autocast re-casts the weight, the bias and the input every forward
    assert len(casts) == 3
    assert sum(o.bytes for o in casts) == (4 + 2) * (8 * 16 * 16 + 16 * 9 + 16)


def test_linear_flops_bytes_and_alignment():
    lin = nn.Linear(32, 24)
    tr = gm.trace(lin, "linear", "fp32", shape=(64, 32), channels_last=False)
    (op,) = _ops(tr, "mm")
    assert op.name == "addmm" and op.flops == 2 * 64 * 32 * 24
    assert op.bytes == 4 * (24 + 64 * 32 + 32 * 24 + 64 * 24)
    assert op.aligned
    tr = gm.trace(nn.Linear(20, 24), "linear", "fp32", shape=(64, 20), channels_last=False)
    assert not _ops(tr, "mm")[0].aligned  # K = 20 is not a multiple of 8


class _Attention(nn.Module):
    def __init__(self, mask: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(x, x, x, attn_mask=self.mask)


def test_sdpa_flash_efficient_and_math_kernels():
    b, h, n, d = 1, 2, 64, 16
    tr = gm.trace(_Attention(), "sdpa", "fp16", shape=(b, h, n, d), channels_last=False)
    (op,) = _ops(tr, "attn")
    assert tr.sdpa == {"flash": 1} and op.name == "sdpa_flash"
    assert op.flops == 2 * b * h * n * n * (d + d)  # QK^T and AV
    assert op.bytes == 4 * (b * h * n * d * 2)  # q, k, v, out in fp16
    # a mask rules flash out: the memory-efficient kernel, which reads the (broadcast) mask too
    mask = torch.zeros(1, h, n, n)
    tr = gm.trace(_Attention(mask), "sdpa", "fp16", shape=(b, h, n, d), channels_last=False)
    (op,) = _ops(tr, "attn")
    assert tr.sdpa == {"efficient": 1}
    assert op.flops == 2 * b * h * n * n * (d + d)
    assert op.bytes == 4 * (b * h * n * d * 2) + h * n * n * 2  # + the mask (autocast casts it too), read once
    # head dim 20 (not a multiple of 8 in half precision): the math path, its matmuls and softmax
    tr = gm.trace(_Attention(), "sdpa", "fp16", shape=(b, h, n, 20), channels_last=False)
    assert tr.sdpa == {"math": 1} and not _ops(tr, "attn")
    mms = _ops(tr, "mm")
    assert len(mms) == 2 and sum(o.flops for o in mms) == 2 * b * h * n * n * (20 + 20)
    assert any("softmax" in o.name for o in tr.ops)


class _Grouped(nn.Module):
    def __init__(self, e: int, k: int, n: int, ends: list[int]) -> None:
        super().__init__()
        self.register_buffer("w", torch.randn(e, k, n).to(torch.bfloat16))
        self.register_buffer("offs", torch.tensor(ends, dtype=torch.int32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch._grouped_mm(x.to(torch.bfloat16), self.w, offs=self.offs)


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="torch without _grouped_mm")
def test_grouped_mm_flops_and_bytes():
    m, k, n, e = 96, 32, 48, 3
    tr = gm.trace(_Grouped(e, k, n, [10, 50, 96]), "gmm", "fp32", shape=(m, k), channels_last=False,
                  capability=(9, 0))
    (op,) = _ops(tr, "mm")
    assert op.name == "_grouped_mm" and op.flops == 2 * m * k * n  # independent of the group sizes
    assert op.bytes == 2 * m * k + 2 * e * k * n + 4 * e + 2 * m * n
    # torch's own counter misses the op; the mapping efficiency.py and gpu_model.py add counts it
    x, w = torch.randn(m, k, dtype=torch.bfloat16), torch.randn(e, k, n, dtype=torch.bfloat16)
    with gm.flop_counter() as counter:
        torch._grouped_mm(x, w, offs=torch.tensor([10, 50, 96], dtype=torch.int32))
    assert counter.get_total_flops() == 2 * m * k * n


def test_item_is_a_host_sync_and_cpu_work_is_host_work():
    class Synced(nn.Module):
        def forward(self, x):
            y = x * 2
            k = int(y.sum().item() > 0)  # a device -> host read: the host waits here
            mask = torch.zeros(4, 4).masked_fill(torch.ones(4, 4) > 0, 1.0)  # built on the CPU
            return y + k + mask.to(x.device).sum()

    tr = gm.trace(Synced(), "sync", "fp32", shape=(1, 1, 4, 4), channels_last=False)
    assert tr.syncs == 2  # .item() and the blocking host -> device copy
    assert _ops(tr, "host") and _ops(tr, "h2d")


def test_trace_tracks_peak_memory_of_a_chain():
    class Chain(nn.Module):
        def forward(self, x):
            a = x * 2  # 4 KiB
            b = a * 3  # a and b alive together
            return b + 1

    tr = gm.trace(Chain(), "chain", "fp32", shape=(1, 1, 32, 32), channels_last=False)
    assert tr.static_bytes == 4 * 32 * 32  # the input (no parameters)
    # the first forward's output is alive during the second (as in the table's loop), and the
    # forward's locals until it returns: the last output, a, b and the new output
    assert tr.peak_bytes == 4 * 4 * 32 * 32


# ---------------------------------------------------------------------------------------------------
# the cost model
def _synthetic(rng: np.random.Generator, i: int) -> gm.Features:
    kinds = ("conv", "dwconv", "mm", "mem")
    kernels, unaligned = [], []
    for _ in range(int(rng.integers(20, 60))):
        kind = kinds[int(rng.integers(0, 4))]
        flops = 0.0 if kind == "mem" else float(10 ** rng.uniform(7, 11.5))
        kernels.append((kind, flops, float(10 ** rng.uniform(4, 8.5))))
        unaligned.append(bool(kind in ("conv", "mm") and rng.random() < 0.3))
    dispatched = float(len(kernels) * rng.uniform(1, 40) * (10 if i % 5 == 0 else 1))
    host = float(10 ** rng.uniform(6, 9)) if i % 4 == 0 else 0.0
    return gm.Features.synthetic(kernels, dispatched, host, unaligned)


def test_fit_recovers_known_parameters():
    rng = np.random.default_rng(0)
    truth = [120e12, 6e12, 40e12, 700e9, 3e-6, 9e-6, 15e9, 1.8]
    feats = [_synthetic(rng, i) for i in range(40)]
    times = [gm.predict_time(f, truth) for f in feats]
    theta = gm.fit(feats, times)
    for name, got, want in zip(gm.PARAM_NAMES, theta, truth):
        assert got == pytest.approx(want, rel=0.03), name
    assert all(gm.error_ratio(gm.predict_time(f, theta), t) < 1.01 for f, t in zip(feats, times))


def test_prediction_parts_and_roofline():
    theta = [100e12, 5e12, 50e12, 1000e9, 0.0, 10e-6, 10e9, 2.0]
    # compute-bound conv: 1e12 FLOPs at 100 TFLOP/s = 10 ms; memory-bound copy: 1 GB at 1000 GB/s = 1 ms
    f = gm.Features.synthetic([("conv", 1e12, 1e6), ("mem", 0.0, 1e9)], dispatched=0)
    gpu, cpu = gm.predict_parts(f, theta)
    assert gpu == pytest.approx(11e-3) and cpu == pytest.approx(0.0, abs=1e-12)
    f = gm.Features.synthetic([("conv", 1e12, 1e6)], dispatched=0, unaligned=[True])
    assert gm.predict_time(f, theta) == pytest.approx(20e-3)
    # host-bound: 10,000 ops at 10 us = 100 ms dominate 1 ms of device work
    f = gm.Features.synthetic([("mem", 0.0, 1e9)], dispatched=10_000)
    assert gm.predict_time(f, theta) == pytest.approx(0.1, rel=1e-3)


def test_spearman_and_error_ratio():
    assert gm.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert gm.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert gm.error_ratio(2.0, 1.0) == gm.error_ratio(0.5, 1.0) == 2.0


# ---------------------------------------------------------------------------------------------------
# the committed published numbers
def test_published_table_parses_and_cites_its_source():
    text = gm.DATA_CSV.read_text()
    assert "RTX 4090" in text and "480x640" in text
    src = gm.source_of()
    assert src["repository"] == "the-database/traiNNer-redux"
    assert src["file"] == "docs/source/resources/benchmark4x.csv"
    assert re.fullmatch(r"[0-9a-f]{40}", src["commit"])
    pub = gm.load_published()
    assert len(pub) >= 60
    for row in pub.values():
        assert row["scale"] == 4 and row["dtype"] in ("fp16", "bf16")
        assert row["fps_cl"] > 0 and row["fps_base"] > 0 and row["vram_cl_gb"] > 0 and row["params"] > 0
    assert pub["span_s"]["fps_cl"] == pytest.approx(112.9, rel=1e-3)
    assert pub["swinir_s"]["dtype"] == "bf16"
    # the calibration set: at least 15 architectures of the table, each by its table name
    assert len(gm.TABLE_ARCHS) >= 15 and set(gm.TABLE_ARCHS) <= set(pub)
    assert set(gm.PEER_KEYS) <= set(gm.TABLE_ARCHS)


@pytest.mark.parametrize("name", ["compact", "safmn", "span_s"])
def test_calibration_builds_match_the_table_params(name):
    pytest.importorskip("spandrel")
    model = gm.TABLE_ARCHS[name].build()
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == gm.load_published()[name]["params"]


# ---------------------------------------------------------------------------------------------------
# GMACs count the experts (efficiency.py)
class _MoEOnly(nn.Module):
    def __init__(self, dim: int, experts: int, hidden: int) -> None:
        super().__init__()
        self.moe = TokenMoE(dim, experts, hidden)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.moe(t, t)


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="torch without _grouped_mm")
def test_gmacs_count_the_experts_top1_and_dense(one_thread):
    n, c, e, h = 10, 8, 3, 4
    model = _MoEOnly(c, e, h).eval()
    t = torch.randn(n, c)
    router = n * c * e
    top1 = router + n * c * 2 * h + n * h * c  # each token through one expert: GEGLU in (2H), out
    dense = router + n * c * e * 2 * h + n * e * c + n * e * h * c  # every expert, the gate x bias, out
    assert efficiency.gmacs(model, t, "top1") * 1e9 == pytest.approx(top1)
    assert efficiency.gmacs(model, t, "dense") * 1e9 == pytest.approx(dense)
    assert efficiency.gmacs_both(model, t) == pytest.approx((top1 / 1e9, dense / 1e9))
    assert "dispatch" not in model.moe.__dict__  # the setting is restored
    with torch.no_grad():  # same output either way
        with efficiency.moe_path(model, "dense"):
            a = model(t)
        with efficiency.moe_path(model, "top1"):
            b = model(t)
    assert torch.allclose(a, b, atol=1e-5)


def test_gmacs_count_cpu_attention(one_thread):
    b, h, n, d = 1, 2, 16, 8
    model = _Attention().eval()
    x = torch.randn(b, h, n, d)
    assert efficiency.gmacs(model, x) * 1e9 == pytest.approx(b * h * n * n * (d + d))
    assert math.isclose(*efficiency.gmacs_both(model, x))


# ---------------------------------------------------------------------------------------------------
# the table's protocol (benchmarks/gpu_check.sh runs it first on a lent GPU); exercised on the CPU
def test_measure_protocol_rows_and_ratios_on_cpu(one_thread):
    pytest.importorskip("spandrel")
    logs: list[str] = []
    rows = gm.measure(["span_s", "safmn", "hyresr_tiny", "hyresr_tiny (fused)", "hyresr_tiny bf16", "nope"],
                      budget_s=600, runs=1, log=logs.append, shape=(1, 3, 16, 16), device="cpu", warmup=1)
    by = {r["name"]: r for r in rows}
    assert "error" in by["nope"]
    for name in ("span_s", "safmn", "hyresr_tiny", "hyresr_tiny (fused)", "hyresr_tiny bf16"):
        r = by[name]
        assert "error" not in r, r
        assert r["ok"] and r["runs"] == 1 and r["fps_cl"] > 0 and r["fps_base"] > 0
    assert by["span_s"]["dtype"] == "fp16" and by["span_s"]["params"] == gm.load_published()["span_s"]["params"]
    assert by["span_s"]["published_fps_cl_4090"] == pytest.approx(112.9, rel=1e-3)
    assert by["hyresr_tiny"]["dtype"] == "fp16" and by["hyresr_tiny bf16"]["dtype"] == "bf16"
    assert by["hyresr_tiny (fused)"]["params"] < by["hyresr_tiny"]["params"]
    assert by["hyresr_tiny"]["label"] == "hyresr_tiny 4x fp16"
    md = gm.measure_markdown(rows, "cpu")
    line = next(ln for ln in md.splitlines() if ln.startswith("|hyresr_tiny 4x fp16|"))
    cells = line.strip("|").split("|")
    assert float(cells[7]) == pytest.approx(by["hyresr_tiny"]["fps_cl"] / by["span_s"]["fps_cl"], rel=1e-2)
    assert float(cells[8]) == pytest.approx(by["hyresr_tiny"]["fps_cl"] / by["safmn"]["fps_cl"], rel=1e-2)
    # the budget: nothing new starts once it is spent
    rows = gm.measure(["span_s"], budget_s=-1, log=logs.append, shape=(1, 3, 16, 16), device="cpu")
    assert rows[0]["error"].startswith("skipped")


def test_gpu_check_runs_the_table_first_within_its_time_caps():
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    stages = [ln for ln in script.splitlines() if re.match(r"\s*timeout \d+ ", ln)]
    assert "gpu_model.py measure" in stages[0]
    assert sum(int(re.match(r"\s*timeout (\d+)", ln).group(1)) for ln in stages) <= 460  # < 8 min with setup
    names = set(gm.DEFAULT_MEASURE)
    assert {"span_s", "safmn", "omnisr", "swinir_s"} <= names and set(gm.zoo.HYRESR_NAMES) <= names


def test_update_docs_replaces_only_the_generated_block(tmp_path):
    doc = tmp_path / "B.md"
    doc.write_text(f"# B\n\nintro\n\n{gm.DOCS_HEADING} - CPU trace, 2000-01-01\n\nold table\n\n### next\n\nkept\n")
    assert gm.update_docs("new table\n", doc)
    text = doc.read_text()
    assert "old table" not in text and "new table" in text and "2000-01-01" not in text
    assert text.startswith("# B\n\nintro\n\n") and text.endswith("\n### next\n\nkept\n")
    doc.write_text(f"# B\n\n{gm.DOCS_HEADING} - x\n\nold\n")  # the block at the end of the file
    assert gm.update_docs("new\n", doc) and doc.read_text().endswith("-->\nnew\n")
    other = tmp_path / "C.md"
    other.write_text("# nothing here\n")
    assert not gm.update_docs("x", other)


def test_a_bilinear_upsample_is_recorded_as_the_one_kernel_eager_runs():
    """The fake path decomposes F.interpolate(bilinear) into ~36 index/arithmetic ops; eager runs one
    upsample kernel (the CPU profiler's aten ops of the same call, allocations aside). Under fp16
    autocast the upsample runs in fp32 (autocast's fp32 list): it reads the fp32 input and writes the
    fp32 output, once each."""

    class Up(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)

    tr = gm.trace(Up(), "up", "fp16", (1, 16, 64, 64))
    assert [(o.name, o.cls) for o in tr.ops] == [("upsample_bilinear2d", "mem")]
    assert tr.ops[0].bytes == 4 * 16 * (64 * 64 + 128 * 128)
    x = torch.rand(1, 16, 64, 64)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        Up()(x)
    eager = [e.name for e in prof.events() if e.name.startswith("aten::") and not e.name.startswith(("aten::empty",
                                                                                                     "aten::as_strided"))]
    assert eager == ["aten::upsample_bilinear2d"]


def test_the_readme_speed_table_is_the_saved_fits():
    """README's predicted FPS come from the committed fit (benchmarks/data/gpu_cost_fit.json, written with
    docs/BENCHMARKS.md's cost-model block by `gpu_model.py fit --update-docs`), nothing typed by hand."""
    import json

    fit = json.loads(gm.FIT.read_text())
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index(gm.README_BEGIN) : readme.index(gm.README_END) + len(gm.README_END)]
    assert block == gm.readme_block(fit)
    assert "| hyresr_tiny | " in block and "(fused)" not in block
    theta, peers = gm.load_fit()
    assert len(theta) == len(gm.PARAM_NAMES) and peers["safmn"]["published_fps"] == 43.65
