"""``hyresr export-onnx IN OUT [--fp16] [--opset N] [--static HxW]``.

Exports the *fused* model with the TorchScript exporter (``dynamo=False``): one NCHW float input
``input`` in [0, 1] and one output ``output``, dynamic batch/height/width by default, as chaiNNer's
ONNX nodes and other runtimes expect. The graph is traced at a size that is *not* a multiple of 8
(so the network's internal padding is part of the graph) and verified with onnxruntime against
PyTorch at other sizes, including ones that are not multiples of the window. The maximum absolute
error is printed; fp32 must stay within 1e-3, fp16 output must be finite and within 1e-2.

Minimum input size of the exported graph: 8 x 8 (the traced reflect padding needs it; PyTorch
itself takes any size). The file carries this and the scale in its ONNX metadata. A ``--static``
graph records its output shape as numbers (1 x C x H*s x W*s), not the exporter's symbolic names.
Needs onnx and onnxruntime (``pip install "hyresr[onnx]"``).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from .checkpoints import (CheckpointError, hyperparameters_of, load_model, model_summary, onnx_minimum_size,
                          tile_grid)
from .deps import MissingDependency, require, require_all
from .files import atomic_path, same_file
from .runners import ort_session

DEFAULT_OPSET = 17
EXPORT_SIZE = (36, 44)  # traced size: not a multiple of 8 on either axis (see module docstring)
VERIFY_SIZES = ((1, 24, 20), (1, 17, 33), (2, 8, 8), (1, 40, 48))  # (batch, H, W), none = EXPORT_SIZE
MIN_SIZE = 8  # for the three-level variants; onnx_minimum_size() gives any model's
FP32_ATOL = 1e-3
FP16_ATOL = 1e-2


class ExportError(RuntimeError):
    pass


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="HyReSR checkpoint (.pth/.pt/.ckpt/.safetensors)")
    parser.add_argument("output", metavar="OUT", help="ONNX file to write")
    parser.add_argument("--fp16", action="store_true", help="half-precision weights and I/O")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, 14-20 (default {DEFAULT_OPSET})")
    parser.add_argument("--static", metavar="HxW", default=None,
                        help="fixed input size instead of dynamic batch/height/width, e.g. 256x256")


def parse_static(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not m:
        raise ValueError(f"--static expects HxW, e.g. 256x256, got {text!r}")
    h, w = int(m.group(1)), int(m.group(2))
    if h < MIN_SIZE or w < MIN_SIZE:
        raise ValueError(f"--static size must be at least {MIN_SIZE}x{MIN_SIZE}, got {h}x{w}")
    return h, w


def verify_onnx(path: Path, reference: torch.nn.Module, sizes, in_ch: int, scale: int, seed: int = 0) -> dict:
    """Max abs error of the ONNX file vs the fp32 PyTorch reference at each (batch, H, W)."""
    sess = ort_session(path)
    inp = sess.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    g = torch.Generator().manual_seed(seed)
    errors = {}
    for b, h, w in sizes:
        x = torch.rand(b, in_ch, h, w, generator=g)
        with torch.inference_mode():
            ref = reference(x).numpy()
        out = sess.run(None, {inp.name: x.numpy().astype(dtype)})[0].astype(np.float32)
        if out.shape != ref.shape:
            raise ExportError(f"{path}: ONNX output shape {out.shape} at input {(b, in_ch, h, w)}, "
                              f"expected {ref.shape}")
        if not np.isfinite(out).all():
            raise ExportError(f"{path}: ONNX output has NaN/Inf at input {(b, in_ch, h, w)}")
        errors[f"{b}x{in_ch}x{h}x{w}"] = float(np.abs(out - ref).max())
    return errors


def _set_dims(value_info, dims: tuple[int, ...]) -> None:
    shape = value_info.type.tensor_type.shape
    for d, n in zip(shape.dim, dims):
        d.Clear()
        d.dim_value = n


def export_model(model: torch.nn.Module, out: str | Path, *, fp16: bool = False, opset: int = DEFAULT_OPSET,
                 static: tuple[int, int] | None = None, atol: float | None = None,
                 verify_sizes=VERIFY_SIZES, log=print) -> dict:
    """Fuse (a copy of) ``model``, export, verify with onnxruntime, then move into place.

    Returns ``{"errors": {size: max_abs}, "max_error": float, "path": str}``. Raises ExportError
    (nothing written) if export or verification fails.
    """
    onnx = require("onnx", "ONNX export")
    require_all(("onnxruntime",), "ONNX export (verifying the file)")

    out = Path(out)
    hp = hyperparameters_of(model)
    in_ch, scale = int(model.in_ch), int(model.scale)
    if not 14 <= opset <= 20:
        raise ExportError(f"opset must be between 14 and 20, got {opset}")
    if hp.get("upsampler") == "dysample" and opset < 16:
        raise ExportError(f"the DySample head uses grid_sample, which needs opset >= 16 (got {opset})")
    reference = copy.deepcopy(model).float().eval().fuse()
    net = copy.deepcopy(reference)
    if fp16:
        net = net.half()
    h, w = static or EXPORT_SIZE
    dummy = torch.rand(1, in_ch, h, w, generator=torch.Generator().manual_seed(1))
    dummy = dummy.half() if fp16 else dummy
    dynamic_axes = None if static else {
        "input": {0: "batch", 2: "height", 3: "width"},
        "output": {0: "batch", 2: "height_out", 3: "width_out"},
    }
    min_size = onnx_minimum_size(model)
    if min(h, w) < min_size:
        raise ExportError(f"this network takes ONNX inputs of at least {min_size}x{min_size}, got {h}x{w}")
    # sizes below the graph's minimum are raised to it (a five-level network needs 32)
    sizes = [(1, h, w)] if static else [(b, max(vh, min_size), max(vw, min_size)) for b, vh, vw in verify_sizes]
    atol = atol if atol is not None else (FP16_ATOL if fp16 else FP32_ATOL)

    summary = model_summary(reference)
    with atomic_path(out) as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(net, (dummy,), str(tmp), dynamo=False, opset_version=opset,
                                  input_names=["input"], output_names=["output"], dynamic_axes=dynamic_axes,
                                  do_constant_folding=True)
        except Exception as err:
            raise ExportError(f"ONNX export failed (opset {opset}): {type(err).__name__}: "
                              f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}") from None
        m = onnx.load(str(tmp))
        if static:  # the exporter names even fixed output dims ("Addoutput_dim_0"): write the numbers
            _set_dims(m.graph.output[0], (1, int(model.out_ch), h * scale, w * scale))
        onnx.checker.check_model(m)
        onnx.helper.set_model_props(m, {
            "architecture": "HyReSR",
            "variant": str(summary["variant"]),
            "scale": str(scale),
            "input_channels": str(in_ch),
            "output_channels": str(int(model.out_ch)),
            "window": str(hp.get("window", 8)),
            "fused": "true",
            "precision": "fp16" if fp16 else "fp32",
            "minimum_size": str(min_size),
            "tile_grid": str(tile_grid(model)),
            "range": "0-1",
            "hyperparameters": json.dumps(summary["hyperparameters"], sort_keys=True),
        })
        m.producer_name = "hyresr export-onnx"
        onnx.save(m, str(tmp))
        errors = verify_onnx(tmp, reference, sizes, in_ch, scale)
        worst = max(errors.values())
        for size, e in errors.items():
            log(f"  onnxruntime vs PyTorch fp32 at {size}: max abs error {e:.3e}")
        if not worst <= atol:
            raise ExportError(f"{out}: ONNX output differs from PyTorch by {worst:.3e} (> {atol:g}); not written")
    return {"errors": errors, "max_error": worst, "path": str(out), "minimum_size": min_size}


def main(args: argparse.Namespace) -> int:
    err = sys.stderr
    src, dst = Path(args.input), Path(args.output)
    if same_file(src, dst):
        print(f"hyresr export-onnx: refusing to overwrite the input {src}", file=err)
        return 2
    if dst.suffix.lower() != ".onnx":
        print(f"hyresr export-onnx: {dst}: output must end in .onnx", file=err)
        return 2
    try:
        require_all(("onnx", "onnxruntime"), "ONNX export")
        static = parse_static(args.static)
        model, _ = load_model(src)
    except (CheckpointError, ValueError, MissingDependency) as e:
        print(f"hyresr export-onnx: {e}", file=err)
        return 2
    s = model_summary(model)
    kind = f"static {static[0]}x{static[1]}" if static else "dynamic batch/height/width"
    print(f"{src}: HyReSR {s['variant']} x{s['scale']}; exporting fused, "
          f"{'fp16' if args.fp16 else 'fp32'}, opset {args.opset}, {kind}")
    try:
        result = export_model(model, dst, fp16=args.fp16, opset=args.opset, static=static)
    except (ExportError, OSError) as e:
        print(f"hyresr export-onnx: {e}", file=err)
        return 1
    print(f"max abs error {result['max_error']:.3e} "
          f"(limit {FP16_ATOL if args.fp16 else FP32_ATOL:g}); minimum input size "
          f"{result['minimum_size']}x{result['minimum_size']}")
    print(f"wrote {dst}")
    return 0
