"""A model file as a function: ``(1, C, h, w)`` float32 CPU tensor in, ``(1, C', h*s, w*s)`` out.

* ``.pth`` / ``.safetensors``: read safely (see ``checkpoints.py``) and loaded through spandrel with
  HyReSR registered (so size requirements, fp16/bf16 support and clamping are spandrel's), on the
  device :func:`pick_device` chooses.
* ``.onnx``: run with onnxruntime (fp16 files take fp16 input). Inputs smaller than the graph's
  minimum (8 px; 2**levels in general) are padded first with the network's own rule (reflect,
  replicate where too small to reflect), so the result is the PyTorch model's; a graph with a
  fixed input size (``export-onnx --static``) gets each image padded or cut into windows of it.
* ``.param`` (with its ``.bin``): run with the ``ncnn`` Python package on the CPU (fp32, or fp16
  storage with ``--fp16``). What an ONNX file records as metadata is read from the graph of a
  ``hyresr export-ncnn`` file: input channels from the first convolution, the minimum size from
  the network's reflect padding, the tile grid from its window partitions; scale and output
  channels from one probe run. Small inputs are padded as for ONNX.
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


def _run_padded(raw: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, ph: int, pw: int, residual: bool,
                mirror: bool = False) -> torch.Tensor:
    """The model ``raw`` on ``x`` padded to ph x pw, cropped back: with the network's own padding rule
    (so the result is PyTorch's), or mirrored as often as needed (a fixed-size graph).

    HyReSR adds the bilinear upscale of its *unpadded* input to what the network body computes on
    the padded one; padding outside the graph would hand it the padded input's upscale, which
    differs along the bottom/right border. With ``residual`` it is swapped for the unpadded one."""
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
        return _run_padded(raw, x, ph, pw, residual, mirror)

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


def ncnn_graph_facts(param: Path) -> dict:
    """What a ``hyresr export-ncnn`` graph tells about its model (NCNN files carry no metadata):
    input/output blob names, input channels (first convolution), the minimum input size (the
    network's reflect padding to 2**levels: pad + 1) and the tile grid (window x 2**(levels - 1),
    from the window partitions and the stride-2 reorgs: one per downsampling and one per skip)."""
    facts = {"input": "data", "output": "output", "in_ch": 3, "min_size": 1, "align": 32, "hyresr": False}
    lines = [line.split() for line in param.read_text().splitlines()[2:] if line.strip()]
    if not lines:
        raise CheckpointError(f"{param}: not an NCNN .param file (no layers)")

    def params(parts: list[str]) -> dict[str, str]:
        n = int(parts[2]) + int(parts[3])
        return dict(p.split("=", 1) for p in parts[4 + n :] if "=" in p)

    inputs = [parts for parts in lines if parts[0] == "Input"]
    if inputs:
        facts["input"] = inputs[0][4 + int(inputs[0][2])]
    last = lines[-1]
    facts["output"] = last[4 + int(last[2]) + int(last[3]) - 1]
    conv = next((parts for parts in lines if parts[0] == "Convolution"), None)
    if conv:
        p = params(conv)
        k = int(p.get("1", 1)) * int(p.get("11", p.get("1", 1)))
        facts["in_ch"] = int(p.get("6", 0)) // max(1, int(p.get("0", 1)) * k) or 3
    pad = next((parts for parts in lines if parts[0] == "Padding"), None)
    if pad and params(pad).get("4") == "2" and params(pad).get("1") == params(pad).get("3"):
        multiple = int(params(pad).get("1", "0")) + 1
        if multiple >= 8 and multiple & (multiple - 1) == 0:  # HyReSR's reflect pad to 2**levels
            facts["min_size"], facts["hyresr"] = multiple, True
    strides = [int(params(parts).get("0", 0)) for parts in lines if parts[0] == "Reorg"]
    windows = [s for s in strides if s != 2]
    if facts["hyresr"] and windows:
        facts["align"] = max(windows) * 2 ** (strides.count(2) // 2)
    return facts


def ncnn_runner(path: str, fp16: bool = False) -> Runner:
    """A ``.param`` (+ ``.bin``) NCNN model as a Runner, on the CPU. Takes any size; smaller than
    the graph's minimum: padded with the network's rule, then cropped (as for ONNX)."""
    from .export_ncnn import ncnn_net, ncnn_run

    require("ncnn", "running an NCNN .param model")
    p = Path(path)
    b = p.with_suffix(".bin")
    for f in (p, b):
        if not f.is_file():
            raise CheckpointError(f"{f}: no such file (an NCNN model is NAME.param with NAME.bin)")
    facts = ncnn_graph_facts(p)
    try:
        net = ncnn_net(p, b, fp16=fp16)
    except Exception as err:
        raise CheckpointError(f"{p}: cannot load NCNN model: {str(err).strip().splitlines()[0]}") from None
    in_ch, min_size = facts["in_ch"], facts["min_size"]

    def raw(x: torch.Tensor) -> torch.Tensor:
        try:
            return torch.from_numpy(ncnn_run(net, x, facts["input"], facts["output"]))
        except Exception as err:
            raise RuntimeError(f"ncnn cannot run {p.name}: {str(err).strip().splitlines()[0]}") from None

    probe_size = max(min_size, 16)
    probe = raw(torch.zeros(1, in_ch, probe_size, probe_size))
    scale, out_ch = probe.shape[-1] // probe_size, probe.shape[1]
    residual = facts["hyresr"] and in_ch == out_ch and scale > 1

    def run(x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h < min_size or w < min_size:
            return _run_padded(raw, x, -(-h // min_size) * min_size, -(-w // min_size) * min_size,
                               residual).clamp_(0, 1)
        return raw(x).clamp_(0, 1)

    return Runner(run, scale, in_ch, out_ch, facts["align"], "ncnn")


def load_runner(path: str, device: str = "auto", fp16: bool = False, bf16: bool = False) -> Runner:
    kind = model_kind(path)
    if kind == "ncnn":
        if bf16:
            raise CheckpointError(f"{path}: --bf16 applies to PyTorch models (NCNN runs fp32, or fp16 storage with --fp16)")
        return ncnn_runner(path, fp16)
    if kind == "onnx":
        if fp16 or bf16:
            raise CheckpointError(
                f"{path}: --fp16/--bf16 apply to PyTorch models; an ONNX file has its precision "
                "built in (use the _fp16.onnx export for half precision)")
        return onnx_runner(path, device)
    return torch_runner(path, device, fp16, bf16)
