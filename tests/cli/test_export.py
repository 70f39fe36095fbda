"""ONNX export (TorchScript exporter, opset 17) verified with the real onnxruntime.

hyresr_tiny and hyresr_light at two scales each, dynamic batch/height/width, checked at sizes other
than the traced one (including sizes that are not multiples of the window). fp32 within 1e-3 abs;
fp16 finite and within 1e-2. The exported graph needs H, W >= 8 for three levels, 2**levels in
general (documented, tested).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from conftest import perturbed as perturb

import hyresr_arch as H
from hyresr_arch.tools import export_onnx

torch.set_num_threads(1)

# (batch, H, W): none equals the traced 36x44; 17x33 and 24x20 are not multiples of 8
SIZES = [(1, 24, 20), (1, 17, 33), (2, 8, 8), (1, 40, 48)]


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(("name", "scale"), [("hyresr_tiny", 2), ("hyresr_tiny", 4),
                                             ("hyresr_light", 1), ("hyresr_light", 3)])
def test_fp32_export_matches_pytorch_at_other_sizes(tmp_path, name, scale):
    model = perturb(H.BUILDERS[name](scale=scale))
    out = tmp_path / "m.onnx"
    res = export_onnx.export_model(model, out, verify_sizes=SIZES, log=lambda *_: None)
    assert res["max_error"] <= 1e-3
    assert set(res["errors"]) == {f"{b}x3x{h}x{w}" for b, h, w in SIZES}
    # independent check with our own session and the *unfused* model as reference
    sess = _session(out)
    x = torch.rand(1, 3, 19, 27, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        ref = model(x).numpy()
    got = sess.run(None, {"input": x.numpy()})[0]
    assert got.shape == (1, 3, 19 * scale, 27 * scale)
    assert np.abs(got - ref).max() <= 1e-3


def test_graph_interface_is_what_chainner_expects(tmp_path):
    model = perturb(H.hyresr_tiny(scale=2))
    out = tmp_path / "m.onnx"
    export_onnx.export_model(model, out, log=lambda *_: None)
    m = onnx.load(str(out))
    assert [i.name for i in m.graph.input] == ["input"] and [o.name for o in m.graph.output] == ["output"]
    dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(o.domain in ("", "ai.onnx") and o.version == 17 for o in m.opset_import)
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["architecture"] == "HyReSR" and meta["scale"] == "2" and meta["minimum_size"] == "8"
    assert meta["fused"] == "true"


@pytest.mark.parametrize(("name", "scale", "upsampler"), [("hyresr_tiny", 2, "pixelshuffle"),
                                                          ("hyresr_light", 4, "dysample")])
def test_fp16_export_is_finite_and_close(tmp_path, name, scale, upsampler):
    model = perturb(H.BUILDERS[name](scale=scale, upsampler=upsampler))
    out = tmp_path / "m16.onnx"
    res = export_onnx.export_model(model, out, fp16=True, verify_sizes=SIZES[:2], log=lambda *_: None)
    assert res["max_error"] <= 1e-2
    sess = _session(out)
    assert sess.get_inputs()[0].type == "tensor(float16)"
    y = sess.run(None, {"input": np.random.default_rng(0).random((1, 3, 21, 13), dtype=np.float32).astype(np.float16)})[0]
    assert y.dtype == np.float16 and np.isfinite(y).all() and y.shape == (1, 3, 21 * scale, 13 * scale)


def test_dysample_fp32_export_and_opset_floor(tmp_path):
    model = perturb(H.hyresr_tiny(scale=3, upsampler="dysample"))
    res = export_onnx.export_model(model, tmp_path / "d.onnx", opset=16, verify_sizes=SIZES[:2],
                                   log=lambda *_: None)
    assert res["max_error"] <= 1e-3
    with pytest.raises(export_onnx.ExportError, match="opset >= 16"):
        export_onnx.export_model(model, tmp_path / "d14.onnx", opset=14, log=lambda *_: None)
    assert not (tmp_path / "d14.onnx").exists()


def test_static_export_runs_at_its_size(tmp_path):
    model = perturb(H.hyresr_tiny(scale=2))
    out = tmp_path / "s.onnx"
    res = export_onnx.export_model(model, out, static=(16, 24), log=lambda *_: None)
    assert list(res["errors"]) == ["1x3x16x24"] and res["max_error"] <= 1e-3
    dims = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 16, 24]


def test_onnx_minimum_size_is_8(tmp_path):
    """Documented limit: the traced reflect padding needs H, W >= 8 (PyTorch takes any size)."""
    model = perturb(H.hyresr_tiny(scale=2))
    out = tmp_path / "m.onnx"
    export_onnx.export_model(model, out, verify_sizes=[(1, 8, 8)], log=lambda *_: None)
    sess = _session(out)
    for h, w in [(8, 8), (8, 13), (11, 8)]:
        y = sess.run(None, {"input": np.zeros((1, 3, h, w), np.float32)})[0]
        assert y.shape == (1, 3, 2 * h, 2 * w)
    with pytest.raises(Exception):
        sess.run(None, {"input": np.zeros((1, 3, 4, 4), np.float32)})


def test_onnx_minimum_size_and_tile_grid_follow_the_levels(tmp_path):
    """A five-level network pads to multiples of 32, so its graph needs H, W >= 32: the export
    raises smaller verification sizes to that, records it, and the runner edge-pads to it."""
    from hyresr_arch.tools import runners

    model = perturb(H.hyresr_tiny(scale=1, dims=(16,) * 5, depths=(1,) * 5, naf_levels=3, window=4)).eval()
    out = tmp_path / "m5.onnx"
    res = export_onnx.export_model(model, out, verify_sizes=[(1, 8, 8), (1, 40, 33)], log=lambda *_: None)
    assert res["minimum_size"] == 32 and list(res["errors"]) == ["1x3x32x32", "1x3x40x33"]
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["minimum_size"] == "32" and meta["tile_grid"] == str(4 * 2**4)  # window 4, 1/16 level
    runner = runners.onnx_runner(str(out), "cpu")
    assert runner.align == 64
    x = torch.rand(1, 3, 10, 12)
    with torch.no_grad():  # what the runner computes: the network on the edge-padded 32 x 32 input, cropped
        ref = model(torch.nn.functional.pad(x, (0, 20, 0, 22), mode="replicate"))[..., :10, :12].clamp(0, 1)
    y = runner(x)
    assert y.shape == (1, 3, 10, 12) and (y - ref).abs().max() < 1e-3
    with pytest.raises(export_onnx.ExportError, match="at least 32x32"):
        export_onnx.export_model(model, tmp_path / "s.onnx", static=(16, 16), log=lambda *_: None)
