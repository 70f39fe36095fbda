"""A model file as a function: ``(1, C, h, w)`` float32 CPU tensor in, ``(1, C', h*s, w*s)`` out.

* ``.pth`` / ``.safetensors``: read safely (see ``checkpoints.py``) and loaded through spandrel with
  HyReSR registered (so size requirements, fp16/bf16 support and clamping are spandrel's), on the
  device :func:`pick_device` chooses.
* ``.onnx``: run with onnxruntime (fp16 files take fp16 input). Inputs smaller than the graph's
  minimum (8 px; 2**levels in general) are padded first with the network's own rule (reflect,
  replicate where too small to reflect), so the result is the PyTorch model's; a graph with a
  fixed input size (``export-onnx --static``) gets each image padded or cut into windows of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .checkpoints import CheckpointError, load_descriptor, model_kind, tile_grid
from .deps import require

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
    fixed_size: tuple[int, int] | None = None  # an ONNX graph exported with --static HxW

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


def ort_session(path: str | Path, providers: list[str] | None = None):
    """An onnxruntime session for ``path`` that logs errors only.

    onnxruntime warns on every load of an fp16 graph that it "could not find a CPU kernel and hence
    can't constant fold" a Pad node (fp16 Pad has no CPU kernel for folding; the graph runs the same).
    The session's own log level keeps that out of the user's terminal; real errors still raise.
    """
    ort = require("onnxruntime", "running an .onnx model")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # 0 verbose, 1 info, 2 warning, 3 error, 4 fatal
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def _fixed(dim) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _pad_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Pad bottom/right to h x w with the network's own rule (reflect, replicate where the image is
    too small to reflect): what the PyTorch model does inside, so ONNX and PyTorch see the same."""
    ph, pw = h - x.shape[-2], w - x.shape[-1]
    if ph <= 0 and pw <= 0:
        return x
    mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
    return torch.nn.functional.pad(x, (0, max(0, pw), 0, max(0, ph)), mode=mode)


def _mirror_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Extend bottom/right to h x w by mirroring the image as often as needed (replicate only for a
    single row or column): far more padding than reflect allows at once, with the image's own
    statistics, which the network's channel attention and GlobalMix pool over."""
    while x.shape[-2] < h or x.shape[-1] < w:
        ph = min(h - x.shape[-2], x.shape[-2] - 1) if x.shape[-2] < h else 0
        pw = min(w - x.shape[-1], x.shape[-1] - 1) if x.shape[-1] < w else 0
        if (x.shape[-2] < h and ph <= 0) or (x.shape[-1] < w and pw <= 0):  # a 1-pixel side
            x = torch.nn.functional.pad(x, (0, max(0, w - x.shape[-1]), 0, max(0, h - x.shape[-2])),
                                        mode="replicate")
            break
        x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="reflect")
    return x


