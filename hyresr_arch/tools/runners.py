"""A model file as a function: ``(1, C, h, w)`` float32 CPU tensor in, ``(1, C', h*s, w*s)`` out.

* ``.pth`` / ``.safetensors``: read safely (see ``checkpoints.py``) and loaded through spandrel with
  HyReSR registered (so size requirements, fp16/bf16 support and clamping are spandrel's), on the
  device :func:`pick_device` chooses.
* ``.onnx``: run with onnxruntime (fp16 files take fp16 input; inputs smaller than 8 px are
  edge-padded to 8 px first, because the exported graph's reflect padding needs it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checkpoints import CheckpointError, load_descriptor, model_kind, tile_grid

ONNX_MIN_SIZE = 8  # for files without a "minimum_size" entry (three-level networks)


def pick_device(name: str | None) -> torch.device:
    """'auto' (or nothing): CUDA when available, else CPU; otherwise the named torch device."""
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return dev


@dataclass
class Runner:
    """A model as a function (1, C, h, w) float32 CPU -> (1, C', h*s, w*s) float32 CPU."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    scale: int
    in_ch: int
    out_ch: int
    align: int = 32  # tile starts snap to this grid (window grid of the deepest stage)
    name: str = ""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def torch_runner(path: str, device: str = "auto", fp16: bool = False, bf16: bool = False) -> Runner:
    desc, _ = load_descriptor(path, "cpu")
    dev = pick_device(device)
    dtype = torch.float16 if fp16 else torch.bfloat16 if bf16 else torch.float32
    if fp16 and not desc.supports_half:
        raise CheckpointError(f"{path}: this model does not support fp16")
    if bf16 and not desc.supports_bfloat16:
        raise CheckpointError(f"{path}: this model does not support bf16")
    desc.to(dev).eval()
    desc.model.to(dtype=dtype)
    align = tile_grid(desc.model)

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return desc(x.to(dev, dtype)).float().cpu()

    return Runner(run, desc.scale, desc.input_channels, desc.output_channels, align, "pytorch")


def onnx_runner(path: str, device: str = "auto") -> Runner:
    import onnxruntime as ort

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    providers = ["CPUExecutionProvider"]
    if device in ("auto", "cuda") or device.startswith("cuda"):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
    try:
        sess = ort.InferenceSession(str(p), providers=providers)
    except Exception as err:
        raise CheckpointError(f"{p}: cannot load ONNX model: {str(err).splitlines()[0]}") from None
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    np_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    in_ch = inp.shape[1] if isinstance(inp.shape[1], int) else 3
    meta = sess.get_modelmeta().custom_metadata_map
    min_size = int(meta.get("minimum_size", ONNX_MIN_SIZE))

    def run(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = max(0, min_size - h), max(0, min_size - w)
        if ph or pw:
            x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
        y = sess.run([out.name], {inp.name: x.numpy().astype(np_dtype)})[0]
        y = torch.from_numpy(y.astype(np.float32)).clamp_(0, 1)
        s = y.shape[-1] // x.shape[-1]
        return y[..., : h * s, : w * s]

    if "scale" in meta:
        scale, out_ch = int(meta["scale"]), int(meta.get("output_channels", in_ch))
    else:  # probe
        probe = run(torch.zeros(1, in_ch, min_size, min_size))
        scale, out_ch = probe.shape[-1] // min_size, probe.shape[1]
    align = int(meta["tile_grid"]) if "tile_grid" in meta else 4 * int(meta["window"]) if "window" in meta else 32
    return Runner(run, scale, in_ch, out_ch, align, "onnx")


def load_runner(path: str, device: str = "auto", fp16: bool = False, bf16: bool = False) -> Runner:
    kind = model_kind(path)
    if kind == "onnx":
        if fp16 or bf16:
            raise CheckpointError(
                f"{path}: --fp16/--bf16 apply to PyTorch models; an ONNX file has its precision "
                "built in (use the _fp16.onnx export for half precision)")
        return onnx_runner(path, device)
    return torch_runner(path, device, fp16, bf16)
