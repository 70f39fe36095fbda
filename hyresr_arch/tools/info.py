"""``hyresr info MODEL``: what a HyReSR checkpoint (or ONNX export) holds.

PyTorch checkpoints are read safely and loaded through spandrel, so what is printed is what
spandrel/chaiNNer-style apps will see (architecture, scale, channels, fp16/bf16 support, size
requirements, tags) plus HyReSR's own facts (variant, fused, parameter count, hyperparameters).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .checkpoints import CheckpointError, load_descriptor, model_kind, model_summary
from .deps import MissingDependency, require


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help=".pth / .safetensors / .onnx")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def torch_info(path: str) -> dict[str, Any]:
    desc, ckpt = load_descriptor(path)
    s = model_summary(desc.model)
    req = desc.size_requirements
    return {
        "file": str(path),
        "format": ckpt.format,
        "architecture": desc.architecture.id,
        "variant": s["variant"],
        "purpose": desc.purpose,
        "scale": desc.scale,
        "input_channels": desc.input_channels,
        "output_channels": desc.output_channels,
        "params": s["params"],
        "fused": s["fused"],
        "supports_half": desc.supports_half,
        "supports_bfloat16": desc.supports_bfloat16,
        "size_requirements": {"minimum": req.minimum, "multiple_of": req.multiple_of, "square": req.square},
        "tiling": desc.tiling.name,
        "tags": list(desc.tags),
        "hyperparameters": s["hyperparameters"],
        "metadata": dict(ckpt.metadata),
    }


def onnx_info(path: str) -> dict[str, Any]:
    onnx = require("onnx", "info on an .onnx file")
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    try:
        m = onnx.load(str(p))
    except Exception as err:
        raise CheckpointError(f"{p}: cannot read ONNX model: {str(err).splitlines()[0]}") from None
    meta = {prop.key: prop.value for prop in m.metadata_props}

    def dims(vi) -> list[Any]:
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    elem = {1: "float32", 10: "float16", 16: "bfloat16"}
    inp, out = m.graph.input[0], m.graph.output[0]
    return {
        "file": str(p),
        "format": "onnx",
        "architecture": meta.get("architecture", "unknown"),
        "variant": meta.get("variant", "unknown"),
        "scale": int(meta["scale"]) if "scale" in meta else None,
        "input_channels": dims(inp)[1],
        "output_channels": dims(out)[1],
        "params": sum(int(_numel(t.dims)) for t in m.graph.initializer),
        "fused": meta.get("fused", "unknown") == "true" if "fused" in meta else None,
        "dtype": elem.get(inp.type.tensor_type.elem_type, str(inp.type.tensor_type.elem_type)),
        "opset": max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "input": {"name": inp.name, "shape": dims(inp)},
        "output": {"name": out.name, "shape": dims(out)},
        "minimum_size": int(meta["minimum_size"]) if "minimum_size" in meta else None,
        "metadata": meta,
    }


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def describe(path: str) -> dict[str, Any]:
    return onnx_info(path) if model_kind(path) == "onnx" else torch_info(path)


def main(args: argparse.Namespace) -> int:
    try:
        info = describe(args.model)
    except (CheckpointError, MissingDependency) as e:
        print(f"hyresr info: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=False, default=str))
        return 0
    skip = {"hyperparameters", "metadata", "file"}
    print(info["file"])
    for key, value in info.items():
        if key in skip:
            continue
        if key == "params":
            value = f"{value:,}"
        print(f"  {key:<18} {value}")
    if info.get("hyperparameters"):
        print("  hyperparameters:")
        for k, v in info["hyperparameters"].items():
            print(f"    {k:<16} {v}")
    return 0