def _windows(size: int, fixed: int, overlap: int, align: int = 1) -> list[tuple[int, int, int]]:
    """(core start, core end, window start) along one axis for windows of ``fixed`` pixels (the whole
    axis when it is shorter). Windows start on the ``align`` grid (the attention windows' grid of the
    deepest level: off-grid windows would compute different attention windows than the whole image)
    and each core keeps at least ``overlap`` pixels of context where the image has them (less when
    the fixed size is too small for both); a window that runs past the image is padded by the caller."""
    if size <= fixed:
        return [(0, size, 0)]
    ov = max(0, min(overlap, (fixed - 1) // 4))
    step = (fixed - 2 * ov) // align * align
    if step <= 0 and fixed > align:  # the grid matters more than the last pixels of context
        step, ov = align, (fixed - align) // 2
    if step <= 0:
        step = fixed - 2 * ov
    off = (fixed - step) // 2  # context before each core (after it: fixed - step - off >= off)
    out = []
    c0, w0 = 0, 0
    while c0 < size:
        c1 = min(size, w0 + off + step)
        out.append((c0, c1, w0))
        c0, w0 = c1, w0 + step
    return out


def run_fixed_size(run: Callable[[torch.Tensor, int, int], torch.Tensor], x: torch.Tensor,
                   fixed: tuple[int, int], scale: int, out_ch: int, overlap: int = 32,
                   align: int = 1) -> torch.Tensor:
    """Run a model that takes only ``fixed`` = (H, W) inputs on any (1, C, h, w). ``run(win, H, W)``
    runs one window padded to H x W and returns its own upscaled size; images no larger than the
    fixed size are one window, larger ones are cut into H x W windows whose cores (each with
    ``overlap`` pixels of context where the image has them) are put together."""
    fh, fw = fixed
    h, w = x.shape[-2:]
    s = scale
    if h <= fh and w <= fw:
        return run(x, fh, fw)
    out = torch.zeros(x.shape[0], out_ch, h * s, w * s)
    for y0, y1, wy in _windows(h, fh, overlap, align):
        for x0, x1, wx in _windows(w, fw, overlap, align):
            y = run(x[..., wy : wy + fh, wx : wx + fw], fh, fw)
            out[..., y0 * s : y1 * s, x0 * s : x1 * s] = y[..., (y0 - wy) * s : (y1 - wy) * s,
                                                           (x0 - wx) * s : (x1 - wx) * s]
    return out


def onnx_runner(path: str, device: str = "auto") -> Runner:
    """An .onnx model as a Runner. Dynamic graphs take any size (smaller than the graph's minimum:
    padded with the network's rule, then cropped); a graph exported with a fixed input size
    (``--static HxW``) gets every image padded or cut into windows of that size."""
    ort = require("onnxruntime", "running an .onnx model")
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such file")
    providers = ["CPUExecutionProvider"]
    if device in ("auto", "cuda") or device.startswith("cuda"):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
    try:
        sess = ort_session(p, providers)
    except Exception as err:
        raise CheckpointError(f"{p}: cannot load ONNX model: {str(err).strip().splitlines()[0]}") from None
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    np_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    in_ch = inp.shape[1] if isinstance(inp.shape[1], int) else 3
    meta = sess.get_modelmeta().custom_metadata_map
    min_size = int(meta.get("minimum_size", ONNX_MIN_SIZE))
    fixed = (_fixed(inp.shape[2]), _fixed(inp.shape[3])) if len(inp.shape) == 4 else (None, None)
    fixed_size = (fixed[0], fixed[1]) if fixed[0] and fixed[1] else None

    def raw(x: torch.Tensor) -> torch.Tensor:
        try:
            y = sess.run([out.name], {inp.name: x.numpy().astype(np_dtype)})[0]
        except Exception as err:  # onnxruntime's own exception types are not RuntimeErrors
            msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RuntimeError(f"onnxruntime cannot run {p.name} on a {x.shape[-2]}x{x.shape[-1]} input: "
                               f"{msg}") from None
        return torch.from_numpy(y.astype(np.float32))

    if "scale" in meta:
        scale, out_ch = int(meta["scale"]), int(meta.get("output_channels", in_ch))
    else:  # probe
        ph, pw = fixed_size or (min_size, min_size)
        probe = raw(torch.zeros(1, in_ch, ph, pw))
        scale, out_ch = probe.shape[-1] // pw, probe.shape[1]
    align = int(meta["tile_grid"]) if "tile_grid" in meta else 4 * int(meta["window"]) if "window" in meta else 32
    # HyReSR adds the bilinear upscale of its *unpadded* input to what the network body computes on
    # the padded one; padding outside the graph would hand it the padded input's upscale, which
    # differs along the bottom/right border. Swap it for the unpadded one, as PyTorch has it.
    residual = meta.get("architecture") == "HyReSR" and in_ch == out_ch and scale > 1

    def run_padded(x: torch.Tensor, ph: int, pw: int, mirror: bool = False) -> torch.Tensor:
        """The model on ``x`` padded to ph x pw, cropped back: with the network's own padding rule
        (so the result is PyTorch's), or mirrored as often as needed (a fixed-size graph)."""
        h, w = x.shape[-2:]
        xp = _mirror_to(x, ph, pw) if mirror else _pad_to(x, ph, pw)
        y = raw(xp)
        s = y.shape[-1] // xp.shape[-1]
        y = y[..., : h * s, : w * s]
        if residual and xp.shape[-2:] != x.shape[-2:]:
            up = lambda t: torch.nn.functional.interpolate(t, scale_factor=s, mode="bilinear",  # noqa: E731
                                                           align_corners=False)
            y = y - up(xp)[..., : h * s, : w * s] + up(x)
        return y

    if fixed_size is not None:
        def run(x: torch.Tensor) -> torch.Tensor:
            return run_fixed_size(partial(run_padded, mirror=True), x, fixed_size, scale, out_ch,
                                  align=align).clamp_(0, 1)
    else:
        def run(x: torch.Tensor) -> torch.Tensor:
            h, w = x.shape[-2:]
            if h < min_size or w < min_size:
                # the network pads to a multiple of min_size (2**levels) itself, but the traced
                # graph's reflect padding cannot start below it: pad here exactly as the network would
                return run_padded(x, -(-h // min_size) * min_size, -(-w // min_size) * min_size).clamp_(0, 1)
            return raw(x).clamp_(0, 1)

    return Runner(run, scale, in_ch, out_ch, align, "onnx", fixed_size)


def load_runner(path: str, device: str = "auto", fp16: bool = False, bf16: bool = False) -> Runner:
    kind = model_kind(path)
    if kind == "onnx":
        if fp16 or bf16:
            raise CheckpointError(
                f"{path}: --fp16/--bf16 apply to PyTorch models; an ONNX file has its precision "
                "built in (use the _fp16.onnx export for half precision)")
        return onnx_runner(path, device)
    return torch_runner(path, device, fp16, bf16)
