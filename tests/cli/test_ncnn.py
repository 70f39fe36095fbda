"""NCNN export (``hyresr export-ncnn``): pnnx conversion checked with the real ncnn runtime.

The NCNN graph (``hyresr_arch.tools.ncnn_graph``, swapped in while exporting) is held equal to the main forward for
every variant and option (eager PyTorch, fp32 rounding); hyresr_tiny x4 and a DySample model are
exported, and the files are run by ncnn at sizes other than the traced one. The heavy variants'
conversions are in ``benchmarks/ncnn_matrix.py`` (minutes each), not here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import perturbed

import hyresr_arch as H
from hyresr_arch.cli import main as cli
from hyresr_arch.tools import checkpoints, export_ncnn, runners
from hyresr_arch.tools import ncnn_graph as G

pytest.importorskip("pnnx")
ncnn = pytest.importorskip("ncnn")
torch.set_num_threads(1)

# (variant, options, input H x W): every variant, every option; sizes that pad at every level
EQUIVALENCE = [
    ("hyresr_tiny", dict(scale=4), (36, 44)),
    ("hyresr_tiny", dict(scale=4, upsampler="dysample"), (17, 29)),
    ("hyresr_tiny", dict(scale=2, upsampler="dysample"), (20, 12)),
    ("hyresr_tiny", dict(scale=3, upsampler="dysample", in_ch=1, out_ch=1), (13, 21)),
    ("hyresr_tiny", dict(scale=1, in_ch=4, out_ch=4), (24, 30)),
    ("hyresr_tiny", dict(scale=8, in_ch=1, out_ch=3), (9, 11)),
    ("hyresr_light", dict(scale=4), (24, 40)),
    ("hyresr", dict(scale=2), (20, 28)),
    ("hyresr_sr", dict(scale=4), (32, 24)),
    ("hyresr_rest", dict(scale=1), (40, 36)),
    ("hyresr_rest", dict(scale=4, upsampler="dysample"), (33, 35)),
]


@pytest.mark.parametrize(("name", "options", "size"), EQUIVALENCE,
                         ids=[f"{n}-{'-'.join(f'{k}{v}' for k, v in o.items())}" for n, o, _ in EQUIVALENCE])
def test_ncnn_graph_computes_the_main_forward(name, options, size):
    """The export-only path is the same function: fp32 outputs equal within rounding, for every
    variant and option, fused and unfused, with routing biases that make every expert win somewhere."""
    torch.manual_seed(0)
    model = perturbed(H.BUILDERS[name](**options))
    for moe in (m for m in model.modules() if isinstance(m, H.TokenMoE)):
        moe.route_bias.data = torch.linspace(-0.5, 0.5, moe.experts)
    x = torch.rand(1, model.in_ch, *size, generator=torch.Generator().manual_seed(1))
    for fused in (False, True):
        if fused:
            model.fuse()
        with torch.no_grad():
            ref = model(x)
            with G.ncnn_graph():
                out = model(x)
        assert out.shape == ref.shape
        assert (out - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


def test_ncnn_graph_swaps_forwards_only_inside_its_context_and_the_network_file_has_no_export_path():
    arch = H.hyresr_arch
    originals = [owner.__dict__[name] for owner, name, _ in G.SWAPS]
    with pytest.raises(RuntimeError):
        with G.ncnn_graph():
            assert [owner.__dict__[name] for owner, name, _ in G.SWAPS] == [new for _, _, new in G.SWAPS]
            raise RuntimeError
    assert [owner.__dict__[name] for owner, name, _ in G.SWAPS] == originals
    source = Path(arch.__file__).read_text()
    assert "ncnn" not in source.lower()  # what users copy into their hosts carries no export branches



@pytest.mark.parametrize(("size", "window", "heads"), [((12, 18), 6, 2), ((16, 8), 8, 3)])
def test_ncnn_windows_round_trip_and_match_the_main_partition(size, window, heads):
    """windows_nchw cuts the same windows as the main path's partition (pixel (y, x) of window
    (i, j) is map pixel (i*w + y, j*w + x)), one tensor per part, and unwindow_nchw puts them back."""
    d = 5
    x = torch.randn(2, heads * d, *size, generator=torch.Generator().manual_seed(0))
    parts = G.windows_nchw(x, window, heads)
    nh, nw = size[0] // window, size[1] // window
    assert [p.shape for p in parts] == [(2, nh, nw, window * window, d)] * heads
    for h, p in enumerate(parts):
        ref = x[:, h * d : (h + 1) * d].unfold(2, window, window).unfold(3, window, window)  # B, d, nh, nw, w, w
        assert torch.equal(p, ref.flatten(4).permute(0, 2, 3, 4, 1))
    assert torch.equal(G.unwindow_nchw(parts, window), x)




@pytest.mark.parametrize(("size", "window", "kv_window"), [((16, 24), 8, 12), ((12, 6), 6, 8)])
def test_ncnn_key_windows_are_the_main_paths_overlapping_windows(size, window, kv_window):
    """key_windows_nchw holds partition_kv's key windows (the main path's, with unfold), in
    key_order, with pad_value outside the map."""
    heads, d = 2, 3
    x = torch.randn(2, heads * d, *size, generator=torch.Generator().manual_seed(0))
    ours = G.key_windows_nchw(x, window, kv_window, heads, -7.0)
    ref = H.hyresr_arch.partition_kv(x.permute(0, 2, 3, 1), window, kv_window, 1, heads, -7.0)[0]  # B*nW, heads, Nk, d
    nh, nw = size[0] // window, size[1] // window
    ref = ref.view(2, nh, nw, heads, kv_window**2, d)[..., G.key_order(window, kv_window), :]
    assert sorted(G.key_order(window, kv_window)) == list(range(kv_window**2))
    for h in range(heads):
        assert torch.equal(ours[h], ref[:, :, :, h])

@pytest.mark.parametrize("name", ["hyresr_tiny", "hyresr_sr"])  # windows on their grid; overlapping key windows
def test_ncnn_graph_in_fp16_arithmetic_stays_finite_and_close(name):
    """NCNN computes in fp16 on Vulkan and ARM: the export path in half precision (PyTorch on the
    CPU standing in) on a size that pads every level stays finite and close to fp32. Close on
    average: fp16 rounding flips the top-1 expert of a token whose two best logits nearly tie,
    which moves that pixel by a few hundredths (measured: hyresr_sr max 0.035, mean 1.1e-3)."""
    torch.manual_seed(0)
    model = perturbed(H.BUILDERS[name](scale=4)).fuse().eval()
    x = torch.rand(1, 3, 40, 36, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = model(x)
        with G.ncnn_graph():
            out = model.half()(x.half()).float()
    assert torch.isfinite(out).all()
    err = (out - ref).abs()
    assert err.mean().item() <= 3e-3 and err.max().item() <= 0.1


# --------------------------------------------------------------------------- real conversions


@pytest.fixture(scope="module")
def tiny4():
    torch.manual_seed(0)
    return perturbed(H.hyresr_tiny(scale=4))


@pytest.fixture(scope="module")
def tiny4_files(tmp_path_factory, tiny4):
    """hyresr_tiny x4 exported through the command line, from a BasicSR-style checkpoint, to paths as
    a user types them: relative, into another existing folder, the name without ``.param``."""
    d = tmp_path_factory.mktemp("ncnn")
    ckpt = d / "net_g_100.pth"
    torch.save({"params_ema": tiny4.state_dict()}, ckpt)
    (d / "models").mkdir()
    cwd = os.getcwd()
    os.chdir(d)
    try:
        assert cli(["export-ncnn", "net_g_100.pth", "models/4x-Tiny"]) == 0
    finally:
        os.chdir(cwd)
    assert sorted(p.name for p in (d / "models").iterdir()) == ["4x-Tiny.bin", "4x-Tiny.param"]
    return d / "models" / "4x-Tiny.param", d / "models" / "4x-Tiny.bin"


@pytest.fixture(scope="module")
def dysample():
    torch.manual_seed(1)
    return perturbed(H.hyresr_tiny(scale=2, upsampler="dysample"))


@pytest.fixture(scope="module")
def dysample_files(tmp_path_factory, dysample):
    d = tmp_path_factory.mktemp("ncnn_dy")
    res = export_ncnn.export_model(dysample, d / "2x-Dy", verify_sizes=[(17, 33)], log=lambda *_: None)
    assert res["max_error"] <= 1e-4
    return d / "2x-Dy.param", d / "2x-Dy.bin"


def _ncnn_forward(param, bin_path, x: torch.Tensor) -> np.ndarray:
    """The files run by ncnn directly (not through the pack's helpers): fp32, input blob data."""
    net = ncnn.Net()
    net.opt.use_fp16_storage = net.opt.use_fp16_packed = net.opt.use_fp16_arithmetic = False
    assert net.load_param(str(param)) == 0 and net.load_model(str(bin_path)) == 0
    with net.create_extractor() as ex:
        ex.input("data", ncnn.Mat(x.numpy(), batch_index=0).clone())
        ret, out = ex.extract("output")
        assert ret == 0
        return out.numpy(batch_index=0).reshape(1, -1, *out.numpy(batch_index=0).shape[-2:])


@pytest.mark.parametrize("size", [(19, 27), (40, 24)])  # traced at 36x44 and 84x92: neither
def test_tiny_x4_runs_in_ncnn_like_pytorch(tiny4_files, tiny4, size):
    param, bin_path = tiny4_files
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = tiny4.eval()(x).numpy()
    got = _ncnn_forward(param, bin_path, x)
    assert got.shape == (1, 3, size[0] * 4, size[1] * 4)
    assert np.abs(got - ref).max() <= 1e-4


def test_dysample_runs_in_ncnn_like_pytorch(dysample_files, dysample):
    param, bin_path = dysample_files
    x = torch.rand(1, 3, 26, 18, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = dysample.eval()(x).numpy()
    got = _ncnn_forward(param, bin_path, x)
    assert got.shape == (1, 3, 52, 36) and np.abs(got - ref).max() <= 1e-4
    assert "GridSample" in export_ncnn.layer_types(param)


def test_files_hold_only_ncnn_layers_and_the_upscalers_blob_names(tiny4_files):
    param, bin_path = tiny4_files
    assert export_ncnn.unconverted_layers(param) == []
    lines = param.read_text().splitlines()
    assert lines[0] == "7767517"
    assert lines[2].split()[:5] == ["Input", "data", "0", "1", "data"]
    assert lines[-1].split()[4 + int(lines[-1].split()[2])] == "output"
    assert bin_path.stat().st_size > 4 * 250_000  # fp32 weights of ~0.3M parameters
    assert not [f for f in param.parent.iterdir() if ".partial" in f.name or f.name.startswith(".")]


def test_graph_has_no_reshape_forms_ncnn_runs_slowly(tiny4_files):
    """No Reshape takes its sizes from a second blob, and none is a batch reshape (params 12/13):
    NCNN's CPU runs both forms ~40x slower than a plain reshape (the graph with them ran 20x
    slower than PyTorch), and pnnx writes them for a token matrix <-> map transition."""
    param, _ = tiny4_files
    reshapes = [line.split() for line in param.read_text().splitlines()[2:] if line.startswith("Reshape")]
    assert reshapes
    assert [r[1] for r in reshapes if int(r[2]) != 1] == []
    assert [r[1] for r in reshapes if any(f.startswith(("12=", "13=")) for f in r[4 + int(r[2]) + int(r[3]):])] == []


def test_upscale_runs_param_models_with_tiles(tmp_path, tiny4_files, tiny4):
    param, _ = tiny4_files
    facts = runners.ncnn_graph_facts(param)
    assert facts["in_ch"] == 3 and facts["min_size"] == 8 and facts["align"] == checkpoints.tile_grid(tiny4)
    img = np.random.default_rng(0).integers(0, 256, (30, 52, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    cv2.imwrite(str(tmp_path / "small.png"), img[:5, :7])
    out = tmp_path / "out"
    assert cli(["upscale", "-m", str(param), str(tmp_path / "a.png"), str(tmp_path / "small.png"), "-o", str(out),
                "--tile", "24", "--overlap", "8", "--quiet"]) == 0
    for name, src in (("a.png", img), ("small.png", img[:5, :7])):
        got = cv2.imread(str(out / name))
        assert got.shape == (src.shape[0] * 4, src.shape[1] * 4, 3)
    runner = runners.load_runner(str(param))
    x = torch.rand(1, 3, 5, 7)  # below the graph's minimum: padded like the network pads
    with torch.no_grad():
        ref = tiny4.eval()(x).clamp(0, 1)
    assert (runner(x) - ref).abs().max() <= 1e-4


# --------------------------------------------------------------------------- errors


def test_missing_pnnx_names_the_extra(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pnnx" else real(name, *a))
    ckpt = tmp_path / "m.pth"
    torch.save(H.hyresr_tiny(scale=2).state_dict(), ckpt)
    assert cli(["export-ncnn", str(ckpt), str(tmp_path / "m.param")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pnnx" in err and 'pip install "hyresr[ncnn]"' in err
    assert not (tmp_path / "m.param").exists()


def test_export_refuses_its_own_input_and_non_checkpoints(tmp_path, capsys):
    param = tmp_path / "m.param"
    param.write_text("7767517\n")
    assert cli(["export-ncnn", str(param), str(param)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert cli(["export-ncnn", str(param), str(tmp_path / "n.param")]) == 2
    assert "NCNN model, not a PyTorch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "n.param").exists()


def test_output_names():
    assert export_ncnn.output_paths("x/4x-A.param") == (export_ncnn.Path("x/4x-A.param"), export_ncnn.Path("x/4x-A.bin"))
    assert export_ncnn.output_paths("x/4x-A.b") == (export_ncnn.Path("x/4x-A.b.param"), export_ncnn.Path("x/4x-A.b.bin"))
    json.dumps(export_ncnn.trace_sizes(H.hyresr_tiny(scale=2)))
    (h1, w1), (h2, w2) = export_ncnn.trace_sizes(H.hyresr_rest(scale=1))
    assert min(h1, w1) >= 32 and h2 - h1 == w2 - w1 == 8 * 32


def test_ncnn_profile_times_each_layer_of_the_file_once(tiny4_files):
    """benchmarks/ncnn_profile.py: one entry per layer (the header's count, less the input), in file
    order, each extract succeeding (an unknown blob name would make ncnn return an empty Mat)."""
    import ncnn_profile

    param, bin_path = tiny4_files
    whole, total, per = ncnn_profile.profile(param, bin_path, 24, repeats=1)
    count = int(param.read_text().splitlines()[1].split()[0])
    assert [p[2] for p in per] == [layer[1] for layer in ncnn_profile.layers(param)]
    assert len(per) == count - 1
    assert whole > 0 and total > 0
